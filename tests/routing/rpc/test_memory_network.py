"""RPC over the in-memory network's faults: latency, drops and partitions (autojump clock,
so every time below is exact)."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from routing.errors import CallTimeoutError, ConnectionLostError, PeerUnreachableError
from routing.memory_network import MemoryNetwork
from routing.rpc import CallContext, Packet, RPCConfig

from .helpers import count_tasks, echo, start_host, wait_until

SERVER, CLIENT, OTHER = "10.0.0.1", "10.0.0.2", "10.0.0.3"


async def test_latency_shows_in_ping_per_link(autojump_clock: trio.testing.MockClock) -> None:
    network = MemoryNetwork(latency=0.010)
    network.set_latency(0.050, CLIENT, OTHER)
    async with trio.open_nursery() as nursery:
        server = await start_host(nursery, network.transport(SERVER), SERVER)
        other = await start_host(nursery, network.transport(OTHER), OTHER)
        client = await start_host(nursery, network.transport(CLIENT), CLIENT)
        start = trio.current_time()
        await client.ping(server.address, timeout=5)  # dial: connect + 3 handshake messages
        first = trio.current_time() - start
        assert first >= 4 * 0.010
        assert await client.ping(server.address, timeout=5) == pytest.approx(0.020)
        assert await client.ping(other.address, timeout=5) > 0.100  # with the dial
        assert await client.ping(other.address, timeout=5) == pytest.approx(0.100)
        network.set_latency(0.0)  # global change; the per-link value stays
        assert await client.ping(server.address, timeout=5) == pytest.approx(0.0)
        assert await client.ping(other.address, timeout=5) == pytest.approx(0.100)
        nursery.cancel_scope.cancel()


async def test_a_call_slower_than_the_latency_allows_times_out(
    autojump_clock: trio.testing.MockClock,
) -> None:
    network = MemoryNetwork(latency=1.0)
    async with trio.open_nursery() as nursery:
        server = await start_host(nursery, network.transport(SERVER), SERVER)
        server.add_unary("echo", echo)
        client = await start_host(nursery, network.transport(CLIENT), CLIENT)
        await client.ping(server.address, timeout=30)
        with pytest.raises(CallTimeoutError):
            await client.call(server.address, "echo", Packet(), timeout=1.5)  # RTT is 2 s
        reply = await client.call(server.address, "echo", Packet({"ok": 1}), timeout=2.5)
        assert reply.header == {"ok": 1}
        nursery.cancel_scope.cancel()


async def test_drops_fail_calls_typed_and_recovery_redials(
    autojump_clock: trio.testing.MockClock,
) -> None:
    network = MemoryNetwork()
    config = RPCConfig(connect_timeout=3.0)
    async with trio.open_nursery() as nursery:
        server = await start_host(nursery, network.transport(SERVER), SERVER)
        server.add_unary("echo", echo)
        client = await start_host(nursery, network.transport(CLIENT), CLIENT, config)
        await client.call(server.address, "echo", Packet(), timeout=5)
        network.set_drop(1.0, CLIENT, SERVER)
        # the established connection: the next send is lost, the connection with it
        with pytest.raises(ConnectionLostError):
            await client.call(server.address, "echo", Packet(), timeout=5)
        await wait_until(lambda: server.stats().connections == 0)
        # a new connection attempt goes unanswered until the connect timeout
        with pytest.raises(PeerUnreachableError):
            await client.call(server.address, "echo", Packet(), timeout=5)
        network.set_drop(0.0, CLIENT, SERVER)
        reply = await client.call(server.address, "echo", Packet({"back": 1}), timeout=5)
        assert reply.header == {"back": 1}
        nursery.cancel_scope.cancel()


async def test_random_drops_every_call_ends_typed(autojump_clock: trio.testing.MockClock) -> None:
    """With 5% of sends lost, each call either succeeds or fails with a routing error, and
    once the drops stop everything is served again with nothing left behind."""
    network = MemoryNetwork(seed=3)
    config = RPCConfig(connect_timeout=2.0)
    async with trio.open_nursery() as nursery:
        server = await start_host(nursery, network.transport(SERVER), SERVER)
        server.add_unary("echo", echo)
        client = await start_host(nursery, network.transport(CLIENT), CLIENT, config)
        tasks = count_tasks()
        network.set_drop(0.05)
        outcomes = {"ok": 0, "lost": 0, "unreachable": 0, "timeout": 0}
        for n in range(300):
            try:
                reply = await client.call(server.address, "echo", Packet({"n": n}), timeout=5)
                assert reply.header == {"n": n}
                outcomes["ok"] += 1
            except ConnectionLostError:
                outcomes["lost"] += 1
            except PeerUnreachableError:
                outcomes["unreachable"] += 1
            except CallTimeoutError:
                outcomes["timeout"] += 1
        assert outcomes["ok"] > 150 and outcomes["lost"] > 0, outcomes
        network.set_drop(0.0)
        await client.call(server.address, "echo", Packet(), timeout=5)
        network.cut(CLIENT)
        await wait_until(lambda: count_tasks() == tasks)
        stats = (client.stats(), server.stats())
        assert all(s.connections == s.calls == s.handlers == s.dials == 0 for s in stats)
        nursery.cancel_scope.cancel()


async def test_a_partition_stalls_then_heals_on_the_same_connection(
    autojump_clock: trio.testing.MockClock,
) -> None:
    started = 0

    async def counted(request: Packet, context: CallContext) -> Packet:
        nonlocal started
        started += 1
        return Packet({"n": started})

    network = MemoryNetwork()
    async with trio.open_nursery() as nursery:
        server = await start_host(nursery, network.transport(SERVER), SERVER)
        server.add_unary("counted", counted)
        client = await start_host(nursery, network.transport(CLIENT), CLIENT)
        await client.call(server.address, "counted", Packet(), timeout=5)
        connection = client.connection_to(server.peer_id)
        network.partition([CLIENT], [SERVER])
        start = trio.current_time()
        with pytest.raises(CallTimeoutError):
            await client.call(server.address, "counted", Packet(), timeout=3)
        assert trio.current_time() - start == pytest.approx(3.0)
        assert started == 1  # the request is held by the partition, not delivered
        network.heal()
        reply = await client.call(server.address, "counted", Packet(), timeout=5)
        # the held request arrived first, followed by its CANCEL: it may or may not have run
        assert reply.header["n"] in (2, 3)
        assert client.connection_to(server.peer_id) is connection  # no re-dial
        nursery.cancel_scope.cancel()


async def test_a_cutting_partition_fails_calls_at_once_and_refuses_or_hangs_dials(
    autojump_clock: trio.testing.MockClock,
) -> None:
    entered = trio.Event()

    async def hang(request: Packet, context: CallContext) -> Packet:
        entered.set()
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    network = MemoryNetwork()
    config = RPCConfig(connect_timeout=4.0)
    async with trio.open_nursery() as nursery:
        server = await start_host(nursery, network.transport(SERVER), SERVER)
        server.add_unary("hang", hang)
        server.add_unary("echo", echo)
        client = await start_host(nursery, network.transport(CLIENT), CLIENT, config)
        bystander = await start_host(nursery, network.transport(OTHER), OTHER)
        await bystander.call(server.address, "echo", Packet(), timeout=5)

        async def cut_later() -> None:
            await entered.wait()
            network.partition([CLIENT], [SERVER], cut=True)

        nursery.start_soon(cut_later)
        start = trio.current_time()
        with pytest.raises(ConnectionLostError):
            await client.call(server.address, "hang", Packet(), timeout=60)
        assert trio.current_time() - start < 1.0
        await wait_until(lambda: server.stats().handlers == 0)  # the handler was cancelled
        with pytest.raises(PeerUnreachableError):  # hanging connect: the connect timeout
            await client.call(server.address, "echo", Packet(), timeout=60)
        network.heal()
        network.partition([CLIENT], [SERVER], refuse=True)
        start = trio.current_time()
        with pytest.raises(PeerUnreachableError):  # refused: at once
            await client.call(server.address, "echo", Packet(), timeout=60)
        assert trio.current_time() - start < 1.0
        # the bystander's connection was never affected
        assert (await bystander.call(server.address, "echo", Packet({"b": 1}), timeout=5)).header
        network.heal()
        assert (await client.call(server.address, "echo", Packet({"c": 1}), timeout=5)).header
        nursery.cancel_scope.cancel()
