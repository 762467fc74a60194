"""The frame layout of a secure stream, pure: a 2-byte big-endian length, then the bytes.

Noise messages are at most 65,535 bytes, so one frame carries one Noise message. Handshake
messages and transport messages use the same framing. `FrameReader` finds whole frames in
the bytes received so far, and refuses a frame above its cap from the header alone, before
waiting for (or buffering) its body.
"""

from __future__ import annotations

import struct

from .errors import FrameTooLargeError
from .noise.cipher_state import CipherState

__all__ = ["HEADER_SIZE", "MAX_FRAME_SIZE", "FrameReader", "encode_frame", "encrypt_frames"]

HEADER = struct.Struct(">H")
HEADER_SIZE = HEADER.size
MAX_FRAME_SIZE = 65535


def encode_frame(payload: bytes) -> bytes:
    """Length prefix + payload."""
    if len(payload) > MAX_FRAME_SIZE:
        raise FrameTooLargeError(f"a frame is at most {MAX_FRAME_SIZE} bytes")
    return HEADER.pack(len(payload)) + payload


class FrameReader:
    """Accumulates received bytes and yields whole frame bodies."""

    __slots__ = ("_buffer", "_max_size", "_offset")

    def __init__(self, max_size: int = MAX_FRAME_SIZE) -> None:
        if not 0 < max_size <= MAX_FRAME_SIZE:
            raise ValueError(f"max_size must be in 1..{MAX_FRAME_SIZE}")
        self._max_size = max_size
        self._buffer = bytearray()
        self._offset = 0

    @property
    def max_size(self) -> int:
        return self._max_size

    @max_size.setter
    def max_size(self, value: int) -> None:
        if not 0 < value <= MAX_FRAME_SIZE:
            raise ValueError(f"max_size must be in 1..{MAX_FRAME_SIZE}")
        self._max_size = value

    @property
    def buffered(self) -> int:
        """Bytes received but not yet returned as a frame (non-zero at EOF = truncated)."""
        return len(self._buffer) - self._offset

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        if self._offset:
            del self._buffer[: self._offset]
            self._offset = 0
        self._buffer += data

    def next_frame(self) -> bytes | None:
        """The next whole frame body, or None if more bytes are needed."""
        buffer, offset = self._buffer, self._offset
        if len(buffer) - offset < HEADER_SIZE:
            return None
        (size,) = HEADER.unpack_from(buffer, offset)
        if size > self._max_size:
            raise FrameTooLargeError(f"frame of {size} bytes exceeds the cap of {self._max_size}")
        end = offset + HEADER_SIZE + size
        if len(buffer) < end:
            return None
        with memoryview(buffer) as view:  # one copy, and the view is released at once
            frame = bytes(view[offset + HEADER_SIZE : end])
        self._offset = end
        return frame


def encrypt_frames(cipher: CipherState, view: memoryview, step: int) -> bytes:
    """Length-prefixed encrypted frames of `view`, `step` plaintext bytes each, joined."""
    if len(view) <= step:
        ciphertext = cipher.encrypt_with_ad(b"", view)
        return HEADER.pack(len(ciphertext)) + ciphertext
    parts: list[bytes] = []
    for start in range(0, len(view), step):
        ciphertext = cipher.encrypt_with_ad(b"", view[start : start + step])
        parts.append(HEADER.pack(len(ciphertext)))
        parts.append(ciphertext)
    return b"".join(parts)
