"""A complete tiny model directory: random-weight checkpoint plus a real (tiny) tokenizer.

Commands such as `swarm generate`, `swarm peer` and `swarm demo` take a checkpoint directory
and need a tokenizer with a chat template next to the weights, as any Hugging Face model has.
The tokenizer is a byte-level BPE trained here on a few sentences (so any text encodes), with
ChatML special tokens; the model's vocabulary is sized to it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoConfig, AutoModelForCausalLM, PretrainedConfig, PreTrainedTokenizerFast

FAMILIES = (
    *("llama", "mistral", "qwen2", "qwen3", "phi3", "gemma", "gemma2", "gemma3_text", "olmo"),
    *("olmo2", "stablelm", "starcoder2", "ministral", "smollm3", "glm4", "cohere", "cohere2"),
    *("mixtral", "qwen2_moe", "qwen3_moe", "olmoe", "glm4_moe"),  # mixtures of experts
    *("deepseek_v2", "deepseek_v3"),  # experts, and attention over a compressed latent
    *("llama4_text", "gpt_oss"),  # experts; chunked attention, and attention sinks
    *("falcon", "bloom", "phi", "gptj", "gpt_neox"),  # other names; BLOOM: ALiBi
    *("gpt2", "gpt_bigcode", "opt"),  # learned positions
)
_EXPERTS = {"num_experts_per_tok": 2, "moe_intermediate_size": 32}
_DEEPSEEK = {
    **{"n_routed_experts": 4, "first_k_dense_replace": 1, "n_group": 1, "topk_group": 1},
    **{"num_key_value_heads": 4, "q_lora_rank": 32, "kv_lora_rank": 16, "v_head_dim": 16},
    **{"qk_rope_head_dim": 8, "qk_nope_head_dim": 8},
    **_EXPERTS,
}
FAMILY_SETTINGS: dict[str, dict[str, Any]] = {  # what differs from each config's defaults
    "qwen3": {"head_dim": 16},
    "gemma": {"head_dim": 16},  # its default: 256
    "gemma2": {"head_dim": 16, "query_pre_attn_scalar": 16},
    "gemma3_text": {"head_dim": 16, "query_pre_attn_scalar": 16},
    "mixtral": {"num_local_experts": 4, "num_experts_per_tok": 2},
    "qwen2_moe": {"num_experts": 4, "shared_expert_intermediate_size": 64, **_EXPERTS},
    "qwen3_moe": {"num_experts": 4, "head_dim": 16, **_EXPERTS},
    "olmoe": {"num_experts": 4, "num_experts_per_tok": 2},
    "glm4_moe": {"n_routed_experts": 4, "head_dim": 16, "first_k_dense_replace": 1, **_EXPERTS},
    "glm4": {"head_dim": 16},
    "ministral": {"head_dim": 16},
    "cohere2": {"head_dim": 16},
    **dict.fromkeys(("deepseek_v2", "deepseek_v3"), _DEEPSEEK),
    "llama4_text": {  # chunks of 4 tokens, so that short tests cross chunks
        **{"num_local_experts": 4, "num_experts_per_tok": 1, "intermediate_size_mlp": 128},
        **{"head_dim": 16, "attention_chunk_size": 4},
    },
    "gpt_oss": {"num_local_experts": 4, "num_experts_per_tok": 2, "head_dim": 16},
    "falcon": {"new_decoder_architecture": True, "num_kv_heads": 2},  # Falcon 40B and 180B
    "gptj": {"rotary_dim": 8},  # of the head size, 16
    "opt": {"ffn_dim": 128},
}


def tiny_config(family: str, defaults: dict[str, Any], **settings: Any) -> PretrainedConfig:
    """The config of a tiny `family` model: `defaults`, the family's own settings over them,
    then `settings`."""
    config: PretrainedConfig = AutoConfig.for_model(
        family, **{**defaults, **FAMILY_SETTINGS.get(family, {}), **settings}
    )
    return config


SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
CORPUS = [
    "What is the capital of France? The capital of France is Paris.",
    "A swarm of peers serves the blocks of a language model, one span each.",
    "Hello, how are you today? I am fine, thank you.",
    "The quick brown fox jumps over the lazy dog.",
]


def tiny_tokenizer(vocab_size: int = 320) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer with ChatML tokens (`<|im_end|>` ends a turn)."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator(CORPUS * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def write_tiny_model(
    directory: Path, family: str = "llama", *, num_layers: int = 4, seed: int = 0, **config: Any
) -> Path:
    """Write a tiny `family` model (weights, config, tokenizer) to `directory`; return it."""
    tokenizer = tiny_tokenizer()
    defaults: dict[str, Any] = {
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": num_layers,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 512,
        "vocab_size": len(tokenizer),
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(family, defaults, **config))
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def write_tiny_multimodal(directory: Path, kind: str = "gemma3", *, seed: int = 0) -> Path:
    """A tiny image-text model (`gemma3`: Gemma 3, its embeddings tied; `llava`: a Llama
    language model with its own LM head), saved as transformers saves them, with the text
    tokenizer; its language model has 4 blocks."""
    from transformers import AutoModelForImageTextToText, Gemma3Config, LlavaConfig

    tokenizer = tiny_tokenizer()
    text = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 4,
            "num_attention_heads": 4, "num_key_value_heads": 2}  # fmt: skip
    text["vocab_size"] = len(tokenizer)
    vision = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
              "num_attention_heads": 2, "image_size": 32, "patch_size": 16}  # fmt: skip
    config: PretrainedConfig
    if kind == "gemma3":
        config = Gemma3Config(
            text_config={**text, "head_dim": 16, "query_pre_attn_scalar": 16, "sliding_window": 5},
            vision_config=vision,
            mm_tokens_per_image=4,
            **{"image_token_index": 3, "boi_token_index": 4, "eoi_token_index": 5},
        )
    else:
        config = LlavaConfig(
            text_config={**text, "model_type": "llama"},
            vision_config={**vision, "model_type": "clip_vision_model", "projection_dim": 32},
            image_token_index=3,
        )
    torch.manual_seed(seed)
    AutoModelForImageTextToText.from_config(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def rename_tensors(path: Path, old: str, new: str = "") -> Path:
    """Save a one-file checkpoint's tensors with the prefix `old` turned into `new`, as older
    or other writers named them (BigScience's BLOOM: no `transformer.`; GPT-NeoX before
    transformers 5: `embed_out` for its LM head)."""
    from safetensors.torch import load_file, save_file

    file = path / "model.safetensors"
    tensors = {
        new + name.removeprefix(old) if name.startswith(old) else name: t
        for name, t in load_file(file).items()
    }
    save_file(tensors, file, metadata={"format": "pt"})
    return path
