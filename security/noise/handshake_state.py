"""Noise HandshakeState (spec rev 34, section 5.3): a pure state machine, no I/O.

`write_message` and `read_message` alternate as the pattern says; calling the wrong one for
the current turn, or either after the handshake is complete or has failed, raises
`NoiseStateError`. A message that fails authentication raises `HandshakeError` and leaves
the state failed (the spec says to abort the handshake). When the last message has been
written or read, `split()` gives this side's (send, receive) CipherStates.

PSK modifiers and deferred patterns are not implemented; the swarm uses XX.
"""

from __future__ import annotations

from ..errors import DecryptionError, FrameTooLargeError, HandshakeError, NoiseStateError
from .cipher_state import CipherState
from .patterns import PATTERNS, HandshakePattern
from .primitives import CIPHERS, DHS, HASHES, TAG_SIZE, DHFunction, KeyPair
from .symmetric_state import SymmetricState

__all__ = ["MAX_MESSAGE_SIZE", "HandshakeState", "parse_protocol_name"]

MAX_MESSAGE_SIZE = 65535


def parse_protocol_name(
    name: str,
) -> tuple[HandshakePattern, DHFunction, SymmetricState]:
    """`Noise_<pattern>_<dh>_<cipher>_<hash>` -> pattern, DH and a fresh SymmetricState."""
    parts = name.split("_")
    if len(parts) != 5 or parts[0] != "Noise":
        raise ValueError(f"not a Noise protocol name: {name!r}")
    _, pattern, dh, cipher, hash_ = parts
    if pattern not in PATTERNS or dh not in DHS or cipher not in CIPHERS or hash_ not in HASHES:
        raise ValueError(f"unsupported Noise protocol: {name!r}")
    symmetric = SymmetricState(name.encode("ascii"), CIPHERS[cipher], HASHES[hash_])
    return PATTERNS[pattern], DHS[dh], symmetric


class HandshakeState:
    """Initialize(handshake_pattern, initiator, prologue, s, e, rs, re) of the spec.

    `e` is for test vectors only: a real handshake must let the state generate it.
    """

    def __init__(
        self,
        protocol_name: str,
        *,
        initiator: bool,
        prologue: bytes = b"",
        s: KeyPair | None = None,
        rs: bytes | None = None,
        e: KeyPair | None = None,
    ) -> None:
        self._pattern, self._dh, self._symmetric = parse_protocol_name(protocol_name)
        self._initiator = initiator
        self._s = s
        self._e = e
        self._rs = rs
        self._re: bytes | None = None
        self._index = 0
        self._failed = False
        self._result: tuple[CipherState, CipherState] | None = None
        self._symmetric.mix_hash(prologue)
        for tokens, ours in (
            (self._pattern.initiator_pre, initiator),
            (self._pattern.responder_pre, not initiator),
        ):
            for token in tokens:
                self._symmetric.mix_hash(self._pre_message_key(token, ours))

    def _pre_message_key(self, token: str, ours: bool) -> bytes:
        if token == "s":
            key = (self._s.public if self._s else None) if ours else self._rs
        elif token == "e":
            key = (self._e.public if self._e else None) if ours else self._re
        else:
            raise ValueError(f"bad pre-message token {token!r}")
        if key is None:
            raise ValueError(f"pattern {self._pattern.name} needs a pre-message key {token!r}")
        return key

    # -- state ---------------------------------------------------------------------------

    @property
    def initiator(self) -> bool:
        return self._initiator

    @property
    def is_complete(self) -> bool:
        return self._result is not None

    @property
    def is_our_turn(self) -> bool:
        """Whether the next call must be `write_message` (False once complete)."""
        return not self.is_complete and (self._index % 2 == 0) == self._initiator

    @property
    def message_index(self) -> int:
        return self._index

    @property
    def remote_static(self) -> bytes | None:
        return self._rs

    @property
    def local_static(self) -> KeyPair | None:
        return self._s

    def get_handshake_hash(self) -> bytes:
        return self._symmetric.get_handshake_hash()

    def split(self) -> tuple[CipherState, CipherState]:
        """(send, receive) CipherStates of this side; only once the handshake is complete."""
        if self._result is None:
            raise NoiseStateError("the handshake is not complete")
        c1, c2 = self._result
        return (c1, c2) if self._initiator else (c2, c1)

    def _check_turn(self, writing: bool) -> None:
        if self._failed:
            raise NoiseStateError("the handshake failed; it cannot continue")
        if self.is_complete:
            raise NoiseStateError("the handshake is already complete")
        if self.is_our_turn != writing:
            side = "the other side's" if writing else "our"
            raise NoiseStateError(f"message {self._index + 1} is {side} to write")

    def _dh_token(self, token: str) -> bytes:
        local, remote = (token[0], token[1]) if self._initiator else (token[1], token[0])
        pair = self._s if local == "s" else self._e
        public = self._rs if remote == "s" else self._re
        if pair is None or public is None:
            raise NoiseStateError(f"token {token!r} needs keys this state does not have")
        return self._dh.dh(pair, public)

    def _advance(self) -> None:
        self._index += 1
        if self._index == len(self._pattern.messages):
            self._result = self._symmetric.split()

    # -- messages ------------------------------------------------------------------------

    def write_message(self, payload: bytes = b"") -> bytes:
        self._check_turn(writing=True)
        symmetric = self._symmetric
        out: list[bytes] = []
        for token in self._pattern.messages[self._index]:
            if token == "e":
                if self._e is None:
                    self._e = self._dh.generate_keypair()
                out.append(self._e.public)
                symmetric.mix_hash(self._e.public)
            elif token == "s":
                if self._s is None:
                    raise NoiseStateError("this pattern needs a local static key")
                out.append(symmetric.encrypt_and_hash(self._s.public))
            else:
                symmetric.mix_key(self._dh_token(token))
        out.append(symmetric.encrypt_and_hash(payload))
        message = b"".join(out)
        if len(message) > MAX_MESSAGE_SIZE:
            self._failed = True
            raise FrameTooLargeError(f"a Noise message is at most {MAX_MESSAGE_SIZE} bytes")
        self._advance()
        return message

    def read_message(self, message: bytes) -> bytes:
        """Process the remote's message; returns its payload."""
        self._check_turn(writing=False)
        try:
            payload = self._read(memoryview(message))
        except (HandshakeError, DecryptionError) as error:
            self._failed = True
            if isinstance(error, HandshakeError):
                raise
            raise HandshakeError(
                f"handshake message {self._index + 1} failed authentication"
            ) from error
        self._advance()
        return payload

    def _read(self, message: memoryview) -> bytes:
        if len(message) > MAX_MESSAGE_SIZE:
            raise HandshakeError(f"a Noise message is at most {MAX_MESSAGE_SIZE} bytes")
        symmetric = self._symmetric
        dhlen = self._dh.dhlen
        offset = 0

        def take(size: int) -> bytes:
            nonlocal offset
            if offset + size > len(message):
                raise HandshakeError(f"handshake message {self._index + 1} is too short")
            chunk = bytes(message[offset : offset + size])
            offset += size
            return chunk

        for token in self._pattern.messages[self._index]:
            if token == "e":
                self._re = take(dhlen)
                symmetric.mix_hash(self._re)
            elif token == "s":
                size = dhlen + (TAG_SIZE if symmetric.cipher_state.has_key() else 0)
                self._rs = symmetric.decrypt_and_hash(take(size))
            else:
                symmetric.mix_key(self._dh_token(token))
        rest = bytes(message[offset:])
        if symmetric.cipher_state.has_key() and len(rest) < TAG_SIZE:
            raise HandshakeError(f"handshake message {self._index + 1} is too short")
        return symmetric.decrypt_and_hash(rest)
