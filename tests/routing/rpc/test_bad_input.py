"""A listener keeps serving honest clients through everything a hostile one can send.

Raw clients speak to an `RPCHost` below the RPC layer: plain bytes on the transport, or
hand-made wire messages inside a real `SecureStream`. After each attack the server must
answer an honest client, and its counts (connections, handshakes in progress, handlers,
trio tasks) must be back where they were: nothing leaks.
"""

from __future__ import annotations

import os
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio
import trio.testing

from routing.errors import MessageTooLargeError, RemoteError
from routing.memory_network import MemoryNetwork
from routing.rpc import Packet, RPCConfig, RPCHost
from routing.wire import Decoder, Kind, Message, encode
from security import Identity, SecureStream

from .helpers import count_tasks, echo, start_host

SERVER = "10.0.0.1"
PORT = 4000


@asynccontextmanager
async def _server(config: RPCConfig | None = None) -> AsyncIterator[tuple[MemoryNetwork, RPCHost]]:
    network = MemoryNetwork()
    async with trio.open_nursery() as nursery:
        server = await start_host(nursery, network.transport(SERVER), SERVER, config, PORT)
        server.add_unary("echo", echo)
        yield network, server
        nursery.cancel_scope.cancel()


async def _honest_call(network: MemoryNetwork, server: RPCHost) -> None:
    """A fresh client gets an answer (its own host, its own connection)."""
    async with trio.open_nursery() as nursery:
        client = await start_host(nursery, network.transport("10.0.0.9"), "10.0.0.9")
        reply = await client.call(server.address, "echo", Packet({"n": 1}, b"ok"), timeout=10)
        assert reply.header == {"n": 1} and bytes(reply.body) == b"ok"
        nursery.cancel_scope.cancel()


async def _settled(server: RPCHost, tasks: int) -> None:
    """Wait (bounded) until the server holds no connection or handler beyond `tasks`."""
    with trio.fail_after(60):
        while server.stats().connections or server.stats().unauthenticated or count_tasks() > tasks:  # noqa: ASYNC110
            await trio.sleep(0.01)
    stats = server.stats()
    assert (stats.handlers, stats.calls, stats.dials) == (0, 0, 0)


async def _secure(network: MemoryNetwork, server: RPCHost, host: str = "10.0.0.7") -> SecureStream:
    raw = await network.transport(host).connect(SERVER, PORT)
    stream = SecureStream(raw, Identity.generate(), initiator=True, expected_peer=server.peer_id)
    await stream.do_handshake()
    return stream


async def _until_closed(stream: trio.abc.ReceiveStream) -> None:
    """The server closes the connection (end of stream or broken): a clean refusal."""
    with trio.fail_after(30):
        try:
            while await stream.receive_some(4096):
                pass
        except trio.BrokenResourceError:
            pass


async def _read_messages(stream: SecureStream, decoder: Decoder, count: int) -> list[Message]:
    messages: list[Message] = []
    while len(messages) < count:
        data = await stream.receive_some(65536)
        if not data:
            break
        messages.extend(decoder.feed(data))
    return messages


async def test_random_bytes_before_and_after_the_handshake(
    autojump_clock: trio.testing.MockClock,
) -> None:
    rng = random.Random(1)
    # Random bytes may read as the prefix of a large message that never comes: such a
    # connection is closed when it has been idle this long.
    async with _server(RPCConfig(idle_timeout=20.0)) as (network, server):
        tasks = count_tasks()
        for attempt in range(20):  # garbage instead of a handshake
            raw = await network.transport(f"10.1.0.{attempt}").connect(SERVER, PORT)
            await raw.send_all(rng.randbytes(rng.randrange(1, 3000)))
            await _until_closed(raw)
            await raw.aclose()
        for attempt in range(20):  # garbage inside a good encrypted channel
            stream = await _secure(network, server, f"10.2.0.{attempt}")
            await stream.send_all(rng.randbytes(rng.randrange(1, 3000)))
            await _until_closed(stream)
            await stream.aclose()
        for attempt in range(20):  # a handshake, then raw bytes that are not frames
            stream = await _secure(network, server, f"10.3.0.{attempt}")
            await stream.transport_stream.send_all(os.urandom(64))
            await _until_closed(stream)
            await stream.aclose()
        await _honest_call(network, server)
        await _settled(server, tasks)


async def test_truncated_frames_and_oversized_messages(
    autojump_clock: trio.testing.MockClock,
) -> None:
    config = RPCConfig(max_message_size=4 * 2**20, max_header_size=64 * 1024)
    async with _server(config) as (network, server):
        tasks = count_tasks()
        # a frame whose length promises more than is sent, then the dialer hangs up
        stream = await _secure(network, server)
        await stream.transport_stream.send_all(b"\xff\xff" + bytes(100))
        await stream.transport_stream.aclose()
        # a message prefix announcing more than the cap: refused before any allocation
        stream = await _secure(network, server)
        huge = encode(Kind.REQUEST, 1, ["echo", {}], bytes(10), max_message_size=2**31)
        head = bytearray(huge[0])
        head[0:4] = (2**31).to_bytes(4, "big")
        await stream.send_all(bytes(head))
        await _until_closed(stream)
        await stream.aclose()
        # an honest call over the cap is refused on the sender's side, typed
        async with trio.open_nursery() as nursery:
            client = await start_host(nursery, network.transport("10.0.0.8"), "10.0.0.8", config)
            with pytest.raises(MessageTooLargeError, match="exceeds the cap"):
                await client.call(server.address, "echo", Packet({}, bytes(5 * 2**20)), timeout=10)
            nursery.cancel_scope.cancel()
        await _honest_call(network, server)
        await _settled(server, tasks)


MALFORMED = [
    lambda i: encode(Kind.REQUEST, 2 * i + 1, "not a list"),
    lambda i: encode(Kind.REQUEST, 2 * i + 1, [7, {}]),
    lambda i: encode(Kind.REQUEST, 2 * i + 1, ["echo", "not a map"]),
    lambda i: encode(Kind.REQUEST, 2 * i + 1, ["no-such-method", {}]),
    lambda i: encode(Kind.STREAM_OPEN, 2 * i + 1, [None]),
    lambda i: encode(Kind.STREAM_OPEN, 2 * i + 1, ["no-such-stream"]),
    lambda i: encode(Kind.CANCEL, 2 * i + 1),
    lambda i: encode(Kind.STREAM_DATA, 2 * i + 1, {}),
    lambda i: encode(Kind.RESPONSE, 2 * i + 1, {"never": "asked"}),
]
ANSWERED = 6  # the first six kinds get an ERROR reply each; the rest are dropped


async def test_ten_thousand_malformed_messages_on_one_connection(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with _server() as (network, server):
        tasks = count_tasks()
        stream = await _secure(network, server)
        decoder = Decoder()
        errors = 0
        for batch in range(0, 10_000, 500):
            wire = b"".join(
                b"".join(bytes(b) for b in MALFORMED[i % len(MALFORMED)](i))
                for i in range(batch, batch + 500)
            )
            await stream.send_all(wire)
            expected = sum(1 for i in range(batch, batch + 500) if i % len(MALFORMED) < ANSWERED)
            replies = await _read_messages(stream, decoder, expected)
            assert all(m.kind is Kind.ERROR for m in replies)
            errors += len(replies)
        assert errors == sum(1 for i in range(10_000) if i % len(MALFORMED) < ANSWERED)
        # the same connection still serves a good request
        await stream.send_all(
            b"".join(bytes(b) for b in encode(Kind.REQUEST, 99_999, ["echo", {"x": 1}]))
        )
        (reply,) = await _read_messages(stream, decoder, 1)
        assert reply.kind is Kind.RESPONSE and reply.header == {"x": 1}
        await stream.aclose()
        await _honest_call(network, server)
        await _settled(server, tasks)


async def test_silent_connections_are_dropped_and_capped(
    autojump_clock: trio.testing.MockClock,
) -> None:
    config = RPCConfig(handshake_timeout=5.0, max_unauthenticated=4)
    async with _server(config) as (network, server):
        tasks = count_tasks()
        silent = [await network.transport(f"10.4.0.{i}").connect(SERVER, PORT) for i in range(10)]
        with trio.fail_after(1):
            while server.stats().unauthenticated < 4:  # noqa: ASYNC110 (polls a count)
                await trio.sleep(0.01)
        assert server.stats().unauthenticated == 4  # the cap: the rest were refused at once
        start = trio.current_time()
        with trio.fail_after(30):
            while server.stats().unauthenticated:  # noqa: ASYNC110 (polls a count)
                await trio.sleep(0.1)
        assert trio.current_time() - start <= config.handshake_timeout + 1
        for raw in silent:
            await raw.aclose()
        await _honest_call(network, server)
        await _settled(server, tasks)


async def test_a_failing_handler_is_a_typed_remote_error_and_the_rest_goes_on(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def broken(request: Packet, context: object) -> Packet:
        raise ZeroDivisionError("secret internals")

    async with _server() as (network, server):
        server.add_unary("broken", broken)
        async with trio.open_nursery() as nursery:
            client = await start_host(nursery, network.transport("10.0.0.5"), "10.0.0.5")
            with pytest.raises(RemoteError) as caught:
                await client.call(server.address, "broken", Packet(), timeout=5)
            assert caught.value.code == "internal" and "secret" not in str(caught.value)
            reply = await client.call(server.address, "echo", Packet({"a": 1}), timeout=5)
            assert reply.header == {"a": 1}
            assert client.stats().connections == 1  # the same connection went on
            nursery.cancel_scope.cancel()


def test_a_message_prefix_alone_allocates_little() -> None:
    """A peer announcing a 60 MiB message and sending 1 KiB of it holds ~0.25 MiB here."""
    import tracemalloc

    decoder = Decoder(max_message_size=64 * 2**20)
    (head, body) = encode(Kind.REQUEST, 1, ["echo", {}], bytes(60 * 2**20), max_message_size=2**30)
    tracemalloc.start()
    try:
        assert decoder.feed(bytes(head) + bytes(memoryview(body)[:1024])) == []
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 2**20
    # and the message still arrives whole once the rest comes
    (message,) = decoder.feed(bytes(memoryview(body)[1024:]))
    assert len(message.payload) == 60 * 2**20
