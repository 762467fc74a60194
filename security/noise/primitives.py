"""Noise crypto functions (spec rev 34, section 4) as small objects over `cryptography`.

A protocol name such as ``Noise_XX_25519_ChaChaPoly_SHA256`` picks one DH function, one
cipher function and one hash function; `resolve` turns the names into these objects. HMAC
and HKDF are written here from the spec (section 4.3), generically over the hash, because
BLAKE2's HMAC block length (64 for BLAKE2s, 128 for BLAKE2b) is not what every library uses.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Protocol

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

from ..errors import HandshakeError

__all__ = [
    "AEAD",
    "CIPHERS",
    "DH25519",
    "DHS",
    "HASHES",
    "BytesLike",
    "CipherFunction",
    "DHFunction",
    "HashFunction",
    "KeyPair",
]

MAX_NONCE = 2**64 - 1
TAG_SIZE = 16
KEY_SIZE = 32
_IPAD = bytes(b ^ 0x36 for b in range(256))  # translate tables: XOR every byte with a pad
_OPAD = bytes(b ^ 0x5C for b in range(256))


@dataclass(frozen=True)
class KeyPair:
    """A DH key pair: the private key object and the raw public key."""

    private: X25519PrivateKey
    public: bytes

    @classmethod
    def from_private(cls, private: X25519PrivateKey) -> KeyPair:
        raw = private.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        return cls(private, raw)

    @classmethod
    def from_private_bytes(cls, data: bytes) -> KeyPair:
        return cls.from_private(X25519PrivateKey.from_private_bytes(data))


class DHFunction(Protocol):
    name: str
    dhlen: int

    def generate_keypair(self) -> KeyPair: ...
    def dh(self, keypair: KeyPair, public_key: bytes) -> bytes: ...


class _DH25519:
    name = "25519"
    dhlen = 32

    def generate_keypair(self) -> KeyPair:
        return KeyPair.from_private(X25519PrivateKey.generate())

    def dh(self, keypair: KeyPair, public_key: bytes) -> bytes:
        try:
            return keypair.private.exchange(X25519PublicKey.from_public_bytes(public_key))
        except ValueError as error:  # wrong length, or a low-order point (all-zero output)
            raise HandshakeError("invalid X25519 public key from the remote") from error


DH25519: DHFunction = _DH25519()


BytesLike = bytes | bytearray | memoryview


class AEAD(Protocol):
    def encrypt(
        self, nonce: bytes, data: BytesLike, associated_data: BytesLike | None
    ) -> bytes: ...
    def decrypt(
        self, nonce: bytes, data: BytesLike, associated_data: BytesLike | None
    ) -> bytes: ...


@dataclass(frozen=True)
class CipherFunction:
    """An AEAD with 32-byte keys and its 96-bit nonce encoding of the 64-bit counter n."""

    name: str
    _new: type[ChaCha20Poly1305] | type[AESGCM]
    _nonce_format: struct.Struct

    def new(self, key: bytes) -> AEAD:
        """The keyed AEAD object (built once per key, not per message)."""
        return self._new(key)

    def nonce(self, n: int) -> bytes:
        return self._nonce_format.pack(n)


# ChaChaPoly: 32 zero bits then little-endian n; AESGCM: 32 zero bits then big-endian n.
CHACHAPOLY = CipherFunction("ChaChaPoly", ChaCha20Poly1305, struct.Struct("<4xQ"))
AESGCM_CIPHER = CipherFunction("AESGCM", AESGCM, struct.Struct(">4xQ"))


@dataclass(frozen=True)
class HashFunction:
    """A Noise hash function, with HMAC and HKDF built on it (spec section 4.3)."""

    name: str
    hashlen: int
    blocklen: int
    _algorithm: hashes.HashAlgorithm

    def hash(self, *parts: bytes) -> bytes:
        digest = hashes.Hash(self._algorithm)
        for part in parts:
            digest.update(part)
        return digest.finalize()

    def hmac(self, key: bytes, data: bytes) -> bytes:
        if len(key) > self.blocklen:
            key = self.hash(key)
        key = key.ljust(self.blocklen, b"\x00")
        inner = self.hash(key.translate(_IPAD), data)
        return self.hash(key.translate(_OPAD), inner)

    def hkdf(self, chaining_key: bytes, input_key_material: bytes, outputs: int) -> list[bytes]:
        """HKDF(chaining_key, input_key_material, num_outputs) with 2 or 3 outputs."""
        temp_key = self.hmac(chaining_key, input_key_material)
        result: list[bytes] = []
        previous = b""
        for index in range(1, outputs + 1):
            previous = self.hmac(temp_key, previous + bytes([index]))
            result.append(previous)
        return result


DHS: dict[str, DHFunction] = {"25519": DH25519}
CIPHERS: dict[str, CipherFunction] = {"ChaChaPoly": CHACHAPOLY, "AESGCM": AESGCM_CIPHER}
HASHES: dict[str, HashFunction] = {
    "SHA256": HashFunction("SHA256", 32, 64, hashes.SHA256()),
    "SHA512": HashFunction("SHA512", 64, 128, hashes.SHA512()),
    "BLAKE2s": HashFunction("BLAKE2s", 32, 64, hashes.BLAKE2s(32)),
    "BLAKE2b": HashFunction("BLAKE2b", 64, 128, hashes.BLAKE2b(64)),
}
