"""An in-process network for tests: the `Transport` interface without sockets or threads.

Each simulated machine gets `network.transport(host)`; listeners are keyed by (host, port).
A connection is two one-way pipes of byte chunks, each stamped with the time it may be
delivered (send time + the link's one-way latency, never before the previous chunk), so
latency costs no task and, under trio's autojump clock, no wall time. Hundreds of nodes fit
in one process.

Faults, per link (a pair of hosts, either order) or global:

- latency: `set_latency(seconds)` one way; connecting takes one round trip.
- drops: a byte stream cannot lose bytes and go on, so a drop is modelled as what TCP shows
  an application when packets are lost for good: with `set_drop(p)`, each connection attempt
  goes unanswered with probability p (it hangs until the caller's timeout), and each
  `send_all` on an established link cuts the connection with probability p (both ends then
  get `trio.BrokenResourceError`). Draws come from `random.Random(seed)`: reproducible.
- partitions: `partition(a_hosts, b_hosts)` makes connection attempts between the sets hang
  (or be refused with `refuse=True`); bytes already in flight or sent later on established
  connections across the partition are held until `heal()` (the connection stalls, as TCP
  retransmits), or the connections are cut at once with `cut=True`.
- `cut(a, b=None)` breaks established connections of host `a` (with `b`, or with anyone).
- A pipe buffers at most `buffer_size` bytes; a sender beyond that blocks (backpressure).
"""

from __future__ import annotations

import itertools
import operator
import random
from collections import deque
from collections.abc import Iterable

import trio

from .transport import StreamHandler

__all__ = ["MemoryNetwork", "MemoryStream", "MemoryTransport"]

_Link = frozenset[str]


def _link(a: str, b: str) -> _Link:
    return frozenset((a, b))


class _Pipe:
    """One direction of a connection: chunks with delivery times, bounded."""

    def __init__(self, network: MemoryNetwork, source: str, target: str) -> None:
        self.network = network
        self.source = source
        self.target = target
        self.chunks: deque[tuple[float, bytes]] = deque()
        self.buffered = 0
        self.last_time = 0.0
        self.eof = False  # the sender closed: EOF after the buffered bytes
        self.receiver_closed = False
        self.broken = False
        self.readable = trio.lowlevel.ParkingLot()
        self.writable = trio.lowlevel.ParkingLot()

    def wake(self) -> None:
        self.readable.unpark_all()
        self.writable.unpark_all()

    async def send(self, data: bytes) -> None:
        network = self.network
        while True:
            if self.eof:
                raise trio.ClosedResourceError("this stream was closed")
            if self.broken or self.receiver_closed:
                raise trio.BrokenResourceError("connection reset by peer")
            if self.buffered < network.buffer_size:
                break
            await self.writable.park()
        if network.draw_drop(self.source, self.target):
            network.break_connection(self)
            raise trio.BrokenResourceError("connection lost (simulated drop)")
        when = max(trio.current_time() + network.latency(self.source, self.target), self.last_time)
        self.last_time = when
        self.chunks.append((when, data))
        self.buffered += len(data)
        self.readable.unpark_all()
        await trio.lowlevel.checkpoint()

    async def receive(self, max_bytes: int) -> bytes:
        network = self.network
        while True:
            if self.receiver_closed:
                raise trio.ClosedResourceError("this stream was closed")
            if self.broken:
                raise trio.BrokenResourceError("connection reset by peer")
            if not self.chunks:
                if self.eof:
                    await trio.lowlevel.checkpoint()
                    return b""
                await self.readable.park()
                continue
            if network.partitioned(self.source, self.target):
                await self.readable.park()  # `heal()` wakes every pipe
                continue
            when, data = self.chunks[0]
            if when > trio.current_time():
                await trio.sleep_until(when)
                continue
            if len(data) <= max_bytes:
                self.chunks.popleft()
            else:
                self.chunks[0] = (when, data[max_bytes:])
                data = data[:max_bytes]
            self.buffered -= len(data)
            self.writable.unpark_all()
            await trio.lowlevel.checkpoint()
            return data


class MemoryStream(trio.abc.Stream):
    """One end of an in-memory connection."""

    def __init__(self, outgoing: _Pipe, incoming: _Pipe) -> None:
        self._out = outgoing
        self._in = incoming
        self._closed = False
        self._sending = False
        self._receiving = False
        self.local_host = outgoing.source
        self.remote_host = outgoing.target

    def _check_open(self) -> None:
        if self._closed:
            raise trio.ClosedResourceError("this stream was closed")

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if self._sending:
            raise trio.BusyResourceError("another task is sending on this stream")
        self._check_open()
        self._sending = True
        try:
            if data:
                await self._out.send(bytes(data))
            else:
                await trio.lowlevel.checkpoint()
        finally:
            self._sending = False
        self._check_open()

    async def wait_send_all_might_not_block(self) -> None:
        if self._sending:
            raise trio.BusyResourceError("another task is sending on this stream")
        self._check_open()
        self._sending = True
        try:
            await trio.lowlevel.checkpoint()
        finally:
            self._sending = False

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if self._receiving:
            raise trio.BusyResourceError("another task is receiving on this stream")
        self._check_open()
        if max_bytes is not None:
            max_bytes = operator.index(max_bytes)
            if max_bytes < 1:
                raise ValueError("max_bytes must be >= 1")
        self._receiving = True
        try:
            data = await self._in.receive(max_bytes or 65536)
        finally:
            self._receiving = False
        self._check_open()
        return data

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            self._out.eof = True
            self._in.receiver_closed = True
            self._out.wake()
            self._in.wake()
            self._out.network.forget(self._out)
        await trio.lowlevel.checkpoint()


class MemoryTransport:
    """The `Transport` of one simulated host."""

    def __init__(self, network: MemoryNetwork, host: str) -> None:
        self.network = network
        self.host = host

    async def connect(self, host: str, port: int) -> trio.abc.Stream:
        return await self.network.connect(self.host, host, port)

    async def serve(
        self,
        host: str,
        port: int,
        handler: StreamHandler,
        *,
        task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        if host not in (self.host, "0.0.0.0", "::"):
            raise OSError(f"cannot bind {host}: this transport is host {self.host}")
        network = self.network
        port = port or network.ephemeral_port(self.host)
        key = (self.host, port)
        if key in network.listeners:
            raise OSError(f"address in use: {self.host}:{port}")
        try:
            async with trio.open_nursery() as nursery:
                network.listeners[key] = (nursery, handler)
                task_status.started((self.host, port))
                await trio.sleep_forever()
        finally:
            network.listeners.pop(key, None)


async def _run_handler(handler: StreamHandler, stream: MemoryStream) -> None:
    async with stream:
        await handler(stream)


class MemoryNetwork:
    """Hosts, listeners and connections in one process, with faults (see the module doc)."""

    def __init__(
        self, *, latency: float = 0.0, seed: int | None = 0, buffer_size: int = 1 << 20
    ) -> None:
        self.buffer_size = buffer_size
        self.listeners: dict[tuple[str, int], tuple[trio.Nursery, StreamHandler]] = {}
        self._latency = latency
        self._link_latency: dict[_Link, float] = {}
        self._drop = 0.0
        self._link_drop: dict[_Link, float] = {}
        self._partitions: list[tuple[frozenset[str], frozenset[str], bool]] = []
        self._rng = random.Random(seed)
        self._ports = itertools.count(40000)
        self._pipes: dict[_Pipe, _Pipe] = {}  # each open connection's two pipes, both ways

    def transport(self, host: str) -> MemoryTransport:
        return MemoryTransport(self, host)

    # -- configuration -----------------------------------------------------------------------

    def set_latency(self, seconds: float, a: str | None = None, b: str | None = None) -> None:
        """One-way latency, global (no hosts) or for the link between hosts a and b."""
        if seconds < 0:
            raise ValueError("latency must be >= 0")
        if a is None or b is None:
            self._latency = seconds
        else:
            self._link_latency[_link(a, b)] = seconds

    def set_drop(self, probability: float, a: str | None = None, b: str | None = None) -> None:
        """Drop probability per connection attempt and per send, global or per link."""
        if not 0.0 <= probability <= 1.0:
            raise ValueError("probability must be in [0, 1]")
        if a is None or b is None:
            self._drop = probability
        else:
            self._link_drop[_link(a, b)] = probability

    def partition(
        self,
        a_hosts: Iterable[str],
        b_hosts: Iterable[str],
        *,
        refuse: bool = False,
        cut: bool = False,
    ) -> None:
        """Separate two sets of hosts until `heal()`."""
        a_set, b_set = frozenset(a_hosts), frozenset(b_hosts)
        self._partitions.append((a_set, b_set, refuse))
        if cut:
            for pipe in list(self._pipes):
                if self.partitioned(pipe.source, pipe.target):
                    self.break_connection(pipe)

    def heal(self) -> None:
        """Remove every partition; stalled connections resume."""
        self._partitions.clear()
        for pipe in self._pipes:
            pipe.wake()

    def cut(self, a: str, b: str | None = None) -> int:
        """Break established connections of host a (with b only, if given); returns how many."""
        count = 0
        for pipe in list(self._pipes):
            if pipe in self._pipes and (
                (pipe.source == a and b in (None, pipe.target))
                or (pipe.target == a and b in (None, pipe.source))
            ):
                self.break_connection(pipe)
                count += 1
        return count

    # -- queries used by pipes and tests ----------------------------------------------------

    def latency(self, a: str, b: str) -> float:
        return self._link_latency.get(_link(a, b), self._latency)

    def draw_drop(self, a: str, b: str) -> bool:
        probability = self._link_drop.get(_link(a, b), self._drop)
        return probability > 0.0 and self._rng.random() < probability

    def partitioned(self, a: str, b: str) -> bool:
        return any(self._separates(entry, a, b) for entry in self._partitions)

    @staticmethod
    def _separates(entry: tuple[frozenset[str], frozenset[str], bool], a: str, b: str) -> bool:
        a_set, b_set, _ = entry
        return (a in a_set and b in b_set) or (a in b_set and b in a_set)

    @property
    def open_connections(self) -> int:
        """Connections with at least one end still open."""
        return len(self._pipes) // 2

    def ephemeral_port(self, host: str) -> int:
        while True:
            port = next(self._ports)
            if (host, port) not in self.listeners:
                return port

    # -- connections ------------------------------------------------------------------------

    async def connect(self, source: str, host: str, port: int) -> MemoryStream:
        refused = any(
            self._separates(entry, source, host) and entry[2] for entry in self._partitions
        )
        if refused:
            await trio.lowlevel.checkpoint()
            raise ConnectionRefusedError(f"{host}:{port} refused (partition)")
        if self.partitioned(source, host) or self.draw_drop(source, host):
            await trio.sleep_forever()  # unanswered: the caller's timeout ends it
        rtt = 2 * self.latency(source, host)
        if rtt:
            await trio.sleep(rtt)
        else:
            await trio.lowlevel.checkpoint()
        listener = self.listeners.get((host, port))
        if listener is None:
            raise ConnectionRefusedError(f"nothing listens on {host}:{port}")
        nursery, handler = listener
        outgoing, incoming = _Pipe(self, source, host), _Pipe(self, host, source)
        self._pipes[outgoing] = incoming
        self._pipes[incoming] = outgoing
        try:
            nursery.start_soon(_run_handler, handler, MemoryStream(incoming, outgoing))
        except RuntimeError:  # the listener is shutting down: its nursery takes no more
            self._pipes.pop(outgoing, None)
            self._pipes.pop(incoming, None)
            raise ConnectionRefusedError(f"{host}:{port} is closing") from None
        return MemoryStream(outgoing, incoming)

    def break_connection(self, pipe: _Pipe) -> None:
        other = self._pipes.get(pipe)
        for each in (pipe, other):
            if each is not None:
                each.broken = True
                each.wake()
                self._pipes.pop(each, None)

    def forget(self, pipe: _Pipe) -> None:
        """Called when an end closes: drop the connection once both ends are closed."""
        other = self._pipes.get(pipe)
        if other is not None and other.eof and pipe.eof:
            self._pipes.pop(pipe, None)
            self._pipes.pop(other, None)
