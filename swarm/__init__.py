"""What users touch: the distributed model, the generation loop, the `swarm` command, the monitor.

`from swarm import DistributedModelForCausalLM` works as documented, but importing `swarm`
stays light (the `swarm --help` path): the model class, which needs torch and transformers,
loads on first use through the module `__getattr__`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .errors import SwarmError as SwarmError

if TYPE_CHECKING:
    from .model import DistributedModelForCausalLM as DistributedModelForCausalLM

_LAZY = {"DistributedModelForCausalLM": "model"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
