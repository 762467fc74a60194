"""The models the benchmark scripts run on, by name ("tiny" and "smollm2"), and how they
split them between peers."""

from __future__ import annotations

import itertools
import tempfile
from collections.abc import Sequence
from pathlib import Path

from swarm.default_model import prepare_default_model
from tests.support.tiny_model import write_tiny_model


def bench_checkpoints(names: Sequence[str]) -> dict[str, Path]:
    """ "tiny": a fresh random 6-block Llama (1,024 positions, for the 512-token prefill);
    "smollm2": the default model, SmolLM2-135M-Instruct (converted once, then cached)."""
    checkpoints: dict[str, Path] = {}
    if "tiny" in names:
        directory = Path(tempfile.mkdtemp()) / "tiny"
        checkpoints["tiny"] = write_tiny_model(
            directory, num_layers=6, max_position_embeddings=1024
        )
    if "smollm2" in names:
        checkpoints["smollm2"] = prepare_default_model()
    return checkpoints


def equal_spans(blocks: int, hops: int) -> list[tuple[int, int]]:
    """`blocks` split into `hops` contiguous spans of (nearly) equal size."""
    bounds = [round(i * blocks / hops) for i in range(hops + 1)]
    return list(itertools.pairwise(bounds))
