"""The same RPC over real TCP on 127.0.0.1: concurrent calls and streams on one
connection, pinning, deadlines, and a listener that survives garbage without leaking."""

from __future__ import annotations

import os
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from functools import partial

import pytest
import trio

from routing.address import PeerAddress
from routing.errors import CallTimeoutError, PeerUnreachableError, RemoteError
from routing.rpc import CallContext, Packet, RPCConfig, RPCHost
from routing.transport import TcpTransport
from security import Identity, SecureStream

from .helpers import count_tasks, double, echo, wait_until

LIMIT = 20  # seconds: every test here is bounded in real time


async def _slow(request: Packet, context: CallContext) -> Packet:
    await trio.sleep(30)
    return Packet()


@asynccontextmanager
async def _tcp_pair(
    config: RPCConfig | None = None,
) -> AsyncIterator[tuple[RPCHost, RPCHost]]:
    with trio.fail_after(LIMIT):
        async with trio.open_nursery() as nursery:
            server = RPCHost(Identity.generate(), TcpTransport(), config)
            server.add_unary("echo", echo)
            server.add_unary("slow", _slow)
            server.add_stream("double", double)
            await nursery.start(partial(server.run, "127.0.0.1", 0))
            client = RPCHost(Identity.generate(), TcpTransport(), config)
            await nursery.start(partial(client.run, "127.0.0.1", 0))
            yield server, client
            nursery.cancel_scope.cancel()


async def test_calls_and_streams_share_one_tcp_connection() -> None:
    async with _tcp_pair() as (server, client):
        assert server.address.host == "127.0.0.1" and server.address.port > 0
        replies: list[int] = []

        async def call(n: int) -> None:
            body = os.urandom(n * 1000)
            reply = await client.call(server.address, "echo", Packet({"n": n}, body), timeout=10)
            assert bytes(reply.body) == body
            replies.append(reply.header["n"])

        async def stream(k: int) -> None:
            async with client.open_stream(server.address, "double") as s:
                for v in range(5):
                    await s.send(Packet({"v": k + v}, bytes(70_000)))
                    assert (await s.receive()).header == {"v": 2 * (k + v)}

        async with trio.open_nursery() as nursery:
            for n in range(50):
                nursery.start_soon(call, n)
            for k in range(5):
                nursery.start_soon(stream, 100 * k)
        assert sorted(replies) == list(range(50))
        assert client.stats().connections == server.stats().connections == 1
        assert await client.ping(server.address, timeout=5) < 1.0


async def test_pinning_and_deadlines_over_tcp() -> None:
    async with _tcp_pair() as (server, client):
        impostor = PeerAddress("127.0.0.1", server.address.port, Identity.generate().peer_id)
        with pytest.raises(PeerUnreachableError):
            await client.call(impostor, "echo", Packet(), timeout=5)
        with pytest.raises(CallTimeoutError):
            await client.call(server.address, "slow", Packet(), timeout=0.2)
        await wait_until(lambda: server.stats().handlers == 0, within=5)  # cancelled there
        with pytest.raises(RemoteError):
            await client.call(server.address, "nothing", Packet(), timeout=5)
        assert (await client.call(server.address, "echo", Packet({"x": 1}), timeout=5)).header


async def test_a_tcp_listener_survives_garbage_and_leaks_nothing() -> None:
    config = RPCConfig(handshake_timeout=0.5)
    async with _tcp_pair(config) as (server, client):
        await client.ping(server.address, timeout=5)
        tasks = count_tasks()
        port = server.address.port
        for size in (1, 100, 5000, 70_000):  # garbage instead of a handshake
            raw = await trio.open_tcp_stream("127.0.0.1", port)
            with suppress(trio.BrokenResourceError):  # the server may have hung up already
                await raw.send_all(os.urandom(size))
            await raw.aclose()
        silent = await trio.open_tcp_stream("127.0.0.1", port)  # never speaks
        secure = SecureStream(
            await trio.open_tcp_stream("127.0.0.1", port),
            Identity.generate(),
            initiator=True,
            expected_peer=server.peer_id,
        )
        await secure.do_handshake()
        # encrypted garbage: not RPC messages (its first word announces more than the cap)
        await secure.send_all(b"\xff\xff\xff\xff" + os.urandom(3000))
        with suppress(trio.BrokenResourceError):  # the server closes it (EOF or reset)
            while await secure.receive_some(4096):
                pass
        await secure.aclose()
        # a reset straight after connecting
        with socket.create_connection(("127.0.0.1", port)) as rst:
            rst.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        reply = await client.call(server.address, "echo", Packet({"still": 1}), timeout=5)
        assert reply.header == {"still": 1}
        await wait_until(lambda: server.stats().unauthenticated == 0, within=5)  # the silent one
        assert await silent.receive_some(10) == b""  # was closed by the handshake timeout
        await silent.aclose()
        await wait_until(lambda: count_tasks() <= tasks and server.stats().connections == 1)
        assert server.stats().handlers == 0


def _listening_sockets() -> int:
    import psutil

    return sum(1 for c in psutil.Process().net_connections("tcp") if c.status == "LISTEN")


async def test_a_host_that_only_dials_out_listens_nowhere_and_still_calls() -> None:
    with trio.fail_after(LIMIT):
        async with trio.open_nursery() as nursery:
            server = RPCHost(Identity.generate(), TcpTransport())
            server.add_unary("echo", echo)
            server.add_stream("double", double)
            await nursery.start(partial(server.run, "127.0.0.1", 0))
            listening = _listening_sockets()
            client = RPCHost(Identity.generate(), TcpTransport())
            await nursery.start(client.run_outbound)
            assert _listening_sockets() == listening
            with pytest.raises(RuntimeError):
                _ = client.address
            reply = await client.call(server.address, "echo", Packet({"n": 1}, b"abc"), timeout=10)
            assert bytes(reply.body) == b"abc"
            async with client.open_stream(server.address, "double") as stream:
                await stream.send(Packet({"v": 21}))
                assert (await stream.receive()).header == {"v": 42}
            assert client.stats().outbound == 1 and client.stats().inbound == 0
            nursery.cancel_scope.cancel()
