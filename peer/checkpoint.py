"""Reading a local Hugging Face checkpoint: its family, its tensor index, and chosen tensors only.

A checkpoint is a directory with `config.json` and safetensors weights, either one
`model.safetensors` or shards listed in `model.safetensors.index.json`. Nothing here loads a
whole model: `open_checkpoint` reads the config and the tensor index (safetensors headers, a few
kilobytes), and `read_tensors` / `read_layer_tensors` open each needed file with
`safetensors.safe_open` and copy out only the named tensors, so memory follows the span.

Families are the decoder blocks called like Llama's (`FAMILIES`: Llama, Mistral, Qwen2/3,
Phi-2 and 3, Gemma 1 to 3, OLMo, OLMo 2, StableLM, StarCoder2, Ministral, SmolLM3, GLM-4,
Command R (Cohere 1 and 2), and the mixtures of experts Mixtral, Qwen2-MoE, Qwen3-MoE, OLMoE,
GLM-4.5, DeepSeek V2/V3, Llama 4 and gpt-oss), and GPT-J, GPT-NeoX (Pythia), Falcon (the RW
models: ALiBi positions), BLOOM (ALiBi positions), GPT-2, GPT-BigCode (StarCoder 1,
SantaCoder) and OPT (learned positions, which the peer running block 0 adds); SmolLM2 and
TinyLlama are `llama`. An image-text checkpoint whose `text_config` is one of these opens as
its language model (`TEXT_LAYOUTS`). Anything else raises `UnsupportedModelError` naming what
is supported.
"""

from __future__ import annotations

import functools
import importlib
import json
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import CheckpointError, UnsupportedModelError
from .quantized_weights import Quantization, QuantizedPairs, quantization

if TYPE_CHECKING:
    import torch
    from transformers import PretrainedConfig

__all__ = [
    "FAMILIES",
    "Checkpoint",
    "ModelFamily",
    "detect_family",
    "open_checkpoint",
    "read_layer_tensors",
    "read_tensors",
]

logger = logging.getLogger(__name__)

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
# Where the decoder model's tensors are (`<prefix>layers.N.`, `<prefix>embed_tokens.`,
# `<prefix>norm.`), and then its LM head's (`<head prefix>lm_head.`), besides the family's own
# layout (`model.`, `transformer.`...): no prefix (BigScience's BLOOM), or the language model
# inside a multimodal checkpoint (the hub's layout, then transformers' newer one).
TEXT_LAYOUTS = {"": "", "language_model.model.": "language_model.", "model.language_model.": ""}


@dataclass(frozen=True)
class ModelFamily:
    """Where transformers keeps one family's block (module, config, layer and rotary classes;
    no rotary: learned positions or ALiBi) and what its causal LM names the decoder's parts."""

    name: str
    module: str
    config_class: str
    layer_class: str
    rotary_class: str | None
    decoder: str = "model"  # the causal LM's attribute holding the decoder model (OPT: a path)
    blocks: str = "layers"
    embeddings: str = "embed_tokens"
    final_norm: str = "norm"
    embedding_norm: str | None = None  # applied to the embeddings before the first block
    old_lm_head: str = "lm_head"  # what checkpoints saved before transformers 5 name it
    learned_positions: str | None = None  # the decoder's position embeddings (GPT-2: `wpe`)
    position_offset: int = 0  # where position 0 is in their table (OPT: 2)
    mask_positions: bool = False  # a padded batch's positions count from each row's first token
    input_projection: str | None = None  # OPT 350M: embeddings narrower than the blocks...
    output_projection: str | None = None  # ...and back before the LM head
    unused: tuple[str, ...] = ()  # tensors of a block older checkpoints saved, not read

    @property
    def alibi(self) -> bool:
        """Whether its blocks take ALiBi biases for positions (BLOOM)."""
        return self.rotary_class is None and self.learned_positions is None

    def load(self, attribute: str) -> Any:
        """Import one class of the family (transformers is imported here, not at import time)."""
        return getattr(importlib.import_module(self.module), attribute)

    def decoder_of(self, model: Any) -> Any:
        """The decoder model inside the family's causal LM (`model.model`, mostly)."""
        return functools.reduce(getattr, self.decoder.split("."), model)


_GPT2_NAMES: dict[str, Any] = {
    "decoder": "transformer",
    "blocks": "h",
    "embeddings": "word_embeddings",
    "final_norm": "ln_f",
}


def _family(
    name: str,
    prefix: str,
    *,
    module: str = "",
    config: str = "",
    layer: str = "",
    rotary: bool = True,
) -> ModelFamily:
    module = module or name
    return ModelFamily(
        name=name,
        module=f"transformers.models.{module}.modeling_{module}",
        config_class=config or f"{prefix}Config",
        layer_class=layer or f"{prefix}DecoderLayer",
        rotary_class=f"{prefix}RotaryEmbedding" if rotary else None,
    )


def _gpt2_like(name: str, prefix: str) -> ModelFamily:
    """A family of GPT-2's: its names, and learned position embeddings (`wpe`)."""
    family = replace(_family(name, prefix, layer=f"{prefix}Block", rotary=False), **_GPT2_NAMES)
    return replace(
        family,
        embeddings="wte",
        learned_positions="wpe",
        unused=("attn.bias", "attn.masked_bias"),  # causal masks, once saved as tensors
    )


FAMILIES: Mapping[str, ModelFamily] = {
    family.name: family
    for family in (
        _family("llama", "Llama"),  # also SmolLM2, TinyLlama
        _family("mistral", "Mistral"),
        _family("qwen2", "Qwen2"),
        _family("qwen3", "Qwen3"),
        _family("phi3", "Phi3"),
        replace(_family("phi", "Phi"), final_norm="final_layernorm"),  # Phi-1, 1.5 and 2
        _family("gemma", "Gemma"),
        _family("gemma2", "Gemma2"),
        _family("gemma3_text", "Gemma3", module="gemma3", config="Gemma3TextConfig"),
        _family("olmo", "Olmo"),
        _family("olmo2", "Olmo2"),
        _family("stablelm", "StableLm"),
        _family("starcoder2", "Starcoder2"),
        _family("ministral", "Ministral"),
        _family("smollm3", "SmolLM3"),
        _family("glm4", "Glm4"),
        _family("cohere", "Cohere"),
        _family("cohere2", "Cohere2"),
        # mixtures of experts (their checkpoints' per-expert tensors: `peer.expert_weights`)
        _family("mixtral", "Mixtral"),
        _family("qwen2_moe", "Qwen2Moe"),
        _family("qwen3_moe", "Qwen3Moe"),
        _family("olmoe", "Olmoe"),
        _family("glm4_moe", "Glm4Moe"),
        _family("deepseek_v2", "DeepseekV2"),
        _family("deepseek_v3", "DeepseekV3"),  # also Kimi K2
        _family("llama4_text", "Llama4Text", module="llama4", config="Llama4TextConfig"),
        _family("gpt_oss", "GptOss"),
        # named the GPT-2 way (`transformer.h.N`), or GPT-NeoX's; BLOOM's positions are ALiBi
        replace(_family("gptj", "GPTJ", layer="GPTJBlock"), **{**_GPT2_NAMES, "embeddings": "wte"}),
        replace(
            _family("gpt_neox", "GPTNeoX", layer="GPTNeoXLayer"),
            decoder="gpt_neox",
            embeddings="embed_in",
            final_norm="final_layer_norm",
            old_lm_head="embed_out",
        ),  # Pythia too
        replace(_family("falcon", "Falcon"), **_GPT2_NAMES),
        replace(
            _family("bloom", "Bloom", layer="BloomBlock", rotary=False),
            embedding_norm="word_embeddings_layernorm",
            **_GPT2_NAMES,
        ),
        _gpt2_like("gpt2", "GPT2"),
        _gpt2_like("gpt_bigcode", "GPTBigCode"),  # StarCoder 1, SantaCoder
        replace(
            _family("opt", "OPT", rotary=False),
            decoder="model.decoder",
            final_norm="final_layer_norm",
            learned_positions="embed_positions",
            position_offset=2,
            mask_positions=True,
            input_projection="project_in",  # OPT 350M's, else absent
            output_projection="project_out",
        ),
    )
}


@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint directory, opened: its family, config and where each tensor lives."""

    path: Path
    family: ModelFamily
    config: PretrainedConfig
    tensor_files: Mapping[str, str]  # tensor name -> file name inside `path`
    quantization: Quantization | None = None  # how its weights are stored, if quantized
    prefix: str = "model."  # of the decoder model's tensors (`TEXT_LAYOUTS`)

    @property
    def num_layers(self) -> int:
        return int(self.config.num_hidden_layers)

    @property
    def hidden_size(self) -> int:
        return int(self.config.hidden_size)

    def layer_prefix(self, layer: int) -> str:
        """What the names of block `layer`'s tensors start with."""
        return f"{self.prefix}{self.family.blocks}.{layer}."

    def layer_tensor_names(self, layer: int) -> list[str]:
        """Names of the checkpoint tensors that belong to block `layer`."""
        start, unused = self.layer_prefix(layer), self.family.unused
        return [
            name
            for name in self.tensor_files
            if name.startswith(start) and name.removeprefix(start) not in unused
        ]

    def head_tensor_names(self) -> dict[str, str]:
        """The embeddings', their norm's (BLOOM), the final norm's and the LM head's tensors,
        named as in the family's causal LM (`model.norm.weight`) -> as in this checkpoint."""
        family = self.family
        optional = [family.embedding_norm, family.input_projection, family.output_projection]
        parts = [family.embeddings, family.final_norm, *filter(None, optional)]
        starts = [(f"{self.prefix}{part}.", f"{family.decoder}.{part}.") for part in parts]
        for head in {"lm_head", family.old_lm_head}:
            starts.append((f"{TEXT_LAYOUTS.get(self.prefix, '')}{head}.", "lm_head."))
        names = {}
        for name in self.tensor_files:
            for start, canonical in starts:
                if name.startswith(start):
                    names[canonical + name.removeprefix(start)] = name
        return names


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise CheckpointError(f"cannot read {path.name}: {error}") from error
    if not isinstance(data, dict):
        raise CheckpointError(f"{path.name} is not a JSON object")
    return data


def detect_family(config: Mapping[str, Any]) -> ModelFamily:
    """The family of a parsed `config.json` (of its language model's, `text_config`, for a
    multimodal checkpoint), or `UnsupportedModelError`."""
    model_type = config.get("model_type")
    family = FAMILIES.get(model_type) if isinstance(model_type, str) else None
    if family is None and isinstance(config.get("text_config"), Mapping):
        return detect_family(config["text_config"])
    if family is None:
        raise UnsupportedModelError(
            f"model_type {model_type!r} is not supported; supported: {', '.join(FAMILIES)} "
            "(SmolLM2 and TinyLlama are llama; a multimodal checkpoint's language model)"
        )
    return family


def _text_model_prefix(files: Mapping[str, str], family: ModelFamily) -> str:
    """Where the decoder model's tensors are: in the causal LM, in its base model saved alone
    (OPT as Meta saved it: `decoder.`), or `TEXT_LAYOUTS`."""
    base = family.decoder.partition(".")[2]
    for prefix in (f"{family.decoder}.", *([f"{base}."] if base else []), *TEXT_LAYOUTS):
        if f"{prefix}{family.embeddings}.weight" in files:
            return prefix
    return f"{family.decoder}."


def _index_tensors(path: Path) -> dict[str, str]:
    from safetensors import safe_open

    index_path = path / INDEX_FILE
    if index_path.is_file():
        weight_map = _read_json(index_path).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise CheckpointError(f"{INDEX_FILE} has no weight_map")
        files: dict[str, str] = {}
        for name, file in weight_map.items():
            if not isinstance(file, str) or Path(file).name != file or not file:
                raise CheckpointError(f"{INDEX_FILE} names a bad shard for {name!r}: {file!r}")
            files[str(name)] = file
        missing = sorted({f for f in files.values() if not (path / f).is_file()})
        if missing:
            raise CheckpointError(f"shards listed in {INDEX_FILE} are missing: {missing}")
        return files
    if (path / SINGLE_FILE).is_file():
        try:
            with safe_open(str(path / SINGLE_FILE), framework="pt") as handle:
                return dict.fromkeys(handle.keys(), SINGLE_FILE)
        except Exception as error:  # safetensors raises its own SafetensorError / OSError
            raise CheckpointError(f"cannot read {SINGLE_FILE}: {error}") from error
    raise CheckpointError(f"no {SINGLE_FILE} or {INDEX_FILE} in {path} (safetensors is required)")


def open_checkpoint(path: str | Path) -> Checkpoint:
    """Read the config and the tensor index of a local checkpoint directory (no weights)."""
    path = Path(path)
    if not (path / "config.json").is_file():
        raise CheckpointError(f"{path} has no config.json")
    raw_config = _read_json(path / "config.json")
    family = detect_family(raw_config)
    quantized = quantization(raw_config)
    config_class = family.load(family.config_class)
    try:
        if raw_config.get("model_type") in FAMILIES:
            config = config_class.from_pretrained(str(path), local_files_only=True)
            config._name_or_path = str(path)  # as transformers' AutoConfig names it
        else:  # a multimodal checkpoint: its language model
            config = config_class.from_dict(raw_config["text_config"])
    except (OSError, ValueError, TypeError) as error:
        raise CheckpointError(f"cannot parse config.json: {error}") from error
    files = _index_tensors(path)
    checkpoint = Checkpoint(
        path, family, config, files, quantized, _text_model_prefix(files, family)
    )
    for layer in range(checkpoint.num_layers):
        if not checkpoint.layer_tensor_names(layer):
            raise CheckpointError(f"the checkpoint has no tensors for block {layer}")
    return checkpoint


def read_tensors(
    checkpoint: str | Path | Checkpoint,
    names: Iterable[str],
    *,
    dtype: torch.dtype | None = None,
    device: str | torch.device = "cpu",
) -> dict[str, torch.Tensor]:
    """Read only the named tensors (single file or shards); names not in the checkpoint are
    left out of the result (e.g. `lm_head.weight` of a model with tied embeddings).

    Floating-point tensors are cast to `dtype` (when given) one by one as they are read, so the
    peak memory is the result plus one tensor. A quantized weight comes dequantized from its
    stored values and scales (`peer.quantized_weights`), which are not returned themselves.
    """
    if not isinstance(checkpoint, Checkpoint):
        checkpoint = open_checkpoint(checkpoint)
    files = checkpoint.tensor_files
    wanted = [name for name in dict.fromkeys(names) if name in files]
    pairs = QuantizedPairs(wanted, files, checkpoint.quantization)
    wanted = list(dict.fromkeys([*wanted, *pairs.stored]))
    by_file: dict[str, list[str]] = {}
    for name in wanted:
        by_file.setdefault(files[name], []).append(name)
    from safetensors import safe_open

    result: dict[str, torch.Tensor] = {}
    for file, file_names in by_file.items():
        try:
            with safe_open(
                str(checkpoint.path / file), framework="pt", device=str(device)
            ) as handle:
                for name in file_names:
                    if (taken := pairs.take(name, handle.get_tensor(name), dtype)) is None:
                        continue  # a quantized weight's values or scales: the other comes later
                    name, tensor = taken
                    if dtype is not None and tensor.is_floating_point() and tensor.dtype != dtype:
                        tensor = tensor.to(dtype)
                    result[name] = tensor
        except Exception as error:  # SafetensorError, OSError, a tensor missing from its shard
            raise CheckpointError(f"cannot read tensors from {file}: {error}") from error
    logger.debug("read %d tensors from %d files of %s", len(result), len(by_file), checkpoint.path)
    return result


def read_layer_tensors(
    checkpoint: Checkpoint,
    layer: int,
    *,
    dtype: torch.dtype | None = None,
    device: str | torch.device = "cpu",
) -> dict[str, torch.Tensor]:
    """The tensors of block `layer`, named relative to the block (`self_attn.q_proj.weight`)."""
    if not 0 <= layer < checkpoint.num_layers:
        raise CheckpointError(f"block {layer} is outside 0..{checkpoint.num_layers - 1}")
    tensors = read_tensors(
        checkpoint, checkpoint.layer_tensor_names(layer), dtype=dtype, device=device
    )
    start = checkpoint.layer_prefix(layer)
    return {name.removeprefix(start): tensor for name, tensor in tensors.items()}
