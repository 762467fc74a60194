"""The Noise core against the public cacophony test vectors (shared/testdata/noise).

Every message of every vector is checked byte for byte (handshake and transport), and the
handshake hash at the end. All 8 `Noise_XX_25519_*` suites must be present and pass; the
other fundamental patterns we implement (no PSK, curve 25519) are checked too.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from security.noise import PATTERNS, HandshakeState, KeyPair

# A copy of shared/testdata/noise (the cacophony vectors, MIT licensed: see LICENSE-MIT
# there), kept in the repository so that a fresh clone tests against them.
VECTOR_DIR = Path(__file__).resolve().parent / "vectors"
VECTOR_FILE = VECTOR_DIR / "cacophony.json"


def _load() -> list[dict[str, Any]] | None:
    if not VECTOR_FILE.is_file():
        return None
    vectors: list[dict[str, Any]] = json.loads(VECTOR_FILE.read_text())["vectors"]
    return vectors


def _supported(name: str) -> bool:
    _, pattern, dh, _, _ = name.split("_")
    return pattern in PATTERNS and dh == "25519"


ALL = _load()
SUPPORTED = [vector for vector in ALL or [] if _supported(vector["protocol_name"])]


def test_vector_file_is_present() -> None:
    if ALL is None:
        pytest.fail(f"Noise test vectors not found at {VECTOR_FILE.resolve()}")


def test_every_xx_25519_suite_is_covered() -> None:
    names = {v["protocol_name"] for v in SUPPORTED if v["protocol_name"].startswith("Noise_XX_")}
    expected = {
        f"Noise_XX_25519_{cipher}_{hash_}"
        for cipher in ("ChaChaPoly", "AESGCM")
        for hash_ in ("SHA256", "SHA512", "BLAKE2s", "BLAKE2b")
    }
    assert names == expected


def _hex(vector: dict[str, Any], key: str) -> bytes | None:
    value = vector.get(key)
    return None if value is None else bytes.fromhex(value)


def _keypair(vector: dict[str, Any], key: str) -> KeyPair | None:
    raw = _hex(vector, key)
    return None if raw is None else KeyPair.from_private_bytes(raw)


@pytest.mark.parametrize(
    "vector", SUPPORTED, ids=[f"{i}-{v['protocol_name']}" for i, v in enumerate(SUPPORTED)]
)
def test_vector(vector: dict[str, Any]) -> None:
    name = vector["protocol_name"]
    initiator = HandshakeState(
        name,
        initiator=True,
        prologue=_hex(vector, "init_prologue") or b"",
        s=_keypair(vector, "init_static"),
        e=_keypair(vector, "init_ephemeral"),
        rs=_hex(vector, "init_remote_static"),
    )
    responder = HandshakeState(
        name,
        initiator=False,
        prologue=_hex(vector, "resp_prologue") or b"",
        s=_keypair(vector, "resp_static"),
        e=_keypair(vector, "resp_ephemeral"),
        rs=_hex(vector, "resp_remote_static"),
    )
    messages = vector["messages"]
    writer, reader = initiator, responder
    index = 0
    while not initiator.is_complete:
        payload = bytes.fromhex(messages[index]["payload"])
        ciphertext = writer.write_message(payload)
        assert ciphertext.hex() == messages[index]["ciphertext"], f"message {index}"
        assert reader.read_message(ciphertext) == payload
        writer, reader = reader, writer
        index += 1
    assert responder.is_complete
    assert initiator.get_handshake_hash().hex() == vector["handshake_hash"]
    assert responder.get_handshake_hash().hex() == vector["handshake_hash"]

    one_way = len(name.split("_")[1]) == 1
    init_send, init_receive = initiator.split()
    resp_send, resp_receive = responder.split()
    initiator_sends = writer is initiator
    assert len(messages) > index  # every vector has transport messages
    for message in messages[index:]:
        payload = bytes.fromhex(message["payload"])
        if initiator_sends or one_way:
            sender, receiver = init_send, resp_receive
        else:
            sender, receiver = resp_send, init_receive
        ciphertext = sender.encrypt_with_ad(b"", payload)
        assert ciphertext.hex() == message["ciphertext"]
        assert receiver.decrypt_with_ad(b"", ciphertext) == payload
        initiator_sends = not initiator_sends
