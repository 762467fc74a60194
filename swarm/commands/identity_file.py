"""The `--identity PATH` option shared by long-running commands."""

from __future__ import annotations

from pathlib import Path

from security import Identity


def identity_from(path: Path | None) -> Identity:
    """The key at `path` (created there if missing), or a fresh one kept in memory only."""
    return Identity.load_or_create(path) if path else Identity.generate()
