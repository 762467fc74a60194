"""The name a model has in the swarm, derived the same way by peers and clients.

A local checkpoint directory is named after the directory (`.../SmolLM2-135M-Instruct` ->
`SmolLM2-135M-Instruct`), a hub id after its last part; characters outside
`[A-Za-z0-9._-]` become `-`. `--model-name` overrides it on both sides when two machines keep
the same checkpoint under different names.
"""

from __future__ import annotations

import re
from pathlib import PurePath

from .errors import CheckpointError


def model_name(checkpoint: str | PurePath) -> str:
    """The swarm name of `checkpoint` (a directory path or a hub id)."""
    name = re.sub(r"[^A-Za-z0-9._-]", "-", PurePath(str(checkpoint).rstrip("/")).name)
    name = name.strip(".-")[:64]
    if not name:
        raise CheckpointError(f"cannot derive a model name from {str(checkpoint)!r}")
    return name
