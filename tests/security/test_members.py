"""The members list of a private swarm: peer ids, comments and blank lines; anything else
is a typed error that names its line."""

from __future__ import annotations

from pathlib import Path

import pytest

from security import Identity, MembersFileError, parse_members, read_members


def test_a_members_file_holds_peer_ids_comments_and_blank_lines(tmp_path: Path) -> None:
    a, b = Identity.generate().peer_id, Identity.generate().peer_id
    path = tmp_path / "members.txt"
    path.write_text(f"# our swarm\n{a}  # the first peer\n\n  {b}\n{a}\n")
    assert read_members(path) == {a, b}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("# nobody\n\n", "no peer id"),
        (f"{Identity.generate().peer_id}\nnot-a-peer-id\n", "line 2: not a peer id"),
        ("12345", "line 1: not a peer id"),
    ],
)
def test_what_is_not_a_members_list(text: str, message: str) -> None:
    with pytest.raises(MembersFileError, match=message):
        parse_members(text)


def test_an_unreadable_members_file_is_a_typed_error(tmp_path: Path) -> None:
    with pytest.raises(MembersFileError, match="cannot read"):
        read_members(tmp_path / "missing.txt")
    binary = tmp_path / "binary"
    binary.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(MembersFileError, match="not UTF-8"):
        read_members(binary)
