"""The HTTP server the monitor and the API share: what the monitor's tests do not reach."""

from __future__ import annotations

import errno
import http.client
import socket

import pytest
import trio

from swarm.cli import main
from swarm.http_server import HttpServer, Request, Response, Write


async def _handle(request: Request) -> Response:
    if request.path == "/stream":

        async def body(write: Write) -> None:
            for piece in (b"one ", b"two ", b"three"):
                await write(piece)

        return Response(200, stream=body)
    if request.path == "/broken":

        async def broken(write: Write) -> None:
            await write(b"half ")
            raise RuntimeError("the body failed half sent")

        return Response(200, stream=broken)
    return Response(200, request.method.encode() + b" " + request.body)


def _get(port: int, path: str, body: bytes = b"") -> tuple[int, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    connection.request("POST" if body else "GET", path, body=body or None)
    reply = connection.getresponse()
    return reply.status, reply.read()


async def test_streamed_bodies_and_a_body_that_fails_half_sent(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A streamed body goes out chunked; one that fails half sent ends its connection (the
    client sees a cut response) and the server serves on."""
    async with trio.open_nursery() as nursery:
        _, port = await nursery.start(HttpServer(_handle, name="test").run, "127.0.0.1", 0)
        assert await trio.to_thread.run_sync(_get, port, "/stream") == (200, b"one two three")
        with pytest.raises(http.client.IncompleteRead):
            await trio.to_thread.run_sync(_get, port, "/broken")
        assert await trio.to_thread.run_sync(_get, port, "/echo", b"x") == (200, b"POST x")
        nursery.cancel_scope.cancel()
    assert "test connection failed" in caplog.text


def test_the_command_line_says_so_in_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    """`swarm dht --port` (as `swarm peer`, `swarm api`, `--metrics-port`) on a taken port:
    exit status 1 and one line that names the address, no traceback."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["dht", "--port", str(port)]) == 1
    err = capsys.readouterr().err
    assert f"ListenError: [Errno {errno.EADDRINUSE}] cannot listen on 127.0.0.1:{port}" in err
    assert "Traceback" not in err
