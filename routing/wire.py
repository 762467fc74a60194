"""The RPC wire format: a pure codec (no I/O) for the messages one connection carries.

Layout of one message (all integers big-endian)::

    total     u32   bytes after this field: 13 + len(header) + len(payload)
    kind      u8    a `Kind`
    call_id   u64   chosen by the side that starts the call (odd: dialer, even: listener);
                    0 is the connection itself: an ERROR on it refuses the connection
    hlen      u32   length of the msgpack header
    header    hlen bytes of msgpack (any msgpack value; the RPC layer checks its shape)
    padding   0-7 bytes, only before a non-empty payload, so that the payload starts at a
              multiple of 8 from the start of the message (aligned tensor data)
    payload   the rest: raw bytes (tensor data), possibly empty

`encode` returns a list of buffers (prefix + header in one small `bytes`, then the payload
as given), so a large payload is never copied before it reaches the transport. `Decoder`
is fed the bytes a stream delivers and returns complete messages; a message that arrived
in one chunk is sliced out of it without a copy (`memoryview`); the pieces of one that spans
chunks are kept as they arrive (no copy of `bytes` input) and joined once, when the last
piece comes, into a buffer of exactly its size. The declared size is checked against the cap
first, and nothing is allocated ahead of the bytes that actually arrived, so a peer that
announces a large message and stops costs only what it sent. Anything malformed raises
`ProtocolError` (`MessageTooLargeError` for sizes); the decoder never asserts and never
crashes on garbage.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import msgpack

from .errors import MessageTooLargeError, ProtocolError

__all__ = [
    "DEFAULT_MAX_MESSAGE_SIZE",
    "INITIAL_STREAM_WINDOW",
    "MIN_STREAM_COST",
    "PREFIX_SIZE",
    "Buffer",
    "Decoder",
    "Kind",
    "Message",
    "encode",
    "encoded_size",
    "stream_cost",
]

Buffer = bytes | bytearray | memoryview

DEFAULT_MAX_MESSAGE_SIZE = 64 * 1024 * 1024
MAX_CALL_ID = (1 << 64) - 1
MIN_STREAM_COST = 256  # a stream message counts at least this much against a window
INITIAL_STREAM_WINDOW = 256 * 1024  # credit each side implicitly grants when a stream opens
MAX_WINDOW_INCREMENT = 1 << 40

_LENGTH = struct.Struct(">I")
_PREFIX = struct.Struct(">IBQI")  # total, kind, call id, header length
_BODY_HEAD = struct.Struct(">BQI")  # what follows the total length
PREFIX_SIZE = _PREFIX.size  # 17
_BODY_HEAD_SIZE = _BODY_HEAD.size  # 13
_MAX_TOTAL = (1 << 32) - 1
_ZEROS = bytes(8)


class Kind(enum.IntEnum):
    """Message kinds. Header shapes (checked by the RPC layer) are in the comments."""

    REQUEST = 1  # [method: str, header: map]           starts a unary call
    RESPONSE = 2  # header: map                         ends a unary call
    ERROR = 3  # [code: str, message: str]              ends a unary call or a stream
    STREAM_OPEN = 4  # [method: str]                    starts a bidirectional stream
    STREAM_DATA = 5  # header: map                      one stream item
    STREAM_END = 6  # nil                               the sender will send no more items
    CANCEL = 7  # nil                                   the sender abandons the call
    WINDOW = 8  # increment: int > 0                    more stream credit, in bytes


_KINDS = {int(kind): kind for kind in Kind}


@dataclass(frozen=True, slots=True)
class Message:
    """One decoded (or to-be-encoded) message."""

    kind: Kind
    call_id: int
    header: Any = None
    payload: Buffer = b""
    size: int = 0  # bytes on the wire, prefix included (set by the decoder)


def _pack(header: Any) -> bytes:
    try:
        packed: bytes = msgpack.packb(header, use_bin_type=True)
    except (TypeError, ValueError, OverflowError) as error:
        raise ValueError(f"header is not msgpack-serialisable: {error}") from error
    return packed


def encoded_size(header_length: int, payload_length: int) -> int:
    """Wire size of a message with a header and payload of these lengths."""
    return PREFIX_SIZE + header_length + payload_length


def stream_cost(wire_size: int) -> int:
    """What a stream message of `wire_size` bytes takes from the receiver's window."""
    return max(wire_size, MIN_STREAM_COST)


def encode(
    kind: Kind,
    call_id: int,
    header: Any = None,
    payload: Buffer = b"",
    *,
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
) -> list[Buffer]:
    """Encode one message as buffers to write in order (the payload is not copied).

    Raises MessageTooLargeError if it would exceed `max_message_size` (prefix included),
    ValueError if the header cannot be packed or the call id is out of range.
    """
    if not 0 <= call_id <= MAX_CALL_ID:
        raise ValueError(f"call id out of range: {call_id}")
    packed = _pack(header)
    if type(payload) is not bytes:
        payload = memoryview(payload).cast("B")
    size = PREFIX_SIZE + len(packed) + len(payload)
    if size > max_message_size or size - 4 > _MAX_TOTAL:
        raise MessageTooLargeError(f"message of {size} bytes exceeds the cap {max_message_size}")
    if not payload:
        return [_PREFIX.pack(size - 4, kind, call_id, len(packed)) + packed]
    padding = _padding(len(packed))
    size += padding
    if size > max_message_size or size - 4 > _MAX_TOTAL:
        raise MessageTooLargeError(f"message of {size} bytes exceeds the cap {max_message_size}")
    head = _PREFIX.pack(size - 4, kind, call_id, len(packed)) + packed + _ZEROS[:padding]
    return [head, payload]


def _padding(header_length: int) -> int:
    return -(PREFIX_SIZE + header_length) % 8


def encode_message(message: Message, *, max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE) -> bytes:
    """One message as a single `bytes` (tests and tools; the RPC layer uses `encode`)."""
    parts = encode(
        message.kind,
        message.call_id,
        message.header,
        message.payload,
        max_message_size=max_message_size,
    )
    return b"".join(parts)


def _unpack_header(data: memoryview) -> Any:
    try:
        return msgpack.unpackb(data, raw=False, strict_map_key=True, use_list=True)
    except Exception as error:  # msgpack raises many types on garbage; all mean "malformed"
        raise ProtocolError(f"malformed msgpack header: {type(error).__name__}") from None


def _parse_body(body: memoryview, max_header_size: int) -> Message:
    """Parse what follows the total length (`body` holds exactly one message)."""
    kind_value, call_id, header_length = _BODY_HEAD.unpack_from(body)
    kind = _KINDS.get(kind_value)
    if kind is None:
        raise ProtocolError(f"unknown message kind {kind_value}")
    if header_length > len(body) - _BODY_HEAD_SIZE:
        raise ProtocolError("header length exceeds the message")
    if header_length > max_header_size:
        raise MessageTooLargeError(f"header of {header_length} bytes exceeds the cap")
    header_end = _BODY_HEAD_SIZE + header_length
    header = _unpack_header(body[_BODY_HEAD_SIZE:header_end]) if header_length else None
    if header_end < len(body):
        header_end += _padding(header_length)
        if header_end >= len(body):
            raise ProtocolError("padding without a payload")
    return Message(kind, call_id, header, body[header_end:], len(body) + 4)


class Decoder:
    """Incremental decoder: `feed(data)` returns the messages completed by `data`.

    After a ProtocolError the decoder is unusable (the stream has lost its framing); the
    connection must be closed.
    """

    def __init__(
        self,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        *,
        max_header_size: int | None = None,
    ) -> None:
        if max_message_size < PREFIX_SIZE:
            raise ValueError("max_message_size is smaller than the message prefix")
        self.max_message_size = max_message_size
        self.max_header_size = max_message_size if max_header_size is None else max_header_size
        self._length_bytes = bytearray()  # a total length split across chunks
        self._pieces: list[Buffer] = []  # the pieces of a message that spans chunks
        self._filled = 0  # bytes in `_pieces`
        self._expected = 0  # the size of that message, its length field included
        self._failed: ProtocolError | None = None

    @property
    def buffered(self) -> int:
        """Bytes received that belong to an incomplete message."""
        return len(self._length_bytes) + self._filled

    def _check_total(self, total: int) -> None:
        if total < _BODY_HEAD_SIZE:
            raise ProtocolError(f"message length {total} is shorter than the minimum")
        if total + 4 > self.max_message_size:
            raise MessageTooLargeError(
                f"message of {total + 4} bytes exceeds the cap {self.max_message_size}"
            )

    def feed(self, data: Buffer) -> list[Message]:
        """Consume `data`; return every message it completes, in order."""
        if self._failed is not None:
            raise ProtocolError("decoder failed earlier") from self._failed
        try:
            return self._feed(memoryview(data).cast("B") if type(data) is not bytes else data)
        except ProtocolError as error:
            self._failed = error
            raise

    def _feed(self, data: bytes | memoryview) -> list[Message]:
        view = memoryview(data)
        end = len(view)
        pos = 0
        messages: list[Message] = []
        while pos < end:
            if self._expected:
                take = min(self._expected - self._filled, end - pos)
                piece = view[pos : pos + take]
                # `bytes` input is immutable: keep a view of it; anything else may be reused
                # by the caller after `feed` returns, so copy it.
                self._pieces.append(piece if type(data) is bytes else bytes(piece))
                self._filled += take
                pos += take
                if self._filled == self._expected:
                    whole = bytearray().join(self._pieces)  # one copy, aligned by malloc
                    self._pieces.clear()
                    self._filled = self._expected = 0
                    messages.append(_parse_body(memoryview(whole)[4:], self.max_header_size))
                continue
            if self._length_bytes or end - pos < 4:
                take = min(4 - len(self._length_bytes), end - pos)
                self._length_bytes += view[pos : pos + take]
                pos += take
                if len(self._length_bytes) < 4:
                    break
                (total,) = _LENGTH.unpack(self._length_bytes)
                self._length_bytes.clear()
            else:
                (total,) = _LENGTH.unpack_from(view, pos)
                pos += 4
            self._check_total(total)
            if end - pos >= total:  # whole message in this chunk: slice, no copy
                messages.append(_parse_body(view[pos : pos + total], self.max_header_size))
                pos += total
            else:  # keep the length too, so the payload keeps its 8-byte alignment
                self._expected = total + 4
                self._pieces.append(_LENGTH.pack(total))
                self._filled = 4
        return messages


def decode_all(data: Buffer, max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE) -> list[Message]:
    """Decode a buffer that holds whole messages only (ProtocolError if it ends inside one)."""
    decoder = Decoder(max_message_size)
    messages = decoder.feed(data)
    if decoder.buffered:
        raise ProtocolError("data ends inside a message")
    return messages


def join(buffers: Sequence[Buffer]) -> bytes:
    """Concatenate encoded buffers (for small messages and tests)."""
    return b"".join(buffers)
