"""Bidirectional streams: many per connection, large items intact, typed remote errors after
the items that came before, ends and cancels both ways, credit that bounds a sender without
blocking the connection, and a lost connection seen on both sides."""

from __future__ import annotations

import hashlib
import os

import pytest
import trio
import trio.testing

from routing.errors import ConnectionLostError, HandlerError, RemoteError, StreamClosedError
from routing.rpc import BidiStream, CallContext, Packet

from .helpers import double, memory_pair, wait_until


async def test_many_streams_and_calls_interleave_on_one_connection(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with memory_pair() as (network, server, client, _):
        network.set_latency(0.001)
        server.add_stream("double", double)
        results: dict[int, list[int]] = {}

        async def session(k: int) -> None:
            got = results.setdefault(k, [])
            async with client.open_stream(server.address, "double") as stream:
                for v in range(10):
                    await stream.send(Packet({"v": 100 * k + v}))
                    got.append((await stream.receive()).header["v"])
                    await client.call(server.address, "echo", Packet(), timeout=5)

        async with trio.open_nursery() as nursery:
            for k in range(40):
                nursery.start_soon(session, k)
        assert results == {k: [2 * (100 * k + v) for v in range(10)] for k in range(40)}
        assert client.stats().connections == server.stats().connections == 1
        await wait_until(lambda: server.stats().handlers == 0 and client.stats().calls == 0)


async def test_large_items_arrive_intact_both_ways(autojump_clock: trio.testing.MockClock) -> None:
    async with memory_pair() as (_, server, client, _):
        server.add_stream("double", double)
        blobs = [os.urandom(size) for size in (0, 1, 65_519, 65_520, 3 * 2**20 + 7)]
        async with client.open_stream(server.address, "double") as stream:
            for v, blob in enumerate(blobs):
                await stream.send(Packet({"v": v}, blob))
                reply = await stream.receive()
                assert reply.header == {"v": 2 * v}
                assert hashlib.sha256(reply.body).digest() == hashlib.sha256(blob).digest()


async def test_a_handler_error_arrives_after_the_items_sent_before_it(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def two_then_fail(stream: BidiStream, context: CallContext) -> None:
        await stream.send(Packet({"i": 1}))
        await stream.send(Packet({"i": 2}))
        raise HandlerError("session_expired", "idle too long")

    async with memory_pair() as (_, server, client, _):
        server.add_stream("s", two_then_fail)
        async with client.open_stream(server.address, "s") as stream:
            assert (await stream.receive()).header == {"i": 1}
            assert (await stream.receive()).header == {"i": 2}
            with pytest.raises(RemoteError) as caught:
                await stream.receive()
            assert caught.value.code == "session_expired"
            with pytest.raises(RemoteError):
                await stream.send(Packet())
        assert client.stats().connections == 1
        assert (await client.call(server.address, "echo", Packet({"a": 1}), timeout=5)).header


async def test_an_unknown_stream_method_is_a_typed_error(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with memory_pair() as (_, server, client, _):
        async with client.open_stream(server.address, "no-such-stream") as stream:
            with pytest.raises(RemoteError) as caught:
                await stream.receive()
        assert caught.value.code == "unknown_method"
        await wait_until(lambda: client.stats().calls == 0)


async def test_a_handler_that_returns_ends_the_stream_for_the_client(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def one_reply(stream: BidiStream, context: CallContext) -> None:
        first = await stream.receive()
        await stream.send(Packet({"got": first.header["x"]}))

    async with memory_pair() as (_, server, client, _):
        server.add_stream("once", one_reply)
        async with client.open_stream(server.address, "once") as stream:
            await stream.send(Packet({"x": 7}))
            assert [p.header async for p in stream] == [{"got": 7}]  # then the end
            with trio.fail_after(5):  # the handler is gone: sending fails, typed
                with pytest.raises(StreamClosedError):
                    while True:
                        await stream.send(Packet({"x": 8}))
                        await trio.sleep(0.1)
        await wait_until(lambda: server.stats().handlers == 0 and client.stats().calls == 0)


async def test_ending_our_side_ends_the_handlers_iteration(
    autojump_clock: trio.testing.MockClock,
) -> None:
    seen: list[int] = []
    handler_done = trio.Event()

    async def collect(stream: BidiStream, context: CallContext) -> None:
        async for packet in stream:
            seen.append(packet.header["i"])
        await stream.send(Packet({"total": sum(seen)}))
        handler_done.set()

    async with memory_pair() as (_, server, client, _):
        server.add_stream("collect", collect)
        async with client.open_stream(server.address, "collect") as stream:
            for i in range(5):
                await stream.send(Packet({"i": i}))
            await stream.end()
            with pytest.raises(StreamClosedError):
                await stream.send(Packet({"i": 99}))
            assert (await stream.receive()).header == {"total": 10}
            with pytest.raises(StreamClosedError):
                await stream.receive()
        await handler_done.wait()
        assert seen == [0, 1, 2, 3, 4]


async def test_a_server_that_stops_reading_bounds_the_client_but_not_the_connection(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Credit, client to server: the handler never reads; the client's sends stop after
    about one window, while calls and other streams on the same connection go on."""
    started = trio.Event()

    async def deaf(stream: BidiStream, context: CallContext) -> None:
        started.set()
        await trio.sleep_forever()

    async with memory_pair() as (_, server, client, _):
        server.add_stream("deaf", deaf)
        server.add_stream("double", double)
        sent = 0
        async with client.open_stream(server.address, "deaf") as stream:
            await started.wait()
            with trio.move_on_after(10):
                while True:
                    await stream.send(Packet({}, bytes(100_000)))
                    sent += 100_000
            window = server.config.stream_window
            assert window - 100_000 <= sent <= window + 100_000
            for _ in range(3):  # the connection still carries everything else
                assert await client.call(server.address, "echo", Packet({"a": 1}), timeout=2)
            async with client.open_stream(server.address, "double") as other:
                await other.send(Packet({"v": 4}))
                assert (await other.receive()).header == {"v": 8}
        await wait_until(lambda: server.stats().handlers == 0)  # leaving cancelled "deaf"


async def test_a_lost_connection_fails_the_stream_on_both_sides(
    autojump_clock: trio.testing.MockClock,
) -> None:
    handler_saw: list[BaseException] = []

    async def hold(stream: BidiStream, context: CallContext) -> None:
        await stream.send(Packet({"ready": True}))
        try:
            await stream.receive()
        except BaseException as error:
            handler_saw.append(error)
            raise

    async with memory_pair() as (network, server, client, _):
        server.add_stream("hold", hold)
        with pytest.raises(ConnectionLostError):
            async with client.open_stream(server.address, "hold") as stream:
                await stream.receive()
                network.cut("10.0.0.2")
                await stream.receive()
        await wait_until(lambda: bool(handler_saw))
        assert isinstance(handler_saw[0], ConnectionLostError | trio.Cancelled)
        await wait_until(lambda: server.stats().handlers == 0 and server.stats().connections == 0)
        # the pool dials again for the next stream
        server.add_stream("double", double)
        async with client.open_stream(server.address, "double") as stream:
            await stream.send(Packet({"v": 1}))
            assert (await stream.receive()).header == {"v": 2}
