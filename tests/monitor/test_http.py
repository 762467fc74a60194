"""The monitor's HTTP server over real TCP on 127.0.0.1, spoken to by an h11 client."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import h11
import trio

from swarm.http_server import HttpConfig, HttpServer
from swarm.monitor.http import load_page, monitor_handler
from swarm.monitor.metrics import render_metrics
from swarm.monitor.snapshot import Observations, SwarmSnapshot, build_snapshot

from .records import NOW, SwarmRecords

LIMIT = 10  # seconds: every test is bounded


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes


def state_with_one_model() -> SwarmSnapshot:
    records = SwarmRecords()
    records.add_model("tiny", 4)
    records.peer("tiny", 0, 2, version="</script><b>x</b>")
    return build_snapshot(Observations(now=NOW, models=records.models, blocks=records.blocks))


@asynccontextmanager
async def server(
    snapshot: SwarmSnapshot | None, config: HttpConfig | None = None
) -> AsyncIterator[tuple[str, int]]:
    http = HttpServer(monitor_handler(lambda: snapshot, load_page()), config, "monitor")
    async with trio.open_nursery() as nursery:
        yield await nursery.start(http.run, "127.0.0.1", 0)
        nursery.cancel_scope.cancel()


class Client:
    """One keep-alive HTTP/1.1 connection."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.h11 = h11.Connection(h11.CLIENT)

    async def request(self, target: str, method: str = "GET", body: bytes = b"") -> Reply:
        headers = [("Host", "monitor"), ("Content-Length", str(len(body)))]
        await self.stream.send_all(
            self.h11.send(h11.Request(method=method, target=target, headers=headers))
        )
        if body:
            await self.stream.send_all(self.h11.send(h11.Data(data=body)))
        await self.stream.send_all(self.h11.send(h11.EndOfMessage()))
        response: h11.Response | None = None
        data = b""
        while True:
            event = self.h11.next_event()
            if event is h11.NEED_DATA:
                self.h11.receive_data(await self.stream.receive_some(65536))
            elif isinstance(event, h11.Response):
                response = event
            elif isinstance(event, h11.Data):
                data += event.data
            elif isinstance(event, h11.EndOfMessage):
                break
            elif isinstance(event, h11.ConnectionClosed):
                raise AssertionError("connection closed before the response ended")
        assert response is not None
        headers_out = {k.decode().lower(): v.decode() for k, v in response.headers}
        if self.h11.our_state is h11.DONE and self.h11.their_state is h11.DONE:
            self.h11.start_next_cycle()
        return Reply(response.status_code, headers_out, data)


async def get(address: tuple[str, int], target: str, method: str = "GET") -> Reply:
    async with await trio.open_tcp_stream(*address) as stream:
        return await Client(stream).request(target, method)


async def closed_by_server(stream: trio.SocketStream) -> bytes:
    """Everything the server still sends before it closes the connection."""
    received = b""
    while chunk := await stream.receive_some(65536):
        received += chunk
    return received


async def test_the_page_is_served_with_a_strict_policy() -> None:
    with trio.fail_after(LIMIT):
        async with server(state_with_one_model()) as address:
            for target in ("/", "/?refresh=1", "/index.html"):
                reply = await get(address, target)
                assert reply.status == 200
                assert reply.headers["content-type"] == "text/html; charset=utf-8"
                assert b"<title>Swarm monitor</title>" in reply.body
                assert reply.headers["x-content-type-options"] == "nosniff"
                policy = reply.headers["content-security-policy"]
                assert "default-src 'none'" in policy and "connect-src 'self'" in policy
                assert "unsafe-inline" not in policy
                assert re.search(r"script-src 'sha256-[A-Za-z0-9+/]+=*'", policy)


async def test_state_is_the_latest_snapshot_as_json() -> None:
    snapshot = state_with_one_model()
    with trio.fail_after(LIMIT):
        async with server(snapshot) as address:
            reply = await get(address, "/api/state?x=1")
    assert reply.status == 200 and reply.headers["content-type"] == "application/json"
    assert reply.headers["cache-control"] == "no-store"
    assert json.loads(reply.body) == json.loads(snapshot.to_json())
    assert json.loads(reply.body)["models"][0]["peers"][0]["version"] == "</script><b>x</b>"


async def test_metrics_are_the_latest_snapshot_for_prometheus() -> None:
    snapshot = state_with_one_model()
    with trio.fail_after(LIMIT):
        async with server(snapshot) as address:
            reply = await get(address, "/metrics")
    assert reply.status == 200
    assert reply.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    assert reply.body.decode() == render_metrics(snapshot)
    assert 'version="</script><b>x</b>"' in reply.body.decode()


async def test_before_the_first_snapshot_the_state_is_unavailable() -> None:
    with trio.fail_after(LIMIT):
        async with server(None) as address:
            for path in ("/api/state", "/metrics"):
                reply = await get(address, path)
                assert reply.status == 503
                assert json.loads(reply.body) == {"error": "no snapshot yet"}


async def test_unknown_paths_and_methods() -> None:
    with trio.fail_after(LIMIT):
        async with server(None) as address:
            assert (await get(address, "/nope")).status == 404
            assert (await get(address, "/api/state/../../etc")).status == 404
            refused = await get(address, "/", method="DELETE")
            head = await get(address, "/", method="HEAD")
    assert refused.status == 405 and refused.headers["allow"] == "GET, HEAD"
    assert head.status == 200 and head.body == b"" and int(head.headers["content-length"]) > 1000


async def test_keep_alive_serves_several_requests_on_one_connection() -> None:
    with trio.fail_after(LIMIT):
        async with (
            server(state_with_one_model()) as address,
            await trio.open_tcp_stream(*address) as stream,
        ):
            client = Client(stream)
            statuses = [(await client.request(t)).status for t in ("/", "/x", "/api/state")]
    assert statuses == [200, 404, 200]


async def test_an_oversized_request_head_is_refused() -> None:
    with trio.fail_after(LIMIT):
        async with (
            server(None, HttpConfig(max_request_bytes=1024)) as address,
            await trio.open_tcp_stream(*address) as stream,
        ):
            await stream.send_all(b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 4096)
            answer = await closed_by_server(stream)
    assert answer.startswith(b"HTTP/1.1 431 ")


async def test_a_request_body_over_the_cap_is_refused() -> None:
    with trio.fail_after(LIMIT):
        async with (
            server(None, HttpConfig(max_body_bytes=16)) as address,
            await trio.open_tcp_stream(*address) as stream,
        ):
            await stream.send_all(
                b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100000000\r\n\r\n"
            )
            answer = await closed_by_server(stream)
    assert answer.startswith(b"HTTP/1.1 413 ") and b"connection: close" in answer.lower()


async def test_garbage_gets_a_400_and_the_server_keeps_serving() -> None:
    with trio.fail_after(LIMIT):
        async with server(None) as address:
            async with await trio.open_tcp_stream(*address) as stream:
                await stream.send_all(b"\x16\x03\x01 definitely not http\r\n\r\n")
                answer = await closed_by_server(stream)
            assert answer.startswith(b"HTTP/1.1 400 ")
            assert (await get(address, "/")).status == 200


async def test_a_client_that_stalls_mid_request_is_dropped() -> None:
    with trio.fail_after(LIMIT):
        async with (
            server(None, HttpConfig(request_timeout=0.2)) as address,
            await trio.open_tcp_stream(*address) as stream,
        ):
            await stream.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n")  # never finished
            assert await closed_by_server(stream) == b""


async def test_connections_over_the_limit_are_closed_at_once() -> None:
    with trio.fail_after(LIMIT):
        async with server(None, HttpConfig(max_connections=1)) as address:
            async with await trio.open_tcp_stream(*address) as first:
                held = Client(first)
                assert (await held.request("/")).status == 200  # holds the only slot
                async with await trio.open_tcp_stream(*address) as second:
                    assert await closed_by_server(second) == b""
                assert (await held.request("/api/state")).status == 503
            # Once the first is gone, a new connection is served again.
            with trio.fail_after(2):
                while True:
                    try:
                        if (await get(address, "/")).status == 200:
                            break
                    except (AssertionError, trio.BrokenResourceError):
                        await trio.sleep(0.01)  # the server has not released the slot yet


async def test_pipelined_requests_are_answered_in_order() -> None:
    with trio.fail_after(LIMIT):
        async with (
            server(None) as address,
            await trio.open_tcp_stream(*address) as stream,
        ):
            await stream.send_all(
                b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n"
                b"GET /api/state HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
            )
            answer = await closed_by_server(stream)
    statuses = re.findall(rb"^HTTP/1\.1 (\d+) ", answer, re.MULTILINE)
    assert statuses == [b"404", b"503"]
