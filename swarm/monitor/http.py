"""A small HTTP/1.1 server on trio for the monitor: the page at `/`, JSON at `/api/state`.

Theory of operation. `h11` (a pure HTTP/1.1 state machine) parses and frames; this module
only moves bytes between it and a trio stream, one task per connection, keep-alive included.
The server is read-only and public-facing, so it is defensive: the request head is capped
(`max_request_bytes`, enforced by h11 before anything larger is buffered), bodies are
refused beyond a small cap, a client gets `request_timeout` seconds to send a whole request
(slow-loris), connections beyond `max_connections` are closed at once, and only GET and HEAD
exist. The page carries a Content-Security-Policy that allows exactly its own inline script
and style (by hash) and fetches to its own origin, as a second line of defence behind the
page's escaping of peer-provided strings.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources

import h11
import trio

from .snapshot import SwarmSnapshot

logger = logging.getLogger(__name__)

RECEIVE_SIZE = 16384
SERVER_NAME = b"swarm-monitor"


@dataclass(frozen=True)
class HttpConfig:
    max_request_bytes: int = 16384  # request line + headers
    max_body_bytes: int = 1024  # we take no input; a larger body is refused with 413
    request_timeout: float = 10.0  # to receive one whole request (also the keep-alive idle)
    send_timeout: float = 10.0
    max_connections: int = 64


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes
    content_type: str = "text/plain; charset=utf-8"
    headers: tuple[tuple[str, str], ...] = ()
    close: bool = False  # end the connection after this response


Handler = Callable[[str, str], Response]  # (method, path without query) -> response
SECURITY_HEADERS = (
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
    ("Cache-Control", "no-store"),
)


class HttpServer:
    """Serve `handler` over HTTP/1.1. `run` reports the bound (host, port)."""

    def __init__(self, handler: Handler, config: HttpConfig | None = None) -> None:
        self.handler = handler
        self.config = config or HttpConfig()
        self._connections = trio.CapacityLimiter(self.config.max_connections)

    async def run(
        self,
        host: str,
        port: int,
        *,
        task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        listeners = await trio.open_tcp_listeners(port, host=host)
        async with trio.open_nursery() as nursery:
            await nursery.start(trio.serve_listeners, self._serve_connection, listeners)
            bound = listeners[0].socket.getsockname()
            logger.info("monitor HTTP server on %s:%d", bound[0], bound[1])
            task_status.started((str(bound[0]), int(bound[1])))

    async def _serve_connection(self, stream: trio.abc.Stream) -> None:
        try:
            self._connections.acquire_nowait()
        except trio.WouldBlock:
            logger.warning("too many monitor connections, closing a new one")
            await stream.aclose()
            return
        try:
            await _Connection(stream, self.handler, self.config).serve()
        except (trio.BrokenResourceError, trio.ClosedResourceError, trio.TooSlowError):
            pass  # the client went away or stalled: nothing to tell it
        finally:
            self._connections.release()
            await stream.aclose()


class _Connection:
    def __init__(self, stream: trio.abc.Stream, handler: Handler, config: HttpConfig) -> None:
        self.stream = stream
        self.handler = handler
        self.config = config
        self.h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=config.max_request_bytes)

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
            await self._send(self._respond(request, body_too_large), head=request.method == b"HEAD")
            if self.h11.our_state is not h11.DONE or self.h11.their_state is not h11.DONE:
                return  # h11 wants the connection closed (or the request body was left unread)
            self.h11.start_next_cycle()

    async def _read_request(self) -> tuple[h11.Request | None, bool]:
        """The next request (None at end of connection), and whether its body was too large."""
        event = await self._next_event()
        if isinstance(event, h11.ConnectionClosed):
            return None, False
        if not isinstance(event, h11.Request):
            raise h11.RemoteProtocolError("expected a request", error_status_hint=400)
        length = _content_length(event)
        if length is not None and length > self.config.max_body_bytes:
            return event, True  # refused without reading it; the connection closes after
        received = 0
        while not isinstance(body := await self._next_event(), h11.EndOfMessage):
            if isinstance(body, h11.Data):
                received += len(body.data)
                if received > self.config.max_body_bytes:
                    return event, True
            elif isinstance(body, h11.ConnectionClosed):
                return None, False
        return event, False

    async def _next_event(self) -> h11.Event:
        while True:
            event = self.h11.next_event()
            if isinstance(event, h11.Event):
                return event
            if event is h11.PAUSED:  # cannot happen: we read no further than one request
                raise h11.RemoteProtocolError("unexpected pipelining", error_status_hint=400)
            self.h11.receive_data(bytes(await self.stream.receive_some(RECEIVE_SIZE)))

    def _respond(self, request: h11.Request, body_too_large: bool) -> Response:
        if body_too_large:
            return Response(413, b"413 request body too large\n", close=True)
        if request.method not in (b"GET", b"HEAD"):
            return Response(405, b"405 method not allowed\n", headers=(("Allow", "GET, HEAD"),))
        path = request.target.split(b"?", 1)[0].decode("ascii", "replace")
        try:
            return self.handler(request.method.decode("ascii"), path)
        except Exception:
            logger.exception("monitor handler failed for %s", path)
            return Response(500, b"500 internal error\n", close=True)

    async def _send(self, response: Response, *, head: bool = False) -> None:
        headers = [
            ("Server", SERVER_NAME.decode()),
            ("Content-Type", response.content_type),
            ("Content-Length", str(len(response.body))),
            *SECURITY_HEADERS,
            *response.headers,
        ]
        if response.close:
            headers.append(("Connection", "close"))
        with trio.fail_after(self.config.send_timeout):
            await self._write(h11.Response(status_code=response.status, headers=headers))
            if not head and response.body:
                await self._write(h11.Data(data=response.body))
            await self._write(h11.EndOfMessage())

    async def _write(self, event: h11.Event) -> None:
        data = self.h11.send(event)
        if data:
            await self.stream.send_all(data)


def _content_length(request: h11.Request) -> int | None:
    for name, value in request.headers:
        if name == b"content-length":
            return int(value)  # h11 already checked it is a number
    return None


# --- the monitor's routes -----------------------------------------------------------------


@dataclass(frozen=True)
class Page:
    html: bytes
    content_security_policy: str


def load_page() -> Page:
    """The static page, and a CSP that allows exactly its inline script and style."""
    html = resources.files("swarm.monitor").joinpath("static/index.html").read_text("utf-8")
    scripts = re.findall(r"<script>(.*?)</script>", html, re.DOTALL)
    styles = re.findall(r"<style>(.*?)</style>", html, re.DOTALL)
    policy = "; ".join(
        [
            "default-src 'none'",
            "script-src " + " ".join(_source_hash(s) for s in scripts),
            "style-src " + " ".join(_source_hash(s) for s in styles),
            "connect-src 'self'",
            "img-src data:",
            "base-uri 'none'",
            "form-action 'none'",
            "frame-ancestors 'none'",
        ]
    )
    return Page(html.encode("utf-8"), policy)


def _source_hash(source: str) -> str:
    digest = hashlib.sha256(source.encode("utf-8")).digest()
    return f"'sha256-{base64.b64encode(digest).decode('ascii')}'"


def monitor_handler(latest: Callable[[], SwarmSnapshot | None], page: Page) -> Handler:
    """Routes: `/` (and `/index.html`) the page, `/api/state` the latest snapshot as JSON."""
    page_response = Response(
        200,
        page.html,
        "text/html; charset=utf-8",
        (("Content-Security-Policy", page.content_security_policy),),
    )

    def handle(method: str, path: str) -> Response:
        if path in ("/", "/index.html"):
            return page_response
        if path == "/api/state":
            snapshot = latest()
            if snapshot is None:
                return Response(
                    503,
                    b'{"error":"no snapshot yet"}',
                    "application/json",
                    (("Retry-After", "1"),),
                )
            return Response(200, snapshot.to_json().encode("utf-8"), "application/json")
        return Response(404, b"404 not found\n")

    return handle
