"""`--identity KEY` and `--members FILE`: who a command is in the swarm, and, in a private
swarm, the only peers it talks to (`security.members`; every command follows the file as
it changes)."""

from __future__ import annotations

import argparse
from pathlib import Path

from routing.rpc import RPCConfig
from security import Identity


def identity_from(path: Path | None) -> Identity:
    """The key at `path` (created there if missing), or a fresh one kept in memory only."""
    return Identity.load_or_create(path) if path else Identity.generate()


def rpc_config(args: argparse.Namespace) -> RPCConfig:
    return RPCConfig.for_members(args.members)
