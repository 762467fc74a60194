"""Noise SymmetricState (spec rev 34, section 5.2): chaining key, handshake hash, cipher."""

from __future__ import annotations

from .cipher_state import CipherState
from .primitives import KEY_SIZE, CipherFunction, HashFunction

__all__ = ["SymmetricState"]


class SymmetricState:
    """`ck`, `h` and the handshake's CipherState, named and ordered as in the spec."""

    __slots__ = ("_cipher_state", "_ck", "_h", "_hash")

    def __init__(self, protocol_name: bytes, cipher: CipherFunction, hash_: HashFunction) -> None:
        """InitializeSymmetric(protocol_name)."""
        self._hash = hash_
        if len(protocol_name) <= hash_.hashlen:
            self._h = protocol_name.ljust(hash_.hashlen, b"\x00")
        else:
            self._h = hash_.hash(protocol_name)
        self._ck = self._h
        self._cipher_state = CipherState(cipher)

    @property
    def cipher_state(self) -> CipherState:
        return self._cipher_state

    def mix_key(self, input_key_material: bytes) -> None:
        self._ck, temp_k = self._hash.hkdf(self._ck, input_key_material, 2)
        self._cipher_state.initialize_key(temp_k[:KEY_SIZE])

    def mix_hash(self, data: bytes) -> None:
        self._h = self._hash.hash(self._h, data)

    def mix_key_and_hash(self, input_key_material: bytes) -> None:
        self._ck, temp_h, temp_k = self._hash.hkdf(self._ck, input_key_material, 3)
        self.mix_hash(temp_h)
        self._cipher_state.initialize_key(temp_k[:KEY_SIZE])

    def get_handshake_hash(self) -> bytes:
        return self._h

    def encrypt_and_hash(self, plaintext: bytes) -> bytes:
        ciphertext = self._cipher_state.encrypt_with_ad(self._h, plaintext)
        self.mix_hash(ciphertext)
        return ciphertext

    def decrypt_and_hash(self, ciphertext: bytes) -> bytes:
        plaintext = self._cipher_state.decrypt_with_ad(self._h, ciphertext)
        self.mix_hash(ciphertext)
        return plaintext

    def split(self) -> tuple[CipherState, CipherState]:
        """Two CipherStates: (initiator -> responder, responder -> initiator)."""
        temp_k1, temp_k2 = self._hash.hkdf(self._ck, b"", 2)
        cipher = self._cipher_state.cipher
        return CipherState(cipher, temp_k1[:KEY_SIZE]), CipherState(cipher, temp_k2[:KEY_SIZE])
