"""SecureStream over in-memory streams: trio's generic stream checks, data integrity, limits."""

from __future__ import annotations

import os

import pytest
import trio
import trio.testing

from security import Identity, PeerId, SecureStream

ALICE = Identity.generate()
BOB = Identity.generate()


def secure_pair(
    transport: tuple[trio.abc.Stream, trio.abc.Stream] | None = None,
) -> tuple[SecureStream, SecureStream]:
    left, right = transport or trio.testing.memory_stream_pair()
    initiator = SecureStream(left, ALICE, initiator=True, expected_peer=BOB.peer_id)
    responder = SecureStream(right, BOB, initiator=False)
    return initiator, responder


async def make_pair() -> tuple[SecureStream, SecureStream]:
    return secure_pair()


async def test_trio_two_way_stream_checks() -> None:
    await trio.testing.check_two_way_stream(make_pair, None)


async def test_trio_checks_over_lockstep_streams() -> None:
    async def make_lockstep() -> tuple[SecureStream, SecureStream]:
        return secure_pair(trio.testing.lockstep_stream_pair())

    await trio.testing.check_two_way_stream(make_lockstep, None)


async def test_handshake_authenticates_both_sides() -> None:
    client, server = secure_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(client.do_handshake)
        nursery.start_soon(server.do_handshake)
    assert client.remote_peer_id == BOB.peer_id
    assert server.remote_peer_id == ALICE.peer_id
    assert client.handshake_hash == server.handshake_hash
    await client.do_handshake()  # idempotent


async def test_remote_peer_id_before_handshake_raises() -> None:
    client, _ = secure_pair()
    with pytest.raises(RuntimeError):
        _ = client.remote_peer_id


@pytest.mark.parametrize("size", [1, 65519, 65520, 200_000, 3 * 2**20 + 7])
async def test_large_messages_round_trip(size: int) -> None:
    client, server = secure_pair()
    payload = os.urandom(size)
    received = bytearray()

    async def receive_all() -> None:
        while len(received) < size:
            received.extend(await server.receive_some())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(receive_all)
        nursery.start_soon(client.send_all, payload)
    assert bytes(received) == payload


async def test_frames_on_the_wire_are_bounded() -> None:
    left, right = trio.testing.memory_stream_pair()
    client = SecureStream(left, ALICE, initiator=True)
    raw: list[bytes] = []
    real_send_all = left.send_all

    async def spy(data: bytes | bytearray | memoryview) -> None:
        raw.append(bytes(data))
        await real_send_all(data)

    left.send_all = spy  # type: ignore[method-assign]
    server = SecureStream(right, BOB, initiator=False)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(client.do_handshake)
        nursery.start_soon(server.do_handshake)
    raw.clear()
    size = 200_000
    async with trio.open_nursery() as nursery:
        nursery.start_soon(client.send_all, b"\x00" * size)
        received = 0
        while received < size:
            received += len(await server.receive_some())
    wire = b"".join(raw)
    frames = []
    while wire:
        length = int.from_bytes(wire[:2], "big")
        frames.append(length)
        wire = wire[2 + length :]
    assert max(frames) <= 65535
    assert sum(frames) - 16 * len(frames) == size
    assert len(frames) == -(-size // 65519)
    assert len(raw) == 1  # one transport send_all for the batch


async def test_receive_some_respects_max_bytes() -> None:
    client, server = secure_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(client.send_all, b"abcdefghij")
        first = await server.receive_some(3)
    assert first == b"abc"
    assert await server.receive_some(4) == b"defg"
    assert await server.receive_some() == b"hij"


def test_peer_id_round_trip() -> None:
    assert PeerId.from_base58(str(ALICE.peer_id)) == ALICE.peer_id
