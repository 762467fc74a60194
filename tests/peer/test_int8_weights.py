"""Weight-only int8: each linear layer multiplies by int8 weights times a scale per row; a
span of them equals the transformers model whose weights are those dequantized ones."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from peer.adapters import load_adapter
from peer.backend import SpanBackend
from peer.errors import InvalidRequestError
from peer.int8_weights import DEQUANTIZE_FROM_ROWS, Int8Linear, quantize_linears
from tests.support.lora import write_lora
from tests.support.quantized_checkpoint import dequantized_int8_model

from .conftest import Reference

HALF = torch.float16  # finer than bfloat16: the kernel's rounding stays far below int8's


def _hidden(batch: int, length: int) -> torch.Tensor:
    return torch.randn(batch, length, 64, generator=torch.Generator().manual_seed(0)).to(HALF)


def test_a_layer_keeps_int8_weights_within_half_a_step_of_each_row() -> None:
    linear = torch.nn.Linear(32, 48, bias=True).to(HALF)
    with torch.no_grad():
        linear.weight[3] = 0  # a row of zeros: scale at its smallest, no division by zero
    layer = Int8Linear(linear)
    assert layer.weight_int8.dtype == torch.int8 and layer.scale.shape == (48,)
    error = (layer.dequantized().float() - linear.weight.float()).abs()
    assert bool((error <= layer.scale.float()[:, None] * 0.5 + 1e-3).all())
    hidden = torch.randn(2, 5, 32).to(HALF)
    expected = torch.nn.functional.linear(
        hidden.float(), layer.dequantized().float(), linear.bias.float()
    )
    torch.testing.assert_close(layer(hidden).float(), expected, rtol=2e-3, atol=2e-3)
    assert torch.isfinite(layer(hidden)).all()
    long = torch.randn(1, DEQUANTIZE_FROM_ROWS, 32).to(HALF)  # the other way, the same product
    expected = torch.nn.functional.linear(
        long.float(), layer.dequantized().float(), linear.bias.float()
    )
    torch.testing.assert_close(layer(long).float(), expected, rtol=2e-3, atol=2e-3)


def test_float32_activations_are_refused() -> None:
    with pytest.raises(InvalidRequestError, match="bfloat16 or float16"):
        quantize_linears(torch.nn.Sequential(torch.nn.Linear(4, 4)), torch.float32)


@pytest.mark.parametrize("family", ["llama", "falcon", "bloom", "mixtral", "gpt2"])
def test_a_span_equals_the_model_with_dequantized_weights(
    family: str, checkpoints: dict[str, Path]
) -> None:
    """Whole sequence and step by step; much closer to the dequantized model than to the
    original one (the rounding is int8's, not the kernel's); half the bytes of float16."""
    path = checkpoints[family]
    backend = SpanBackend.load(path, 0, 3, dtype=HALF, quantization="int8")
    reference = Reference(path, dequantized_int8_model(path, HALF))
    hidden = _hidden(2, 9)
    expected = reference.blocks(hidden, 0, 3).float()
    got = backend.forward(hidden).float()
    original = Reference(path, AutoModelForCausalLM.from_pretrained(path).to(HALF))
    unquantized = original.blocks(hidden, 0, 3).float()
    assert (got - expected).abs().mean() * 3 < (got - unquantized).abs().mean()
    torch.testing.assert_close(got, expected, rtol=1e-2, atol=1e-2)
    backend.open_session("s", 9, batch_size=2)
    steps = [backend.step("s", hidden[:, :4])]
    steps += [backend.step("s", hidden[:, t : t + 1]) for t in range(4, 9)]
    torch.testing.assert_close(torch.cat(steps, 1).float(), expected, rtol=1e-2, atol=1e-2)
    plain = SpanBackend.load(path, 0, 3, dtype=HALF)
    sizes = [
        sum(
            t.numel() * t.element_size()
            for t in [*b.span.layers.parameters(), *b.span.layers.buffers()]
        )
        for b in (backend, plain)
    ]
    if family != "mixtral":  # a mixture's experts are not linear layers: they stay
        assert sizes[0] < 0.6 * sizes[1]
    assert "int8" in backend.span.shape_key()


def test_the_gradient_goes_through_the_dequantized_weights(checkpoints: dict[str, Path]) -> None:
    path = checkpoints["llama"]
    backend = SpanBackend.load(path, 0, 3, dtype=HALF, quantization="int8")
    model = dequantized_int8_model(
        path, HALF
    ).float()  # autograd in float32 (`Reference` runs no_grad)
    hidden = _hidden(1, 6).float().requires_grad_(True)
    grad_outputs = torch.randn(1, 6, 64, generator=torch.Generator().manual_seed(1))
    positions = torch.arange(6)[None]
    with torch.enable_grad():
        out = hidden
        rotary = model.model.rotary_emb(out, positions)
        mask = torch.ones(6, 6, dtype=torch.bool).tril()[None, None]
        for layer in model.model.layers[:3]:
            out = layer(
                out, attention_mask=mask, position_ids=positions, position_embeddings=rotary
            )
        out.backward(grad_outputs)
    got = backend.backward(hidden.detach().to(HALF), grad_outputs.to(HALF))
    assert hidden.grad is not None
    torch.testing.assert_close(got.float(), hidden.grad, rtol=2e-2, atol=2e-2)


def test_a_lora_adapter_runs_over_int8_weights(
    checkpoints: dict[str, Path], tmp_path: Path
) -> None:
    path = checkpoints["llama"]
    adapter = write_lora(tmp_path / "tuned", path)
    backend = SpanBackend.load(path, 0, 3, dtype=HALF, quantization="int8")
    load_adapter(adapter, backend.span, backend.adapters)
    hidden = _hidden(2, 7)
    expected = Reference(path, dequantized_int8_model(path, HALF, adapter)).blocks(hidden, 0, 3)
    got = backend.forward(hidden, adapter="tuned")
    torch.testing.assert_close(got.float(), expected.float(), rtol=2e-2, atol=2e-2)
    assert (got.float() - backend.forward(hidden).float()).abs().max() > 0.1  # it did apply
