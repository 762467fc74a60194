"""Noise core behaviour the vectors do not reach: turns, nonces, failures, HMAC/HKDF."""

from __future__ import annotations

import hmac

import pytest

from security import DecryptionError, HandshakeError, NoiseStateError, NonceExhaustedError
from security.noise import CipherState, HandshakeState
from security.noise.primitives import CIPHERS, DH25519, HASHES, MAX_NONCE

NAME = "Noise_XX_25519_ChaChaPoly_SHA256"


def _pair(name: str = NAME) -> tuple[HandshakeState, HandshakeState]:
    initiator = HandshakeState(name, initiator=True, s=DH25519.generate_keypair())
    responder = HandshakeState(name, initiator=False, s=DH25519.generate_keypair())
    return initiator, responder


def _complete(initiator: HandshakeState, responder: HandshakeState) -> None:
    responder.read_message(initiator.write_message(b"1"))
    initiator.read_message(responder.write_message(b"2"))
    responder.read_message(initiator.write_message(b"3"))


def test_turns_are_enforced() -> None:
    initiator, responder = _pair()
    assert initiator.is_our_turn and not responder.is_our_turn
    with pytest.raises(NoiseStateError):
        responder.write_message(b"")
    with pytest.raises(NoiseStateError):
        initiator.read_message(b"\x00" * 48)
    message = initiator.write_message(b"")
    with pytest.raises(NoiseStateError):
        initiator.write_message(b"")  # message 2 is the responder's
    responder.read_message(message)
    with pytest.raises(NoiseStateError):
        responder.read_message(message)
    initiator.read_message(responder.write_message(b""))
    responder.read_message(initiator.write_message(b""))
    assert initiator.is_complete and responder.is_complete
    assert not initiator.is_our_turn and not responder.is_our_turn
    with pytest.raises(NoiseStateError):
        initiator.write_message(b"")
    with pytest.raises(NoiseStateError):
        responder.read_message(b"")


def test_split_before_completion_raises() -> None:
    initiator, _ = _pair()
    with pytest.raises(NoiseStateError):
        initiator.split()


def test_split_gives_matching_directions() -> None:
    initiator, responder = _pair()
    _complete(initiator, responder)
    i_send, i_receive = initiator.split()
    r_send, r_receive = responder.split()
    assert r_receive.decrypt_with_ad(b"", i_send.encrypt_with_ad(b"", b"ping")) == b"ping"
    assert i_receive.decrypt_with_ad(b"", r_send.encrypt_with_ad(b"", b"pong")) == b"pong"


def test_tampered_handshake_message_fails_and_stays_failed() -> None:
    initiator, responder = _pair()
    responder.read_message(initiator.write_message(b""))
    message = bytearray(responder.write_message(b"payload"))
    message[40] ^= 1  # inside the encrypted static key
    with pytest.raises(HandshakeError, match="authentication"):
        initiator.read_message(bytes(message))
    with pytest.raises(NoiseStateError):
        initiator.read_message(bytes(message))


@pytest.mark.parametrize("length", [0, 31, 32 + 47])
def test_short_handshake_messages_raise(length: int) -> None:
    initiator, responder = _pair()
    responder.read_message(initiator.write_message(b""))
    with pytest.raises(HandshakeError):
        initiator.read_message(b"\x07" * length)


def test_unsupported_protocol_names() -> None:
    for name in ("Noise_XX_448_ChaChaPoly_SHA256", "Noise_XXpsk3_25519_AESGCM_SHA256", "TLS"):
        with pytest.raises(ValueError):
            HandshakeState(name, initiator=True)


@pytest.mark.parametrize("cipher", sorted(CIPHERS))
def test_nonce_exhaustion(cipher: str) -> None:
    sender = CipherState(CIPHERS[cipher], b"k" * 32)
    receiver = CipherState(CIPHERS[cipher], b"k" * 32)
    sender.set_nonce(MAX_NONCE - 1)
    receiver.set_nonce(MAX_NONCE - 1)
    assert receiver.decrypt_with_ad(b"", sender.encrypt_with_ad(b"", b"last")) == b"last"
    with pytest.raises(NonceExhaustedError):
        sender.encrypt_with_ad(b"", b"one too many")
    with pytest.raises(NonceExhaustedError):
        receiver.decrypt_with_ad(b"", b"\x00" * 20)


def test_failed_decryption_keeps_the_nonce() -> None:
    sender = CipherState(CIPHERS["ChaChaPoly"], b"k" * 32)
    receiver = CipherState(CIPHERS["ChaChaPoly"], b"k" * 32)
    ciphertext = sender.encrypt_with_ad(b"ad", b"hello")
    with pytest.raises(DecryptionError):
        receiver.decrypt_with_ad(b"other ad", ciphertext)
    assert receiver.nonce == 0
    assert receiver.decrypt_with_ad(b"ad", ciphertext) == b"hello"


def test_nonce_encodings_differ_as_the_spec_says() -> None:
    assert CIPHERS["ChaChaPoly"].nonce(1) == bytes(4) + (1).to_bytes(8, "little")
    assert CIPHERS["AESGCM"].nonce(1) == bytes(4) + (1).to_bytes(8, "big")


def test_rekey_changes_the_key_and_keeps_the_nonce() -> None:
    a = CipherState(CIPHERS["AESGCM"], b"k" * 32)
    b = CipherState(CIPHERS["AESGCM"], b"k" * 32)
    a.encrypt_with_ad(b"", b"x")
    before = a.encrypt_with_ad(b"", b"same")
    a.set_nonce(1)
    a.rekey()
    assert a.nonce == 1
    assert a.encrypt_with_ad(b"", b"same") != before
    b.rekey()
    b.set_nonce(1)
    a.set_nonce(1)
    assert b.decrypt_with_ad(b"", a.encrypt_with_ad(b"", b"z")) == b"z"


@pytest.mark.parametrize(
    ("name", "reference"),
    [
        ("SHA256", "sha256"),
        ("SHA512", "sha512"),
        ("BLAKE2s", "blake2s"),
        ("BLAKE2b", "blake2b"),
    ],
)
def test_hmac_matches_the_standard_library(name: str, reference: str) -> None:
    hash_ = HASHES[name]
    for key in (b"", b"k" * hash_.hashlen, b"long" * 100):
        for data in (b"", b"data" * 50):
            expected = hmac.new(key, data, reference).digest()
            assert hash_.hmac(key, data) == expected
