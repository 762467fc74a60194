"""The wire codec: round trips, zero-copy decoding, caps before allocation, fuzzing."""

from __future__ import annotations

import contextlib
import struct

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from routing.errors import MessageTooLargeError, ProtocolError
from routing.wire import PREFIX_SIZE, Decoder, Kind, Message, decode_all, encode, encode_message

headers = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.text() | st.binary(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)


def test_layout_matches_the_documented_prefix() -> None:
    data = encode_message(Message(Kind.REQUEST, 7, ["m", {}], b"abc"))
    header = msgpack.packb(["m", {}])
    total, kind, call_id, header_length = struct.unpack_from(">IBQI", data)
    assert (kind, call_id, header_length) == (Kind.REQUEST, 7, len(header))
    assert total == len(data) - 4
    assert data[PREFIX_SIZE : PREFIX_SIZE + len(header)] == header
    assert data.endswith(b"abc")
    assert (len(data) - 3) % 8 == 0  # the payload starts 8-byte aligned


@given(
    kind=st.sampled_from(list(Kind)),
    call_id=st.integers(0, 2**64 - 1),
    header=headers,
    payload=st.binary(max_size=300),
    cuts=st.lists(st.integers(0, 400), max_size=6),
)
def test_round_trip_in_any_chunking(
    kind: Kind, call_id: int, header: object, payload: bytes, cuts: list[int]
) -> None:
    data = encode_message(Message(kind, call_id, header, payload)) * 2
    decoder = Decoder(1 << 20)
    messages: list[Message] = []
    start = 0
    for cut in [*sorted(c % (len(data) + 1) for c in cuts), len(data)]:
        messages += decoder.feed(data[start:cut])
        start = max(start, cut)
    assert decoder.buffered == 0
    assert len(messages) == 2
    for message in messages:
        assert (message.kind, message.call_id, message.header) == (kind, call_id, header)
        assert bytes(message.payload) == payload
        assert message.size == len(data) // 2


def test_encode_does_not_copy_the_payload() -> None:
    payload = bytearray(100_000)
    buffers = encode(Kind.STREAM_DATA, 1, {}, payload)
    assert len(buffers) == 2
    view = buffers[1]
    assert isinstance(view, memoryview)
    payload[0] = 42
    assert view[0] == 42


def test_decoded_payload_is_a_slice_of_the_received_chunk() -> None:
    chunk = encode_message(Message(Kind.RESPONSE, 2, {"a": 1}, b"x" * 1000))
    (message,) = Decoder().feed(chunk)
    assert isinstance(message.payload, memoryview)
    assert message.payload.obj is chunk


def test_message_spanning_chunks_is_assembled_once_and_aligned() -> None:
    data = encode_message(Message(Kind.RESPONSE, 2, {"a": 1}, bytes(range(256)) * 40))
    decoder = Decoder()
    assert decoder.feed(data[:100]) == []
    (message,) = decoder.feed(data[100:])
    assert bytes(message.payload) == bytes(range(256)) * 40
    assert isinstance(message.payload, memoryview) and not message.payload.readonly
    assert isinstance(message.payload.obj, bytearray)
    assert len(message.payload.obj) == len(data)  # one buffer of exactly the message


def test_reused_input_buffers_do_not_corrupt_a_message_that_spans_them() -> None:
    """Only `bytes` input is kept by reference; a caller may reuse any other buffer."""
    data = encode_message(Message(Kind.STREAM_DATA, 3, {"k": "v"}, bytes(range(256)) * 100))
    decoder = Decoder()
    scratch = bytearray(1000)
    messages: list[Message] = []
    for start in range(0, len(data), 1000):
        piece = data[start : start + 1000]
        scratch[: len(piece)] = piece
        messages += decoder.feed(memoryview(scratch)[: len(piece)])
        scratch[:] = bytes(1000)  # the caller reuses its buffer at once
    (message,) = messages
    assert message.header == {"k": "v"} and bytes(message.payload) == bytes(range(256)) * 100


def test_size_is_checked_before_allocation() -> None:
    decoder = Decoder(1024)
    with pytest.raises(MessageTooLargeError):
        decoder.feed(struct.pack(">I", 2**32 - 1))  # 4 GiB announced, 4 bytes sent
    with pytest.raises(ProtocolError):  # the decoder stays failed
        decoder.feed(b"")


def test_encode_refuses_messages_over_the_cap() -> None:
    with pytest.raises(MessageTooLargeError):
        encode(Kind.STREAM_DATA, 1, {}, bytes(2000), max_message_size=1024)


@pytest.mark.parametrize(
    "data",
    [
        struct.pack(">IBQI", 5, 1, 1, 0),  # shorter than the fixed fields
        struct.pack(">IBQI", 13, 99, 1, 0),  # unknown kind
        struct.pack(">IBQI", 13, 0, 1, 0),  # kind 0
        struct.pack(">IBQI", 14, 1, 1, 5) + b"x",  # header longer than the message
        struct.pack(">IBQI", 14, 1, 1, 1) + b"\xc1",  # 0xc1: never valid msgpack
        struct.pack(">IBQI", 15, 1, 1, 1) + b"\x01\x02",  # padding without payload
        struct.pack(">IBQI", 15, 1, 1, 2) + b"\x81\x01",  # map with an int key, truncated
        struct.pack(">IBQI", 16, 1, 1, 3) + b"\x81\x01\x02",  # map with an int key
        struct.pack(">IBQI", 14, 1, 1, 1) + b"\xdc",  # truncated array
    ],
)
def test_malformed_messages_raise_protocol_error(data: bytes) -> None:
    with pytest.raises(ProtocolError):
        decode_all(data)


def test_truncated_data_is_reported_by_decode_all() -> None:
    data = encode_message(Message(Kind.RESPONSE, 2, {}, b"abc"))
    with pytest.raises(ProtocolError):
        decode_all(data[:-1])


def test_header_cap() -> None:
    data = encode_message(Message(Kind.RESPONSE, 2, {"k": "v" * 100}))
    with pytest.raises(MessageTooLargeError):
        Decoder(1 << 20, max_header_size=50).feed(data)


@settings(max_examples=500)
@given(st.binary(max_size=2000), st.integers(1, 64))
def test_fuzz_random_bytes_only_raise_protocol_error(data: bytes, step: int) -> None:
    decoder = Decoder(4096, max_header_size=1024)
    try:
        for start in range(0, len(data), step):
            for message in decoder.feed(data[start : start + step]):
                assert isinstance(message.kind, Kind)
    except ProtocolError:
        pass


@settings(max_examples=300)
@given(
    header=headers,
    payload=st.binary(max_size=64),
    position=st.integers(0, 10_000),
    value=st.integers(0, 255),
)
def test_fuzz_corrupted_messages_only_raise_protocol_error(
    header: object, payload: bytes, position: int, value: int
) -> None:
    data = bytearray(encode_message(Message(Kind.REQUEST, 1, header, payload)))
    data[position % len(data)] = value
    with contextlib.suppress(ProtocolError):
        decode_all(bytes(data), max_message_size=4096)
