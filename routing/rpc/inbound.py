"""`Inbound`: the calls a remote started on one connection, each run by our handler.

A request or stream open starts one handler task in the connection's nursery, inside a
cancel scope registered under its call id before the task starts, so a CANCEL that
arrives at once still cancels it. At most `max_concurrent_calls` run per connection; more
get the error "overloaded" at once. The built-in method "ping" is answered by the reader
itself (no task). Handler outcomes: a returned Packet is the reply; `HandlerError` is sent
as its code and message; a reply over the message cap is sent as "reply_too_large"; any
other exception is logged here with its traceback and sent as code "internal" with a
generic message (tracebacks never leave the process); a handler cancelled by the remote's
CANCEL sends nothing. A reply that cannot be sent because the connection is gone is
dropped (logged at debug level): a handler task never fails its connection's nursery.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from contextlib import suppress
from typing import TYPE_CHECKING, Any

import trio

from ..errors import ConnectionLostError, HandlerError, MessageTooLargeError, ProtocolError
from ..wire import Kind, Message, encode
from .packet import CallContext, Packet, StreamHandler, UnaryHandler
from .stream import BidiStream

if TYPE_CHECKING:
    from .connection import Connection

__all__ = ["PING", "Inbound"]

logger = logging.getLogger(__name__)

PING = "ping"
_MAX_METHOD_LENGTH = 256


class _Running:
    __slots__ = ("scope", "stream")

    def __init__(self, stream: BidiStream | None) -> None:
        self.scope = trio.CancelScope()
        self.stream = stream


class Inbound:
    """Handler tasks of one connection."""

    def __init__(
        self,
        connection: Connection,
        context: CallContext,
        unary_handlers: Mapping[str, UnaryHandler],
        stream_handlers: Mapping[str, StreamHandler],
    ) -> None:
        self._connection = connection
        self._context = context
        self._unary = unary_handlers
        self._streams = stream_handlers
        self._running: dict[int, _Running] = {}
        self.nursery: trio.Nursery | None = None

    @property
    def active(self) -> int:
        return len(self._running)

    def stream(self, call_id: int) -> BidiStream | None:
        running = self._running.get(call_id)
        return None if running is None else running.stream

    def cancel(self, call_id: int) -> None:
        running = self._running.get(call_id)
        if running is not None:
            running.scope.cancel()

    def shutdown(self, reason: BaseException) -> None:
        for running in self._running.values():
            running.scope.cancel()
            if running.stream is not None:
                running.stream.on_failure(reason)

    def _error(self, call_id: int, code: str, message: str) -> None:
        with suppress(ConnectionLostError):  # nobody left to tell
            self._connection.enqueue(encode(Kind.ERROR, call_id, [code, message]))

    def start(self, message: Message) -> None:
        call_id = message.call_id
        if call_id in self._running:
            raise ProtocolError(f"call id {call_id} is already in use")
        header = message.header
        if message.kind is Kind.REQUEST:
            if not (
                isinstance(header, list)
                and len(header) == 2
                and isinstance(header[0], str)
                and isinstance(header[1], dict)
            ):
                self._error(call_id, "bad_request", "malformed request")
                return
            method: str = header[0]
            if method == PING and PING not in self._unary:
                self._connection.enqueue(encode(Kind.RESPONSE, call_id, {}))
                return
            unary = self._unary.get(method)
            if unary is None:
                self._error(call_id, "unknown_method", _clip(method))
                return
            if self._check_capacity(call_id):
                running = self._register(call_id, None)
                packet = Packet(header[1], message.payload)
                self._spawn(self._run_unary, call_id, running, unary, packet)
            return
        if not (isinstance(header, list) and len(header) == 1 and isinstance(header[0], str)):
            self._error(call_id, "bad_request", "malformed stream open")
            return
        handler = self._streams.get(header[0])
        if handler is None:
            self._error(call_id, "unknown_method", _clip(header[0]))
            return
        if self._check_capacity(call_id):
            connection = self._connection
            stream = BidiStream(connection, call_id, header[0], connection.config.stream_window)
            running = self._register(call_id, stream)
            stream.grant_initial()
            self._spawn(self._run_stream, call_id, running, handler, stream)

    def _check_capacity(self, call_id: int) -> bool:
        if len(self._running) < self._connection.config.max_concurrent_calls:
            return True
        self._error(call_id, "overloaded", "too many concurrent calls")
        return False

    def _register(self, call_id: int, stream: BidiStream | None) -> _Running:
        running = _Running(stream)
        self._running[call_id] = running
        self._connection.activity_changed()
        return running

    def _spawn(self, function: Any, *args: Any) -> None:
        if self.nursery is None:  # unreachable: the connection sets it before reading
            raise ProtocolError("connection not running")
        self.nursery.start_soon(function, *args)

    def _finished(self, call_id: int) -> None:
        del self._running[call_id]
        self._connection.activity_changed()

    async def _run_unary(
        self, call_id: int, running: _Running, handler: UnaryHandler, packet: Packet
    ) -> None:
        try:
            with running.scope:
                try:
                    reply = await handler(packet, self._context)
                    header = reply.header if type(reply.header) is dict else dict(reply.header)
                    buffers = encode(
                        Kind.RESPONSE,
                        call_id,
                        header,
                        reply.body,
                        max_message_size=self._connection.max_message_size,
                    )
                except HandlerError as error:
                    self._error(call_id, _clip(error.code), _clip(error.message, 4096))
                except MessageTooLargeError as error:  # the reply is over our cap
                    self._error(call_id, "reply_too_large", _clip(str(error)))
                except Exception:
                    logger.exception("handler failed (call from %s)", self._context.peer_id)
                    self._error(call_id, "internal", "internal error")
                else:
                    await self._connection.send(buffers)
        except ConnectionLostError as error:  # the reply could not go out: the caller is gone
            logger.debug("reply to %s lost: %s", self._context.peer_id.short(), error)
        finally:
            self._finished(call_id)

    async def _run_stream(
        self, call_id: int, running: _Running, handler: StreamHandler, stream: BidiStream
    ) -> None:
        try:
            with running.scope:
                try:
                    await handler(stream, self._context)
                except HandlerError as error:
                    self._error(call_id, _clip(error.code), _clip(error.message, 4096))
                    stream.close(notify=False)
                except Exception as error:
                    if isinstance(error, ConnectionLostError) and not self._connection.is_open:
                        logger.debug("stream from %s lost: %s", self._context.peer_id, error)
                    else:
                        logger.exception("stream handler failed (from %s)", self._context.peer_id)
                        self._error(call_id, "internal", "internal error")
                    stream.close(notify=False)
                else:
                    if not stream.finished and not stream.local_ended:
                        await stream.end()
                    stream.close()  # CANCEL if the remote still sends: nobody reads
        except ConnectionLostError as error:  # ending the stream failed: the caller is gone
            logger.debug("stream from %s lost: %s", self._context.peer_id.short(), error)
        finally:
            stream.close(notify=False)
            self._finished(call_id)


def _clip(text: str, limit: int = 256) -> str:
    return text if len(text) <= limit else text[:limit] + "..."
