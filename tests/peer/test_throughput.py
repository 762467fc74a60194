"""Throughput: measured once, cached per shape/device/dtype/span size, re-measured when asked."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from peer import throughput
from peer.backend import SpanBackend
from peer.throughput import Throughput, get_throughput, throughput_key

from .conftest import MakeCheckpoint


def test_measured_once_then_cached(
    checkpoints: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend = SpanBackend.load(checkpoints["llama"], 0, 2)
    measured = get_throughput(backend, tmp_path)
    assert measured.num_layers == 2
    assert measured.inference_tokens_per_s > 0 and measured.forward_tokens_per_s > 0
    assert backend.active_sessions == 0
    assert backend.cache_tokens_left == backend.config.max_cache_tokens
    stored = json.loads((tmp_path / "throughput.json").read_text())
    key = throughput_key(backend)
    assert list(stored) == [key] and "cpu" in key and "float32" in key and "blocks=2" in key

    def fail(*_: object, **__: object) -> Throughput:
        raise AssertionError("measured again")

    monkeypatch.setattr(throughput, "measure_throughput", fail)
    assert get_throughput(backend, tmp_path) == measured
    other = SpanBackend.load(checkpoints["llama"], 0, 3, dtype=torch.bfloat16)
    with pytest.raises(AssertionError, match="measured again"):  # another key
        get_throughput(other, tmp_path)
    monkeypatch.undo()
    (tmp_path / "throughput.json").write_text("{not json")
    assert get_throughput(backend, tmp_path).num_layers == 2
    assert list(json.loads((tmp_path / "throughput.json").read_text())) == [key]


def test_the_key_tells_mixtures_of_experts_apart(make_checkpoint: MakeCheckpoint) -> None:
    """Same dimensions, different experts: a different cost per token, so another key."""
    keys = {
        throughput_key(SpanBackend.load(make_checkpoint("mixtral", **experts), 0, 1))
        for experts in [
            {"num_local_experts": 4, "num_experts_per_tok": 2},
            {"num_local_experts": 8, "num_experts_per_tok": 2},
            {"num_local_experts": 4, "num_experts_per_tok": 1},
        ]
    }
    assert len(keys) == 3 and all("mixtral" in key for key in keys)
