"""LoRA adapters on a peer's blocks: the model with the adapter merged into its weights is the
reference; the base outputs stay bit for bit; what a peer cannot apply is refused by name."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file

from peer.adapters import LoraLinear, load_adapter
from peer.backend import SpanBackend, StepRequest
from peer.errors import AdapterError, InvalidRequestError, UnknownAdapterError
from routing.announcement import MAX_ADAPTERS
from tests.support.lora import merged_model, write_lora

from .conftest import MakeCheckpoint, Reference, assert_rounding_close


def _hidden(batch: int, length: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, length, 64, generator=torch.Generator().manual_seed(seed))


def _steps(backend: SpanBackend, session: str, hidden: torch.Tensor, prompt: int) -> torch.Tensor:
    outputs = [backend.step(session, hidden[:, :prompt].contiguous())]
    for t in range(prompt, hidden.shape[1]):
        outputs.append(backend.step(session, hidden[:, t : t + 1].contiguous()))
    return torch.cat(outputs, 1)


TARGETS = {  # besides Llama's names
    "falcon": {"targets": ("query_key_value", "dense_4h_to_h")},
    "gpt2": {"targets": ("attn.c_attn", "mlp.c_proj"), "fan_in_fan_out": True},  # as PEFT's
}


@pytest.mark.parametrize("family", ["llama", "qwen2", "falcon", "gpt2", "opt"])
def test_a_request_with_an_adapter_equals_the_merged_model(
    family: str, checkpoints: dict[str, Path], references: dict[str, Reference], tmp_path: Path
) -> None:
    """GPT-2's layers are `Conv1D`s (weights transposed), which PEFT marks `fan_in_fan_out`;
    OPT's decoder is one level deeper (`model.decoder.layers`)."""
    path = checkpoints[family]
    adapter = write_lora(tmp_path / "tuned", path, **TARGETS.get(family, {}))
    merged = Reference(path, merged_model(path, adapter))
    base = references[family]
    backend = SpanBackend.load(path, 1, 4)
    assert load_adapter(adapter, backend.span, backend.adapters) == "tuned"
    hidden = _hidden(2, 9)
    expected = merged.blocks(hidden, 1, 4)
    assert not torch.allclose(expected, base.blocks(hidden, 1, 4), atol=1e-3)
    assert_rounding_close(backend.forward(hidden, adapter="tuned"), expected)
    assert torch.equal(backend.forward(hidden), base.blocks(hidden, 1, 4))  # base: as before
    backend.open_session("s", 9, batch_size=2, adapter="tuned")
    assert_rounding_close(_steps(backend, "s", hidden, prompt=4), expected)


def test_only_the_spans_blocks_take_the_adapter(
    checkpoints: dict[str, Path], tmp_path: Path
) -> None:
    adapter = write_lora(tmp_path / "tuned", checkpoints["llama"])
    backend = SpanBackend.load(checkpoints["llama"], 1, 3)
    load_adapter(adapter, backend.span, backend.adapters)
    wrapped = [m for m in backend.span.layers.modules() if isinstance(m, LoraLinear)]
    assert len(wrapped) == 2 * 3  # two blocks, three layers each


def test_merged_steps_of_sessions_with_different_adapters(
    checkpoints: dict[str, Path], tmp_path: Path
) -> None:
    path = checkpoints["llama"]
    backends = [SpanBackend.load(path, 0, 4) for _ in range(2)]
    for backend in backends:
        for seed, name in enumerate(["one", "two"]):
            load_adapter(
                write_lora(tmp_path / name, path, seed=seed), backend.span, backend.adapters
            )
    merged, single = backends
    adapters = {"a": "one", "b": "two", "c": None, "d": "one"}
    for backend in backends:
        for i, (session, adapter) in enumerate(adapters.items()):
            backend.open_session(session, 8, adapter=adapter)
            backend.step(session, _hidden(1, 3 + i, seed=i))
    requests = [StepRequest(s, _hidden(1, 1, seed=10 + i)) for i, s in enumerate(adapters)]
    got = merged.step_many(requests)
    expected = [single.step(r.session_id, r.hidden_states) for r in requests]
    for one, other in zip(got, expected, strict=True):
        assert_rounding_close(one, other)
    assert not torch.allclose(expected[0], expected[1]) and not torch.allclose(
        expected[1], expected[2]
    )


def test_the_gradient_with_an_adapter_equals_the_merged_models(
    checkpoints: dict[str, Path], tmp_path: Path
) -> None:
    path = checkpoints["llama"]
    adapter = write_lora(tmp_path / "tuned", path)
    model = merged_model(path, adapter)
    ids = torch.randint(0, 128, (2, 7), generator=torch.Generator().manual_seed(3))
    with torch.enable_grad():
        embeddings = model.get_input_embeddings()(ids).detach().requires_grad_(True)
        states = model(inputs_embeds=embeddings, output_hidden_states=True).hidden_states
        grad_outputs = torch.randn_like(states[3])
        states[3].backward(grad_outputs)
    backend = SpanBackend.load(path, 0, 3)
    load_adapter(adapter, backend.span, backend.adapters)
    got = backend.backward(embeddings.detach(), grad_outputs, adapter="tuned")
    assert embeddings.grad is not None
    assert_rounding_close(got, embeddings.grad)  # merged weights round otherwise


def test_rank_stabilized_scale(checkpoints: dict[str, Path], tmp_path: Path) -> None:
    path = checkpoints["llama"]
    adapter = write_lora(tmp_path / "rs", path, rank=4, alpha=8.0, use_rslora=True)
    backend = SpanBackend.load(path, 0, 2)
    load_adapter(adapter, backend.span, backend.adapters)
    hidden = _hidden(1, 5)
    expected = Reference(path, merged_model(path, adapter)).blocks(hidden, 0, 2)
    assert_rounding_close(backend.forward(hidden, adapter="rs"), expected)


def test_an_unknown_adapter_is_a_typed_error(checkpoints: dict[str, Path]) -> None:
    backend = SpanBackend.load(checkpoints["llama"], 0, 2)
    with pytest.raises(UnknownAdapterError, match="no adapter 'other'") as info:
        backend.open_session("s", 8, adapter="other")
    assert isinstance(info.value, InvalidRequestError) and info.value.code == "unknown_adapter"
    with pytest.raises(UnknownAdapterError):
        backend.forward(_hidden(1, 3), adapter="other")
    assert backend.active_sessions == 0


def _rewrite(adapter: Path, change: Any) -> None:
    tensors = load_file(adapter / "adapter_model.safetensors")
    save_file(change(tensors), adapter / "adapter_model.safetensors", metadata={"format": "pt"})


def _rename_pair(tensors: dict[str, torch.Tensor], old: str, new: str) -> dict[str, torch.Tensor]:
    return {name.replace(old, new): t for name, t in tensors.items()}


@pytest.mark.parametrize(
    ("config", "change", "message"),
    [
        ({"use_dora": True}, None, "use_dora"),
        ({"bias": "lora_only"}, None, "bias"),
        ({"modules_to_save": ["lm_head"]}, None, "modules_to_save"),
        ({"alpha_pattern": {"q_proj": 4}}, None, "alpha_pattern"),
        ({"peft_type": "IA3"}, None, "not a PEFT LoRA"),
        ({"r": 0}, None, "rank"),
        ({"r": 8}, None, "do not fit"),
        ({}, lambda t: {**t, "base_model.model.model.embed_tokens.lora_A.weight": torch.ones(1)},
         "more than the blocks"),
        ({}, lambda t: {k: v for k, v in t.items() if "lora_B" not in k}, "pairs"),
        ({}, lambda t: _rename_pair(t, "q_proj", "q_norm"), "no such layer"),
        ({}, lambda t: _rename_pair(t, "self_attn.q_proj", "self_attn"), "not a linear layer"),
    ],
)  # fmt: skip
def test_what_a_peer_cannot_apply_is_refused(
    config: dict[str, Any],
    change: Any,
    message: str,
    make_checkpoint: MakeCheckpoint,
    tmp_path: Path,
) -> None:
    path = make_checkpoint("llama")
    adapter = write_lora(tmp_path / "tuned", path, **config)
    if change is not None:
        _rewrite(adapter, change)
    backend = SpanBackend.load(path, 0, 2)
    with pytest.raises(AdapterError, match=message):
        load_adapter(adapter, backend.span, backend.adapters)


def test_unreadable_misnamed_and_too_many_adapters(
    checkpoints: dict[str, Path], tmp_path: Path
) -> None:
    backend = SpanBackend.load(checkpoints["llama"], 0, 2)
    with pytest.raises(AdapterError, match=r"adapter_config\.json"):
        load_adapter(tmp_path / "missing", backend.span, backend.adapters)
    adapter = write_lora(tmp_path / "tuned", checkpoints["llama"])
    (adapter / "adapter_model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(AdapterError, match="cannot read adapter_model"):
        load_adapter(adapter, backend.span, backend.adapters)
    badly_named = write_lora(tmp_path / "a b", checkpoints["llama"])
    with pytest.raises(AdapterError, match="name"):
        load_adapter(badly_named, backend.span, backend.adapters)
    assert backend.adapters.names == ()
    names = tuple(f"a{i}" for i in range(MAX_ADAPTERS))
    backend.adapters.names = names
    with pytest.raises(AdapterError, match=f"at most {MAX_ADAPTERS}"):
        load_adapter(
            write_lora(tmp_path / "one-more", checkpoints["llama"]), backend.span, backend.adapters
        )
    with pytest.raises(AdapterError, match="two adapters are named 'a0'"):
        load_adapter(
            write_lora(tmp_path / "a0", checkpoints["llama"]), backend.span, backend.adapters
        )
