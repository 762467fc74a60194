"""Circuits over TCP on 127.0.0.1: a peer that does not listen serves through a relay, end to
end encrypted; the relay's limits, a relay that lies, and a relay lost and found again."""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, replace
from functools import partial

import pytest
import trio
import trio.testing

from routing.address import PeerAddress
from routing.errors import (
    ConnectionLostError,
    PeerUnreachableError,
    ProtocolError,
    RemoteError,
    RoutingError,
)
from routing.memory_network import MemoryNetwork
from routing.public_address import PublicAddress
from routing.rpc import (
    BidiStream,
    CallContext,
    CircuitConfig,
    CircuitRelay,
    Packet,
    RelayLoad,
    RPCHost,
    ask_relay_load,
    serve_via,
)
from routing.rpc.circuit import (
    ACCEPT,
    CONNECT,
    LOAD,
    FailedDialBacks,
    PacketStream,
    dial_back,
    dial_back_address,
    dialer_host,
)
from routing.transport import TcpTransport
from security import Identity, PeerId
from tests.support.ports import free_port

from .helpers import double, echo, wait_until

LIMIT = 20  # seconds: every test here is bounded in real time


@dataclass
class Swarm:
    relay: RPCHost
    circuits: CircuitRelay
    client: RPCHost
    nursery: trio.Nursery

    async def peer(
        self,
        config: CircuitConfig | None = None,
        nursery: trio.Nursery | None = None,
        identity: Identity | None = None,
    ) -> tuple[RPCHost, PeerAddress]:
        """A host that listens nowhere but through the relay (running in `nursery`, the
        swarm's by default); it answers "echo", "who" and "double"."""
        nursery = nursery or self.nursery
        rpc = await _outbound_only(nursery, identity)
        address = await nursery.start(serve_via, rpc, self.relay.address, config)
        return rpc, address

    async def leaving_peer(
        self, leave: trio.Event, drain_timeout: float
    ) -> tuple[PeerAddress, trio.Event]:
        """A peer as `peer` makes one, that leaves the relay once `leave` is set; and an
        event set once its `serve_via` returned."""
        rpc = await _outbound_only(self.nursery)
        config = CircuitConfig(drain_timeout=drain_timeout)
        left = trio.Event()

        async def serve(*, task_status: trio.TaskStatus[PeerAddress]) -> None:
            await serve_via(rpc, self.relay.address, config, leave=leave, task_status=task_status)
            left.set()

        return await self.nursery.start(serve), left

    async def another_client(self) -> RPCHost:
        client = RPCHost(Identity.generate(), TcpTransport())
        await self.nursery.start(client.run_outbound)
        return client


async def _outbound_only(nursery: trio.Nursery, identity: Identity | None = None) -> RPCHost:
    """A host that dials out only (in `nursery`), answering "echo", "who" and "double"."""
    rpc = RPCHost(identity or Identity.generate(), TcpTransport())
    rpc.add_unary("echo", echo)
    rpc.add_unary("who", _who)
    rpc.add_stream("double", double)
    await nursery.start(rpc.run_outbound)
    return rpc


async def _answer(answer: Packet, request: Packet, context: CallContext) -> Packet:
    return answer


async def _who(request: Packet, context: CallContext) -> Packet:
    return Packet({"caller": str(context.peer_id), "from": context.remote_host,
                   "circuit_from": context.circuit_host})  # fmt: skip


@asynccontextmanager
async def _swarm(config: CircuitConfig | None = None) -> AsyncIterator[Swarm]:
    with trio.fail_after(LIMIT):
        async with trio.open_nursery() as nursery:
            relay = RPCHost(Identity.generate(), TcpTransport())
            circuits = CircuitRelay(config or CircuitConfig())
            circuits.register(relay)
            await nursery.start(relay.run, "127.0.0.1", 0)
            client = RPCHost(Identity.generate(), TcpTransport())
            await nursery.start(client.run_outbound)
            yield Swarm(relay, circuits, client, nursery)
            nursery.cancel_scope.cancel()


async def test_a_peer_that_listens_nowhere_is_reached_through_its_relay() -> None:
    async with _swarm() as swarm:
        peer, address = await swarm.peer()
        relay = swarm.relay.address
        assert address == PeerAddress(relay.host, relay.port, peer.peer_id, relay.peer_id)
        assert str(address) == f"{relay}/circuit/{peer.peer_id}" and peer.address == address
        assert PeerAddress.parse(str(address)) == address
        body = os.urandom(6 << 20)  # packets of the circuit beyond a stream's window of credit
        reply = await swarm.client.call(address, "echo", Packet({"n": 1}, body), timeout=10)
        assert bytes(reply.body) == body and reply.header == {"n": 1}
        who = await swarm.client.call(address, "who", Packet(), timeout=10)
        assert who.header["caller"] == str(swarm.client.peer_id)  # authenticated end to end
        assert (who.header["from"], who.header["circuit_from"]) == ("", "127.0.0.1")  # relay's
        async with swarm.client.open_stream(address, "double") as stream:
            for value in range(5):
                await stream.send(Packet({"v": value}))
                assert (await stream.receive()).header == {"v": 2 * value}
        assert swarm.circuits.listening == {peer.peer_id}
        load = swarm.circuits.load()  # one circuit, still open, that carried the body twice
        assert (load.listeners, load.open, load.circuits) == (1, 1, 1)
        assert load.relayed_bytes > 2 * len(body)
        asked = await ask_relay_load(swarm.client, relay, timeout=5)  # the same, over the wire
        assert replace(asked, relayed_bytes=0) == replace(load, relayed_bytes=0)
        assert asked.relayed_bytes >= load.relayed_bytes  # the stream's last credit may follow


async def test_a_relays_load_is_asked_and_checked() -> None:
    async with _swarm(CircuitConfig(max_listeners=5, max_circuits=7)) as swarm:
        relay = swarm.relay.address
        load = await ask_relay_load(swarm.client, relay, timeout=5)
        assert load == RelayLoad(0, 0, 0, 0, max_listeners=5, max_circuits=7)
        plain = RPCHost(Identity.generate(), TcpTransport())
        await swarm.nursery.start(plain.run, "127.0.0.1", 0)
        with pytest.raises(RemoteError):  # a node that relays nothing
            await ask_relay_load(swarm.client, plain.address, timeout=5)
        for bad in ({"listeners": -1}, {"open": True}, {"circuits": "3"}, {"max_circuits": None}):
            liar = RPCHost(Identity.generate(), TcpTransport())
            liar.add_unary(LOAD, partial(_answer, Packet({**asdict(load), **bad})))
            await swarm.nursery.start(liar.run, "127.0.0.1", 0)
            with pytest.raises(ProtocolError, match="every count"):
                await ask_relay_load(swarm.client, liar.address, timeout=5)


async def test_a_peer_not_listening_there_is_a_typed_error() -> None:
    async with _swarm() as swarm:
        relay = swarm.relay.address
        absent = PeerAddress(relay.host, relay.port, Identity.generate().peer_id, relay.peer_id)
        with pytest.raises(PeerUnreachableError, match=r"not_here: .* does not listen"):
            await swarm.client.call(absent, "echo", Packet(), timeout=10)


async def test_a_relay_that_answers_for_the_peer_is_caught_by_the_handshake() -> None:
    """A rogue relay takes the circuit itself and answers with its own key: the dialer's
    handshake refuses it, as it would over TCP."""
    async with _swarm() as swarm:
        rogue = RPCHost(Identity.generate(), TcpTransport())

        async def impersonate(stream: BidiStream, context: CallContext) -> None:
            await stream.receive()  # whichever peer was asked for
            await stream.send(Packet({"connected": True}))
            await rogue.serve_inbound(PacketStream(stream))

        rogue.add_unary("who", _who)
        rogue.add_stream(CONNECT, impersonate)
        relay = await swarm.nursery.start(rogue.run, "127.0.0.1", 0)
        wanted = Identity.generate().peer_id
        address = PeerAddress(relay.host, relay.port, wanted, relay.peer_id)
        with pytest.raises(PeerUnreachableError, match=str(wanted)):
            await swarm.client.call(address, "who", Packet(), timeout=10)


async def test_a_circuit_goes_only_to_the_peer_it_names() -> None:
    """A relay whose table sends one peer's circuits to another: that peer cannot take
    them (the token is for the peer named), and the dialer is told so."""
    async with _swarm(CircuitConfig(accept_timeout=0.5)) as swarm:
        wanted, wanted_address = await swarm.peer()
        other, _ = await swarm.peer()
        listeners = swarm.circuits._listeners
        listeners[wanted.peer_id] = listeners[other.peer_id]
        with pytest.raises(PeerUnreachableError, match="unanswered"):
            await swarm.client.call(wanted_address, "who", Packet(), timeout=10)


@pytest.mark.parametrize(
    ("limits", "said"),
    [({"max_listeners": 1}, "listening peers"), ({"max_per_host": 1}, "from 127.0.0.1")],
)
async def test_the_relay_takes_so_many_listeners_and_forgets_those_that_leave(
    limits: dict[str, int], said: str
) -> None:
    """At most so many in all, and so many from one host."""
    async with _swarm(CircuitConfig(**limits)) as swarm:
        async with trio.open_nursery() as first:
            peer, _ = await swarm.peer(nursery=first)
            await swarm.peer(nursery=first, identity=peer.identity)  # the same peer again
            with pytest.raises(RemoteError, match=f"busy: .*{said}"):
                await swarm.peer()
            first.cancel_scope.cancel()  # the first peer stops
        await wait_until(lambda: not swarm.circuits.listening, within=10)
        await swarm.peer()  # there is room again


async def test_a_peer_that_loses_its_relay_listens_there_again() -> None:
    async with _swarm() as swarm:
        peer, address = await swarm.peer(CircuitConfig(relisten_after=0.05))
        for connection in swarm.relay._pool.all():  # the relay drops every connection
            connection.close()
        await wait_until(lambda: not swarm.circuits.listening, within=10)
        await wait_until(lambda: swarm.circuits.listening == {peer.peer_id}, within=10)
        reply = await swarm.client.call(address, "echo", Packet({"again": True}), timeout=10)
        assert reply.header == {"again": True}


async def test_a_relay_refuses_malformed_requests_by_name_and_serves_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with _swarm() as swarm:
        _, address = await swarm.peer()
        relay = swarm.relay.address
        requests = [
            (CONNECT, None),  # ended before it said what it wants
            (CONNECT, {"peer": "not a peer id"}),
            (CONNECT, {"peer": 7}),
            (ACCEPT, {"token": "not bytes"}),
            (ACCEPT, {"token": b"\0" * 16}),  # no circuit waits with it
        ]
        for method, header in requests:
            async with swarm.client.open_stream(relay, method) as stream:
                if header is not None:
                    await stream.send(Packet(header))
                await stream.end()
                with pytest.raises(RemoteError, match="bad_request"):
                    await stream.receive()
        reply = await swarm.client.call(address, "echo", Packet({"still": True}), timeout=10)
        assert reply.header == {"still": True}
    assert "handler failed" not in caplog.text


async def test_a_peer_whose_relay_is_gone_moves_to_another() -> None:
    """A relay that stops for good: after `move_after`, the peer takes the one `another`
    finds, says its new address, and is reached there."""
    async with _swarm() as swarm:
        async with trio.open_nursery() as first_relay:
            gone = RPCHost(Identity.generate(), TcpTransport())
            CircuitRelay().register(gone)
            gone_address = await first_relay.start(gone.run, "127.0.0.1", 0)
            moves: list[PeerAddress] = []

            async def another(lost: PeerAddress) -> PeerAddress | None:
                assert lost == gone_address
                return swarm.relay.address

            config = CircuitConfig(relisten_after=0.05, move_after=0.2)
            peer = RPCHost(Identity.generate(), TcpTransport())
            peer.add_unary("echo", echo)
            await swarm.nursery.start(peer.run_outbound)
            listen = partial(serve_via, another=another, moved=moves.append)
            first = await swarm.nursery.start(listen, peer, gone_address, config)
            assert first.relay == gone_address
            first_relay.cancel_scope.cancel()  # the first relay stops for good
        await wait_until(lambda: bool(moves), within=10)
        (now,) = moves
        assert now.relay == swarm.relay.address and peer.address == now
        reply = await swarm.client.call(now, "echo", Packet({"moved": True}), timeout=10)
        assert reply.header == {"moved": True}


async def test_a_peer_that_leaves_its_relay_lets_each_circuit_end_with_its_last_call() -> None:
    """Once the peer leaves, the relay takes no new circuit for it; a circuit with no call
    running closes at once; one with a stream open carries it on, and closes once it ends."""
    async with _swarm() as swarm:
        leave = trio.Event()
        address, left = await swarm.leaving_peer(leave, drain_timeout=LIMIT)
        idle = await swarm.another_client()
        await idle.call(address, "echo", Packet(), timeout=10)  # its circuit stays, unused
        async with swarm.client.open_stream(address, "double") as stream:
            await stream.send(Packet({"v": 1}))
            assert (await stream.receive()).header == {"v": 2}
            assert swarm.circuits.load().open == 2
            leave.set()
            await wait_until(lambda: not swarm.circuits.listening, within=10)
            await wait_until(lambda: swarm.circuits.load().open == 1, within=10)  # the idle one
            with pytest.raises(PeerUnreachableError, match="not_here"):
                await idle.call(address, "echo", Packet(), timeout=10)
            for value in range(2, 5):  # the stream goes on
                await stream.send(Packet({"v": value}))
                assert (await stream.receive()).header == {"v": 2 * value}
            assert not left.is_set()
        await left.wait()  # the stream ended: so did its circuit, and serving through the relay
        await wait_until(lambda: swarm.circuits.load().open == 0, within=10)


async def test_a_circuit_still_busy_after_the_drain_timeout_is_cut() -> None:
    async with _swarm() as swarm:
        leave = trio.Event()
        address, left = await swarm.leaving_peer(leave, drain_timeout=0.3)
        async with swarm.client.open_stream(address, "double") as stream:
            await stream.send(Packet({"v": 1}))
            assert (await stream.receive()).header == {"v": 2}
            leave.set()
            await left.wait()
            with pytest.raises(RoutingError):
                await stream.send(Packet({"v": 2}))
                await stream.receive()
        await wait_until(lambda: swarm.circuits.load().open == 0, within=10)


async def test_a_dialer_others_can_dial_is_dialled_back_and_the_circuit_drains() -> None:
    """A peer that listens calls one behind a relay: the peer behind dials it back, new
    calls go over that direct connection, and the circuit carries the stream open on it
    until it ends, then closes."""
    async with _swarm() as swarm:
        behind, address = await swarm.peer()
        dialer = RPCHost(Identity.generate(), TcpTransport())
        await swarm.nursery.start(dialer.run, "127.0.0.1", 0)
        async with dialer.open_stream(address, "double") as stream:
            await stream.send(Packet({"v": 1}))
            assert (await stream.receive()).header == {"v": 2}
            await wait_until(lambda: _direct(dialer, behind.peer_id), within=10)
            await wait_until(lambda: _direct(behind, dialer.peer_id), within=10)
            relayed = swarm.circuits.load().relayed_bytes
            body = os.urandom(1 << 20)
            reply = await dialer.call(address, "echo", Packet({}, body), timeout=10)
            assert bytes(reply.body) == body
            assert swarm.circuits.load().relayed_bytes < relayed + len(body)  # not relayed
            for value in range(2, 5):  # the stream goes on over the circuit
                await stream.send(Packet({"v": value}))
                assert (await stream.receive()).header == {"v": 2 * value}
            assert swarm.circuits.load().open == 1
            stats = dialer.stats()
            assert (stats.connections, stats.relayed) == (3, 1)  # relay, peer, and circuit
        await wait_until(lambda: swarm.circuits.load().open == 0, within=10)
        await wait_until(lambda: dialer.stats().relayed == behind.stats().relayed == 0, within=10)
        reply = await dialer.call(address, "echo", Packet({"after": True}), timeout=10)
        assert reply.header == {"after": True} and swarm.circuits.load().open == 0


async def test_a_dialer_nobody_can_dial_stays_on_the_circuit(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The dialer announces a port nobody listens at (as behind NAT): the dial back fails,
    and calls go on through the relay; its next circuit is not dialled back again."""
    caplog.set_level(logging.DEBUG, logger="routing.rpc.circuit")
    async with _swarm() as swarm:
        behind, address = await swarm.peer()
        dialer = RPCHost(Identity.generate(), TcpTransport())
        await swarm.nursery.start(dialer.run, "127.0.0.1", 0, PublicAddress(port=free_port()))
        await dialer.call(address, "echo", Packet(), timeout=10)
        await wait_until(lambda: "could not dial" in caplog.text, within=15)
        assert not _direct(dialer, behind.peer_id) and not _direct(behind, dialer.peer_id)
        reply = await dialer.call(address, "echo", Packet({"still": True}), timeout=10)
        assert reply.header == {"still": True} and swarm.circuits.load().open == 1
        connection = dialer.connection_to(behind.peer_id)
        assert connection is not None
        connection.close()  # the next call opens another circuit
        await dialer.call(address, "echo", Packet(), timeout=10)
        await wait_until(lambda: "that failed" in caplog.text, within=15)
        assert caplog.text.count("could not dial") == 1


def _direct(rpc: RPCHost, peer: PeerId) -> bool:
    """Whether `rpc`'s calls to `peer` go over a direct connection."""
    connection = rpc.connection_to(peer)
    return connection is not None and not connection.relayed


async def test_a_peer_dials_back_only_the_dialer_at_the_host_it_calls_from() -> None:
    """The address must be a direct one of the peer the circuit's handshake proved, and
    resolve to the host its relay saw it call from."""
    dialer = Identity.generate().peer_id
    direct = PeerAddress("127.0.0.1", 4000, dialer)
    assert dial_back_address(str(direct), dialer) == direct
    other = PeerAddress("127.0.0.1", 4000, Identity.generate().peer_id)
    circuit = PeerAddress("127.0.0.1", 4000, dialer, Identity.generate().peer_id)
    for said in (str(other), str(circuit), "not an address", 7, None, "x" * 600):
        assert dial_back_address(said, dialer) is None

    class Recording:
        dialled: list[PeerAddress] = []

        async def connect_directly(self, address: PeerAddress) -> None:
            self.dialled.append(address)

    rpc, failed = Recording(), FailedDialBacks()
    await dial_back(rpc, direct, "10.1.2.3", failed)  # type: ignore[arg-type]  # not its host
    assert rpc.dialled == []
    await dial_back(rpc, direct, "127.0.0.1", failed)  # type: ignore[arg-type]
    assert rpc.dialled == [direct]


async def test_a_dial_back_that_failed_is_not_tried_again_there_for_a_while() -> None:
    now = [0.0]
    failed = FailedDialBacks(forget_after=600.0, most=2, clock=lambda: now[0])
    dialer = Identity.generate().peer_id
    first, second, third = (PeerAddress("127.0.0.1", port, dialer) for port in (1, 2, 3))

    class Unreachable:
        dialled: list[PeerAddress] = []

        async def connect_directly(self, address: PeerAddress) -> None:
            self.dialled.append(address)
            raise ConnectionLostError("nobody listens there")

    rpc = Unreachable()
    for address in (first, first, second):
        await dial_back(rpc, address, "127.0.0.1", failed)  # type: ignore[arg-type]
    assert rpc.dialled == [first, second] and failed.lately(first) == 0.0
    now[0] = 599.0
    await dial_back(rpc, first, "127.0.0.1", failed)  # type: ignore[arg-type]
    assert rpc.dialled == [first, second]
    now[0] = 600.0  # forgotten: tried again
    await dial_back(rpc, first, "127.0.0.1", failed)  # type: ignore[arg-type]
    assert rpc.dialled == [first, second, first]
    kept = FailedDialBacks(most=2, clock=lambda: now[0])
    for address in (first, second, third):
        kept.add(address)
    assert [kept.lately(address) for address in (first, second, third)] == [None, 0.0, 0.0]


MiB = 1 << 20


@pytest.mark.parametrize(
    ("config", "peers", "seconds"),
    [
        (CircuitConfig(), 1, (0.0, 0.1)),
        (CircuitConfig(max_bytes_per_second=MiB), 1, (6.9, 7.5)),
        (CircuitConfig(max_bytes_per_second=MiB), 2, (14.9, 15.5)),
        (CircuitConfig(max_peer_bytes_per_second=MiB), 2, (6.9, 7.5)),
        (CircuitConfig(max_bytes_per_second=4 * MiB, max_peer_bytes_per_second=MiB), 1, (6.9, 7.5)),
    ],
)
async def test_a_relay_with_a_rate_copies_no_faster(
    autojump_clock: trio.testing.MockClock,
    config: CircuitConfig,
    peers: int,
    seconds: tuple[float, float],
) -> None:
    """4 MiB echoed through a relay to each of `peers` peers at once, on the in-memory
    network, in virtual time, until the last echo is back. Unpaced, at once. At 1 MiB a
    second for both ways together, about 7 s for one peer (8 MiB, after a burst of a
    second's worth), 15 s for two; at 1 MiB a second for each peer's circuits, 7 s for two
    as for one."""
    network = MemoryNetwork()
    async with trio.open_nursery() as nursery:
        relay = RPCHost(Identity.generate(), network.transport("10.0.0.1"))
        CircuitRelay(config).register(relay)
        relay_address = await nursery.start(relay.run, "10.0.0.1", 4000)
        client = RPCHost(Identity.generate(), network.transport("10.0.0.2"))
        await nursery.start(client.run_outbound)
        addresses = []
        for number in range(peers):
            peer = RPCHost(Identity.generate(), network.transport(f"10.0.1.{number}"))
            peer.add_unary("echo", echo)
            await nursery.start(peer.run_outbound)
            addresses.append(await nursery.start(serve_via, peer, relay_address))
            await client.ping(addresses[-1], timeout=10)  # the handshake's bytes are paid
        start = trio.current_time()
        async with trio.open_nursery() as echoes:
            for address in addresses:
                echoes.start_soon(partial(client.call, timeout=60), address, "echo",
                                  Packet({}, bytes(4 * MiB)))  # fmt: skip
        elapsed = trio.current_time() - start
        nursery.cancel_scope.cancel()
    assert seconds[0] <= elapsed <= seconds[1]


def test_where_a_dialer_calls_from_is_taken_only_as_a_host() -> None:
    assert dialer_host({"incoming": b"t", "from": "203.0.113.7"}) == "203.0.113.7"
    for said in ({"incoming": b"t"}, {"from": 7}, {"from": b"10.0.0.1"}, {"from": "x" * 300}):
        assert dialer_host(said) == ""
