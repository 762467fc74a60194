"""Typed errors of the security layer, all under one root: `SecurityError`.

Handshake failures share `HandshakeError`, so a caller that only wants "could not establish a
secure channel" catches that one; the subclasses say why, precisely enough to show a user.
"""

from __future__ import annotations

import trio

__all__ = [
    "BadSignatureError",
    "DecryptionError",
    "FrameTooLargeError",
    "HandshakeConnectionError",
    "HandshakeError",
    "HandshakeTimeoutError",
    "InvalidPeerIdError",
    "KeyFileError",
    "MembersFileError",
    "NoiseStateError",
    "NonceExhaustedError",
    "PeerIdMismatchError",
    "ProtocolVersionError",
    "SecurityError",
]


class SecurityError(Exception):
    """Root of every error raised by the `security` package."""


class InvalidPeerIdError(SecurityError, ValueError):
    """Text that is not a valid base58 peer id (also a ValueError, for argparse `type=`)."""


class KeyFileError(SecurityError):
    """An identity key file that cannot be parsed as an Ed25519 private key."""


class MembersFileError(SecurityError):
    """A private swarm's members list that cannot be read, or holds something else."""


class HandshakeError(SecurityError):
    """The secure channel could not be established."""


class PeerIdMismatchError(HandshakeError):
    """The dialer expected one peer id and the remote proved another."""


class ProtocolVersionError(HandshakeError):
    """The remote speaks another protocol version (different prologue)."""


class BadSignatureError(HandshakeError):
    """An Ed25519 signature did not verify."""


class HandshakeTimeoutError(HandshakeError):
    """The handshake did not finish within its timeout."""


class HandshakeConnectionError(HandshakeError, trio.BrokenResourceError):
    """The transport failed or was closed by the remote during the handshake.

    Also a `trio.BrokenResourceError`, so stream code that handles a broken transport
    handles this too.
    """


class NoiseStateError(HandshakeError):
    """A Noise state machine was used out of order (e.g. writing on the other side's turn)."""


class DecryptionError(SecurityError):
    """A message failed authentication; the connection is closed."""


class FrameTooLargeError(SecurityError):
    """A frame or message exceeds its size cap."""


class NonceExhaustedError(SecurityError):
    """A cipher state used all 2**64 - 1 nonces; the channel must not be used any more."""
