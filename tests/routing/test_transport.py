"""Transports: TcpTransport on loopback, and the in-memory network with its faults."""

from __future__ import annotations

import contextlib
import errno
import socket
from functools import partial

import pytest
import trio
import trio.lowlevel
import trio.testing

from routing.errors import ListenError
from routing.memory_network import MemoryNetwork, MemoryStream
from routing.transport import TcpTransport
from tests.support.ports import free_port


async def _echo(stream: trio.abc.Stream) -> None:
    while data := await stream.receive_some():
        await stream.send_all(data)


async def _receive_exactly(stream: trio.abc.Stream, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = await stream.receive_some()
        if not chunk:
            break
        data += chunk
    return data


# -- TCP ---------------------------------------------------------------------------------------


async def test_tcp_serve_on_port_zero_reports_the_bound_port_and_sets_nodelay() -> None:
    transport = TcpTransport()
    seen: list[int] = []

    async def handler(stream: trio.abc.Stream) -> None:
        assert isinstance(stream, trio.SocketStream)
        seen.append(stream.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
        await _echo(stream)

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            host, port = await nursery.start(partial(transport.serve, "127.0.0.1", 0, handler))
            assert host == "127.0.0.1" and port > 0
            stream = await transport.connect(host, port)
            assert isinstance(stream, trio.SocketStream)
            assert stream.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
            await stream.send_all(b"hello")
            assert await _receive_exactly(stream, 5) == b"hello"
            await stream.aclose()
            assert seen and seen[0]
            nursery.cancel_scope.cancel()


async def _nothing(stream: trio.abc.Stream) -> None:
    await stream.aclose()


async def test_a_port_taken_is_a_listen_error_that_names_it() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ListenError, match=f"cannot listen on 127.0.0.1:{port}") as info:
            await TcpTransport().serve("127.0.0.1", port, _nothing)
    assert isinstance(info.value, OSError) and info.value.errno == errno.EADDRINUSE


async def test_tcp_connect_refused_raises_oserror() -> None:
    with trio.fail_after(10), pytest.raises(OSError):
        await TcpTransport().connect("127.0.0.1", free_port())  # a port nobody listens on


# -- memory network ----------------------------------------------------------------------------


async def _memory_pair(network: MemoryNetwork) -> tuple[MemoryStream, MemoryStream]:
    accepted: list[trio.abc.Stream] = []
    ready = trio.Event()

    async def handler(stream: trio.abc.Stream) -> None:
        accepted.append(stream)
        ready.set()
        await trio.sleep_forever()

    nursery = _NURSERY[-1]
    await nursery.start(partial(network.transport("b").serve, "b", 9, handler))
    client = await network.transport("a").connect("b", 9)
    await ready.wait()
    server = accepted[0]
    assert isinstance(client, MemoryStream) and isinstance(server, MemoryStream)
    return client, server


_NURSERY: list[trio.Nursery] = []


@pytest.fixture
async def nursery() -> object:
    async with trio.open_nursery() as nursery:
        _NURSERY.append(nursery)
        yield nursery
        _NURSERY.pop()
        nursery.cancel_scope.cancel()


async def test_memory_stream_passes_trios_stream_checks(nursery: trio.Nursery) -> None:
    network = MemoryNetwork()
    count = 0

    async def maker() -> tuple[MemoryStream, MemoryStream]:
        nonlocal count
        count += 1
        accepted: list[MemoryStream] = []
        got = trio.Event()

        async def handler(stream: trio.abc.Stream) -> None:
            assert isinstance(stream, MemoryStream)
            accepted.append(stream)
            got.set()
            await trio.sleep_forever()

        await nursery.start(partial(network.transport("s").serve, "s", count, handler))
        client = await network.transport("c").connect("s", count)
        await got.wait()
        assert isinstance(client, MemoryStream)
        return client, accepted[0]

    with trio.fail_after(20):
        await trio.testing.check_two_way_stream(maker, None)


async def test_latency_is_exact(autojump_clock: trio.testing.MockClock, nursery: object) -> None:
    network = MemoryNetwork(latency=0.05)
    start = trio.current_time()
    client, server = await _memory_pair(network)
    assert trio.current_time() - start == pytest.approx(0.1)  # connecting: one round trip
    start = trio.current_time()
    await client.send_all(b"x")
    assert await server.receive_some() == b"x"
    assert trio.current_time() - start == pytest.approx(0.05)
    network.set_latency(0.2, "a", "b")
    start = trio.current_time()
    await server.send_all(b"y")
    assert await client.receive_some() == b"y"
    assert trio.current_time() - start == pytest.approx(0.2)


async def test_connect_to_nothing_is_refused(autojump_clock: trio.testing.MockClock) -> None:
    with pytest.raises(ConnectionRefusedError):
        await MemoryNetwork().transport("a").connect("b", 1)


async def test_partition_hangs_or_refuses_connects_and_stalls_streams(
    autojump_clock: trio.testing.MockClock, nursery: object
) -> None:
    network = MemoryNetwork()
    client, server = await _memory_pair(network)
    network.partition(["a"], ["b"])
    with trio.move_on_after(30) as scope:
        await network.transport("a").connect("b", 9)
    assert scope.cancelled_caught  # unanswered until the caller gives up
    await client.send_all(b"held")
    with trio.move_on_after(30) as scope:
        await server.receive_some()
    assert scope.cancelled_caught  # stalled, not lost
    network.heal()
    assert await server.receive_some() == b"held"
    network.partition(["b"], ["a"], refuse=True)
    with pytest.raises(ConnectionRefusedError):
        await network.transport("a").connect("b", 9)


async def test_partition_with_cut_breaks_connections(
    autojump_clock: trio.testing.MockClock, nursery: object
) -> None:
    network = MemoryNetwork()
    client, server = await _memory_pair(network)
    assert network.open_connections == 1
    network.partition(["a"], ["b"], cut=True)
    with pytest.raises(trio.BrokenResourceError):
        await server.receive_some()
    with pytest.raises(trio.BrokenResourceError):
        await client.send_all(b"x")
    assert network.open_connections == 0


async def test_cut_one_host(autojump_clock: trio.testing.MockClock, nursery: object) -> None:
    network = MemoryNetwork()
    client, _server = await _memory_pair(network)
    assert network.cut("b") == 1
    with pytest.raises(trio.BrokenResourceError):
        await client.receive_some()


async def test_drops_cut_connections_and_leave_connects_unanswered(
    autojump_clock: trio.testing.MockClock, nursery: object
) -> None:
    network = MemoryNetwork(seed=1)
    client, server = await _memory_pair(network)
    network.set_drop(1.0, "a", "b")
    with pytest.raises(trio.BrokenResourceError):
        await client.send_all(b"x")
    with pytest.raises(trio.BrokenResourceError):
        await server.receive_some()
    with trio.move_on_after(30) as scope:
        await network.transport("a").connect("b", 9)
    assert scope.cancelled_caught
    network.set_drop(0.5)
    network.set_drop(0.0, "a", "b")
    stream = await network.transport("a").connect("b", 9)  # the link's setting wins
    await stream.send_all(b"ok")


async def test_drop_rate_is_roughly_the_probability(
    autojump_clock: trio.testing.MockClock,
) -> None:
    network = MemoryNetwork(seed=7)
    network.set_drop(0.25)
    attempts = 400
    failures = 0
    for _ in range(attempts):
        with trio.move_on_after(1) as scope:
            with contextlib.suppress(ConnectionRefusedError):
                await network.transport("a").connect("x", 1)
        failures += scope.cancelled_caught
    assert 60 < failures < 140  # 100 expected


async def test_send_blocks_when_the_pipe_is_full(
    autojump_clock: trio.testing.MockClock, nursery: object
) -> None:
    network = MemoryNetwork(buffer_size=1000)
    client, server = await _memory_pair(network)
    await client.send_all(bytes(1000))
    with trio.move_on_after(5) as scope:
        await client.send_all(b"x")
    assert scope.cancelled_caught
    assert len(await server.receive_some(2000)) == 1000


async def test_listener_gone_means_refused(autojump_clock: trio.testing.MockClock) -> None:
    network = MemoryNetwork()
    async with trio.open_nursery() as inner:
        await inner.start(partial(network.transport("b").serve, "b", 5, _echo))
        stream = await network.transport("a").connect("b", 5)
        await stream.send_all(b"ping")
        assert await stream.receive_some() == b"ping"
        inner.cancel_scope.cancel()
    with pytest.raises(ConnectionRefusedError):
        await network.transport("a").connect("b", 5)
    with pytest.raises((trio.BrokenResourceError, trio.ClosedResourceError)):
        await stream.send_all(b"x")
        await stream.send_all(b"x")
