"""A span of decoder blocks, built from a checkpoint with memory that follows the span.

`load_span` builds each block of the family (transformers' own `*DecoderLayer`) on the meta
device, so the skeleton costs nothing, then reads only that block's tensors from safetensors
(cast to the requested dtype one tensor at a time; a mixture of experts' stacked as
`peer.expert_weights` says) and attaches them with `load_state_dict(strict=True, assign=True)`.
Afterwards:

- `self_attn.layer_idx` is renumbered to 0..n-1, so a KV cache holds the span's blocks only;
- the rotary embedding is rebuilt from the config on the real device (its `inv_freq` buffer is
  computed, not stored in checkpoints), in float32 as transformers does; Gemma 3's takes the
  block's layer type (another base for sliding-window blocks). BLOOM has none: its blocks take
  ALiBi biases, built as transformers builds them from each key's position in its row. GPT-2
  has none either: its positions are learned embeddings, which the span holding block 0 adds
  to the token embeddings the client sends, at the position ids it computes for rotary
  families (so padding, reordered rows and cut caches need nothing from the client);
- attention runs through PyTorch SDPA (`config._attn_implementation = "sdpa"`, transformers'
  default), with boolean masks built by `peer.masks`; a family that caps its attention scores
  (Gemma 2), adds attention sinks (gpt-oss) or ALiBi biases (BLOOM) runs transformers' eager
  attention, with additive masks; Falcon RW's biases are folded into an additive mask, as its
  transformers model folds them for SDPA.

Block indices in this package's public API are the model's (global) indices; `Span` converts.
"""

from __future__ import annotations

import copy
import functools
import inspect
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .checkpoint import (
    Checkpoint,
    ModelFamily,
    open_checkpoint,
    read_layer_tensors,
    read_tensors,
)
from .errors import CheckpointError, InvalidRequestError
from .expert_weights import stack_experts
from .int8_weights import quantize_linears
from .kv_cache import CacheLayout
from .masks import FULL, Locality, masks_for_blocks

__all__ = ["QUANTIZATIONS", "SUPPORTED_DTYPES", "Span", "cache_keyword", "load_span", "parse_dtype"]

logger = logging.getLogger(__name__)

QUANTIZATIONS = (None, "int8")
SUPPORTED_DTYPES: Mapping[str, torch.dtype] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}


def parse_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """`"bfloat16"` / `torch.bfloat16` -> `torch.bfloat16`; other dtypes raise."""
    if isinstance(dtype, torch.dtype):
        if dtype in SUPPORTED_DTYPES.values():
            return dtype
    elif dtype in SUPPORTED_DTYPES:
        return SUPPORTED_DTYPES[dtype]
    raise InvalidRequestError(
        f"dtype {dtype} is not supported; use one of {list(SUPPORTED_DTYPES)}"
    )


@dataclass(frozen=True)
class Span:
    """Blocks `start`..`end - 1` of a model, ready to run (eval mode, no gradients)."""

    family: ModelFamily
    config: Any  # the family's PretrainedConfig (a private copy)
    start: int
    end: int
    layers: torch.nn.ModuleList
    rotary: torch.nn.Module | None  # None: learned positions or ALiBi (BLOOM)
    localities: tuple[Locality, ...]  # of each block: full, sliding window or chunks
    rotary_kinds: tuple[str | None, ...]  # Gemma 3: the layer type whose rotary a block takes
    dtype: torch.dtype
    device: torch.device
    quantization: str | None = None  # "int8": the blocks' linear layers (`peer.int8_weights`)
    positions: torch.nn.Embedding | None = None  # learned ones, added before block 0 (GPT-2)
    alibi: str | None = None  # "scores": ALiBi biases the blocks add (BLOOM); "mask": folded
    # into the attention mask (Falcon RW, as its transformers model does for SDPA)

    @property
    def num_layers(self) -> int:
        return self.end - self.start

    @property
    def hidden_size(self) -> int:
        return int(self.config.hidden_size)

    @functools.cached_property
    def cache_layout(self) -> CacheLayout:
        """What the blocks write to their KV cache per token, found by running the first block
        on one token with a cache that records it: families differ (grouped heads, head sizes,
        DeepSeek's compressed latents), and so do transformers versions."""
        probe = _LayoutProbe()
        hidden = torch.zeros(1, 1, self.hidden_size, dtype=self.dtype, device=self.device)
        position = torch.zeros(1, 1, dtype=torch.long, device=self.device)
        with torch.no_grad():
            self.run_layers(hidden, 0, 1, position_ids=position, past=[0], cache=probe)
        if probe.layout is None:
            raise CheckpointError(f"a {self.family.name} block wrote nothing to its KV cache")
        return probe.layout

    def shape_key(self) -> str:
        """Identifies the compute shape (not the weights): used to cache throughput."""
        c = self.config
        experts = getattr(c, "num_local_experts", None) or getattr(c, "num_experts", None)
        inner = getattr(c, "intermediate_size", None) or getattr(c, "ffn_hidden_size", None)
        kv = self.cache_layout
        return (
            f"{self.family.name}-h{c.hidden_size}-i{inner or 4 * c.hidden_size}"
            f"-a{c.num_attention_heads}"
            f"-k{kv.key_heads}x{kv.key_dim}-v{kv.value_heads}x{kv.value_dim}"
            + (f"-e{experts}x{c.num_experts_per_tok}" if experts else "")
            + (f"-{self.quantization}" if self.quantization else "")
        )

    def run_layers(
        self,
        hidden: torch.Tensor,
        first: int,
        last: int,
        *,
        position_ids: torch.Tensor,
        past: Sequence[int],
        keys: torch.Tensor | None = None,
        cache: Any = None,
    ) -> torch.Tensor:
        """Run local blocks `first`..`last - 1` over new tokens that follow `past` cached ones
        (per row of the batch); `keys`: which of a row's keys are not padding (`peer.masks`)."""
        eager = self.config._attn_implementation == "eager"
        additive = hidden.dtype if eager or self.alibi == "mask" else None
        masks = masks_for_blocks(
            self.localities[first:last], past, hidden.shape[1], hidden.device,
            additive=additive, keys=keys,
        )  # fmt: skip
        embeddings: dict[str | None, Any] = {}  # cos and sin, per kind of rotary
        alibi = self._alibi(hidden, past, keys) if self.alibi else None
        if alibi is not None and self.alibi == "mask":
            masks = {where: self._fold(alibi, mask) for where, mask in masks.items()}
        if first == 0 and self.positions is not None:  # block 0's input: tokens and positions
            hidden = hidden + self.positions(position_ids + self.family.position_offset)
        for local in range(first, last):
            kind = self.rotary_kinds[local]
            if self.rotary is not None and kind not in embeddings:
                embeddings[kind] = self.rotary(hidden, position_ids, *([kind] if kind else []))
            layer = self.layers[local]
            forward = type(layer).forward
            output = layer(
                hidden,
                attention_mask=masks[self.localities[local]],
                position_ids=position_ids,
                use_cache=cache is not None,
                position_embeddings=embeddings.get(kind),
                **{cache_keyword(forward): cache},
                **({"alibi": alibi} if _takes_alibi(forward) else {}),  # Falcon's: None
            )
            hidden = output[0] if isinstance(output, tuple) else output
        return hidden

    def _alibi(
        self, hidden: torch.Tensor, past: Sequence[int], keys: torch.Tensor | None
    ) -> torch.Tensor:
        """BLOOM's biases `[rows * heads, 1, keys]`: a key's position among its row's real
        keys (rows' keys start at 0, `peer.masks`) times each head's slope."""
        if keys is None:
            keys = torch.ones(hidden.shape[0], max(past) + hidden.shape[1], device=hidden.device)
        build = self.family.load("build_alibi_tensor")
        heads = self.config.num_attention_heads
        alibi: torch.Tensor = build(keys.long(), heads, dtype=hidden.dtype)
        return alibi

    def _fold(self, alibi: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """Falcon RW's mask: the biases over the head size's root where the additive `mask`
        lets a key be seen, the lowest value where not."""
        if mask is None:  # cannot be: ALiBi masks are additive, always tensors
            raise CheckpointError("an ALiBi mask needs the attention mask")
        heads = self.config.num_attention_heads
        biases = alibi.reshape(-1, heads, *alibi.shape[1:])
        scale = math.sqrt(self.config.hidden_size // heads)
        return torch.masked_fill(biases / scale, mask < -1, torch.finfo(alibi.dtype).min)


class _LayoutProbe:
    """A stand-in KV cache that notes the shapes a block writes and hands them back."""

    layout: CacheLayout | None = None

    def update(
        self, keys: torch.Tensor, values: torch.Tensor, *_: Any, **__: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        self.layout = CacheLayout(keys.shape[1], keys.shape[3], values.shape[1], values.shape[3])
        return keys, values

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return 0  # nothing cached before the probe's one token


@functools.cache
def cache_keyword(function: Callable[..., Any]) -> str:
    """The name a transformers function takes the KV cache under: `cache` since transformers
    5.x renamed it (the old `past_key_values` warns on every call and goes in 5.40), else
    `past_key_values` (Falcon and BLOOM: `layer_past`)."""
    parameters = inspect.signature(function).parameters
    return next((name for name in ("cache", "layer_past") if name in parameters), "past_key_values")


@functools.cache
def _takes_alibi(function: Callable[..., Any]) -> bool:
    return "alibi" in inspect.signature(function).parameters


def _locality(config: Any, layer: int) -> Locality:
    """What block `layer` (global index) attends to besides its past."""
    layer_types = getattr(config, "layer_types", None)
    kind = layer_types[layer] if layer_types is not None else None
    if kind == "chunked_attention":  # Llama 4
        return Locality(chunk=int(config.attention_chunk_size))
    window = getattr(config, "sliding_window", None)
    if kind not in (None, "sliding_attention") or not window:
        return FULL  # Qwen2-MoE's "no window" is 0
    return Locality(window=int(window))  # per block (Qwen2/3), or one for all (Mistral, Phi-3)


def _rotary_kind(rotary: torch.nn.Module | None, config: Any, layer: int) -> str | None:
    """The layer type block `layer`'s rotary embedding is computed for, if the family's rotary
    takes one (Gemma 3: another base for its sliding-window blocks); None otherwise."""
    if rotary is None or "layer_type" not in inspect.signature(rotary.forward).parameters:
        return None
    return str(config.layer_types[layer])


def _attention(block: torch.nn.Module) -> Any:
    """A block's attention module (`self_attention` in Falcon and BLOOM, `attention` in
    GPT-NeoX, `attn` in GPT-J)."""
    for name in ("self_attn", "self_attention", "attention", "attn"):
        if hasattr(block, name):
            return getattr(block, name)
    raise CheckpointError(f"a {type(block).__name__} has no attention module that we know")


def _build_layer(
    checkpoint: Checkpoint,
    config: Any,
    layer: int,
    local: int,
    dtype: torch.dtype,
    device: str,
    quantization: str | None,
) -> torch.nn.Module:
    layer_class = checkpoint.family.load(checkpoint.family.layer_class)
    with torch.device("meta"):
        module: torch.nn.Module = layer_class(config, layer)  # global index: picks layer_types
    tensors = read_layer_tensors(checkpoint, layer, dtype=dtype, device=device)
    stack_experts(tensors, module.state_dict().keys())
    try:
        module.load_state_dict(tensors, strict=True, assign=True)
    except RuntimeError as error:
        raise CheckpointError(f"block {layer} does not match the config: {error}") from error
    meta = [name for name, t in [*module.named_parameters(), *module.named_buffers()] if t.is_meta]
    if meta:
        raise CheckpointError(f"block {layer} is missing tensors: {meta}")
    _attention(module).layer_idx = local  # the span's cache is local: 0..n-1
    if quantization == "int8":  # block by block: the float weights of one block at a time
        quantize_linears(module, dtype)
    return module.eval().requires_grad_(False)


def _read_positions(
    checkpoint: Checkpoint, dtype: torch.dtype, device: torch.device
) -> torch.nn.Embedding:
    """The model's position embeddings (GPT-2's `wpe`), read from the checkpoint."""
    name = f"{checkpoint.prefix}{checkpoint.family.learned_positions}.weight"
    weight = read_tensors(checkpoint, [name], dtype=dtype, device=device).get(name)
    if weight is None:
        raise CheckpointError(f"the checkpoint has no {name}, the model's position embeddings")
    positions, width = weight.shape
    embedding = torch.nn.Embedding(positions, width, device="meta")
    embedding.weight = torch.nn.Parameter(weight, requires_grad=False)
    return embedding


def load_span(
    checkpoint: str | Path | Checkpoint,
    start: int,
    end: int,
    *,
    dtype: str | torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    quantization: str | None = None,
) -> Span:
    """Load blocks `start`..`end - 1` (model indices) of a local checkpoint; `quantization`:
    None, or "int8" for int8 weights (`peer.int8_weights`)."""
    if not isinstance(checkpoint, Checkpoint):
        checkpoint = open_checkpoint(checkpoint)
    torch_dtype = parse_dtype(dtype)
    if quantization not in QUANTIZATIONS:
        raise InvalidRequestError(f"quantization {quantization!r} is not one of {QUANTIZATIONS}")
    if not 0 <= start < end <= checkpoint.num_layers:
        raise InvalidRequestError(
            f"span {start}..{end} is not inside the model's blocks 0..{checkpoint.num_layers}"
        )
    torch_device = torch.device(device)
    config = copy.deepcopy(checkpoint.config)
    # SDPA, transformers' default, unless the family caps attention scores (Gemma 2) or adds
    # ALiBi biases (BLOOM)
    capped = getattr(config, "attn_logit_softcapping", None) is not None
    alibi = "scores" if checkpoint.family.alibi else "mask" if getattr(config, "alibi", 0) else None
    config._attn_implementation = "eager" if capped or alibi == "scores" else "sdpa"
    if hasattr(config, "_experts_implementation"):  # transformers 5: what its models default to
        config._experts_implementation = "grouped_mm"
    layers = torch.nn.ModuleList(
        _build_layer(
            checkpoint, config, layer, layer - start, torch_dtype, str(torch_device), quantization
        )
        for layer in range(start, end)
    )
    if any(hasattr(_attention(layer), "sinks") for layer in layers):  # gpt-oss: not in SDPA
        config._attn_implementation = "eager"  # the blocks read it when they run
    rotary: torch.nn.Module | None = None
    if checkpoint.family.rotary_class is not None:
        with torch.device(torch_device):
            rotary = checkpoint.family.load(checkpoint.family.rotary_class)(config=config)
    positions = None
    if checkpoint.family.learned_positions and start == 0:
        positions = _read_positions(checkpoint, torch_dtype, torch_device)
    logger.info(
        "loaded blocks %d..%d of %s (%s) as %s on %s%s%s",
        start,
        end - 1,
        checkpoint.path,
        checkpoint.family.name,
        torch_dtype,
        torch_device,
        f", dequantized from {checkpoint.quantization.method}" if checkpoint.quantization else "",
        f", {quantization} weights" if quantization else "",
    )
    span = Span(
        family=checkpoint.family,
        config=config,
        start=start,
        end=end,
        layers=layers,
        rotary=rotary.eval() if rotary is not None else None,
        localities=tuple(_locality(config, layer) for layer in range(start, end)),
        rotary_kinds=tuple(_rotary_kind(rotary, config, layer) for layer in range(start, end)),
        dtype=torch_dtype,
        device=torch_device,
        quantization=quantization,
        positions=positions,
        alibi=alibi,
    )
    layout = span.cache_layout  # probed now, in the thread that loads and computes
    logger.debug("KV cache per token and block: %s", layout)
    return span
