"""Long-term peer identity: an Ed25519 key pair, and the peer id derived from it.

Peer id = SHA-256 of the raw 32-byte Ed25519 public key, written in base58 (Bitcoin
alphabet). The DHT node id derives from it.

Key file format: the private key as PEM, PKCS#8, unencrypted
(``-----BEGIN PRIVATE KEY-----``), the same file `openssl genpkey -algorithm ed25519`
writes, so `openssl pkey -in FILE -pubout` can inspect it. Files are written atomically
(temporary file in the same directory, fsync, rename) with mode 0600; the parent
directory is created (0700) if missing.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import stat
from dataclasses import dataclass
from pathlib import Path

import base58
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from .errors import BadSignatureError, InvalidPeerIdError, KeyFileError

__all__ = ["Identity", "PeerId", "verify_signature"]

logger = logging.getLogger(__name__)

PUBLIC_KEY_SIZE = 32
SIGNATURE_SIZE = 64
_DIGEST_SIZE = 32
_MAX_KEY_FILE_SIZE = 4096


@dataclass(frozen=True, order=True)
class PeerId:
    """A peer's identity: SHA-256 of its raw Ed25519 public key (32 bytes)."""

    digest: bytes

    def __post_init__(self) -> None:
        if not isinstance(self.digest, bytes) or len(self.digest) != _DIGEST_SIZE:
            raise InvalidPeerIdError(f"a peer id is {_DIGEST_SIZE} bytes")

    @classmethod
    def from_public_key(cls, raw_public_key: bytes) -> PeerId:
        if len(raw_public_key) != PUBLIC_KEY_SIZE:
            raise InvalidPeerIdError(f"an Ed25519 public key is {PUBLIC_KEY_SIZE} bytes")
        return cls(hashlib.sha256(raw_public_key).digest())

    @classmethod
    def from_base58(cls, text: str) -> PeerId:
        try:
            digest = base58.b58decode(text.strip().encode("ascii"))
        except (ValueError, UnicodeError) as error:
            raise InvalidPeerIdError(f"not a base58 peer id: {text!r}") from error
        if len(digest) != _DIGEST_SIZE:
            raise InvalidPeerIdError(f"not a peer id (wrong length): {text!r}")
        return cls(digest)

    def to_base58(self) -> str:
        return str(base58.b58encode(self.digest).decode("ascii"))

    def __str__(self) -> str:
        return self.to_base58()

    def __repr__(self) -> str:
        return f"PeerId({self.to_base58()})"

    def short(self) -> str:
        """The first 8 characters of the base58 form, for logs and UIs."""
        return self.to_base58()[:8]


class Identity:
    """A long-term Ed25519 key pair. Build it with `generate`, `load` or `load_or_create`."""

    __slots__ = ("_peer_id", "_private_key", "_public_key")

    def __init__(self, private_key: Ed25519PrivateKey) -> None:
        self._private_key = private_key
        self._public_key = private_key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        self._peer_id = PeerId.from_public_key(self._public_key)

    @classmethod
    def generate(cls) -> Identity:
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def load(cls, path: Path) -> Identity:
        """Read a key file (PEM PKCS#8 Ed25519). Raises OSError or `KeyFileError`."""
        path = Path(path)
        with path.open("rb") as file:
            mode = os.fstat(file.fileno()).st_mode
            data = file.read(_MAX_KEY_FILE_SIZE + 1)
        if len(data) > _MAX_KEY_FILE_SIZE:
            raise KeyFileError(f"{path}: too large to be an identity key file")
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            logger.warning("identity key file %s is readable by others (chmod 600 it)", path)
        try:
            key = serialization.load_pem_private_key(data, password=None)
        except (ValueError, TypeError) as error:
            raise KeyFileError(f"{path}: not an unencrypted PEM private key") from error
        if not isinstance(key, Ed25519PrivateKey):
            raise KeyFileError(f"{path}: not an Ed25519 private key")
        return cls(key)

    @classmethod
    def load_or_create(cls, path: Path) -> Identity:
        """Load the key at `path`, or generate one and save it there if the file is missing."""
        path = Path(path)
        if path.exists():
            return cls.load(path)
        identity = cls.generate()
        try:
            identity.save(path, overwrite=False)
        except FileExistsError:  # somebody created it concurrently: theirs wins
            return cls.load(path)
        logger.info("created identity %s in %s", identity.peer_id, path)
        return identity

    def save(self, path: Path, *, overwrite: bool = True) -> None:
        """Write the key atomically with mode 0600; `overwrite=False` raises FileExistsError."""
        path = Path(path)
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        data = self._private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        temporary = path.with_name(f".{path.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as file:
                file.write(data)
                file.flush()
                os.fsync(file.fileno())
            if overwrite:
                os.replace(temporary, path)
            else:
                os.link(temporary, path)  # atomic, fails if `path` exists
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temporary)
        _fsync_directory(path.parent)

    @property
    def public_key(self) -> bytes:
        """The raw 32-byte Ed25519 public key."""
        return self._public_key

    @property
    def peer_id(self) -> PeerId:
        return self._peer_id

    def sign(self, data: bytes) -> bytes:
        """A 64-byte Ed25519 signature of `data`."""
        return self._private_key.sign(data)

    def __repr__(self) -> str:
        return f"Identity({self._peer_id})"


def verify_signature(public_key: bytes, signature: bytes, data: bytes) -> None:
    """Check an Ed25519 signature; raises `BadSignatureError` if it (or the key) is invalid."""
    if len(public_key) != PUBLIC_KEY_SIZE or len(signature) != SIGNATURE_SIZE:
        raise BadSignatureError("malformed Ed25519 key or signature")
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(signature, data)
    except (InvalidSignature, ValueError) as error:
        raise BadSignatureError("Ed25519 signature does not verify") from error


def _fsync_directory(directory: Path) -> None:
    with contextlib.suppress(OSError):  # not every filesystem allows it
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
