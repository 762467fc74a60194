"""peer: the daemon's compute core: load a span of blocks, serve forward and inference sessions.

Layers: `checkpoint` (read a span's tensors) -> `span` (blocks on the meta device, then real
weights) -> `backend` (sync torch: forward, KV-cached sessions, merged steps) -> `worker` (the
one compute thread) -> `scheduler` (trio API: batching, idle expiry). `throughput` measures
what the announcement advertises.

Importing `peer` stays light: the errors are imported now; the torch-backed names load on
first use (module `__getattr__`), so `swarm --help` never pays for torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .errors import CacheBudgetError as CacheBudgetError
from .errors import CheckpointError as CheckpointError
from .errors import InvalidRequestError as InvalidRequestError
from .errors import PeerError as PeerError
from .errors import SessionExistsError as SessionExistsError
from .errors import SessionLimitError as SessionLimitError
from .errors import SessionNotFoundError as SessionNotFoundError
from .errors import UnsupportedModelError as UnsupportedModelError
from .errors import WorkerClosedError as WorkerClosedError

if TYPE_CHECKING:
    from .backend import BackendConfig as BackendConfig
    from .backend import SessionInfo as SessionInfo
    from .backend import SpanBackend as SpanBackend
    from .backend import StepRequest as StepRequest
    from .checkpoint import Checkpoint as Checkpoint
    from .checkpoint import open_checkpoint as open_checkpoint
    from .checkpoint import read_tensors as read_tensors
    from .scheduler import InferenceScheduler as InferenceScheduler
    from .scheduler import SchedulerConfig as SchedulerConfig
    from .span import Span as Span
    from .span import load_span as load_span
    from .throughput import Throughput as Throughput
    from .throughput import get_throughput as get_throughput
    from .worker import ComputeWorker as ComputeWorker

_LAZY = {
    "BackendConfig": "backend",
    "SessionInfo": "backend",
    "SpanBackend": "backend",
    "StepRequest": "backend",
    "Checkpoint": "checkpoint",
    "open_checkpoint": "checkpoint",
    "read_tensors": "checkpoint",
    "InferenceScheduler": "scheduler",
    "SchedulerConfig": "scheduler",
    "Span": "span",
    "load_span": "span",
    "Throughput": "throughput",
    "get_throughput": "throughput",
    "ComputeWorker": "worker",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'peer' has no attribute {name!r}")
    return getattr(importlib.import_module(f".{module}", __name__), name)
