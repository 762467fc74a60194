"""`MessageWriter`: the one task that writes a connection's messages, in order.

Callers `enqueue` encoded messages (a list of buffers each) without blocking; the writer
task takes everything queued, joins runs of small buffers into one write (so a burst of
replies costs one encryption frame and one system call) and sends large payloads as they
are. A message once queued is sent whole even if its sender is cancelled: only the writer
touches the stream, so a cancelled caller can never cut a message in half and break the
connection for everyone. `send` waits for the write to finish only when more than
`high_water` bytes are queued (backpressure on a remote that does not read).

Fast path: when nothing is queued or being written, `send` writes a small message (up to
`DIRECT_LIMIT` bytes) itself, shielded from cancellation so the message still goes out
whole, which saves a task switch per message (the round-trip latency of a unary call).
The shield has a deadline, `stall_timeout`: a write that cannot finish by then (the
remote stopped reading) fails the connection. The writer task's own writes have the same
deadline, so a remote that sends requests and never reads their replies cannot hold a
connection, its handlers and their queued replies forever.
"""

from __future__ import annotations

import trio

from ..errors import ConnectionLostError
from ..wire import Buffer

__all__ = ["MessageWriter"]

_JOIN_LIMIT = 256 * 1024  # buffers smaller than this are joined with their neighbours
DIRECT_LIMIT = 64 * 1024  # messages up to this size may be written by their sender


class MessageWriter:
    """Queue + writer task for one stream."""

    def __init__(
        self, stream: trio.abc.SendStream, high_water: int, stall_timeout: float = 60.0
    ) -> None:
        self._stream = stream
        self._high_water = high_water
        self._stall_timeout = stall_timeout
        self._writing = False  # a sender is writing directly
        self._queue: list[Buffer] = []
        self.queued_bytes = 0
        self._enqueued = 0  # messages ever queued
        self._written = 0  # messages ever written
        self._has_work = trio.lowlevel.ParkingLot()
        self._progress = trio.lowlevel.ParkingLot()
        self._failure: BaseException | None = None

    @property
    def failed(self) -> bool:
        """True once a write failed or `fail` was called: nothing more will be written."""
        return self._failure is not None

    def fail(self, reason: BaseException) -> None:
        """No more writes: queued and future messages fail with ConnectionLostError."""
        if self._failure is None:
            self._failure = reason
        self._queue.clear()
        self._has_work.unpark_all()
        self._progress.unpark_all()

    def _check(self) -> None:
        if self._failure is not None:
            raise ConnectionLostError("the connection is closed") from self._failure

    def enqueue(self, buffers: list[Buffer]) -> int:
        """Queue one message; returns its ticket for `wait_written`. Never blocks."""
        self._check()
        self._queue.extend(buffers)
        self.queued_bytes += sum(map(len, buffers))
        self._enqueued += 1
        self._has_work.unpark_all()
        return self._enqueued

    async def send(self, buffers: list[Buffer]) -> None:
        """Send one message: directly if the writer is idle and the message small, else
        queue it and wait for it to be written if the queue is over high water."""
        if not self._queue and not self._writing and self._failure is None:
            size = sum(map(len, buffers))
            if size <= DIRECT_LIMIT:
                await self._send_direct(buffers[0] if len(buffers) == 1 else b"".join(buffers))
                return
        ticket = self.enqueue(buffers)
        if self.queued_bytes > self._high_water:
            await self.wait_written(ticket)
        else:
            await trio.lowlevel.checkpoint()

    async def _send_direct(self, data: Buffer) -> None:
        self._writing = True
        try:
            with trio.CancelScope(shield=True) as scope:
                scope.deadline = trio.current_time() + self._stall_timeout
                await self._stream.send_all(data)
            if scope.cancelled_caught:
                raise trio.BrokenResourceError("write stalled: the remote does not read")
        except BaseException as error:
            self.fail(error)  # the writer task sees it and closes the connection
            raise ConnectionLostError("the connection failed while sending") from error
        finally:
            self._writing = False
            if self._queue:
                self._has_work.unpark_all()

    async def written_all(self) -> None:
        """Until every message queued so far is written."""
        await self.wait_written(self._enqueued)

    async def wait_written(self, ticket: int) -> None:
        while self._written < ticket:
            self._check()
            await self._progress.park()

    async def wait_below_high_water(self) -> None:
        while self.queued_bytes > self._high_water:
            self._check()
            await self._progress.park()

    async def flush(self) -> None:
        """Write what is queued now from the calling task (the reader, after dispatching a
        chunk: its replies go out in one write) if the writer is idle and it is small."""
        if self._queue and not self._writing and self.queued_bytes <= DIRECT_LIMIT:
            batch, self._queue = self._queue, []
            upto, size = self._enqueued, self.queued_bytes
            await self._send_direct(batch[0] if len(batch) == 1 else b"".join(batch))
            self.queued_bytes -= size
            self._written = upto
            self._progress.unpark_all()

    async def run(self) -> None:
        """Write until cancelled; transport errors propagate (the connection then closes)."""
        while True:
            while not self._queue or self._writing:
                self._check()
                await self._has_work.park()
            self._writing = True
            try:
                await self._write_batch()
            finally:
                self._writing = False

    async def _write(self, data: Buffer) -> None:
        with trio.move_on_after(self._stall_timeout) as scope:
            await self._stream.send_all(data)
        if scope.cancelled_caught:
            raise trio.BrokenResourceError("write stalled: the remote does not read")

    async def _write_batch(self) -> None:
        write = self._write
        batch, self._queue = self._queue, []
        upto = self._enqueued
        pending: list[Buffer] = []
        pending_size = 0
        for buffer in batch:
            size = len(buffer)
            if size < _JOIN_LIMIT:
                pending.append(buffer)
                pending_size += size
                if pending_size < _JOIN_LIMIT:
                    continue
            if pending:
                await write(pending[0] if len(pending) == 1 else b"".join(pending))
                self.queued_bytes -= pending_size
                pending, pending_size = [], 0
            if size >= _JOIN_LIMIT:
                await write(buffer)
                self.queued_bytes -= size
        if pending:
            await write(pending[0] if len(pending) == 1 else b"".join(pending))
            self.queued_bytes -= pending_size
        self._written = upto
        self._progress.unpark_all()
