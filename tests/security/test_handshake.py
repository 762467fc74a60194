"""The swarm handshake engine (pure): identity binding, version and peer checks."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from security import (
    BadSignatureError,
    HandshakeError,
    Identity,
    NoiseStateError,
    PeerIdMismatchError,
    ProtocolVersionError,
)
from security import handshake as handshake_module
from security.handshake import (
    NOISE_PROTOCOL,
    PROTOCOL_VERSION,
    SwarmHandshake,
    ephemeral_static_key,
    identity_payload,
)
from security.noise import HandshakeState
from security.noise.primitives import DH25519

ALICE = Identity.generate()
BOB = Identity.generate()


def _run(initiator: SwarmHandshake, responder: SwarmHandshake) -> None:
    responder.read_message(initiator.write_message())
    initiator.read_message(responder.write_message())
    responder.read_message(initiator.write_message())


def test_handshake_establishes_keys_and_identities() -> None:
    client = SwarmHandshake(ALICE, initiator=True, expected_peer=BOB.peer_id)
    server = SwarmHandshake(BOB, initiator=False, static_key=DH25519.generate_keypair())
    _run(client, server)
    ours, theirs = client.result(), server.result()
    assert ours.remote_peer_id == BOB.peer_id and theirs.remote_peer_id == ALICE.peer_id
    assert ours.remote_identity_key == BOB.public_key
    assert ours.handshake_hash == theirs.handshake_hash
    assert theirs.receive.decrypt_with_ad(b"", ours.send.encrypt_with_ad(b"", b"hi")) == b"hi"
    assert ours.receive.decrypt_with_ad(b"", theirs.send.encrypt_with_ad(b"", b"yo")) == b"yo"


def test_message_one_carries_the_version_in_clear() -> None:
    message = SwarmHandshake(ALICE, initiator=True).write_message()
    assert message[32:] == PROTOCOL_VERSION


def test_result_before_completion_and_out_of_turn_raise() -> None:
    client = SwarmHandshake(ALICE, initiator=True)
    with pytest.raises(NoiseStateError):
        client.result()
    server = SwarmHandshake(BOB, initiator=False)
    with pytest.raises(NoiseStateError):
        server.write_message()


def test_wrong_expected_peer() -> None:
    client = SwarmHandshake(ALICE, initiator=True, expected_peer=Identity.generate().peer_id)
    server = SwarmHandshake(BOB, initiator=False)
    server.read_message(client.write_message())
    with pytest.raises(PeerIdMismatchError, match=str(BOB.peer_id)):
        client.read_message(server.write_message())


def test_responder_reports_a_version_mismatch() -> None:
    client = SwarmHandshake(ALICE, initiator=True, version=b"swarm-noise/2")
    server = SwarmHandshake(BOB, initiator=False)
    with pytest.raises(ProtocolVersionError, match="swarm-noise/2"):
        server.read_message(client.write_message())


def test_initiator_reports_a_prologue_mismatch() -> None:
    """A responder that accepts message 1 but hashed another prologue."""
    client = SwarmHandshake(ALICE, initiator=True)
    static = DH25519.generate_keypair()
    rogue = HandshakeState(NOISE_PROTOCOL, initiator=False, prologue=b"other/1", s=static)
    rogue.read_message(client.write_message())
    with pytest.raises(ProtocolVersionError, match="prologue"):
        client.read_message(rogue.write_message(identity_payload(BOB, static.public)))


def test_signature_over_another_static_key_is_rejected_by_the_initiator() -> None:
    client = SwarmHandshake(ALICE, initiator=True, expected_peer=BOB.peer_id)
    static, other = DH25519.generate_keypair(), DH25519.generate_keypair()
    rogue = HandshakeState(NOISE_PROTOCOL, initiator=False, prologue=PROTOCOL_VERSION, s=static)
    rogue.read_message(client.write_message())
    with pytest.raises(BadSignatureError):
        client.read_message(rogue.write_message(identity_payload(BOB, other.public)))


def test_signature_over_another_static_key_is_rejected_by_the_responder() -> None:
    server = SwarmHandshake(BOB, initiator=False)
    static, other = DH25519.generate_keypair(), DH25519.generate_keypair()
    rogue = HandshakeState(NOISE_PROTOCOL, initiator=True, prologue=PROTOCOL_VERSION, s=static)
    server.read_message(rogue.write_message(PROTOCOL_VERSION))
    rogue.read_message(server.write_message())
    with pytest.raises(BadSignatureError):
        server.read_message(rogue.write_message(identity_payload(ALICE, other.public)))


@pytest.mark.parametrize("payload", [b"", b"x" * 95, b"x" * 97])
def test_malformed_identity_payload(payload: bytes) -> None:
    client = SwarmHandshake(ALICE, initiator=True)
    rogue = HandshakeState(
        NOISE_PROTOCOL, initiator=False, prologue=PROTOCOL_VERSION, s=DH25519.generate_keypair()
    )
    rogue.read_message(client.write_message())
    with pytest.raises(HandshakeError, match="identity payload"):
        client.read_message(rogue.write_message(payload))


def test_oversize_handshake_message() -> None:
    server = SwarmHandshake(BOB, initiator=False)
    with pytest.raises(HandshakeError, match="exceeds"):
        server.read_message(os.urandom(handshake_module.MAX_HANDSHAKE_MESSAGE + 1))


def test_static_key_is_per_process_and_created_on_first_use(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    first = ephemeral_static_key()
    assert ephemeral_static_key() is first
    monkeypatch.setattr(os, "getpid", lambda: -1)  # what a forked child sees: another pid
    assert ephemeral_static_key().public != first.public


def test_importing_security_creates_no_key() -> None:
    code = "import security, security.handshake as h, sys\nsys.exit(1 if h._static_keys else 0)\n"
    root = Path(__file__).resolve().parents[2]
    assert subprocess.run([sys.executable, "-c", code], cwd=root, check=False).returncode == 0
