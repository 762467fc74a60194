"""`Connection`: one authenticated stream carrying many concurrent calls and streams.

Theory of operation. Three kinds of task share a connection, all in its nursery:

- the reader: reads the stream, decodes messages (`wire.Decoder`) and dispatches each one
  by kind and call id *without ever waiting on a consumer*: a reply wakes the waiting
  caller (no task is spawned for it), stream data goes to that stream's bounded inbox, a
  request or stream open starts a handler task, a cancel cancels one;
- the writer (`MessageWriter`): writes every queued message in order;
- one task per remote call our handlers serve (`inbound.py`), capped per connection.

A connection asked to drain (`drain()`: its relay is being left, or a direct connection to
its peer superseded this one through a relay) closes once no call has run on it for
`DRAIN_GRACE` seconds and what it queued went out, rather than cut what runs. It tells the
remote first (a CANCEL on call 0), which then starts no new call on it either: its pool
dials afresh, instead of racing the close with a call the drain would cut.

Call ids: the dialer of the connection numbers its calls 1, 3, 5, ... and the listener
2, 4, 6, ..., so both sides can start calls on the same connection; an ERROR on call 0 is
the listener refusing the connection (`NotAMemberError`: a private swarm's peer closes it
to anyone not among its members, right after the handshake), a CANCEL on call 0 the remote
draining it, and any other message on call 0 a ProtocolError. A message about a call
we no longer track (a late reply after a timeout, a duplicate end, data after a cancel) is
dropped: such races are normal. Messages that break the framing or the protocol (unknown
kind, bad msgpack, over a cap, a duplicate live call id, data beyond a stream's window)
raise ProtocolError: it is logged and the connection closes; other connections go on.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Mapping
from contextlib import suppress
from typing import Any

import trio

from security import PeerId, SecurityError

from ..errors import (
    CallTimeoutError,
    ConnectionLostError,
    NotAMemberError,
    ProtocolError,
    RemoteError,
    RoutingError,
    StreamClosedError,
)
from ..wire import MAX_WINDOW_INCREMENT, Buffer, Decoder, Kind, Message, encode
from .config import RPCConfig
from .inbound import Inbound
from .packet import CallContext, Packet, StreamHandler, UnaryHandler
from .stream import BidiStream
from .writer import MessageWriter

__all__ = ["Connection"]

logger = logging.getLogger(__name__)

DRAIN_GRACE = 1.0  # seconds a draining connection must stay idle before it closes


class _PendingCall:
    """A unary call waiting for its reply."""

    __slots__ = ("done", "error", "reply")

    def __init__(self) -> None:
        self.done = trio.Event()
        self.reply: Packet | None = None
        self.error: BaseException | None = None

    def finish(self, reply: Packet | None, error: BaseException | None) -> None:
        if not self.done.is_set():
            self.reply, self.error = reply, error
            self.done.set()


def _as_dict(header: Mapping[str, Any]) -> dict[str, Any]:
    return header if type(header) is dict else dict(header)


def _remote_error(header: Any) -> BaseException:
    if (
        isinstance(header, list)
        and len(header) == 2
        and isinstance(header[0], str)
        and isinstance(header[1], str)
    ):
        return RemoteError(header[0], header[1])
    return ProtocolError("malformed error message")


class Connection:
    """A multiplexed RPC connection over an authenticated stream (see the module doc)."""

    def __init__(
        self,
        stream: trio.abc.Stream,
        peer_id: PeerId,
        remote_host: str,
        *,
        initiator: bool,
        config: RPCConfig,
        unary_handlers: Mapping[str, UnaryHandler],
        stream_handlers: Mapping[str, StreamHandler],
        circuit_host: str = "",
        relayed: bool = False,
        drain_when: trio.Event | None = None,
    ) -> None:
        self.stream = stream
        self.peer_id = peer_id
        self.remote_host = remote_host
        self.initiator = initiator
        self.config = config
        self.max_message_size = config.max_message_size
        self._writer = MessageWriter(stream, config.write_high_water, config.write_stall_timeout)
        self._ids = itertools.count(1 if initiator else 2, 2)
        self._local_parity = 1 if initiator else 0
        self._calls: dict[int, _PendingCall | BidiStream] = {}
        self._inbound = Inbound(
            self, CallContext(peer_id, remote_host, circuit_host), unary_handlers, stream_handlers
        )
        self._cancel_scope = trio.CancelScope()
        self._closed = False
        self.close_reason: BaseException | None = None
        self._idle_since: float | None = None
        self.relayed = relayed  # through a circuit relay: the pool prefers a direct one
        self._drain_when = drain_when  # once set: `drain()`
        self._draining = False
        self._went_idle = trio.lowlevel.ParkingLot()
        self._nursery: trio.Nursery | None = None

    # -- status ------------------------------------------------------------------------------

    @property
    def is_open(self) -> bool:
        """False as soon as the connection is closing (a failed write, `close()`), so the
        pool never hands out a connection that can no longer send."""
        return not self._closed and self.close_reason is None and not self._writer.failed

    @property
    def takes_new_calls(self) -> bool:
        """Open and not draining (on either side): the pool hands out only such ones."""
        return self.is_open and not self._draining

    @property
    def active_calls(self) -> int:
        return len(self._calls)

    @property
    def active_handlers(self) -> int:
        return self._inbound.active

    @property
    def busy(self) -> bool:
        """Whether a call or stream runs on it, ours or the remote's."""
        return bool(self._calls) or self._inbound.active > 0

    def activity_changed(self) -> None:
        """Called when calls or handlers start or end: tracks idleness."""
        if self.busy:
            self._idle_since = None
            return
        if self._idle_since is None:
            self._idle_since = trio.current_time()
        if self._draining:
            self._went_idle.unpark_all()

    def drain(self) -> None:
        """Close the connection once no call runs on it and what is queued went out (at
        once, if none runs), rather than cut what runs: a direct connection superseded it,
        or its relay is being left. The remote is told to start no new call on it."""
        if self._start_draining() and self.is_open:
            self._writer.enqueue(encode(Kind.CANCEL, 0))

    def _start_draining(self) -> bool:
        """Take no new call, close once idle; False if it already drains."""
        if self._draining:
            return False
        self._draining = True
        if self._nursery is not None:
            self._nursery.start_soon(self._close_once_idle)
        return True

    # -- writing (used by streams and handlers) ---------------------------------------------

    def enqueue(self, buffers: list[Buffer]) -> None:
        self._writer.enqueue(buffers)

    async def send(self, buffers: list[Buffer]) -> None:
        await self._writer.send(buffers)

    def stream_closed(self, stream: BidiStream) -> None:
        if stream.call_id & 1 == self._local_parity and self._calls.get(stream.call_id) is stream:
            del self._calls[stream.call_id]
            self.activity_changed()

    # -- life cycle --------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve the connection until it closes (EOF, error, idle, `close()`, cancel)."""
        try:
            with self._cancel_scope:
                async with trio.open_nursery() as nursery:
                    self._inbound.nursery = self._nursery = nursery
                    nursery.start_soon(self._guard, self._read_loop)
                    nursery.start_soon(self._guard, self._writer.run)
                    if self.config.idle_timeout is not None:
                        nursery.start_soon(self._idle_watch, self.config.idle_timeout)
                    if self._drain_when is not None:
                        nursery.start_soon(self._drain_once_set, self._drain_when)
                    if self._draining:  # asked before it ran
                        nursery.start_soon(self._close_once_idle)
                    self.activity_changed()
                    task_status.started()
        finally:
            self._shutdown()
            with trio.CancelScope(shield=True):
                await trio.aclose_forcefully(self.stream)

    def close(self, reason: BaseException | None = None) -> None:
        """Close the connection now: its calls fail with ConnectionLostError."""
        if self.close_reason is None:
            self.close_reason = reason or ConnectionLostError("closed locally")
        self._cancel_scope.cancel()

    async def _guard(self, loop: Any) -> None:
        """Run the reader or writer; any way it ends closes the connection."""
        try:
            await loop()
        except ProtocolError as error:
            logger.warning("closing connection with %s: %s", self.peer_id.short(), error)
            self.close(error)
        except (
            trio.BrokenResourceError,
            trio.ClosedResourceError,
            SecurityError,
            ConnectionLostError,
            OSError,
        ) as error:
            logger.debug("connection with %s lost: %r", self.peer_id.short(), error)
            self.close(error)
        finally:
            self.close()

    def _shutdown(self) -> None:
        self._closed = True
        self._nursery = None  # closed: a drain asked from now on has nothing to do
        reason = self.close_reason or ConnectionLostError("connection closed")
        lost: RoutingError
        if isinstance(reason, NotAMemberError):  # a refusal says why as it is
            lost = reason
        else:
            lost = ConnectionLostError(f"connection with {self.peer_id.short()} lost: {reason}")
            lost.__cause__ = reason
        self._writer.fail(lost)
        for entry in list(self._calls.values()):
            if isinstance(entry, _PendingCall):
                entry.finish(None, lost)
            else:
                entry.on_failure(lost)
        self._calls.clear()
        self._inbound.shutdown(lost)

    async def _idle_watch(self, idle_timeout: float) -> None:
        # Polls instead of being woken on every busy -> idle change: a wake-up per call
        # would cost a task switch on the hot path. A busy connection is checked once per
        # `idle_timeout`; an idle one is closed exactly `idle_timeout` after it became idle.
        while True:
            since = self._idle_since
            now = trio.current_time()
            if since is None:
                await trio.sleep_until(now + idle_timeout)
            elif now >= since + idle_timeout:
                logger.debug("closing idle connection with %s", self.peer_id.short())
                self.close(ConnectionLostError("idle timeout"))
                return
            else:
                await trio.sleep_until(since + idle_timeout)

    async def _drain_once_set(self, event: trio.Event) -> None:
        await event.wait()
        self.drain()

    async def _close_once_idle(self) -> None:
        while True:
            while self.busy:
                await self._went_idle.park()
            await trio.sleep(DRAIN_GRACE)  # a call the remote sent just now still comes in
            with suppress(ConnectionLostError):  # the writer failed: nothing more goes out
                await self._writer.written_all()  # replies, errors, credit
            if not self.busy:
                break
        logger.debug("drained connection with %s closes", self.peer_id.short())
        self.close(ConnectionLostError("drained: no call runs on it"))

    # -- reading -----------------------------------------------------------------------------

    async def _read_loop(self) -> None:
        config = self.config
        decoder = Decoder(config.max_message_size, max_header_size=config.max_header_size)
        receive_size = config.receive_size
        writer = self._writer
        while True:
            data = await self.stream.receive_some(receive_size)
            if not data:
                raise ConnectionLostError("closed by the remote")
            for message in decoder.feed(data):
                self._dispatch(message)
            await writer.flush()  # replies the dispatch queued (ping, errors, credit)
            if writer.queued_bytes > config.write_high_water:
                await writer.wait_below_high_water()  # a remote that does not read

    def _dispatch(self, message: Message) -> None:
        kind = message.kind
        call_id = message.call_id
        if call_id == 0:  # about the connection itself
            if kind is Kind.ERROR:  # the remote refuses the connection
                refusal = _remote_error(message.header)
                self.close(NotAMemberError(f"{self.peer_id.short()} refused us: {refusal}"))
            elif kind is Kind.CANCEL:  # the remote drains it
                self._start_draining()
            else:
                raise ProtocolError(f"{kind.name} on call 0")
            return
        if call_id & 1 != self._local_parity:  # a call the remote started
            if kind is Kind.REQUEST or kind is Kind.STREAM_OPEN:
                self._inbound.start(message)
            elif kind is Kind.CANCEL:
                self._inbound.cancel(call_id)
            elif kind is Kind.STREAM_DATA or kind is Kind.STREAM_END or kind is Kind.WINDOW:
                stream = self._inbound.stream(call_id)
                if stream is not None:
                    self._to_stream(stream, message)
            else:
                logger.debug("dropping %s for remote call %d", kind.name, call_id)
            return
        entry = self._calls.get(call_id)
        if entry is None:
            logger.debug("dropping %s for finished call %d", kind.name, call_id)
        elif isinstance(entry, _PendingCall):
            self._to_call(entry, call_id, message)
        elif kind is Kind.ERROR:
            entry.on_failure(_remote_error(message.header))
        elif kind is Kind.CANCEL:  # the remote handler is gone
            entry.on_failure(StreamClosedError("the remote closed the stream"))
        else:
            self._to_stream(entry, message)

    def _to_call(self, pending: _PendingCall, call_id: int, message: Message) -> None:
        if message.kind is Kind.RESPONSE:
            if isinstance(message.header, dict):
                pending.finish(Packet(message.header, message.payload), None)
            else:
                pending.finish(None, ProtocolError("reply header is not a map"))
        elif message.kind is Kind.ERROR:
            pending.finish(None, _remote_error(message.header))
        else:
            raise ProtocolError(f"{message.kind.name} for unary call {call_id}")
        del self._calls[call_id]
        self.activity_changed()

    @staticmethod
    def _to_stream(stream: BidiStream, message: Message) -> None:
        kind = message.kind
        if kind is Kind.STREAM_DATA:
            stream.on_data(message)
        elif kind is Kind.STREAM_END:
            stream.on_end()
        elif kind is Kind.WINDOW:
            increment = message.header
            if type(increment) is not int or not 0 < increment <= MAX_WINDOW_INCREMENT:
                raise ProtocolError(f"bad window increment {increment!r}")
            stream.on_window(increment)
        else:
            raise ProtocolError(f"{kind.name} is not a stream message")

    # -- calling -----------------------------------------------------------------------------

    async def call(self, method: str, request: Packet, deadline: float) -> Packet:
        """One unary call; CallTimeoutError at `deadline` (the remote is then cancelled)."""
        buffers = encode(
            Kind.REQUEST,
            call_id := next(self._ids),
            [method, _as_dict(request.header)],
            request.body,
            max_message_size=self.max_message_size,
        )
        pending = _PendingCall()
        self._calls[call_id] = pending
        self.activity_changed()
        try:
            with trio.move_on_at(deadline):
                await self._writer.send(buffers)
                await pending.done.wait()
        finally:
            if not pending.done.is_set():  # timed out or cancelled: cancel the remote
                pending.finish(None, CallTimeoutError(f"{method} timed out"))
                if self._calls.pop(call_id, None) is not None:
                    self.activity_changed()
                if self.is_open:
                    self._writer.enqueue(encode(Kind.CANCEL, call_id))
        if pending.error is not None:
            raise pending.error
        if pending.reply is None:  # unreachable: finish() sets one of them
            raise ProtocolError("no reply")
        return pending.reply

    def open_stream(self, method: str) -> BidiStream:
        """Start a stream (our side); the remote handler starts when STREAM_OPEN arrives."""
        call_id = next(self._ids)
        stream = BidiStream(self, call_id, method, self.config.stream_window)
        self._writer.enqueue(encode(Kind.STREAM_OPEN, call_id, [method]))
        self._calls[call_id] = stream
        self.activity_changed()
        stream.grant_initial()
        return stream
