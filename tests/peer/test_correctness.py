"""The span's outputs against the same blocks inside the local transformers model.

Stateless forward in float32 must be bit-identical (torch.equal); incremental decoding
(prompt, then single tokens) must match the full-sequence forward within 1e-5.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import DynamicCache

from peer.backend import BackendConfig, SpanBackend
from peer.errors import InvalidRequestError
from peer.span import cache_keyword
from swarm.head import ClientHead
from tests.support.tiny_model import FAMILIES, rename_tensors, write_tiny_multimodal

from .conftest import MakeCheckpoint, Reference, assert_rounding_close

RANGES = [(0, 4), (1, 3), (3, 4), (0, 1)]


def _ids(batch: int, length: int, seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 128, (batch, length), generator=generator)


@pytest.mark.parametrize("family", FAMILIES)
def test_reference_helper_matches_model_forward(
    family: str, references: dict[str, Reference]
) -> None:
    """Our block-by-block reference equals the hidden states of transformers' own forward."""
    reference = references[family]
    ids = _ids(2, 9)
    with torch.no_grad():
        states = reference.model(ids, output_hidden_states=True).hidden_states
    embeddings = reference.embed(ids)
    for block in range(4):  # the last entry is after the final norm
        assert torch.equal(reference.blocks(embeddings, 0, block), states[block])


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize(("start", "end"), RANGES)
def test_forward_is_bit_identical(
    family: str,
    start: int,
    end: int,
    checkpoints: dict[str, Path],
    references: dict[str, Reference],
) -> None:
    reference = references[family]
    backend = SpanBackend.load(checkpoints[family], start, end)
    hidden = reference.blocks(reference.embed(_ids(3, 11)), 0, start)
    assert torch.equal(backend.forward(hidden), reference.blocks(hidden, start, end))


@pytest.mark.parametrize(
    "family", ["llama", "gemma2", "deepseek_v3", "llama4_text", "falcon", "bloom", "gpt2", "opt"]
)
def test_forward_with_padding_is_bit_identical(
    family: str, checkpoints: dict[str, Path], references: dict[str, Reference]
) -> None:
    """Padding on the right and on the left, hidden by `attention_mask` as in transformers
    (which numbers OPT's positions from each row's first token, the others' from the first
    column)."""
    reference = references[family]
    ids = _ids(2, 9)
    mask = torch.ones_like(ids)
    mask[0, 6:], mask[1, :2] = 0, 0
    with torch.no_grad():
        states = reference.model(ids, attention_mask=mask, output_hidden_states=True).hidden_states
    backend = SpanBackend.load(checkpoints[family], 0, 3)
    embeddings = reference.embed(ids)
    assert torch.equal(backend.forward(embeddings, attention_mask=mask.tolist()), states[3])
    with pytest.raises(InvalidRequestError, match="attention_mask"):
        backend.forward(embeddings, attention_mask=mask[:, 1:])


@pytest.mark.parametrize(
    "family", ["llama", "gemma2", "mixtral", "deepseek_v3", "bloom", "gpt_bigcode"]
)
def test_backward_equals_autograd_through_the_model(
    family: str, checkpoints: dict[str, Path], references: dict[str, Reference]
) -> None:
    """The gradient with respect to the span's inputs, as autograd gives it through the
    transformers model's own forward (padding included)."""
    model = references[family].model
    ids = _ids(2, 9)
    mask = torch.ones_like(ids)
    mask[0, 6:] = 0
    with torch.enable_grad():
        embeddings = model.get_input_embeddings()(ids).detach().requires_grad_(True)
        states = model(inputs_embeds=embeddings, attention_mask=mask, output_hidden_states=True)
        first = states.hidden_states[0]  # what block 0 takes (Gemma scales them, BLOOM norms)
        first.retain_grad()
        grad_outputs = torch.randn_like(states.hidden_states[3])
        states.hidden_states[3].backward(grad_outputs)
    backend = SpanBackend.load(checkpoints[family], 0, 3)
    sent = embeddings if references[family].family.learned_positions else first  # see `embed`
    got = backend.backward(sent.detach(), grad_outputs, attention_mask=mask.tolist())
    torch.testing.assert_close(got, first.grad, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", ["gemma3", "llava"])
def test_the_language_model_of_a_multimodal_checkpoint(kind: str, tmp_path: Path) -> None:
    """Its blocks, read from inside the image-text checkpoint, equal the hidden states that
    transformers' image-text model computes for a text-only input."""
    from transformers import AutoModelForImageTextToText

    path = write_tiny_multimodal(tmp_path / kind, kind)
    model = AutoModelForImageTextToText.from_pretrained(path).eval()
    with torch.no_grad():
        states = model(_ids(2, 9), output_hidden_states=True).hidden_states
    backend = SpanBackend.load(path, 1, 3)
    assert torch.equal(backend.forward(states[1]), states[3])
    assert_rounding_close(_incremental(backend, states[1], prompt=4), states[3])


@pytest.mark.parametrize("layout", ["falcon-7b", "falcon-sequential", "bloom-bare"])
def test_other_layouts_of_falcon_and_bloom(layout: str, make_checkpoint: MakeCheckpoint) -> None:
    """Falcon 7B (one key-value head, attention and MLP in parallel), Falcon's sequential
    variant with biases, and BLOOM as BigScience saved it (no `transformer.` in the names):
    bit for bit what the transformers model computes, in one forward and step by step."""
    if layout == "bloom-bare":
        path = rename_tensors(make_checkpoint("bloom"), "transformer.")
    else:
        settings: dict[str, object] = {"multi_query": True, "parallel_attn": True}
        if layout == "falcon-sequential":
            settings = {
                "multi_query": False,
                "num_kv_heads": 4,
                "parallel_attn": False,
                "bias": True,
            }
        path = make_checkpoint("falcon", new_decoder_architecture=False, **settings)
    reference = Reference(path)
    hidden = reference.embed(_ids(2, 9))
    backend = SpanBackend.load(path, 1, 4)
    assert backend.span.cache_layout.key_heads == (1 if layout == "falcon-7b" else 4)
    inputs = reference.blocks(hidden, 0, 1)
    assert torch.equal(backend.forward(inputs), reference.blocks(inputs, 1, 4))
    assert_rounding_close(_incremental(backend, inputs, prompt=4), reference.blocks(inputs, 1, 4))


def test_gpt2_as_openai_saved_it(make_checkpoint: MakeCheckpoint) -> None:
    """No `transformer.` in the names, and each block's causal mask saved as a tensor
    (`h.N.attn.bias`, `attn.masked_bias`), which a span does not read: the blocks, from
    block 0 (which adds the position embeddings), equal transformers' model."""
    from safetensors.torch import load_file, save_file

    path = rename_tensors(make_checkpoint("gpt2"), "transformer.")
    tensors = load_file(path / "model.safetensors")
    for layer in range(4):
        tensors[f"h.{layer}.attn.bias"] = torch.ones(1, 1, 256, 256).tril()
        tensors[f"h.{layer}.attn.masked_bias"] = torch.tensor(-1e4)
    save_file(tensors, path / "model.safetensors", metadata={"format": "pt"})
    reference = Reference(path)
    hidden = reference.embed(_ids(2, 9))
    backend = SpanBackend.load(path, 0, 4)
    assert torch.equal(backend.forward(hidden), reference.blocks(hidden, 0, 4))
    assert_rounding_close(_incremental(backend, hidden, prompt=4), reference.blocks(hidden, 0, 4))


@pytest.mark.parametrize("layout", ["opt-350m", "opt-bare"])
def test_other_layouts_of_opt(layout: str, make_checkpoint: MakeCheckpoint) -> None:
    """OPT 350M (embeddings narrower than the blocks, projected in and out by the client's
    head; norms after attention, none at the end), and OPT as Meta saved it (its base model
    alone: `decoder.` names): the blocks from block 0 equal transformers' model."""
    if layout == "opt-bare":
        path = rename_tensors(make_checkpoint("opt"), "model.")
    else:
        path = make_checkpoint("opt", word_embed_proj_dim=32, do_layer_norm_before=False)
    reference = Reference(path)
    ids = _ids(2, 9)
    with torch.no_grad():
        states = reference.model(ids, output_hidden_states=True).hidden_states
    hidden = reference.embed(ids)
    assert torch.equal(reference.blocks(hidden, 0, 0), states[0])
    backend = SpanBackend.load(path, 0, 4)
    assert torch.equal(backend.forward(hidden), reference.blocks(hidden, 0, 4))
    assert_rounding_close(_incremental(backend, hidden, prompt=4), reference.blocks(hidden, 0, 4))
    head = ClientHead.from_pretrained(path)
    assert torch.equal(head.embed(ids), hidden)
    with torch.no_grad():
        last = reference.blocks(hidden, 0, 4)
        assert torch.equal(
            head.logits(last), reference.model.lm_head(_after_blocks(reference, last))
        )


def _after_blocks(reference: Reference, hidden: torch.Tensor) -> torch.Tensor:
    """OPT's final norm (if it has one) and projection out (if it has one)."""
    for name in ("final_layer_norm", "project_out"):
        module = getattr(reference.decoder, name)
        hidden = hidden if module is None else module(hidden)
    return hidden


def test_learned_positions_bound_the_sessions(checkpoints: dict[str, Path]) -> None:
    """GPT-2 has no position past its table (256 here), whatever the peer's own cap."""
    config = BackendConfig(max_session_length=1000)
    first = SpanBackend.load(checkpoints["gpt2"], 0, 2, config=config)
    assert first.max_session_length == 256
    with pytest.raises(InvalidRequestError, match=r"within 1\.\.256"):
        first.open_session("s", max_length=257)
    with pytest.raises(InvalidRequestError, match="context length 256"):
        first.forward(torch.zeros(1, 257, 64))
    assert SpanBackend.load(checkpoints["gpt2"], 2, 4, config=config).max_session_length == 1000


FALCON_RW = {"alibi": True, "new_decoder_architecture": False, "multi_query": False,
             "num_kv_heads": 4, "parallel_attn": False, "bias": True}  # fmt: skip


def test_falcon_rw_equals_its_transformers_model(make_checkpoint: MakeCheckpoint) -> None:
    """Falcon RW: ALiBi biases, which its transformers model folds into the attention mask
    (over the head size's root) for SDPA: bit for bit in one forward (padded too), and step by
    step."""
    path = make_checkpoint("falcon", **FALCON_RW)
    model = Reference(path).model
    ids = _ids(2, 9)
    mask = torch.ones_like(ids)
    mask[0, 6:] = 0
    with torch.no_grad():
        states = model(ids, output_hidden_states=True).hidden_states
        padded = model(ids, attention_mask=mask, output_hidden_states=True).hidden_states
    backend = SpanBackend.load(path, 0, 3)
    assert torch.equal(backend.forward(states[0]), states[3])
    assert torch.equal(backend.forward(padded[0], attention_mask=mask.tolist()), padded[3])
    assert_rounding_close(_incremental(backend, states[0], prompt=4), states[3])
    assert not torch.allclose(
        SpanBackend.load(make_checkpoint("falcon", **{**FALCON_RW, "alibi": False}), 0, 3)
        .forward(states[0]), states[3], atol=1e-3,
    )  # fmt: skip


def test_forward_sub_range_of_span(
    checkpoints: dict[str, Path], references: dict[str, Reference]
) -> None:
    reference = references["llama"]
    backend = SpanBackend.load(checkpoints["llama"], 0, 4)
    hidden = reference.blocks(reference.embed(_ids(1, 7)), 0, 1)
    assert torch.equal(backend.forward(hidden, 1, 3), reference.blocks(hidden, 1, 3))


def _incremental(backend: SpanBackend, hidden: torch.Tensor, prompt: int) -> torch.Tensor:
    """The prompt, then one token per step. Each step's input is made contiguous, as it comes
    off the wire: OLMo 2's linear layers round a strided slice differently (5e-8)."""
    backend.open_session("s", max_length=hidden.shape[1], batch_size=hidden.shape[0])
    outputs = [backend.step("s", hidden[:, :prompt].contiguous())]
    for position in range(prompt, hidden.shape[1]):
        outputs.append(backend.step("s", hidden[:, position : position + 1].contiguous()))
    backend.close_session("s")
    return torch.cat(outputs, dim=1)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize(("start", "end"), [(0, 4), (1, 3)])
def test_incremental_decoding_matches_full_forward(
    family: str,
    start: int,
    end: int,
    checkpoints: dict[str, Path],
    references: dict[str, Reference],
) -> None:
    reference = references[family]
    backend = SpanBackend.load(checkpoints[family], start, end)
    hidden = reference.blocks(reference.embed(_ids(2, 15)), 0, start)  # prompt 5 + 10 tokens
    expected = reference.blocks(hidden, start, end)
    got = _incremental(backend, hidden, prompt=5)
    assert_rounding_close(got, expected)
    assert backend.cache_tokens_left == backend.config.max_cache_tokens


@pytest.mark.parametrize("family", FAMILIES)
def test_incremental_decoding_equals_transformers_own(
    family: str, checkpoints: dict[str, Path], references: dict[str, Reference]
) -> None:
    """Prompt, then one token at a time: bit for bit what the transformers model computes
    with its own KV cache (the input of block 3, as `output_hidden_states` gives it; Llama 4
    and Falcon up to rounding, below). One
    sequence, as generation sends: with more rows, the cache's views are strided, and
    DeepSeek V2's attention rounds those differently (7e-9)."""
    model = references[family].model
    ids = _ids(1, 12)
    cache = DynamicCache(config=model.config)
    expected = []
    inputs = references[family].embed(ids)
    with torch.no_grad():
        for a, b in [(0, 5), *((t, t + 1) for t in range(5, 12))]:
            keyword = cache_keyword(type(model).forward)
            step = model(ids[:, a:b], use_cache=True, output_hidden_states=True, **{keyword: cache})
            expected.append(step.hidden_states[3])
    backend = SpanBackend.load(checkpoints[family], 0, 3)
    got, wanted = _incremental(backend, inputs, prompt=5), torch.cat(expected, 1)
    if family == "llama4_text":  # transformers' cache keeps only the current chunk's keys:
        assert_rounding_close(got, wanted)  # a sum over fewer keys rounds otherwise (2e-8)
    elif family == "falcon":  # transformers 5.25 gives Falcon's SDPA an all-true mask for one
        # query, where the peer lets SDPA go without one (as for the other families): 2e-8
        assert_rounding_close(got, wanted)
    else:
        assert torch.equal(got, wanted)


@pytest.mark.parametrize(
    "family",
    ["llama", "qwen2", "gemma2", "deepseek_v3", "llama4_text", "falcon", "bloom", "gpt2", "opt"],
)
def test_prompts_padded_on_the_left_equal_transformers(
    family: str, checkpoints: dict[str, Path], references: dict[str, Reference]
) -> None:
    """A batch of prompts of different lengths in one session, padded on the left: every
    step bit for bit what the transformers model computes with the same padding (its mask
    and position ids, as `generate()` makes them) and its own KV cache."""
    model = references[family].model
    padding = (3, 1, 0)
    ids = _ids(3, 7)
    mask = torch.ones_like(ids)
    for row, pads in enumerate(padding):
        mask[row, :pads] = 0
    keyword = cache_keyword(type(model).forward)
    cache = DynamicCache(config=model.config)
    positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1)
    steps = [(ids, positions)] + [(_ids(3, 1, seed=s), positions[:, -1:] + s) for s in (1, 2, 3)]
    inputs, expected = [], []
    with torch.no_grad():
        for new, new_positions in steps:
            if new is not ids:  # the mask covers the cache and the new tokens
                mask = torch.cat([mask, torch.ones_like(new)], dim=1)
            out = model(
                new,
                attention_mask=mask,
                position_ids=new_positions,
                use_cache=True,
                output_hidden_states=True,
                **{keyword: cache},
            )
            inputs.append(references[family].embed(new))
            expected.append(out.hidden_states[3])
    backend = SpanBackend.load(checkpoints[family], 0, 3)
    backend.open_session("s", max_length=10, batch_size=3, padding=padding)
    for hidden, wanted in zip(inputs, expected, strict=True):
        got = backend.step("s", hidden.contiguous())
        if family == "llama4_text":  # as in the test above: transformers' cache drops keys
            assert_rounding_close(got, wanted)
        else:
            assert torch.equal(got, wanted)


def test_chunks_after_the_prompt(
    checkpoints: dict[str, Path], references: dict[str, Reference]
) -> None:
    """A multi-token step after the prompt (a new chat turn) sees the whole past."""
    reference = references["qwen2"]
    backend = SpanBackend.load(checkpoints["qwen2"], 0, 4)
    hidden = reference.embed(_ids(1, 12))
    backend.open_session("s", max_length=12)
    got = torch.cat([backend.step("s", hidden[:, a:b]) for a, b in [(0, 4), (4, 5), (5, 12)]], 1)
    torch.testing.assert_close(got, reference.blocks(hidden, 0, 4), rtol=0, atol=1e-5)


@pytest.mark.parametrize(
    "family",
    ["mistral", "qwen2", "phi3", "starcoder2", "mixtral", "qwen2_moe", "gemma2", "gemma3_text"],
)
def test_sliding_window(family: str, make_checkpoint: MakeCheckpoint) -> None:
    """A window shorter than the sequence: masks must drop old tokens like transformers."""
    per_block = family.startswith("qwen2")
    extra = {"use_sliding_window": True, "max_window_layers": 2} if per_block else {}
    path = make_checkpoint(family, sliding_window=5, **extra)
    reference = Reference(path)
    if per_block:  # mixed layer types: some full, some sliding
        assert set(reference.config.layer_types) == {"full_attention", "sliding_attention"}
    backend = SpanBackend.load(path, 0, 4)
    assert any(locality.window == 5 for locality in backend.span.localities)
    hidden = reference.embed(_ids(2, 13))
    expected = reference.blocks(hidden, 0, 4)
    assert torch.equal(backend.forward(hidden), expected)
    assert not torch.equal(expected, Reference(make_checkpoint(family)).blocks(hidden, 0, 4))
    assert_rounding_close(_incremental(backend, hidden, 3), expected)


def test_sharded_checkpoint(make_checkpoint: MakeCheckpoint) -> None:
    path = make_checkpoint("llama", max_shard_size="60KB")
    assert (path / "model.safetensors.index.json").is_file()
    assert len(list(path.glob("*.safetensors"))) > 3
    reference = Reference(path)
    backend = SpanBackend.load(path, 1, 4)
    hidden = reference.blocks(reference.embed(_ids(2, 6)), 0, 1)
    assert torch.equal(backend.forward(hidden), reference.blocks(hidden, 1, 4))


@pytest.mark.parametrize("family", ["llama", "mixtral"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision(
    family: str, dtype: torch.dtype, checkpoints: dict[str, Path], references: dict[str, Reference]
) -> None:
    backend = SpanBackend.load(checkpoints[family], 0, 2, dtype=dtype)
    assert {p.dtype for p in backend.span.layers.parameters()} == {dtype}
    reference = references[family]
    hidden = reference.embed(_ids(1, 8))
    expected = reference.blocks(hidden, 0, 2)
    got = backend.forward(hidden.to(dtype))
    assert got.dtype == dtype
    torch.testing.assert_close(got.float(), expected, rtol=0.05, atol=0.05)
    backend.open_session("s", 8)
    steps = [backend.step("s", hidden[:, :4].to(dtype))]
    steps += [backend.step("s", hidden[:, t : t + 1].to(dtype)) for t in range(4, 8)]
    torch.testing.assert_close(torch.cat(steps, 1).float(), expected, rtol=0.05, atol=0.05)
