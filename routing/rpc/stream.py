"""`BidiStream`: one bidirectional stream of packets inside a connection, with credit.

Flow control. Each side may have at most a window of unread stream bytes in flight to the
other: a stream starts with `INITIAL_STREAM_WINDOW` bytes of credit each way, and the reader
returns credit with WINDOW messages as its application consumes packets (once half its
window is consumed). A sender may send while its credit is positive (a message larger than
the credit left may overshoot once), so each stream buffers at most its window plus one
maximum-size message, and a slow stream never blocks the connection's reader: the reader
only appends to this stream's inbox. A remote that sends beyond the credit it was given
breaks the protocol (ProtocolError, the connection closes).

Ends. `end()` half-closes our direction (STREAM_END); `receive()` raises StreamClosedError
once the remote has ended and the inbox is empty (async iteration stops there). `aclose()`
abandons the stream (CANCEL): the remote handler is cancelled. When the remote handler
fails, `receive()` raises the RemoteError after the packets that came before it.
"""

from __future__ import annotations

from collections import deque
from contextlib import suppress
from typing import Protocol

import trio

from ..errors import ConnectionLostError, ProtocolError, StreamClosedError
from ..wire import INITIAL_STREAM_WINDOW, Buffer, Kind, Message, encode, stream_cost
from .packet import Packet

__all__ = ["BidiStream"]


class StreamLink(Protocol):
    """What a stream needs from its connection."""

    max_message_size: int

    def enqueue(self, buffers: list[Buffer]) -> None: ...
    async def send(self, buffers: list[Buffer]) -> None: ...
    def stream_closed(self, stream: BidiStream) -> None: ...


class BidiStream:
    """A stream of packets both ways (see the module doc)."""

    def __init__(self, link: StreamLink, call_id: int, method: str, window: int) -> None:
        self._link = link
        self.call_id = call_id
        self.method = method
        self._window = window
        self._inbox: deque[tuple[Packet, int]] = deque()
        self._send_credit = INITIAL_STREAM_WINDOW
        self._allowance = INITIAL_STREAM_WINDOW  # credit granted to the remote, not yet used
        self._consumed = 0  # bytes read since credit was last returned
        self.local_ended = False
        self.remote_ended = False
        self._closed = False  # aclose()d, or the handler finished
        self._failure: BaseException | None = None  # remote error, reset, connection lost
        self._readable = trio.lowlevel.ParkingLot()
        self._writable = trio.lowlevel.ParkingLot()

    def grant_initial(self) -> None:
        """Raise the remote's credit from the protocol's initial window to ours."""
        extra = self._window - INITIAL_STREAM_WINDOW
        if extra > 0:
            self._allowance += extra
            self._link.enqueue(encode(Kind.WINDOW, self.call_id, extra))

    @property
    def finished(self) -> bool:
        """Nothing more will happen: closed, failed, or ended both ways."""
        return self._closed or self._failure is not None or (self.local_ended and self.remote_ended)

    # -- application side --------------------------------------------------------------------

    async def send(self, packet: Packet) -> None:
        """Send one packet; waits while the remote's window is full."""
        while True:
            self._check_can_send()
            if self._send_credit > 0:
                break
            await self._writable.park()
        header = packet.header if type(packet.header) is dict else dict(packet.header)
        buffers = encode(
            Kind.STREAM_DATA,
            self.call_id,
            header,
            packet.body,
            max_message_size=self._link.max_message_size,
        )
        self._send_credit -= stream_cost(sum(map(len, buffers)))
        await self._link.send(buffers)

    def _check_can_send(self) -> None:
        if self._failure is not None:
            raise self._failure
        if self._closed:
            raise StreamClosedError("the stream is closed")
        if self.local_ended:
            raise StreamClosedError("send after end()")

    async def receive(self) -> Packet:
        """The next packet; StreamClosedError once the remote has ended (or reset) it."""
        while not self._inbox:
            if self._failure is not None:
                raise self._failure
            if self.remote_ended:
                raise StreamClosedError("the remote ended the stream")
            if self._closed:
                raise StreamClosedError("the stream is closed")
            await self._readable.park()
        else:
            await trio.lowlevel.checkpoint()
        packet, cost = self._inbox.popleft()
        self._consumed += cost
        if self._consumed * 2 >= self._window and not self.remote_ended and not self.finished:
            increment, self._consumed = self._consumed, 0
            self._allowance += increment
            self._link.enqueue(encode(Kind.WINDOW, self.call_id, increment))
        return packet

    def __aiter__(self) -> BidiStream:
        return self

    async def __anext__(self) -> Packet:
        try:
            return await self.receive()
        except StreamClosedError:
            raise StopAsyncIteration from None

    async def end(self) -> None:
        """Half-close: we send nothing more; the remote's `receive` will end."""
        if self.local_ended or self.finished:
            await trio.lowlevel.checkpoint()
            return
        self.local_ended = True
        await self._link.send(encode(Kind.STREAM_END, self.call_id))
        self._wake()
        if self.finished:
            self._link.stream_closed(self)

    async def aclose(self) -> None:
        """Abandon the stream: the remote handler is cancelled if it still runs."""
        self.close()
        await trio.lowlevel.checkpoint()

    def close(self, *, notify: bool = True) -> None:
        """`aclose` without the checkpoint; `notify=False` sends no CANCEL (connection use)."""
        if self._closed:
            return
        tell_remote = notify and not self.finished
        self._closed = True
        self._wake()
        if tell_remote:
            with suppress(ConnectionLostError):  # the connection is gone: nothing to tell
                self._link.enqueue(encode(Kind.CANCEL, self.call_id))
        self._link.stream_closed(self)

    # -- connection side ---------------------------------------------------------------------

    def _wake(self) -> None:
        self._readable.unpark_all()
        self._writable.unpark_all()

    def on_data(self, message: Message) -> None:
        if self.remote_ended or self._closed or self._failure is not None:
            return  # late data for a stream we are done with: drop it
        if self._allowance <= 0:
            raise ProtocolError(f"stream {self.call_id}: data beyond the granted window")
        header = message.header
        if not isinstance(header, dict):
            raise ProtocolError("stream data header is not a map")
        cost = stream_cost(message.size)
        self._allowance -= cost
        self._inbox.append((Packet(header, message.payload), cost))
        self._readable.unpark_all()

    def on_end(self) -> None:
        if not self.remote_ended:
            self.remote_ended = True
            self._wake()
            if self.finished:
                self._link.stream_closed(self)

    def on_window(self, increment: int) -> None:
        self._send_credit += increment
        self._writable.unpark_all()

    def on_failure(self, error: BaseException) -> None:
        """The remote failed (RemoteError), reset the stream, or the connection was lost."""
        if self._failure is None and not self._closed:
            self._failure = error
            self._wake()
            self._link.stream_closed(self)
