"""The connection pool: one connection per pair of peers, reused both ways, re-dialled after
it drops, shared by concurrent dialers, closed when idle, and bounded by its timeouts."""

from __future__ import annotations

from functools import partial

import pytest
import trio
import trio.testing

from routing.address import PeerAddress
from routing.errors import CallTimeoutError, ConnectionLostError, PeerUnreachableError
from routing.memory_network import MemoryNetwork
from routing.rpc import CallContext, Packet, RPCConfig, RPCHost

from .helpers import CountingTransport, count_tasks, double, echo, start_host, wait_until

SERVER, CLIENT = "10.0.0.1", "10.0.0.2"


async def test_sequential_calls_reuse_one_dial(autojump_clock: trio.testing.MockClock) -> None:
    network = MemoryNetwork()
    counting = CountingTransport(network.transport(CLIENT))
    async with trio.open_nursery() as nursery:
        server = await start_host(nursery, network.transport(SERVER), SERVER)
        server.add_unary("echo", echo)
        client = await start_host(nursery, counting, CLIENT)
        for n in range(20):
            reply = await client.call(server.address, "echo", Packet({"n": n}), timeout=5)
            assert reply.header == {"n": n}
        assert counting.connects == 1
        first = client.connection_to(server.peer_id)
        await client.call(server.address, "echo", Packet(), timeout=5)
        assert client.connection_to(server.peer_id) is first
        assert (client.stats().outbound, client.stats().inbound) == (1, 0)
        assert (server.stats().outbound, server.stats().inbound) == (0, 1)
        nursery.cancel_scope.cancel()


async def test_concurrent_first_calls_share_one_dial(
    autojump_clock: trio.testing.MockClock,
) -> None:
    network = MemoryNetwork(latency=0.01)  # the dial takes a while: callers pile up on it
    counting = CountingTransport(network.transport(CLIENT))
    async with trio.open_nursery() as nursery:
        server = await start_host(nursery, network.transport(SERVER), SERVER)
        server.add_unary("echo", echo)
        client = await start_host(nursery, counting, CLIENT)
        async with trio.open_nursery() as callers:
            for n in range(30):
                callers.start_soon(
                    partial(client.call, server.address, "echo", Packet({"n": n}), timeout=5)
                )
        assert counting.connects == 1
        assert server.stats().connections == 1
        nursery.cancel_scope.cancel()


async def test_the_listener_calls_back_over_the_inbound_connection(
    autojump_clock: trio.testing.MockClock,
) -> None:
    network = MemoryNetwork()
    counting = CountingTransport(network.transport(SERVER))
    async with trio.open_nursery() as nursery:
        server = await start_host(nursery, counting, SERVER)

        async def who(request: Packet, context: CallContext) -> Packet:
            # the handler calls its caller back: the pool finds the inbound connection
            back = await server.call(client.address, "echo", Packet({"back": True}), timeout=5)
            return Packet({"caller": str(context.peer_id), "back": back.header["back"]})

        server.add_unary("who", who)
        client = await start_host(nursery, network.transport(CLIENT), CLIENT)
        client.add_unary("echo", echo)
        reply = await client.call(server.address, "who", Packet(), timeout=5)
        assert reply.header == {"caller": str(client.peer_id), "back": True}
        assert counting.connects == 0  # the server never dialled
        assert client.stats().connections == server.stats().connections == 1
        nursery.cancel_scope.cancel()


async def test_a_dropped_connection_fails_its_calls_and_is_redialled(
    autojump_clock: trio.testing.MockClock,
) -> None:
    network = MemoryNetwork()
    counting = CountingTransport(network.transport(CLIENT))
    entered = trio.Event()

    async def hang(request: Packet, context: CallContext) -> Packet:
        entered.set()
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    async with trio.open_nursery() as nursery:
        server = await start_host(nursery, network.transport(SERVER), SERVER)
        server.add_unary("echo", echo)
        server.add_unary("hang", hang)
        client = await start_host(nursery, counting, CLIENT)
        await client.call(server.address, "echo", Packet(), timeout=5)
        tasks = count_tasks()  # with one connection up
        before = client.connection_to(server.peer_id)
        outcome: list[BaseException] = []

        async def in_flight() -> None:
            try:
                await client.call(server.address, "hang", Packet(), timeout=60)
            except ConnectionLostError as error:
                outcome.append(error)

        async with trio.open_nursery() as callers:
            callers.start_soon(in_flight)
            await entered.wait()
            assert network.cut(CLIENT) == 1  # the one connection
        assert len(outcome) == 1  # the call failed typed, at once (not at its deadline)
        await wait_until(lambda: client.stats().connections == server.stats().connections == 0)
        assert server.stats().handlers == 0  # the hung handler was cancelled
        reply = await client.call(server.address, "echo", Packet({"again": 1}), timeout=5)
        assert reply.header == {"again": 1}
        assert counting.connects == 2
        assert client.connection_to(server.peer_id) is not before
        await wait_until(lambda: count_tasks() <= tasks)  # one connection's tasks, no more
        nursery.cancel_scope.cancel()


async def test_simultaneous_dials_both_work(autojump_clock: trio.testing.MockClock) -> None:
    network = MemoryNetwork(latency=0.005)
    async with trio.open_nursery() as nursery:
        a = await start_host(nursery, network.transport("10.0.0.1"), "10.0.0.1")
        b = await start_host(nursery, network.transport("10.0.0.2"), "10.0.0.2")
        a.add_unary("echo", echo)
        b.add_unary("echo", echo)
        replies: list[str] = []

        async def call(source: RPCHost, target: RPCHost, tag: str) -> None:
            reply = await source.call(target.address, "echo", Packet({"t": tag}), timeout=5)
            replies.append(reply.header["t"])

        async with trio.open_nursery() as callers:
            callers.start_soon(call, a, b, "a->b")
            callers.start_soon(call, b, a, "b->a")
        assert sorted(replies) == ["a->b", "b->a"]
        assert 1 <= a.stats().connections <= 2 and 1 <= b.stats().connections <= 2
        for _ in range(5):  # later calls keep working over whichever connection each picked
            await a.call(b.address, "echo", Packet(), timeout=5)
            await b.call(a.address, "echo", Packet(), timeout=5)
        nursery.cancel_scope.cancel()


async def test_idle_connections_close_and_the_next_call_redials(
    autojump_clock: trio.testing.MockClock,
) -> None:
    network = MemoryNetwork()
    counting = CountingTransport(network.transport(CLIENT))
    config = RPCConfig(idle_timeout=30.0)
    async with trio.open_nursery() as nursery:
        server = await start_host(nursery, network.transport(SERVER), SERVER, config)
        server.add_unary("echo", echo)
        client = await start_host(nursery, counting, CLIENT, config)
        await client.call(server.address, "echo", Packet(), timeout=5)
        idle_from = trio.current_time()
        await wait_until(lambda: client.stats().connections == 0, within=60)
        assert 30.0 <= trio.current_time() - idle_from <= 31.0
        await wait_until(lambda: server.stats().connections == 0)
        assert network.open_connections == 0
        await client.call(server.address, "echo", Packet(), timeout=5)
        assert counting.connects == 2
        nursery.cancel_scope.cancel()


async def test_a_connection_the_remote_drains_takes_no_new_call(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The server drains its connection (as a peer leaving a relay does): the client is
    told, its next calls go over a connection it dials afresh, and the old one carries its
    open stream on, then closes. Until then, a ping with no other way to the peer (the
    liveness check of the session open there) goes over the old one."""
    network = MemoryNetwork(latency=0.01)
    counting = CountingTransport(network.transport(CLIENT))
    async with trio.open_nursery() as nursery:
        server = await start_host(nursery, network.transport(SERVER), SERVER)
        server.add_unary("echo", echo)
        server.add_stream("double", double)
        client = await start_host(nursery, counting, CLIENT)
        async with client.open_stream(server.address, "double") as stream:
            await stream.send(Packet({"v": 1}))
            assert (await stream.receive()).header == {"v": 2}
            old = client.connection_to(server.peer_id)
            served = server.connection_to(client.peer_id)
            assert old is not None and served is not None
            served.drain()
            await wait_until(lambda: not old.takes_new_calls, within=1)
            gone = PeerAddress(SERVER, 4999, server.peer_id)  # as the relay the server left
            await client.ping(gone, timeout=5)
            assert counting.connects == 1
            for n in range(20):  # not one lands on the connection being drained
                reply = await client.call(server.address, "echo", Packet({"n": n}), timeout=5)
                assert reply.header == {"n": n}
            assert counting.connects == 2 and client.connection_to(server.peer_id) is not old
            await client.ping(gone, timeout=5)  # the new connection will do
            await trio.sleep(5)  # far beyond the drain's grace: the stream holds it open
            await stream.send(Packet({"v": 3}))
            assert (await stream.receive()).header == {"v": 6} and old.is_open
        await wait_until(lambda: not old.is_open and not served.is_open, within=5)
        nursery.cancel_scope.cancel()


async def test_a_busy_connection_is_not_idle(autojump_clock: trio.testing.MockClock) -> None:
    release = trio.Event()

    async def long_call(request: Packet, context: CallContext) -> Packet:
        await release.wait()
        return Packet({"done": True})

    network = MemoryNetwork()
    config = RPCConfig(idle_timeout=10.0)
    async with trio.open_nursery() as nursery:
        server = await start_host(nursery, network.transport(SERVER), SERVER, config)
        server.add_unary("long", long_call)
        client = await start_host(nursery, network.transport(CLIENT), CLIENT, config)

        async def let_go() -> None:
            await trio.sleep(100)  # ten idle timeouts while the call runs
            release.set()

        nursery.start_soon(let_go)
        reply = await client.call(server.address, "long", Packet(), timeout=200)
        assert reply.header == {"done": True}
        nursery.cancel_scope.cancel()


async def test_unreachable_peers_fail_typed_and_bounded(
    autojump_clock: trio.testing.MockClock,
) -> None:
    network = MemoryNetwork()
    config = RPCConfig(connect_timeout=5.0)
    async with trio.open_nursery() as nursery:
        server = await start_host(nursery, network.transport(SERVER), SERVER)
        client = await start_host(nursery, network.transport(CLIENT), CLIENT, config)
        tasks = count_tasks()
        address = server.address
        nobody = type(address)(address.host, address.port + 1, address.peer_id)
        with pytest.raises(PeerUnreachableError):  # refused: nothing listens there
            await client.call(nobody, "echo", Packet(), timeout=60)
        network.partition([CLIENT], [SERVER])  # connection attempts go unanswered
        start = trio.current_time()
        with pytest.raises(PeerUnreachableError):  # the connect timeout ends the dial
            await client.call(address, "echo", Packet(), timeout=60)
        assert trio.current_time() - start == pytest.approx(5.0)
        start = trio.current_time()
        with pytest.raises(CallTimeoutError):  # the call's own deadline comes first
            await client.call(address, "echo", Packet(), timeout=2)
        assert trio.current_time() - start == pytest.approx(2.0)
        assert client.stats().dials == 1  # the dial goes on for later callers ...
        await wait_until(lambda: client.stats().dials == 0)  # ... until its own timeout
        network.heal()
        await client.call(address, "ping", Packet(), timeout=5)
        assert client.stats().connections == 1
        network.cut(CLIENT)  # the failed dials left nothing behind: back to the start
        await wait_until(lambda: count_tasks() == tasks)
        nursery.cancel_scope.cancel()
