"""Noise CipherState (spec rev 34, section 5.1): a key and a 64-bit message counter.

This is also the transport cipher once the handshake has split, so it is the hot path: the
keyed AEAD object is built once per key, and the nonce is packed with a prebuilt struct.
Nonce 2**64 - 1 is reserved by the spec; reaching it raises `NonceExhaustedError`.
"""

from __future__ import annotations

from cryptography.exceptions import InvalidTag

from ..errors import DecryptionError, NonceExhaustedError
from .primitives import AEAD, KEY_SIZE, MAX_NONCE, BytesLike, CipherFunction

__all__ = ["CipherState"]


class CipherState:
    """`k` and `n` of the spec; without a key, encryption is the identity function."""

    __slots__ = ("_aead", "_cipher", "_key", "_n")

    def __init__(self, cipher: CipherFunction, key: bytes | None = None) -> None:
        self._cipher = cipher
        self._key: bytes | None = None
        self._aead: AEAD | None = None
        self._n = 0
        if key is not None:
            self.initialize_key(key)

    @property
    def cipher(self) -> CipherFunction:
        return self._cipher

    @property
    def nonce(self) -> int:
        return self._n

    def initialize_key(self, key: bytes | None) -> None:
        if key is not None and len(key) != KEY_SIZE:
            raise ValueError(f"a Noise cipher key is {KEY_SIZE} bytes")
        self._key = key
        self._aead = None if key is None else self._cipher.new(key)
        self._n = 0

    def has_key(self) -> bool:
        return self._key is not None

    def set_nonce(self, nonce: int) -> None:
        if not 0 <= nonce <= MAX_NONCE:
            raise ValueError("a Noise nonce is a 64-bit unsigned integer")
        self._n = nonce

    def encrypt_with_ad(self, ad: bytes, plaintext: BytesLike) -> bytes:
        aead = self._aead
        if aead is None:
            return bytes(plaintext)
        n = self._n
        if n >= MAX_NONCE:
            raise NonceExhaustedError("cipher state used every nonce; rekey or reconnect")
        ciphertext = aead.encrypt(self._cipher.nonce(n), plaintext, ad)
        self._n = n + 1
        return ciphertext

    def decrypt_with_ad(self, ad: bytes, ciphertext: BytesLike) -> bytes:
        """Decrypt and authenticate; raises `DecryptionError` (and keeps `n`) on failure."""
        aead = self._aead
        if aead is None:
            return bytes(ciphertext)
        n = self._n
        if n >= MAX_NONCE:
            raise NonceExhaustedError("cipher state used every nonce; rekey or reconnect")
        try:
            plaintext = aead.decrypt(self._cipher.nonce(n), ciphertext, ad)
        except InvalidTag as error:
            raise DecryptionError("message failed authentication") from error
        self._n = n + 1
        return plaintext

    def rekey(self) -> None:
        """k = REKEY(k): the first 32 bytes of ENCRYPT(k, 2**64 - 1, empty, 32 zero bytes)."""
        if self._aead is None:
            raise ValueError("cannot rekey a cipher state without a key")
        n = self._n
        key = self._aead.encrypt(self._cipher.nonce(MAX_NONCE), bytes(KEY_SIZE), b"")[:KEY_SIZE]
        self.initialize_key(key)
        self._n = n
