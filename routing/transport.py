"""Transports: how the RPC layer opens and accepts byte streams.

`Transport` is the interface (`connect`, `serve`); `TcpTransport` is real TCP with
TCP_NODELAY on both ends; `routing.memory_network.MemoryNetwork` gives in-process ones for
tests. Failures to connect raise `OSError` (refused, unreachable, timed out by the OS).
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Awaitable, Callable
from typing import Protocol

import trio

from .errors import ListenError

__all__ = ["StreamHandler", "TcpTransport", "Transport", "open_listeners"]

logger = logging.getLogger(__name__)

StreamHandler = Callable[[trio.abc.Stream], Awaitable[None]]


class Transport(Protocol):
    """Opens streams to `host:port` and accepts them on a bound address."""

    async def connect(self, host: str, port: int) -> trio.abc.Stream:
        """A stream to `host:port`; raises OSError if it cannot be opened."""
        ...

    async def serve(
        self,
        host: str,
        port: int,
        handler: StreamHandler,
        *,
        task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Accept connections until cancelled, running `handler(stream)` for each (the
        stream is closed when the handler returns). Started value: the bound (host, port)."""
        ...


async def open_listeners(
    host: str, port: int, backlog: int | None = None
) -> list[trio.SocketListener]:
    """trio's TCP listeners on HOST:PORT, or a ListenError that names them."""
    try:
        return await trio.open_tcp_listeners(port, host=host, backlog=backlog)
    except OSError as error:
        message = f"cannot listen on {host}:{port}: {error.strerror or error}"
        raise ListenError(error.errno, message) from None


def _set_nodelay(stream: trio.SocketStream) -> None:
    try:
        stream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, True)
    except OSError:  # not a TCP socket (tests), or already closed
        logger.debug("could not set TCP_NODELAY", exc_info=True)


class TcpTransport:
    """Real TCP. `serve(host, 0, ...)` binds an ephemeral port and reports it."""

    def __init__(self, *, backlog: int | None = None) -> None:
        self._backlog = backlog

    async def connect(self, host: str, port: int) -> trio.abc.Stream:
        stream = await trio.open_tcp_stream(host, port)
        _set_nodelay(stream)  # trio sets it too; be explicit, the RPC relies on it
        return stream

    async def serve(
        self,
        host: str,
        port: int,
        handler: StreamHandler,
        *,
        task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        listeners = await open_listeners(host, port, self._backlog)
        sockname = listeners[0].socket.getsockname()
        bound = (str(sockname[0]), int(sockname[1]))

        async def handle(stream: trio.SocketStream) -> None:
            _set_nodelay(stream)
            async with stream:
                await handler(stream)

        async with trio.open_nursery() as nursery:
            started = await nursery.start(trio.serve_listeners, handle, listeners)
            del started
            task_status.started(bound)
