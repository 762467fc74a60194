"""Our Noise core against an implementation nobody here wrote: the `noiseprotocol` package."""

from __future__ import annotations

import os

import pytest

from security.noise import HandshakeState, KeyPair
from security.noise.primitives import DH25519

noise_connection = pytest.importorskip("noise.connection")

NAME = "Noise_XX_25519_ChaChaPoly_SHA256"
PROLOGUE = b"interop-test"
MESSAGES = 1000


def _theirs(initiator: bool, static: KeyPair) -> object:
    connection = noise_connection.NoiseConnection.from_name(NAME.encode())
    if initiator:
        connection.set_as_initiator()
    else:
        connection.set_as_responder()
    private = static.private.private_bytes_raw()
    connection.set_keypair_from_private_bytes(noise_connection.Keypair.STATIC, private)
    connection.set_prologue(PROLOGUE)
    connection.start_handshake()
    return connection


@pytest.mark.parametrize("we_initiate", [True, False], ids=["ours-initiator", "ours-responder"])
def test_interop_with_noiseprotocol(we_initiate: bool) -> None:
    our_static, their_static = DH25519.generate_keypair(), DH25519.generate_keypair()
    ours = HandshakeState(NAME, initiator=we_initiate, prologue=PROLOGUE, s=our_static)
    theirs: object = _theirs(not we_initiate, their_static)
    their_write = theirs.write_message  # type: ignore[attr-defined]
    their_read = theirs.read_message  # type: ignore[attr-defined]

    index = 0
    while not ours.is_complete:
        payload = f"handshake payload {index}".encode()
        if ours.is_our_turn:
            assert bytes(their_read(ours.write_message(payload))) == payload
        else:
            assert ours.read_message(bytes(their_write(payload))) == payload
        index += 1
    assert index == 3
    assert theirs.handshake_finished  # type: ignore[attr-defined]
    assert ours.get_handshake_hash() == bytes(theirs.get_handshake_hash())  # type: ignore[attr-defined]
    assert ours.remote_static == their_static.public

    send, receive = ours.split()
    for number in range(MESSAGES):
        message = os.urandom(number % 300) + number.to_bytes(4, "big")
        assert bytes(theirs.decrypt(send.encrypt_with_ad(b"", message))) == message  # type: ignore[attr-defined]
        reply = message[::-1]
        assert receive.decrypt_with_ad(b"", bytes(theirs.encrypt(reply))) == reply  # type: ignore[attr-defined]
    assert send.nonce == receive.nonce == MESSAGES
