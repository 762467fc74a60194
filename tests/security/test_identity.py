"""Identity keys: generation, the key file, peer ids, signatures."""

from __future__ import annotations

import argparse
import hashlib
import stat
from pathlib import Path

import base58
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from security import (
    BadSignatureError,
    Identity,
    InvalidPeerIdError,
    KeyFileError,
    PeerId,
    SecurityError,
    verify_signature,
)


def test_peer_id_is_sha256_of_the_raw_public_key_in_base58() -> None:
    identity = Identity.generate()
    digest = hashlib.sha256(identity.public_key).digest()
    assert identity.peer_id.digest == digest
    assert str(identity.peer_id) == base58.b58encode(digest).decode()
    assert identity.peer_id.short() == str(identity.peer_id)[:8]
    assert PeerId.from_base58(identity.peer_id.to_base58()) == identity.peer_id


def test_generated_identities_differ() -> None:
    assert Identity.generate().peer_id != Identity.generate().peer_id


@pytest.mark.parametrize("text", ["", "0OIl", "abc", "not base58!", "1" * 60])
def test_invalid_peer_ids_raise_a_typed_value_error(text: str) -> None:
    with pytest.raises(InvalidPeerIdError) as caught:
        PeerId.from_base58(text)
    assert isinstance(caught.value, SecurityError) and isinstance(caught.value, ValueError)


def test_peer_id_works_as_an_argparse_type() -> None:
    parser = argparse.ArgumentParser(exit_on_error=False)
    parser.add_argument("peer", type=PeerId.from_base58)
    peer = Identity.generate().peer_id
    assert parser.parse_args([str(peer)]).peer == peer
    with pytest.raises(argparse.ArgumentError):
        parser.parse_args(["0OIl"])


def test_save_and_load(tmp_path: Path) -> None:
    path = tmp_path / "new" / "dir" / "identity.key"
    identity = Identity.generate()
    identity.save(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert Identity.load(path).peer_id == identity.peer_id
    assert [p.name for p in path.parent.iterdir()] == ["identity.key"]  # no temp file left
    # The format is standard PEM PKCS#8, readable by other tools.
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    assert isinstance(key, Ed25519PrivateKey)


def test_save_overwrite_flag(tmp_path: Path) -> None:
    path = tmp_path / "identity.key"
    first, second = Identity.generate(), Identity.generate()
    first.save(path)
    with pytest.raises(FileExistsError):
        second.save(path, overwrite=False)
    assert Identity.load(path).peer_id == first.peer_id
    second.save(path)
    assert Identity.load(path).peer_id == second.peer_id


def test_load_or_create(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "identity.key"
    created = Identity.load_or_create(path)
    assert path.is_file()
    assert Identity.load_or_create(path).peer_id == created.peer_id


@pytest.mark.parametrize(
    "content",
    [
        b"garbage",
        b"",
        b"x" * 10_000,
        Ed25519PrivateKey.generate()
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo),
    ],
)
def test_bad_key_files_raise_key_file_error(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "bad.key"
    path.write_bytes(content)
    with pytest.raises(KeyFileError):
        Identity.load(path)


def test_missing_key_file_raises_os_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        Identity.load(tmp_path / "missing.key")


def test_signatures() -> None:
    identity = Identity.generate()
    signature = identity.sign(b"message")
    verify_signature(identity.public_key, signature, b"message")
    with pytest.raises(BadSignatureError):
        verify_signature(identity.public_key, signature, b"other message")
    with pytest.raises(BadSignatureError):
        verify_signature(Identity.generate().public_key, signature, b"message")
    with pytest.raises(BadSignatureError):
        verify_signature(identity.public_key, signature[:-1], b"message")
    with pytest.raises(BadSignatureError):
        verify_signature(b"short", signature, b"message")
