"""Checkpoint reading: family detection, the tensor index, and reading only the span's tensors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import safetensors
import torch
from transformers import Qwen2Config, XGLMConfig, XGLMForCausalLM

from peer.backend import SpanBackend
from peer.checkpoint import open_checkpoint, read_tensors
from peer.errors import CheckpointError, InvalidRequestError, PeerError, UnsupportedModelError
from peer.span import load_span
from peer.testing import write_random_checkpoint

from .conftest import SMALL, MakeCheckpoint, Reference


class _CountingOpen:
    """Wraps safetensors.safe_open and records every tensor actually read."""

    def __init__(self) -> None:
        self.real = safetensors.safe_open
        self.read: list[str] = []

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        counter = self

        class Handle:
            def __init__(self) -> None:
                self.inner = counter.real(*args, **kwargs)

            def __enter__(self) -> Handle:
                self.inner.__enter__()
                return self

            def __exit__(self, *exc: object) -> None:
                self.inner.__exit__(*exc)

            def keys(self) -> list[str]:
                return list(self.inner.keys())

            def get_tensor(self, name: str) -> torch.Tensor:
                counter.read.append(name)
                tensor: torch.Tensor = self.inner.get_tensor(name)
                return tensor

        return Handle()


@pytest.mark.parametrize("shard", [None, "60KB"])
def test_span_reads_only_its_layer(
    shard: str | None, make_checkpoint: MakeCheckpoint, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = make_checkpoint("llama", **({"max_shard_size": shard} if shard else {}))
    checkpoint = open_checkpoint(path)
    assert len(checkpoint.tensor_files) > 9 * 4  # 9 tensors per block + embeddings, norm, head
    counting = _CountingOpen()
    monkeypatch.setattr(safetensors, "safe_open", counting)
    span = load_span(checkpoint, 2, 3)
    assert sorted(counting.read) == sorted(checkpoint.layer_tensor_names(2))
    assert len(counting.read) == 9  # q, k, v, o, gate, up, down, 2 norms
    assert all(name.startswith("model.layers.2.") for name in counting.read)
    parameters = dict(span.layers.named_parameters())
    assert len(parameters) == 9
    assert not any(t.is_meta for t in parameters.values())
    assert span.layers[0].self_attn.layer_idx == 0  # renumbered from 2


def test_family_detection(checkpoints: dict[str, Path]) -> None:
    for family, path in checkpoints.items():
        assert open_checkpoint(path).family.name == family


def test_unsupported_model(tmp_path: Path) -> None:
    config = XGLMConfig(d_model=32, num_layers=2, attention_heads=2, vocab_size=64)
    XGLMForCausalLM(config).save_pretrained(tmp_path)
    with pytest.raises(UnsupportedModelError, match=r"llama.*mistral.*qwen2.*qwen3") as info:
        open_checkpoint(tmp_path)
    assert isinstance(info.value, PeerError)
    assert "'xglm'" in str(info.value)


def test_bad_directories(tmp_path: Path, checkpoints: dict[str, Path]) -> None:
    with pytest.raises(CheckpointError, match=r"config\.json"):
        open_checkpoint(tmp_path)
    (tmp_path / "config.json").write_text((checkpoints["llama"] / "config.json").read_text())
    with pytest.raises(CheckpointError, match="safetensors"):
        open_checkpoint(tmp_path)
    (tmp_path / "config.json").write_text("[1, 2]")
    with pytest.raises(CheckpointError, match="JSON object"):
        open_checkpoint(tmp_path)


def test_bad_index(make_checkpoint: MakeCheckpoint) -> None:
    path = make_checkpoint("llama", max_shard_size="60KB")
    index_path = path / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    name = next(iter(index["weight_map"]))
    index["weight_map"][name] = "../outside.safetensors"
    index_path.write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match="bad shard"):
        open_checkpoint(path)


def test_read_tensors_leaves_out_absent_names(checkpoints: dict[str, Path]) -> None:
    path = checkpoints["llama"]
    names = ["model.embed_tokens.weight", "model.norm.weight", "lm_head.weight", "nope"]
    tensors = read_tensors(path, names, dtype=torch.bfloat16)
    with safetensors.safe_open(str(path / "model.safetensors"), framework="pt") as handle:
        stored = set(handle.keys())
    assert set(tensors) == {n for n in names if n in stored}
    assert "model.embed_tokens.weight" in tensors and "nope" not in tensors
    assert tensors["model.norm.weight"].dtype == torch.bfloat16


def test_span_bounds(checkpoints: dict[str, Path]) -> None:
    for start, end in [(0, 5), (3, 3), (-1, 2)]:
        with pytest.raises(InvalidRequestError):
            load_span(checkpoints["llama"], start, end)
    with pytest.raises(InvalidRequestError, match="dtype"):
        load_span(checkpoints["llama"], 0, 1, dtype="int8")


def test_write_random_checkpoint(tmp_path: Path) -> None:
    """The benchmark's generator writes a checkpoint transformers loads like its own."""
    config = Qwen2Config(**SMALL, tie_word_embeddings=False)  # q/k/v with biases
    path = write_random_checkpoint(config, tmp_path, dtype=torch.float32, shard_bytes=100_000)
    assert len(list(path.glob("*.safetensors"))) > 3
    reference = Reference(path)
    backend = SpanBackend.load(path, 1, 3)
    hidden = reference.blocks(reference.embed(torch.arange(10)[None, :]), 0, 1)
    expected = reference.blocks(hidden, 1, 3)
    assert torch.equal(backend.forward(hidden), expected) and torch.isfinite(expected).all()
    parameters = dict(reference.model.named_parameters())
    assert torch.equal(parameters["model.layers.1.input_layernorm.weight"], torch.ones(64))
    assert torch.equal(parameters["model.layers.1.self_attn.q_proj.bias"], torch.zeros(64))
    assert 0.01 < float(parameters["model.layers.1.mlp.up_proj.weight"].detach().std()) < 0.03
