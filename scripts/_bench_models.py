"""The models the benchmark scripts run on, by name: "tiny" and "smollm2"."""

from __future__ import annotations

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
