"""The client's head: every tensor of the embeddings, final norm and LM head, or a clear error."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, XGLMConfig

from peer.errors import CheckpointError, UnsupportedModelError
from swarm.head import ClientHead
from tests.peer.conftest import Reference
from tests.support.tiny_model import FAMILIES, rename_tensors, write_tiny_model


@pytest.mark.parametrize("family", FAMILIES)
def test_embeddings_and_logits_equal_the_model(family: str, tmp_path: Path) -> None:
    """What transformers' model computes before its first block and after its last (Gemma's
    scaled embeddings, Gemma 2's capped logits...), bit for bit."""
    path = write_tiny_model(tmp_path / family, family, num_layers=2)
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    head = ClientHead.from_pretrained(path)
    ids = torch.tensor([[1, 40, 41, 42, 43]])
    with torch.no_grad():
        output = model(ids, output_hidden_states=True)
    decoder = head.family.decoder_of(model)
    embeddings = head.embed(ids)
    if head.family.learned_positions:  # GPT-2's, OPT's: added by the first peer
        assert torch.equal(embeddings, getattr(decoder, head.family.embeddings)(ids))
        embeddings = embeddings + Reference(path, model).positions(torch.arange(5)[None])
    assert torch.equal(embeddings, output.hidden_states[0])
    setattr(decoder, head.family.final_norm, torch.nn.Identity())  # the last block's output
    with torch.no_grad():
        last_block = model(ids, output_hidden_states=True).hidden_states[-1]
    assert torch.equal(head.logits(last_block), output.logits)


def test_bloom_as_bigscience_saved_it(tmp_path: Path) -> None:
    """No `transformer.` in the tensor names; the LM head tied to the embeddings."""
    path = write_tiny_model(tmp_path / "bloom", "bloom", num_layers=2)
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    head = ClientHead.from_pretrained(rename_tensors(path, "transformer."))
    ids = torch.tensor([[1, 40, 41, 42]])
    hidden = torch.randn(1, 3, model.config.hidden_size)
    with torch.no_grad():
        assert torch.equal(head.embed(ids), model(ids, output_hidden_states=True).hidden_states[0])
        assert torch.equal(head.logits(hidden), model.lm_head(model.transformer.ln_f(hidden)))


def test_gpt_neox_as_saved_before_transformers_5(tmp_path: Path) -> None:
    """Pythia and GPT-NeoX checkpoints name their LM head `embed_out`."""
    path = write_tiny_model(tmp_path / "gpt_neox", "gpt_neox", num_layers=2)
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    head = ClientHead.from_pretrained(rename_tensors(path, "lm_head.", "embed_out."))
    hidden = torch.randn(1, 3, model.config.hidden_size)
    with torch.no_grad():
        expected = model.lm_head(model.gpt_neox.final_layer_norm(hidden))
    assert torch.equal(head.logits(hidden), expected)


def test_a_final_norm_with_a_bias_is_read(tmp_path: Path) -> None:
    """StableLM's final norm is a LayerNorm with a bias: the head's logits equal the model's."""
    path = write_tiny_model(tmp_path / "stablelm", "stablelm")
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    with torch.no_grad():  # a LayerNorm's bias starts at zero: make it count
        model.model.norm.bias.normal_()
    model.save_pretrained(path)
    head = ClientHead.from_pretrained(path)
    hidden = torch.randn(1, 3, model.config.hidden_size)
    with torch.no_grad():
        expected = model.lm_head(model.model.norm(hidden))
    assert torch.equal(head.logits(hidden), expected)


def test_a_head_tensor_missing_from_the_checkpoint_is_named(tmp_path: Path) -> None:
    path = write_tiny_model(tmp_path / "stablelm", "stablelm")
    tensors = load_file(path / "model.safetensors")
    del tensors["model.norm.bias"]
    save_file(tensors, path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match=r"model\.norm\.bias"):
        ClientHead.from_pretrained(path)


def test_an_unsupported_family_is_refused_with_the_supported_ones(tmp_path: Path) -> None:
    config = XGLMConfig(d_model=32, num_layers=2, attention_heads=2, vocab_size=64)
    AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path)
    with pytest.raises(UnsupportedModelError, match=r"'xglm' is not supported.*mixtral"):
        ClientHead.from_pretrained(tmp_path)
