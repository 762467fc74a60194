"""Unary calls and streams: one connection per pair, deadlines, cancellation, backpressure."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from routing.address import PeerAddress
from routing.errors import CallTimeoutError, PeerUnreachableError, RemoteError, StreamClosedError
from routing.rpc import BidiStream, CallContext, Packet
from security import Identity

from .helpers import memory_pair


async def test_many_concurrent_calls_share_one_connection(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with memory_pair() as (_, server, client, _):
        replies: list[int] = []

        async def call(n: int) -> None:
            reply = await client.call(server.address, "echo", Packet({"n": n}), timeout=10)
            replies.append(reply.header["n"])

        async with trio.open_nursery() as nursery:
            for n in range(100):
                nursery.start_soon(call, n)
        assert sorted(replies) == list(range(100))
        assert client.stats().connections == 1 and server.stats().connections == 1


async def test_the_peer_id_pins_the_handshake(autojump_clock: trio.testing.MockClock) -> None:
    async with memory_pair() as (_, server, client, _):
        impostor = PeerAddress(
            server.address.host, server.address.port, Identity.generate().peer_id
        )
        with pytest.raises(PeerUnreachableError):
            await client.call(impostor, "echo", Packet(), timeout=10)
        reply = await client.call(server.address, "echo", Packet({"ok": True}), timeout=10)
        assert reply.header == {"ok": True}


async def test_a_deadline_cancels_the_remote_handler(
    autojump_clock: trio.testing.MockClock,
) -> None:
    cancelled = trio.Event()

    async def slow(request: Packet, context: CallContext) -> Packet:
        try:
            await trio.sleep_forever()
        finally:
            cancelled.set()
        raise AssertionError("unreachable")

    async with memory_pair() as (_, server, client, _):
        server.add_unary("slow", slow)
        with pytest.raises(CallTimeoutError):
            await client.call(server.address, "slow", Packet(), timeout=2)
        with trio.fail_after(5):
            await cancelled.wait()
        assert (await client.call(server.address, "echo", Packet({"a": 1}), timeout=5)).header
        with trio.fail_after(5):
            while server.stats().handlers:  # noqa: ASYNC110 (polls a count)
                await trio.sleep(0.01)


async def test_streams_round_trip_and_end(autojump_clock: trio.testing.MockClock) -> None:
    async def doubler(stream: BidiStream, context: CallContext) -> None:
        async for packet in stream:
            await stream.send(Packet({"v": packet.header["v"] * 2}))
        await stream.end()

    async with memory_pair() as (_, server, client, _):
        server.add_stream("double", doubler)
        async with client.open_stream(server.address, "double") as stream:
            for v in range(5):
                await stream.send(Packet({"v": v}))
                assert (await stream.receive()).header == {"v": 2 * v}
            await stream.end()
            with pytest.raises(StreamClosedError):
                await stream.receive()


async def test_abandoning_a_stream_cancels_the_remote_handler(
    autojump_clock: trio.testing.MockClock,
) -> None:
    finished = trio.Event()

    async def listener(stream: BidiStream, context: CallContext) -> None:
        try:
            await stream.send(Packet({"ready": True}))
            await trio.sleep_forever()
        finally:
            finished.set()

    async with memory_pair() as (_, server, client, _):
        server.add_stream("listen", listener)
        async with client.open_stream(server.address, "listen") as stream:
            await stream.receive()
            await stream.aclose()
        with trio.fail_after(5):
            await finished.wait()


async def test_a_slow_reader_holds_back_the_sender(autojump_clock: trio.testing.MockClock) -> None:
    """Credit: a stream whose reader does not read stops its sender after about a window."""
    sent = 0
    release = trio.Event()

    async def flood(stream: BidiStream, context: CallContext) -> None:
        nonlocal sent
        while True:
            await stream.send(Packet({}, bytes(64 * 1024)))
            sent += 64 * 1024

    async with memory_pair() as (_, server, client, _):
        server.add_stream("flood", flood)
        async with client.open_stream(server.address, "flood") as stream:
            await stream.send(Packet({"start": True}))
            with trio.move_on_after(5):
                await release.wait()  # we never read during these 5 s
            window = server.config.stream_window
            assert 0 < sent <= window + 2 * 64 * 1024
            await stream.receive()  # reading lets it go on
            await stream.aclose()


async def test_handler_errors_keep_their_code(autojump_clock: trio.testing.MockClock) -> None:
    from routing.errors import HandlerError

    async def refuse(request: Packet, context: CallContext) -> Packet:
        raise HandlerError("too_big", "that is too big")

    async with memory_pair() as (_, server, client, _):
        server.add_unary("refuse", refuse)
        with pytest.raises(RemoteError) as caught:
            await client.call(server.address, "refuse", Packet(), timeout=5)
        assert (caught.value.code, caught.value.message) == ("too_big", "that is too big")
        with pytest.raises(RemoteError) as unknown:
            await client.call(server.address, "nothing-here", Packet(), timeout=5)
        assert unknown.value.code == "unknown_method"
