"""A private swarm's members: the peer ids allowed in it, read from a text file.

One peer id per line, in base58 as `swarm identity show KEY` prints it; `#` starts a
comment, and blank lines are skipped. Every node of a private swarm (peers, DHT nodes,
clients, the monitor) reads the same list and talks only to those peers (`routing.rpc`
enforces it on every connection), so each needs an identity key whose peer id is on it.
"""

from __future__ import annotations

from pathlib import Path

from .errors import InvalidPeerIdError, MembersFileError
from .identity import PeerId

__all__ = ["parse_members", "read_members"]

MAX_MEMBERS_FILE_SIZE = 1024 * 1024


def parse_members(text: str) -> frozenset[PeerId]:
    """The peer ids in `text`; `MembersFileError` names the first line that is not one."""
    members = set()
    for number, line in enumerate(text.splitlines(), start=1):
        entry = line.split("#", 1)[0].strip()
        if not entry:
            continue
        try:
            members.add(PeerId.from_base58(entry))
        except InvalidPeerIdError:
            raise MembersFileError(f"line {number}: not a peer id: {entry[:60]!r}") from None
    if not members:
        raise MembersFileError("no peer id in the members list")
    return frozenset(members)


def read_members(path: Path) -> frozenset[PeerId]:
    """The members listed in the file at `path` (`MembersFileError` if it cannot be read)."""
    try:
        with path.open("rb") as file:
            data = file.read(MAX_MEMBERS_FILE_SIZE + 1)
    except OSError as error:
        raise MembersFileError(f"cannot read the members file {path}: {error}") from None
    if len(data) > MAX_MEMBERS_FILE_SIZE:
        raise MembersFileError(f"{path}: over {MAX_MEMBERS_FILE_SIZE} bytes")
    try:
        return parse_members(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise MembersFileError(f"{path}: not UTF-8 text") from None
    except MembersFileError as error:
        raise MembersFileError(f"{path}: {error}") from None
