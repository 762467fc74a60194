"""A small, defensive HTTP/1.1 server on trio: the monitor's page, the OpenAI-style API and a
peer's metrics, over plain TCP or TLS.

Theory of operation. `h11` (a pure HTTP/1.1 state machine) parses and frames; this module
only moves bytes between it and a trio stream, one task per connection, keep-alive included.
Both users are reachable from outside, so it is defensive: the request head is capped
(`max_request_bytes`, enforced by h11 before anything larger is buffered), bodies are
refused beyond `max_body_bytes`, a client gets `request_timeout` seconds to send a whole
request (slow-loris), every write gets `send_timeout`, and connections beyond
`max_connections` are closed at once. The handler sees a whole request and answers with a
body, or with a function that writes the body piece by piece (server-sent events): h11 sends
that chunked, and a client that goes away mid-body fails the next write, which ends the
handler's work. With a TLS context (`swarm.tls`) each connection is TLS first: its handshake
has `request_timeout` too, and one that fails (a plain HTTP client, garbage) closes it alone.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import h11
import trio

from routing.transport import open_listeners

logger = logging.getLogger(__name__)

RECEIVE_SIZE = 16384
SECURITY_HEADERS = (
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
    ("Cache-Control", "no-store"),
)


@dataclass(frozen=True)
class HttpConfig:
    max_request_bytes: int = 16384  # request line + headers
    max_body_bytes: int = 1024  # a larger body is refused with 413
    request_timeout: float = 10.0  # to receive one whole request (also the keep-alive idle)
    send_timeout: float = 10.0  # for each write of a response
    max_connections: int = 64


@dataclass(frozen=True)
class Request:
    method: str
    path: str  # without the query
    headers: dict[str, str]  # names in lower case
    body: bytes


Write = Callable[[bytes], Awaitable[None]]


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes = b""
    content_type: str = "text/plain; charset=utf-8"
    headers: tuple[tuple[str, str], ...] = ()
    close: bool = False  # end the connection after this response
    stream: Callable[[Write], Awaitable[None]] | None = None  # writes the body instead


Handler = Callable[[Request], Awaitable[Response]]


class HttpServer:
    """Serve `handler` over HTTP/1.1. `run` reports the bound (host, port)."""

    def __init__(
        self,
        handler: Handler,
        config: HttpConfig | None = None,
        name: str = "http",
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.handler = handler
        self.config = config or HttpConfig()
        self.name = name  # in logs and the Server header
        self.tls = tls  # None: plain HTTP
        self._connections = trio.CapacityLimiter(self.config.max_connections)

    async def run(
        self,
        host: str,
        port: int,
        *,
        task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        listeners = await open_listeners(host, port)
        async with trio.open_nursery() as nursery:
            await nursery.start(trio.serve_listeners, self._serve_connection, listeners)
            host, port = listeners[0].socket.getsockname()[:2]
            logger.info("%s server at %s", self.name, self.url(host, port))
            task_status.started((str(host), int(port)))

    def url(self, host: str, port: int) -> str:
        """Where this server is reached when it listens on host:port (no trailing slash)."""
        shown = f"[{host}]" if ":" in host else host
        return f"{'https' if self.tls else 'http'}://{shown}:{port}"

    async def _serve_connection(self, stream: trio.abc.Stream) -> None:
        try:
            self._connections.acquire_nowait()
        except trio.WouldBlock:
            logger.warning("too many %s connections, closing a new one", self.name)
            await stream.aclose()
            return
        try:
            if self.tls is not None:
                stream = trio.SSLStream(stream, self.tls, server_side=True, https_compatible=True)
                with trio.fail_after(self.config.request_timeout):
                    await stream.do_handshake()
            await _Connection(stream, self).serve()
        except (trio.BrokenResourceError, trio.ClosedResourceError, trio.TooSlowError):
            pass  # the client went away or stalled: nothing to tell it
        except Exception:  # a body that failed half sent: this connection ends, not the server
            logger.exception("%s connection failed", self.name)
        finally:
            self._connections.release()
            await stream.aclose()


class _Connection:
    def __init__(self, stream: trio.abc.Stream, server: HttpServer) -> None:
        self.stream = stream
        self.server = server
        self.config = server.config
        self.h11 = h11.Connection(
            h11.SERVER, max_incomplete_event_size=self.config.max_request_bytes
        )

    async def serve(self) -> None:
        while True:
            try:
                with trio.move_on_after(self.config.request_timeout) as timer:
                    request, body_too_large = await self._read_request()
                if timer.cancelled_caught:
                    return  # idle keep-alive or a slow client: just close
            except h11.RemoteProtocolError as error:
                if self.h11.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                    status = error.error_status_hint
                    await self._send(
                        Response(status, f"{status} bad request\n".encode(), close=True)
                    )
                return
            if request is None:
                return  # the client closed the connection
            response = await self._respond(request, body_too_large)
            await self._send(response, head=request.method == "HEAD")
            if self.h11.our_state is not h11.DONE or self.h11.their_state is not h11.DONE:
                return  # h11 wants the connection closed (or the request body was left unread)
            self.h11.start_next_cycle()

    async def _read_request(self) -> tuple[Request | None, bool]:
        """The next request (None at end of connection), and whether its body was too large."""
        event = await self._next_event()
        if isinstance(event, h11.ConnectionClosed):
            return None, False
        if not isinstance(event, h11.Request):
            raise h11.RemoteProtocolError("expected a request", error_status_hint=400)
        headers = {name.decode("ascii").lower(): value.decode("latin-1")
                   for name, value in event.headers}  # fmt: skip
        request = Request(
            method=event.method.decode("ascii"),
            path=event.target.split(b"?", 1)[0].decode("ascii", "replace"),
            headers=headers,
            body=b"",
        )
        length = int(headers.get("content-length", 0))  # h11 already checked it is a number
        if length > self.config.max_body_bytes:
            return request, True  # refused without reading it; the connection closes after
        body = bytearray()
        while not isinstance(part := await self._next_event(), h11.EndOfMessage):
            if isinstance(part, h11.Data):
                body += part.data
                if len(body) > self.config.max_body_bytes:
                    return request, True
            elif isinstance(part, h11.ConnectionClosed):
                return None, False
        return Request(request.method, request.path, headers, bytes(body)), False

    async def _next_event(self) -> h11.Event:
        while True:
            event = self.h11.next_event()
            if isinstance(event, h11.Event):
                return event
            if event is h11.PAUSED:  # cannot happen: we read no further than one request
                raise h11.RemoteProtocolError("unexpected pipelining", error_status_hint=400)
            self.h11.receive_data(bytes(await self.stream.receive_some(RECEIVE_SIZE)))

    async def _respond(self, request: Request, body_too_large: bool) -> Response:
        if body_too_large:
            return Response(413, b"413 request body too large\n", close=True)
        try:
            return await self.server.handler(request)
        except Exception:
            logger.exception("%s handler failed for %s", self.server.name, request.path)
            return Response(500, b"500 internal error\n", close=True)

    async def _send(self, response: Response, *, head: bool = False) -> None:
        headers = [
            ("Server", f"swarm-{self.server.name}"),
            ("Content-Type", response.content_type),
            *SECURITY_HEADERS,
            *response.headers,
        ]
        if response.stream is None:  # else no length: h11 sends the body chunked
            headers.append(("Content-Length", str(len(response.body))))
        if response.close:
            headers.append(("Connection", "close"))
        await self._write(h11.Response(status_code=response.status, headers=headers))
        if response.stream is not None and not head:
            await response.stream(self._write_data)
        elif response.body and not head:
            await self._write_data(response.body)
        await self._write(h11.EndOfMessage())

    async def _write_data(self, data: bytes) -> None:
        if data:
            await self._write(h11.Data(data=data))

    async def _write(self, event: h11.Event) -> None:
        data = self.h11.send(event)
        if data:
            with trio.fail_after(self.config.send_timeout):
                await self.stream.send_all(data)
