"""`--identity KEY` and `--members FILE`: who a command is in the swarm, and, in a private
swarm, the only peers it talks to (`security.members`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from routing.rpc import RPCConfig
from security import Identity, PeerId, read_members


def identity_from(path: Path | None) -> Identity:
    """The key at `path` (created there if missing), or a fresh one kept in memory only."""
    return Identity.load_or_create(path) if path else Identity.generate()


def members_from(args: argparse.Namespace) -> frozenset[PeerId] | None:
    """The members listed in `--members`, or None (anyone) without it."""
    return read_members(args.members) if args.members else None


def rpc_config(args: argparse.Namespace) -> RPCConfig:
    """A peer's or DHT node's: it follows `--members` as the file changes."""
    return RPCConfig(members_file=args.members)
