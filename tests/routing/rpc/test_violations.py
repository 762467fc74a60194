"""Protocol violations on both sides of a connection, each answered with a clean close or a
typed error, never a crash or a leak.

Server side: messages that break the protocol (rather than merely asking for something
wrong) close that one connection; an honest client's connection, open all along, goes on.
Handshakes that break off or send oversized frames, and a remote that never reads its
replies, are closed within their timeouts. Client side: a hostile *server* (a real secure
channel speaking bad RPC) gives the caller typed errors and leaves nothing behind.
"""

from __future__ import annotations

import struct
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from functools import partial

import pytest
import trio
import trio.testing

from routing.address import PeerAddress
from routing.errors import CallTimeoutError, ConnectionLostError, ProtocolError
from routing.memory_network import MemoryNetwork
from routing.rpc import BidiStream, CallContext, Packet, RPCConfig, RPCHost
from routing.wire import Buffer, Kind, encode
from security import Identity, SecureStream, SecurityError
from security.framing import encode_frame
from security.handshake import SwarmHandshake

from .helpers import count_tasks, echo, start_host, wait_until

SERVER, HONEST, ATTACKER = "10.0.0.1", "10.0.0.2", "10.0.0.66"
PORT = 4000


def _wire(buffers: list[Buffer]) -> bytes:
    return b"".join(bytes(b) for b in buffers)


def _raw(
    kind: int, call_id: int, header: bytes, tail: bytes = b"", total: int | None = None
) -> bytes:
    """A message laid out by hand (to break what `encode` would never produce)."""
    body = struct.pack(">BQI", kind, call_id, len(header)) + header + tail
    return struct.pack(">I", len(body) if total is None else total) + body


def _stream_then(*messages: bytes) -> bytes:
    return _wire(encode(Kind.STREAM_OPEN, 1, ["sink"])) + b"".join(messages)


VIOLATIONS: dict[str, Callable[[], bytes]] = {
    "unknown kind": lambda: _raw(99, 1, b""),
    "invalid msgpack": lambda: _raw(Kind.REQUEST, 1, b"\xc1"),
    "header longer than the message": lambda: _raw(Kind.REQUEST, 1, b"\x90", total=13),
    "padding without payload": lambda: _raw(Kind.REQUEST, 1, b"\x90", tail=b"\x00\x00"),
    "shorter than a message head": lambda: struct.pack(">I", 5) + bytes(5),
    "header over the header cap": lambda: _wire(
        encode(Kind.REQUEST, 1, ["echo", {"x": "y" * 5000}])
    ),
    "a request on call 0": lambda: _wire(encode(Kind.REQUEST, 0, ["echo", {}])),
    "duplicate live call id": lambda: _wire(encode(Kind.REQUEST, 1, ["hang", {}])) * 2,
    "zero window increment": lambda: _stream_then(_wire(encode(Kind.WINDOW, 1, 0))),
    "negative window increment": lambda: _stream_then(_wire(encode(Kind.WINDOW, 1, -5))),
    "window increment not an int": lambda: _stream_then(_wire(encode(Kind.WINDOW, 1, "x"))),
    "huge window increment": lambda: _stream_then(_wire(encode(Kind.WINDOW, 1, 2**50))),
    "stream data header not a map": lambda: _stream_then(_wire(encode(Kind.STREAM_DATA, 1, [1]))),
    "stream data beyond the window": lambda: _stream_then(
        *[_wire(encode(Kind.STREAM_DATA, 1, {}, bytes(60_000)))] * 30  # 1.8 MB > 1 MiB window
    ),
}


async def _sink(stream: BidiStream, context: CallContext) -> None:
    await trio.sleep_forever()  # never reads: credit is never returned


async def _hang(request: Packet, context: CallContext) -> Packet:
    await trio.sleep_forever()
    raise AssertionError("unreachable")


@asynccontextmanager
async def _server(
    config: RPCConfig,
) -> AsyncIterator[tuple[MemoryNetwork, RPCHost, RPCHost]]:
    """A server, and an honest client already connected to it."""
    network = MemoryNetwork()
    async with trio.open_nursery() as nursery:
        server = await start_host(nursery, network.transport(SERVER), SERVER, config, PORT)
        server.add_unary("echo", echo)
        server.add_unary("hang", _hang)
        server.add_stream("sink", _sink)
        honest = await start_host(nursery, network.transport(HONEST), HONEST)
        await honest.call(server.address, "echo", Packet(), timeout=5)
        yield network, server, honest
        nursery.cancel_scope.cancel()


async def _attacker(network: MemoryNetwork, server: RPCHost) -> SecureStream:
    raw = await network.transport(ATTACKER).connect(SERVER, PORT)
    stream = SecureStream(raw, Identity.generate(), initiator=True, expected_peer=server.peer_id)
    await stream.do_handshake()
    return stream


async def _until_closed(stream: trio.abc.ReceiveStream) -> None:
    with trio.fail_after(30), suppress(trio.BrokenResourceError):
        while await stream.receive_some(65536):
            pass


@pytest.mark.parametrize("violation", list(VIOLATIONS))
async def test_a_protocol_violation_closes_only_that_connection(
    autojump_clock: trio.testing.MockClock, violation: str, caplog: pytest.LogCaptureFixture
) -> None:
    config = RPCConfig(max_header_size=4096, stream_window=1 << 20)
    async with _server(config) as (network, server, honest):
        tasks = count_tasks()
        connection = honest.connection_to(server.peer_id)
        stream = await _attacker(network, server)
        await stream.send_all(VIOLATIONS[violation]())
        start = trio.current_time()
        await _until_closed(stream)
        assert trio.current_time() - start < 1.0  # closed at once, not by a timeout
        assert any("closing connection" in r.getMessage() for r in caplog.records)  # typed
        await stream.aclose()
        reply = await honest.call(server.address, "echo", Packet({"n": 1}), timeout=5)
        assert reply.header == {"n": 1}
        assert honest.connection_to(server.peer_id) is connection  # never disturbed
        await wait_until(lambda: count_tasks() <= tasks)
        stats = server.stats()
        assert (stats.connections, stats.unauthenticated, stats.handlers) == (1, 0, 0)


async def test_oversized_and_broken_off_handshakes_are_closed(
    autojump_clock: trio.testing.MockClock,
) -> None:
    config = RPCConfig(handshake_timeout=5.0)
    async with _server(config) as (network, server, honest):
        tasks = count_tasks()
        # a handshake frame over the cap: refused from its 2-byte length alone
        raw = await network.transport(ATTACKER).connect(SERVER, PORT)
        await raw.send_all(b"\xff\xff")
        start = trio.current_time()
        await _until_closed(raw)
        assert trio.current_time() - start < 1.0
        await raw.aclose()
        # the first handshake message, then silence: dropped at the handshake timeout
        raw = await network.transport(ATTACKER).connect(SERVER, PORT)
        handshake = SwarmHandshake(Identity.generate(), initiator=True)
        await raw.send_all(encode_frame(handshake.write_message()))
        start = trio.current_time()
        await _until_closed(raw)
        assert trio.current_time() - start == pytest.approx(5.0, abs=0.5)
        await raw.aclose()
        # a valid handshake with an identity that is not the one expected: typed, and the
        # server (which cannot know) just sees a connection that closes
        raw = await network.transport(ATTACKER).connect(SERVER, PORT)
        wrong = SecureStream(
            raw, Identity.generate(), initiator=True, expected_peer=Identity.generate().peer_id
        )
        with pytest.raises(SecurityError):
            await wrong.do_handshake()
        await wrong.aclose()
        assert (await honest.call(server.address, "echo", Packet({"a": 1}), timeout=5)).header
        await wait_until(lambda: count_tasks() <= tasks and server.stats().unauthenticated == 0)


async def test_a_remote_that_never_reads_its_replies_is_disconnected(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def inflate(request: Packet, context: CallContext) -> Packet:
        return Packet({}, bytes(256 * 1024))

    config = RPCConfig(write_stall_timeout=5.0)
    async with _server(config) as (network, server, honest):
        server.add_unary("inflate", inflate)
        tasks = count_tasks()
        stream = await _attacker(network, server)
        # 40 requests whose replies (10 MiB) far exceed what the pipe and queue hold
        await stream.send_all(
            b"".join(_wire(encode(Kind.REQUEST, 2 * i + 1, ["inflate", {}])) for i in range(40))
        )
        await wait_until(lambda: server.stats().handlers > 0)
        start = trio.current_time()
        await wait_until(lambda: server.stats().connections == 1, within=60)  # ours is gone
        assert trio.current_time() - start <= 5.0 + 1.0
        await wait_until(lambda: server.stats().handlers == 0)
        assert (await honest.call(server.address, "echo", Packet({"a": 1}), timeout=5)).header
        await stream.aclose()
        await wait_until(lambda: count_tasks() <= tasks)


# -- a hostile server ----------------------------------------------------------------------


Reply = Callable[[int], bytes]

HOSTILE_REPLIES: dict[str, tuple[Reply, type[Exception]]] = {
    "reply header not a map": (
        lambda cid: _wire(encode(Kind.RESPONSE, cid, [1, 2])),
        ProtocolError,
    ),
    "error header malformed": (lambda cid: _wire(encode(Kind.ERROR, cid, {"a": 1})), ProtocolError),
    "stream data for a unary call": (
        lambda cid: _wire(encode(Kind.STREAM_DATA, cid, {})),
        ConnectionLostError,
    ),
    "garbage bytes": (lambda cid: b"\xff" * 64, ConnectionLostError),
    "over the cap": (lambda cid: b"\x7f\xff\xff\xff" + bytes(100), ConnectionLostError),
    "no reply at all": (lambda cid: b"", CallTimeoutError),
}


async def _hostile_server(
    identity: Identity,
    reply: Reply,
    network: MemoryNetwork,
    *,
    task_status: trio.TaskStatus[tuple[str, int]],
) -> None:
    async def handle(raw: trio.abc.Stream) -> None:
        stream = SecureStream(raw, identity, initiator=False)
        with suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            while data := await stream.receive_some(65536):
                (call_id,) = struct.unpack_from(">Q", data, 5)  # the request's call id
                if wire := reply(call_id):
                    await stream.send_all(wire)

    await network.transport("10.6.6.6").serve("10.6.6.6", 6666, handle, task_status=task_status)


@pytest.mark.parametrize("case", list(HOSTILE_REPLIES))
async def test_a_hostile_server_gives_the_caller_typed_errors(
    autojump_clock: trio.testing.MockClock, case: str
) -> None:
    reply, expected = HOSTILE_REPLIES[case]
    network = MemoryNetwork()
    identity = Identity.generate()
    async with trio.open_nursery() as nursery:
        await nursery.start(partial(_hostile_server, identity, reply, network))
        client = await start_host(nursery, network.transport(HONEST), HONEST)
        tasks = count_tasks()
        address = PeerAddress("10.6.6.6", 6666, identity.peer_id)
        with pytest.raises(expected):
            await client.call(address, "echo", Packet(), timeout=5)
        connection = client.connection_to(identity.peer_id)
        if connection is not None:  # the errors that keep the connection: close it ourselves
            connection.close()
        await wait_until(lambda: count_tasks() <= tasks)
        stats = client.stats()
        assert (stats.connections, stats.calls, stats.dials) == (0, 0, 0)
        nursery.cancel_scope.cancel()
