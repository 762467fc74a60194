"""Circuits: a peer that cannot be dialled (behind NAT with no port forwarded) serves through
a relay that can.

A node that offers circuits (`CircuitRelay`, `swarm dht|peer --circuit-relay`) lets such a
peer keep one stream open to it (`circuit.listen`); the peer's address then names the relay
and itself, `HOST:PORT/RELAY_ID/circuit/PEER_ID`. Whoever dials that address opens
`circuit.connect` on the relay, naming the peer; the relay hands the peer a one-time token
on its listening stream (and the host the dialer calls from, which the peer's handlers see
as `CallContext.circuit_host`), the peer opens `circuit.accept` with it, and the relay
copies the packets of one stream into the other, both ways (`PacketStream` makes each
stream a byte stream). Over that pipe the dialer and the peer run the usual Noise handshake
and RPC, end to end: the relay carries ciphertext, and the dialer checks that the key that
answers is the peer id it dialled, as over TCP.

The relay bounds what it holds: peers listening, circuits open, the time a token waits for
its peer, and, if asked, the bytes a second it copies, all circuits together and those of
one listening peer (`Pace`); it tells whoever asks how loaded it is (`circuit.load`,
`ask_relay_load`: the monitor shows it).

A peer that loses its relay listens there again (`serve_via`), so its address stays the
same; one that stays lost for a while takes another relay, if it is given a way to find
one, and says where it is now. A peer that leaves its relay (others can dial it now) stops
listening there at once and lets each circuit open through it run until no call runs on it
(for at most `drain_timeout`), so that leaving cuts no session.

A dialer that others can dial (it listens, at an address of its own) says where, and the
relay passes it on with the token (`dial_back`): the peer then also dials it back there, at
the host the relay saw it call from only, and once that direct connection is up, both sides
make their new calls over it and the circuit's connection closes with its last call
(`ConnectionPool`). A peer behind NAT thus talks directly with every peer that can be
dialled, and through its relay only with those that cannot (clients, other peers behind NAT).
An address a dial back failed at is not dialled again for `FailedDialBacks.forget_after`
seconds: a dialer that cannot be dialled says the same address on every circuit it opens.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import asdict, dataclass, field, fields
from functools import partial
from typing import TYPE_CHECKING, Any, cast

import trio

from security import InvalidPeerIdError, PeerId

from ..address import PeerAddress
from ..errors import AddressError, HandlerError, ProtocolError, RoutingError, StreamClosedError
from .packet import CallContext, Packet
from .reach import not_the_caller
from .stream import BidiStream

if TYPE_CHECKING:
    from .host import RPCHost

__all__ = [
    "RELAY_LOAD_FIELDS",
    "CircuitConfig",
    "CircuitRelay",
    "FailedDialBacks",
    "PacketStream",
    "RelayLoad",
    "ask_relay_load",
    "open_circuit",
    "serve_via",
]

logger = logging.getLogger(__name__)

LISTEN = "circuit.listen"
CONNECT = "circuit.connect"
ACCEPT = "circuit.accept"
LOAD = "circuit.load"
CHUNK = 1 << 20  # bytes per packet of a circuit at most: a SecureStream's whole batch
TOKEN_BYTES = 16
MAX_HOST = 255  # characters of a dialer's host, as a relay says it
MAX_ADDRESS = 512  # characters of the address a dialer may be dialled back at
DIAL_BACK = "dial_back"  # where a dialer says it may be dialled back


@dataclass(frozen=True)
class CircuitConfig:
    max_listeners: int = 64  # peers that listen through this relay
    max_per_host: int = 8  # of them, from one host (one address fills no relay)
    max_circuits: int = 256  # circuits open through it at once
    accept_timeout: float = 10.0  # seconds a dialer waits for the peer to take its circuit
    relisten_after: float = 1.0  # seconds before a peer that lost its relay listens again
    move_after: float = 5.0  # seconds without its relay before a peer looks for another
    max_bytes_per_second: float | None = None  # what the relay copies, all circuits together
    max_peer_bytes_per_second: float | None = None  # of them, the circuits of one peer
    drain_timeout: float = 300.0  # seconds the circuits of a relay a peer leaves may run on

    def __post_init__(self) -> None:
        for rate in (self.max_bytes_per_second, self.max_peer_bytes_per_second):
            if rate is not None and not rate > 0:
                raise ValueError("a relay's rates must be > 0")


class PacketStream(trio.abc.Stream):
    """A byte stream over a `BidiStream`: each write goes as packets of at most `CHUNK`
    bytes; the remote's end of the stream is the end of the bytes. Errors of the stream
    below are `trio.BrokenResourceError`s, as a broken socket's."""

    def __init__(self, stream: BidiStream, remote_host: str = "", circuit_host: str = "") -> None:
        self.stream = stream
        self.remote_host = remote_host  # the caller's host, as the RPC layer records it ("":
        # unknown, as for a circuit the peer took)
        self.circuit_host = circuit_host  # for a circuit the peer took: its dialer's, as the
        # relay says
        self._pending = memoryview(b"")  # received, not yet read

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data)
        copy = not isinstance(data, bytes)  # the caller may change it once this returns
        try:
            for start in range(0, len(view), CHUNK):
                piece = view[start : start + CHUNK]
                await self.stream.send(Packet(body=bytes(piece) if copy else piece))
        except RoutingError as error:
            raise trio.BrokenResourceError(f"the circuit broke: {error}") from error
        await trio.lowlevel.checkpoint()

    async def wait_send_all_might_not_block(self) -> None:
        await trio.lowlevel.checkpoint()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        while not self._pending:
            try:
                self._pending = memoryview(bytes((await self.stream.receive()).body))
            except StreamClosedError:
                return b""
            except RoutingError as error:
                raise trio.BrokenResourceError(f"the circuit broke: {error}") from error
        size = len(self._pending) if max_bytes is None else max_bytes
        data, self._pending = self._pending[:size], self._pending[size:]
        return bytes(data)

    async def aclose(self) -> None:
        await self.stream.aclose()


@dataclass
class Pace:
    """At most `rate` bytes a second, in bursts of at most a second's worth: `take` waits
    until the bytes taken so far are paid for."""

    rate: float
    _paid_until: float = -math.inf  # when the bytes taken so far are paid for

    async def take(self, size: int) -> None:
        now = trio.current_time()
        self._paid_until = max(self._paid_until, now - 1.0) + size / self.rate
        await trio.sleep_until(self._paid_until)  # at once (a checkpoint) if already paid


@dataclass(frozen=True)
class RelayLoad:
    """A relay at one moment, for its operator's metrics and the monitor."""

    listeners: int  # peers listening through it now
    open: int  # circuits open now
    circuits: int  # circuits opened since it started
    relayed_bytes: int  # bytes it copied since it started, both ways
    max_listeners: int  # its bounds (`CircuitConfig`)
    max_circuits: int

    @classmethod
    def from_fields(cls, answer: Mapping[str, Any]) -> RelayLoad:
        """From a `circuit.load` answer; ProtocolError unless every count is there."""
        counts = {name: answer.get(name) for name in RELAY_LOAD_FIELDS}
        if not all(type(count) is int and count >= 0 for count in counts.values()):
            raise ProtocolError("a relay's load must give every count as an integer >= 0")
        return cls(**cast(dict[str, int], counts))


RELAY_LOAD_FIELDS = tuple(field.name for field in fields(RelayLoad))  # as `circuit.load` says


@dataclass
class _Waiting:
    """A dialer's circuit, until its peer takes it: the peer's accepting stream goes in."""

    peer: PeerId
    accepted: trio.MemorySendChannel[tuple[BidiStream, trio.Event]]


@dataclass
class CircuitRelay:
    """The relay's three handlers (see the module doc); `register` adds them to its host."""

    config: CircuitConfig = field(default_factory=CircuitConfig)
    _listeners: dict[PeerId, BidiStream] = field(default_factory=dict)
    _hosts: dict[PeerId, str] = field(default_factory=dict)  # where each listener calls from
    _waiting: dict[bytes, _Waiting] = field(default_factory=dict)
    _open: int = 0  # circuits
    _circuits: int = 0  # opened, in all
    _relayed: int = 0  # bytes copied, in all
    _pace: Pace | None = None  # of the copies, with `max_bytes_per_second`
    _peer_paces: dict[PeerId, Pace] = field(default_factory=dict)  # of each listener's

    def __post_init__(self) -> None:
        rate = self.config.max_bytes_per_second
        self._pace = None if rate is None else Pace(rate)

    def register(self, rpc: RPCHost) -> None:
        rpc.add_stream(LISTEN, self._listen)
        rpc.add_stream(CONNECT, self._connect)
        rpc.add_stream(ACCEPT, self._accept)
        rpc.add_unary(LOAD, self._load)

    @property
    def listening(self) -> frozenset[PeerId]:
        return frozenset(self._listeners)

    def load(self) -> RelayLoad:
        config = self.config
        return RelayLoad(len(self._listeners), self._open, self._circuits, self._relayed,
                         config.max_listeners, config.max_circuits)  # fmt: skip

    async def _load(self, request: Packet, context: CallContext) -> Packet:
        return Packet(asdict(self.load()))

    async def _listen(self, stream: BidiStream, context: CallContext) -> None:
        peer, host = context.peer_id, context.remote_host
        previous = self._listeners.get(peer)
        if previous is None:
            if len(self._listeners) >= self.config.max_listeners:
                raise HandlerError("busy", "this relay has as many listening peers as it takes")
            if sum(other == host for other in self._hosts.values()) >= self.config.max_per_host:
                raise HandlerError("busy", f"this relay has as many peers from {host} as it takes")
        else:  # the peer listens again: its new stream wins
            previous.close()
        self._listeners[peer], self._hosts[peer] = stream, host
        peer_rate = self.config.max_peer_bytes_per_second
        if peer_rate is not None:
            self._peer_paces.setdefault(peer, Pace(peer_rate))
        logger.info("%s listens through this relay", peer.short())
        try:
            await stream.send(Packet({"listening": True}))
            async for _ in stream:  # it sends nothing: wait for its end
                pass
        except RoutingError as error:  # its connection or stream broke: it listens no more
            logger.debug("%s's listening stream broke: %s", peer.short(), error)
        finally:
            if self._listeners.get(peer) is stream:
                del self._listeners[peer], self._hosts[peer]
                self._peer_paces.pop(peer, None)
                logger.info("%s stopped listening through this relay", peer.short())

    async def _connect(self, stream: BidiStream, context: CallContext) -> None:
        wanted = await _first(stream)
        target = _peer_id(wanted.get("peer"))
        listener = self._listeners.get(target)
        if listener is None:
            raise HandlerError("not_here", f"{target} does not listen through this relay")
        if self._open >= self.config.max_circuits:
            raise HandlerError("busy", "this relay has as many circuits open as it takes")
        token = os.urandom(TOKEN_BYTES)
        send, receive = trio.open_memory_channel[tuple[BidiStream, trio.Event]](1)
        self._waiting[token] = _Waiting(target, send)
        self._open += 1
        done: trio.Event | None = None
        try:
            notice = {"incoming": token, "from": context.remote_host}
            back = wanted.get(DIAL_BACK)
            if isinstance(back, str) and len(back) <= MAX_ADDRESS:
                notice[DIAL_BACK] = back
            await listener.send(Packet(notice))
            with trio.move_on_after(self.config.accept_timeout):
                accepted, done = await receive.receive()
            if done is None:
                raise HandlerError("unanswered", f"{target} did not take the circuit")
            await stream.send(Packet({"connected": True}))
            self._circuits += 1
            paces = [p for p in (self._pace, self._peer_paces.get(target)) if p is not None]
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._copy, stream, accepted, paces, nursery.cancel_scope)
                nursery.start_soon(self._copy, accepted, stream, paces, nursery.cancel_scope)
        except HandlerError:
            raise
        except RoutingError as error:  # the listener went away, or one side broke
            raise HandlerError("broken", f"the circuit to {target} broke: {error}") from None
        finally:
            self._waiting.pop(token, None)
            self._open -= 1
            if done is not None:
                done.set()

    async def _accept(self, stream: BidiStream, context: CallContext) -> None:
        token = (await _first(stream)).get("token")
        waiting = self._waiting.pop(token, None) if isinstance(token, bytes) else None
        if waiting is None or waiting.peer != context.peer_id:
            raise HandlerError("bad_request", "no circuit waits for you with that token")
        done = trio.Event()
        waiting.accepted.send_nowait((stream, done))
        await done.wait()  # the dialer's handler copies; this stream lives until it ends

    async def _copy(
        self, source: BidiStream, sink: BidiStream, paces: list[Pace], both: trio.CancelScope
    ) -> None:
        """Copy packets, each once `paces` allow it, until the source ends, then end the
        sink; a failure ends both ways."""
        try:
            async for packet in source:
                body = bytes(packet.body)
                for pace in paces:
                    await pace.take(len(body))
                await sink.send(Packet(body=body))
                self._relayed += len(body)
            await sink.end()
        except RoutingError:
            both.cancel()


async def _first(stream: BidiStream) -> Mapping[str, Any]:
    """The header of a stream's first packet, which says what it wants."""
    try:
        return (await stream.receive()).header
    except RoutingError:  # ended, or broken, before it said
        raise HandlerError("bad_request", "a circuit stream begins with what it wants") from None


def _peer_id(text: object) -> PeerId:
    try:
        return PeerId.from_base58(str(text))
    except (InvalidPeerIdError, ValueError):
        raise HandlerError("bad_request", "peer: a peer id in base58") from None


async def ask_relay_load(
    rpc: RPCHost,
    relay: PeerAddress,
    timeout: float,  # noqa: ASYNC109
) -> RelayLoad:
    """How loaded `relay` is now (`circuit.load`); RoutingError if it does not answer, or
    answers with an error (a node that relays nothing) or something else (ProtocolError)."""
    reply = await rpc.call(relay, LOAD, Packet({}), timeout=timeout)
    return RelayLoad.from_fields(reply.header)


async def open_circuit(rpc: RPCHost, address: PeerAddress, stream: BidiStream) -> PacketStream:
    """Ask the relay, on its `circuit.connect` stream, for the peer `address` names, saying
    where we may be dialled back if we listen where others can dial us; the bytes of the
    returned stream reach that peer. Raises the relay's RemoteError."""
    request: dict[str, str] = {"peer": address.peer_id.to_base58()}
    if (ours := rpc.direct_address) is not None:
        request[DIAL_BACK] = str(ours)
    await stream.send(Packet(request))
    await stream.receive()  # {"connected": True}, once the peer took it
    return PacketStream(stream, address.host)


Move = Callable[[PeerAddress], Awaitable[PeerAddress | None]]  # a lost relay -> another


async def serve_via(
    rpc: RPCHost,
    relay: PeerAddress,
    config: CircuitConfig | None = None,
    *,
    another: Move | None = None,
    moved: Callable[[PeerAddress], None] | None = None,
    leave: trio.Event | None = None,
    task_status: trio.TaskStatus[PeerAddress] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Listen through `relay` until cancelled, or until `leave` is set and the circuits
    open then have ended: every circuit it hands us is served as an inbound connection of
    `rpc`. Started value: our circuit address, once the relay took us (a relay that refuses
    us then raises its error). A relay lost later is listened at again; one lost for
    `move_after` seconds is traded for `another(relay)`, if that finds one, and `moved` is
    told our new address. Once `leave` is set, we listen no more (nor set `rpc`'s address),
    and each open circuit ends with its last call, or is cut after `drain_timeout`."""
    config = config or CircuitConfig()
    leave = trio.Event() if leave is None else leave
    listening = trio.CancelScope()
    try:
        async with trio.open_nursery() as circuits:
            listen = partial(_listen, rpc, config, circuits, listening, leave, another,
                             moved or _ignore)  # fmt: skip
            task_status.started(await circuits.start(listen, relay))
            await leave.wait()
            listening.cancel()
            logger.info("left the relay %s: its circuits end with their last calls", relay)
            circuits.cancel_scope.deadline = trio.current_time() + config.drain_timeout
    except BaseExceptionGroup as group:  # the relay refused us at first: its error alone
        if len(group.exceptions) != 1:
            raise
        raise group.exceptions[0] from None


def _ignore(address: PeerAddress) -> None:
    pass


async def _listen(
    rpc: RPCHost,
    config: CircuitConfig,
    circuits: trio.Nursery,
    listening: trio.CancelScope,
    leave: trio.Event,
    another: Move | None,
    moved: Callable[[PeerAddress], None],
    relay: PeerAddress,
    *,
    task_status: trio.TaskStatus[PeerAddress],
) -> None:
    """Keep a listening stream open to a relay, taking each circuit it announces in
    `circuits` (see `serve_via`), until `listening` is cancelled once `leave` is set (from
    then on, `rpc`'s address is not set again). Started, with our address, once the first
    relay took us."""
    listened = False
    lost_since: float | None = None
    with listening:
        while True:
            try:
                async with rpc.open_stream(relay, LISTEN) as stream:
                    await stream.receive()  # {"listening": True}
                    lost_since = None
                    if not listened:
                        task_status.started(_listening_at(rpc, relay))
                        listened = True
                    async for notice in stream:
                        circuits.start_soon(_take, rpc, relay, leave, notice.header)
            except RoutingError as error:
                if not listened:
                    raise
                logger.warning("lost the relay %s (%s): listening again", relay, error)
            lost_since = trio.current_time() if lost_since is None else lost_since
            if another is not None and trio.current_time() - lost_since >= config.move_after:
                found = await another(relay)
                if found is not None and not leave.is_set():
                    relay, lost_since = found, None
                    moved(_listening_at(rpc, relay))
                    continue
            await trio.sleep(config.relisten_after)


def _listening_at(rpc: RPCHost, relay: PeerAddress) -> PeerAddress:
    """Our circuit address through `relay`, which `rpc` now answers to."""
    address = PeerAddress(relay.host, relay.port, rpc.peer_id, relay.peer_id)
    rpc.set_address(address)
    logger.info("listening through the relay %s at %s", relay, address)
    return address


def dialer_host(notice: Mapping[str, Any]) -> str:
    """The host a relay's notice says its circuit's dialer calls from ("" if it does not
    say, or says something else than a host)."""
    host = notice.get("from")
    return host if isinstance(host, str) and len(host) <= MAX_HOST else ""


@dataclass
class FailedDialBacks:
    """The addresses dial backs failed at lately (at most `most`, the oldest forgotten
    first), each not dialled again for `forget_after` seconds."""

    forget_after: float = 600.0
    most: int = 1024
    clock: Callable[[], float] = time.monotonic
    _failed: dict[PeerAddress, float] = field(default_factory=dict)  # oldest first

    def lately(self, address: PeerAddress) -> float | None:
        """How many seconds ago a dial back failed at `address`, if it did lately."""
        failed = self._failed.get(address)
        if failed is None:
            return None
        ago = self.clock() - failed
        return ago if ago < self.forget_after else None

    def add(self, address: PeerAddress) -> None:
        self._failed.pop(address, None)
        self._failed[address] = self.clock()
        while len(self._failed) > self.most:
            del self._failed[next(iter(self._failed))]


def dial_back_address(said: object, peer: PeerId) -> PeerAddress | None:
    """The address a circuit's dialer said it may be dialled back at, if it is a direct
    address of `peer`, whom the circuit's handshake proved (None otherwise)."""
    try:
        address = PeerAddress.parse(said) if isinstance(said, str) else None
    except AddressError:
        return None
    if address is None or address.relay is not None or address.peer_id != peer:
        return None
    return address


async def dial_back(rpc: RPCHost, address: PeerAddress, host: str, failed: FailedDialBacks) -> None:
    """Dial a circuit's dialer back at `address` (`dial_back_address`), if it names `host`,
    where its relay saw it call from (so that nobody can have us dial a third party), and
    no dial back failed there lately (`failed`, which learns of this one if it fails).
    Once connected, the pool drains the circuit's connection."""
    if (ago := failed.lately(address)) is not None:
        logger.debug("not dialling %s back: that failed %.0f s ago", address, ago)
        return
    if reason := await not_the_caller(address, host):
        logger.debug("not dialling %s back: %s", address, reason)
        return
    try:
        await rpc.connect_directly(address)
    except RoutingError as error:
        logger.debug("could not dial %s back: %s", address, error)
        failed.add(address)
        return
    logger.debug("dialled %s back: talking directly", address.peer_id.short())


async def _take(
    rpc: RPCHost, relay: PeerAddress, leave: trio.Event, notice: Mapping[str, Any]
) -> None:
    """Take the circuit a relay's notice announces and serve it as an inbound connection,
    from no host we know but where the relay says its dialer is, until it ends (once we
    leave the relay, until no call runs on it)."""
    try:
        async with rpc.open_stream(relay, ACCEPT) as accepting:
            await accepting.send(Packet({"token": notice.get("incoming")}))
            stream = PacketStream(accepting, circuit_host=dialer_host(notice))
            await rpc.serve_inbound(stream, drain_when=leave, dial_back=notice.get(DIAL_BACK))
    except RoutingError as error:
        logger.debug("a circuit through %s failed: %s", relay, error)
