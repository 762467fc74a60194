"""SecureStream against hostile or broken peers: every failure is typed and closes the line."""

from __future__ import annotations

import os
import random

import pytest
import trio
import trio.testing

from security import (
    BadSignatureError,
    DecryptionError,
    HandshakeConnectionError,
    HandshakeError,
    HandshakeTimeoutError,
    Identity,
    PeerIdMismatchError,
    ProtocolVersionError,
    SecureStream,
)
from security.framing import FrameReader, encode_frame
from security.handshake import NOISE_PROTOCOL, PROTOCOL_VERSION, identity_payload
from security.noise import HandshakeState
from security.noise.primitives import DH25519

ALICE = Identity.generate()
BOB = Identity.generate()


async def read_frame(stream: trio.abc.Stream, reader: FrameReader) -> bytes:
    while (frame := reader.next_frame()) is None:
        data = await stream.receive_some()
        assert data, "unexpected EOF"
        reader.feed(data)
    return frame


async def assert_closed(raw: trio.abc.Stream) -> None:
    """The SecureStream on the other end closed its transport: we read EOF."""
    with trio.fail_after(1):
        while await raw.receive_some():
            pass


async def connected() -> tuple[SecureStream, SecureStream]:
    left, right = trio.testing.memory_stream_pair()
    client = SecureStream(left, ALICE, initiator=True, expected_peer=BOB.peer_id)
    server = SecureStream(right, BOB, initiator=False)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(client.do_handshake)
        nursery.start_soon(server.do_handshake)
    return client, server


@pytest.mark.parametrize("seed", range(20))
async def test_random_bytes_before_the_handshake_responder(seed: int) -> None:
    rng = random.Random(seed)
    raw, right = trio.testing.memory_stream_pair()
    server = SecureStream(right, BOB, initiator=False)
    await raw.send_all(rng.randbytes(rng.randrange(2, 3000)))
    with pytest.raises(HandshakeError):
        await server.receive_some()
    await assert_closed(raw)
    with pytest.raises(trio.BrokenResourceError):
        await server.send_all(b"x")


@pytest.mark.parametrize("seed", range(20))
async def test_random_bytes_before_the_handshake_initiator(seed: int) -> None:
    rng = random.Random(seed)
    left, raw = trio.testing.memory_stream_pair()
    client = SecureStream(left, ALICE, initiator=True)
    await raw.send_all(rng.randbytes(rng.randrange(2, 3000)))
    with pytest.raises(HandshakeError):
        await client.do_handshake()
    with pytest.raises(trio.BrokenResourceError):
        await client.receive_some()


async def test_random_bytes_after_the_handshake() -> None:
    left, raw = trio.testing.memory_stream_pair()
    client = SecureStream(left, ALICE, initiator=True)
    # A responder that completes the handshake honestly, then sends garbage frames.
    static = DH25519.generate_keypair()
    responder = HandshakeState(NOISE_PROTOCOL, initiator=False, prologue=PROTOCOL_VERSION, s=static)
    reader = FrameReader()

    async def rogue() -> None:
        responder.read_message(await read_frame(raw, reader))
        await raw.send_all(
            encode_frame(responder.write_message(identity_payload(BOB, static.public)))
        )
        responder.read_message(await read_frame(raw, reader))
        await raw.send_all(encode_frame(os.urandom(100)))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(rogue)
        with pytest.raises(DecryptionError):
            await client.receive_some()
    assert client.remote_peer_id == BOB.peer_id
    await assert_closed(raw)
    with pytest.raises(trio.BrokenResourceError):
        await client.receive_some()
    with pytest.raises(trio.BrokenResourceError):
        await client.send_all(b"x")


async def test_tampered_frame_after_the_handshake() -> None:
    """A relay that flips one bit of a real frame."""
    left, relay_left = trio.testing.memory_stream_pair()
    relay_right, right = trio.testing.memory_stream_pair()
    client = SecureStream(left, ALICE, initiator=True)
    server = SecureStream(right, BOB, initiator=False)
    flip = trio.Event()

    async def relay(source: trio.abc.Stream, sink: trio.abc.Stream, tamper: bool) -> None:
        while data := await source.receive_some():
            if tamper and flip.is_set():
                data = bytearray(data)
                data[-1] ^= 1
            await sink.send_all(data)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(relay, relay_left, relay_right, True)
        nursery.start_soon(relay, relay_right, relay_left, False)
        nursery.start_soon(server.do_handshake)
        await client.do_handshake()
        await client.send_all(b"intact")
        assert await server.receive_some() == b"intact"
        flip.set()
        await client.send_all(b"tampered")
        with pytest.raises(DecryptionError):
            await server.receive_some()
        nursery.cancel_scope.cancel()


async def test_truncated_frame_after_the_handshake() -> None:
    client, server = await connected()
    wire = client.transport_stream
    await wire.send_all(b"\x01\x00" + b"only part of a 256-byte frame")
    await wire.aclose()
    with pytest.raises(DecryptionError, match="inside a frame"):
        await server.receive_some()
    with pytest.raises(trio.BrokenResourceError):
        await server.receive_some()


async def test_truncated_header_after_the_handshake() -> None:
    client, server = await connected()
    await client.transport_stream.send_all(b"\x01")
    await client.transport_stream.aclose()
    with pytest.raises(DecryptionError):
        await server.receive_some()


async def test_clean_eof_at_a_frame_boundary() -> None:
    client, server = await connected()
    await client.send_all(b"last words")
    await client.aclose()
    assert await server.receive_some() == b"last words"
    assert await server.receive_some() == b""
    assert await server.receive_some() == b""


async def test_truncated_handshake_message() -> None:
    raw, right = trio.testing.memory_stream_pair()
    server = SecureStream(right, BOB, initiator=False)
    await raw.send_all(b"\x00\x30" + b"\x00" * 10)
    await raw.aclose()
    with pytest.raises(HandshakeConnectionError):
        await server.do_handshake()


async def test_oversize_handshake_message_is_refused_from_its_header() -> None:
    raw, right = trio.testing.memory_stream_pair()
    server = SecureStream(right, BOB, initiator=False)
    await raw.send_all(b"\xff\xff")  # announces 65,535 bytes; nothing else is sent
    with pytest.raises(HandshakeError, match="oversize"):
        await server.do_handshake()
    await assert_closed(raw)


async def test_oversize_transport_frame() -> None:
    left, right = trio.testing.memory_stream_pair()
    client = SecureStream(left, ALICE, initiator=True, max_message_size=1000)
    server = SecureStream(right, BOB, initiator=False, max_message_size=500)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(client.do_handshake)
        nursery.start_soon(server.do_handshake)
    await client.send_all(b"x" * 900)
    with pytest.raises(DecryptionError, match="exceeds"):
        await server.receive_some()


@pytest.mark.parametrize("initiator", [True, False])
async def test_silent_peer_times_out(
    autojump_clock: trio.testing.MockClock, initiator: bool
) -> None:
    ours, silent = trio.testing.memory_stream_pair()
    stream = SecureStream(ours, ALICE, initiator=initiator, handshake_timeout=5.0)
    start = trio.current_time()
    with pytest.raises(HandshakeTimeoutError):
        await stream.receive_some()
    assert trio.current_time() - start == pytest.approx(5.0)
    await assert_closed(silent)
    with pytest.raises(trio.BrokenResourceError):
        await stream.send_all(b"x")


async def test_wrong_expected_peer() -> None:
    left, right = trio.testing.memory_stream_pair()
    stranger = Identity.generate()
    client = SecureStream(left, ALICE, initiator=True, expected_peer=stranger.peer_id)
    server = SecureStream(right, BOB, initiator=False)
    server_errors: list[HandshakeError] = []

    async def serve() -> None:
        try:
            await server.do_handshake()
        except HandshakeError as error:
            server_errors.append(error)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve)
        with pytest.raises(PeerIdMismatchError, match=str(BOB.peer_id)):
            await client.do_handshake()
    # The dialer hung up before sending message 3.
    assert [type(error) for error in server_errors] == [HandshakeConnectionError]
    with pytest.raises(trio.BrokenResourceError):
        await client.send_all(b"x")


async def test_wrong_version() -> None:
    left, right = trio.testing.memory_stream_pair()
    client = SecureStream(left, ALICE, initiator=True, version=b"swarm-noise/0")
    server = SecureStream(right, BOB, initiator=False)
    client_errors: list[HandshakeError] = []

    async def dial() -> None:
        try:
            await client.do_handshake()
        except HandshakeError as error:
            client_errors.append(error)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(dial)
        with pytest.raises(ProtocolVersionError, match="version mismatch"):
            await server.do_handshake()
    # The responder hung up: the dialer learns only that the handshake was refused.
    assert [type(error) for error in client_errors] == [HandshakeConnectionError]


async def test_bad_signature_from_a_responder() -> None:
    """A responder whose identity signature covers another Noise static key."""
    left, raw = trio.testing.memory_stream_pair()
    client = SecureStream(left, ALICE, initiator=True, expected_peer=BOB.peer_id)
    static, other = DH25519.generate_keypair(), DH25519.generate_keypair()
    responder = HandshakeState(NOISE_PROTOCOL, initiator=False, prologue=PROTOCOL_VERSION, s=static)
    reader = FrameReader()

    async def rogue() -> None:
        responder.read_message(await read_frame(raw, reader))
        payload = identity_payload(BOB, other.public)
        await raw.send_all(encode_frame(responder.write_message(payload)))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(rogue)
        with pytest.raises(BadSignatureError):
            await client.do_handshake()
    await assert_closed(raw)


async def test_concurrent_first_use_runs_one_handshake() -> None:
    client, server = (
        SecureStream(s, who, initiator=i)
        for s, who, i in zip(
            trio.testing.memory_stream_pair(), (ALICE, BOB), (True, False), strict=True
        )
    )
    async with trio.open_nursery() as nursery:
        nursery.start_soon(client.send_all, b"from client")
        nursery.start_soon(server.send_all, b"from server")
        assert await client.receive_some() == b"from server"
        assert await server.receive_some() == b"from client"
