"""The swarm's authenticated handshake, pure (no I/O): Noise XX plus identity binding.

Protocol ``Noise_XX_25519_ChaChaPoly_SHA256``, prologue ``PROTOCOL_VERSION``
(b"swarm-noise/1"). Three messages::

    1  I -> R   e                     payload: PROTOCOL_VERSION, in clear
    2  R -> I   e, ee, s, es          payload: identity key (32) || signature (64), encrypted
    3  I -> R   s, se                 payload: identity key (32) || signature (64), encrypted

The Noise static key `s` is a fresh X25519 key per process, never stored
(`ephemeral_static_key`). Each side proves its long-term Ed25519 identity by signing
``SIGNATURE_DOMAIN + its Noise static public key`` (the libp2p-noise binding): the Noise
handshake proves possession of `s`, the signature binds `s` to the identity, so the remote
peer id is SHA-256 of the identity key carried in the payload.

Errors: a responder that reads another version in message 1 raises `ProtocolVersionError`
with both versions; an initiator whose message 2 fails authentication (the prologues
differ, so the transcripts differ) raises `ProtocolVersionError` too. A bad signature raises
`BadSignatureError`; the dialer's expected peer id not matching raises `PeerIdMismatchError`.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass

from .errors import (
    DecryptionError,
    HandshakeError,
    NoiseStateError,
    PeerIdMismatchError,
    ProtocolVersionError,
)
from .identity import PUBLIC_KEY_SIZE, SIGNATURE_SIZE, Identity, PeerId, verify_signature
from .noise.cipher_state import CipherState
from .noise.handshake_state import HandshakeState
from .noise.primitives import DH25519, KeyPair

__all__ = [
    "NOISE_PROTOCOL",
    "PROTOCOL_VERSION",
    "SIGNATURE_DOMAIN",
    "HandshakeResult",
    "SwarmHandshake",
    "ephemeral_static_key",
]

NOISE_PROTOCOL = "Noise_XX_25519_ChaChaPoly_SHA256"
PROTOCOL_VERSION = b"swarm-noise/1"
SIGNATURE_DOMAIN = b"swarm-noise-static-key:"
IDENTITY_PAYLOAD_SIZE = PUBLIC_KEY_SIZE + SIGNATURE_SIZE
# The largest handshake message a peer may send us: message 2 is 32 + 48 + 96 + 16 = 192.
MAX_HANDSHAKE_MESSAGE = 1024

_static_keys: dict[int, KeyPair] = {}
_static_lock = threading.Lock()


def ephemeral_static_key() -> KeyPair:
    """This process's Noise static key: created on first use, never stored, one per pid."""
    pid = os.getpid()
    with _static_lock:
        key = _static_keys.get(pid)
        if key is None:
            _static_keys.clear()  # a forked child drops its parent's key
            key = _static_keys[pid] = DH25519.generate_keypair()
        return key


@dataclass(frozen=True)
class HandshakeResult:
    """What a finished handshake established."""

    remote_peer_id: PeerId
    remote_identity_key: bytes
    remote_static_key: bytes
    handshake_hash: bytes
    send: CipherState
    receive: CipherState


def identity_payload(identity: Identity, static_public_key: bytes) -> bytes:
    """Identity key || Ed25519 signature of SIGNATURE_DOMAIN + the Noise static key."""
    return identity.public_key + identity.sign(SIGNATURE_DOMAIN + static_public_key)


class SwarmHandshake:
    """Drives one side of the swarm handshake; the caller moves the bytes."""

    def __init__(
        self,
        identity: Identity,
        *,
        initiator: bool,
        expected_peer: PeerId | None = None,
        static_key: KeyPair | None = None,
        version: bytes = PROTOCOL_VERSION,
    ) -> None:
        self._identity = identity
        self._initiator = initiator
        self._expected_peer = expected_peer
        self._version = version
        self._static = static_key if static_key is not None else ephemeral_static_key()
        self._noise = HandshakeState(
            NOISE_PROTOCOL, initiator=initiator, prologue=version, s=self._static
        )
        self._remote: tuple[PeerId, bytes] | None = None

    @property
    def initiator(self) -> bool:
        return self._initiator

    @property
    def is_complete(self) -> bool:
        return self._noise.is_complete

    @property
    def is_our_turn(self) -> bool:
        """True when `write_message` comes next, False when `read_message` (or done)."""
        return self._noise.is_our_turn

    def write_message(self) -> bytes:
        index = self._noise.message_index
        if not self._noise.is_our_turn:
            return self._noise.write_message()  # raises NoiseStateError with the details
        if index == 0:
            payload = self._version
        else:
            payload = identity_payload(self._identity, self._static.public)
        return self._noise.write_message(payload)

    def read_message(self, message: bytes) -> None:
        index = self._noise.message_index
        if len(message) > MAX_HANDSHAKE_MESSAGE:
            raise HandshakeError(
                f"handshake message of {len(message)} bytes exceeds {MAX_HANDSHAKE_MESSAGE}"
            )
        try:
            payload = self._noise.read_message(message)
        except NoiseStateError:
            raise
        except HandshakeError as error:
            if index == 1 and isinstance(error.__cause__, DecryptionError):
                raise ProtocolVersionError(
                    "could not authenticate the responder's handshake: it speaks another "
                    f"protocol version than {self._version.decode(errors='replace')!r} "
                    "(prologue mismatch), or is not a swarm peer"
                ) from error
            raise
        if index == 0:
            if payload != self._version:
                raise ProtocolVersionError(
                    f"version mismatch: the remote speaks {_show(payload)}, "
                    f"we speak {_show(self._version)}"
                )
            return
        self._remote = self._check_identity(payload)

    def _check_identity(self, payload: bytes) -> tuple[PeerId, bytes]:
        if len(payload) != IDENTITY_PAYLOAD_SIZE:
            raise HandshakeError(f"identity payload of {len(payload)} bytes, expected 96")
        identity_key = payload[:PUBLIC_KEY_SIZE]
        signature = payload[PUBLIC_KEY_SIZE:]
        remote_static = self._noise.remote_static
        if remote_static is None:  # cannot happen with XX: `s` precedes the payload
            raise HandshakeError("no remote static key")
        verify_signature(identity_key, signature, SIGNATURE_DOMAIN + remote_static)
        peer_id = PeerId.from_public_key(identity_key)
        if self._expected_peer is not None and peer_id != self._expected_peer:
            raise PeerIdMismatchError(
                f"expected peer {self._expected_peer}, the remote proved {peer_id}"
            )
        return peer_id, identity_key

    def result(self) -> HandshakeResult:
        """The session keys and the authenticated remote; only once complete."""
        if not self._noise.is_complete or self._remote is None:
            raise NoiseStateError("the handshake is not complete")
        send, receive = self._noise.split()
        remote_static = self._noise.remote_static
        if remote_static is None:  # cannot happen: set with `_remote`
            raise NoiseStateError("no remote static key")
        return HandshakeResult(
            remote_peer_id=self._remote[0],
            remote_identity_key=self._remote[1],
            remote_static_key=remote_static,
            handshake_hash=self._noise.get_handshake_hash(),
            send=send,
            receive=receive,
        )


def _show(version: bytes) -> str:
    return repr(version[:64].decode("ascii", errors="replace"))
