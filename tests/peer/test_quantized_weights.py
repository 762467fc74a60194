"""Quantized checkpoints (FP8 by blocks, MXFP4 experts): the peer's dequantized blocks equal
transformers' own."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, FineGrainedFP8Config, Mxfp4Config

from peer.backend import SpanBackend
from peer.checkpoint import open_checkpoint, read_layer_tensors
from peer.errors import CheckpointError, UnsupportedModelError
from peer.quantized_weights import Quantization, dequantize_fp8, dequantize_mxfp4
from tests.support.quantized_checkpoint import BLOCK, quantize_fp8, to_fp8, to_mxfp4

from .conftest import MakeCheckpoint


@pytest.mark.parametrize("family", ["llama", "deepseek_v3"])
def test_blocks_equal_transformers_dequantized_model(
    family: str, make_checkpoint: MakeCheckpoint
) -> None:
    path = to_fp8(make_checkpoint(family))
    quantization = FineGrainedFP8Config(dequantize=True, weight_block_size=BLOCK)
    model = AutoModelForCausalLM.from_pretrained(path, quantization_config=quantization)
    ids = torch.randint(0, 128, (2, 9), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        states = model.eval()(ids, output_hidden_states=True).hidden_states
    for dtype in (torch.float32, torch.bfloat16):
        backend = SpanBackend.load(path, 0, 3, dtype=dtype)
        parameters = {name: p for name, p in model.model.layers[:3].named_parameters()}
        ours = dict(backend.span.layers.named_parameters())
        assert ours.keys() == parameters.keys()
        for name, parameter in parameters.items():  # dequantized in float32, then cast
            assert torch.equal(ours[name], parameter.to(dtype)), name
    backend = SpanBackend.load(path, 0, 3)
    assert torch.equal(backend.forward(states[0]), states[3])


def test_mxfp4_experts_equal_transformers_dequantized_model(
    make_checkpoint: MakeCheckpoint,
) -> None:
    path = to_mxfp4(make_checkpoint("gpt_oss"))
    quantization = Mxfp4Config(dequantize=True)
    model = AutoModelForCausalLM.from_pretrained(path, quantization_config=quantization).eval()
    ids = torch.randint(0, 128, (2, 9), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        states = model(ids, output_hidden_states=True).hidden_states
    for dtype in (torch.float32, torch.bfloat16):  # bfloat16: dequantized one expert at a time
        ours = dict(SpanBackend.load(path, 0, 3, dtype=dtype).span.layers.named_parameters())
        for name, parameter in model.model.layers[:3].named_parameters():
            assert torch.equal(ours[name], parameter.to(dtype)), name
    assert torch.equal(SpanBackend.load(path, 0, 3).forward(states[0]), states[3])


def test_mxfp4_blocks_that_do_not_fit_their_scales_are_a_checkpoint_error() -> None:
    blocks = torch.zeros(2, 8, 2, 16, dtype=torch.uint8)
    assert dequantize_mxfp4("w", blocks, torch.full((2, 8, 2), 127, dtype=torch.uint8)).shape == (
        2,
        64,
        8,
    )
    for bad_blocks, scales in [
        (blocks, torch.zeros(2, 8, 3, dtype=torch.uint8)),
        (blocks.float(), torch.zeros(2, 8, 2, dtype=torch.uint8)),
    ]:
        with pytest.raises(CheckpointError, match="MXFP4"):
            dequantize_mxfp4("w", bad_blocks, scales)


def test_blocks_cut_short_at_the_edges() -> None:
    weight = torch.randn(40, 50)
    quantized, scales = quantize_fp8(weight, (16, 32))
    assert scales.shape == (3, 2)
    got = dequantize_fp8("w", quantized, scales, (16, 32))
    assert torch.equal(got[35, 45], quantized[35, 45].float() * scales[2, 1])
    assert torch.equal(got[15, 31], quantized[15, 31].float() * scales[0, 0])
    torch.testing.assert_close(got, weight, rtol=0.07, atol=1e-3)  # e4m3: 3 mantissa bits
    with pytest.raises(CheckpointError, match="do not fit"):
        dequantize_fp8("w", quantized, scales[:2], (16, 32))


def test_scales_read_along_and_not_returned(make_checkpoint: MakeCheckpoint) -> None:
    checkpoint = open_checkpoint(to_fp8(make_checkpoint("llama")))
    assert checkpoint.quantization == Quantization("fp8", BLOCK)
    tensors = read_layer_tensors(checkpoint, 1, dtype=torch.bfloat16)
    assert not any(name.endswith("_scale_inv") for name in tensors)
    assert {t.dtype for t in tensors.values()} == {torch.bfloat16}


def test_other_quantizations_are_refused(make_checkpoint: MakeCheckpoint) -> None:
    path = make_checkpoint("llama")
    config = json.loads((path / "config.json").read_text())
    for quantization, error, message in [
        ({"quant_method": "gptq", "bits": 4}, UnsupportedModelError, "'gptq'"),
        ({"quant_method": "fp8", "weight_block_size": [128]}, CheckpointError, "two sizes"),
    ]:
        (path / "config.json").write_text(
            json.dumps(config | {"quantization_config": quantization})
        )
        with pytest.raises(error, match=message):
            open_checkpoint(path)
