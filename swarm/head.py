"""The part of the model a client holds: token embeddings (BLOOM: and their norm; OPT 350M:
and their projection to the blocks' width), the final norm (OPT 350M: a projection back) and
the LM head. Learned position embeddings (GPT-2's, OPT's) are the first peer's: `peer.span`.

The model is built with its parameters on the meta device (no memory), its decoder blocks are
dropped, and only the head's tensors are read from the checkpoint and assigned. Using the
family's own modules keeps the logits bit-identical to the local transformers model's. On a
GPU (`device="cuda"`) the head computes there, and hands embeddings and logits back on the
CPU, where the network and the sampling are.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from accelerate import init_empty_weights
from transformers import AutoModelForCausalLM

from peer.checkpoint import ModelFamily, open_checkpoint, read_tensors
from peer.errors import CheckpointError

logger = logging.getLogger(__name__)


class ClientHead:
    """Embeddings in, logits out; implements `generation.LanguageModelHead`."""

    def __init__(self, model: Any, family: ModelFamily, config: Any = None) -> None:
        self.model = model
        self.family = family
        self.config = config or model.config  # the checkpoint's, as transformers loads it
        decoder = family.decoder_of(model)
        self.embeddings: torch.nn.Embedding = getattr(decoder, family.embeddings)
        # OPT 350M has no final norm (its blocks norm after attention) but projections
        self._norm: torch.nn.Module = getattr(decoder, family.final_norm) or torch.nn.Identity()
        self._before_blocks = [_part(decoder, family.input_projection),
                               _part(decoder, family.embedding_norm)]  # fmt: skip
        self._projection_out = _part(decoder, family.output_projection)

    @classmethod
    def from_pretrained(
        cls, path: Path, *, dtype: torch.dtype = torch.float32, device: str = "cpu"
    ) -> ClientHead:
        checkpoint = open_checkpoint(path)  # a family the peers support, or a clear error
        config = checkpoint.config
        # parameters on the meta device (no memory: the head's are read below), buffers for
        # real: computed, not stored, such as Gemma's embedding scale
        with torch.device(device), init_empty_weights(include_buffers=False):
            model = AutoModelForCausalLM.from_config(config, dtype=dtype)  # type: ignore[no-untyped-call]
        family = checkpoint.family
        decoder = family.decoder_of(model)
        setattr(decoder, family.blocks, torch.nn.ModuleList())
        if family.learned_positions:  # GPT-2's: the peer running block 0 adds them
            delattr(decoder, family.learned_positions)
        names = checkpoint.head_tensor_names()  # ours -> the checkpoint's (multimodal: inside)
        read = read_tensors(checkpoint, list(names.values()))
        tensors = {ours: read[theirs] for ours, theirs in names.items() if theirs in read}
        embedding_weight = f"{family.decoder}.{family.embeddings}.weight"
        if "lm_head.weight" not in tensors:  # tied to the embeddings
            tensors["lm_head.weight"] = tensors[embedding_weight]
        state = {name: tensor.to(device=device, dtype=dtype) for name, tensor in tensors.items()}
        model.load_state_dict(state, strict=False, assign=True)
        if getattr(config, "tie_word_embeddings", False):
            model.lm_head.weight = getattr(decoder, family.embeddings).weight
        missing = [name for name, p in model.named_parameters() if p.is_meta]
        if missing:
            raise CheckpointError(f"the checkpoint has no tensors for {missing}")
        model.eval().requires_grad_(False)  # frozen, as the peers' blocks are
        logger.info("client head of %s loaded (%d tensors)", path.name, len(tensors))
        return cls(model, family, config)

    @property
    def dtype(self) -> torch.dtype:
        return self.embeddings.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.embeddings.weight.device

    @torch.no_grad()
    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        """The first block's input for `input_ids`, computed on the head's device, returned on
        the CPU."""
        return self.blocks_input(self.embeddings(input_ids.to(self.device)))

    def blocks_input(self, inputs_embeds: torch.Tensor) -> torch.Tensor:
        """What the first block takes for these token embeddings: themselves, BLOOM's normed
        ones or OPT 350M's projected ones (on the CPU, differentiable in `inputs_embeds` when
        they require grad)."""
        hidden = inputs_embeds
        with torch.set_grad_enabled(torch.is_grad_enabled() and inputs_embeds.requires_grad):
            for module in filter(None, self._before_blocks):
                hidden = module(hidden.to(self.device))
        return hidden.cpu()

    def logits(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """Logits of `hidden_states`, computed on the head's device, returned on the CPU;
        differentiable in `hidden_states` when they require grad (the head stays frozen)."""
        with torch.set_grad_enabled(torch.is_grad_enabled() and hidden_states.requires_grad):
            return self._logits(hidden_states)

    def _logits(self, hidden_states: torch.Tensor) -> torch.Tensor:
        hidden = self._norm(hidden_states.to(self.device))
        if self._projection_out is not None:
            hidden = self._projection_out(hidden)
        logits: torch.Tensor = self.model.lm_head(hidden)
        # what some families' forward does after the LM head
        scale = getattr(self.config, "logit_scale", None)
        if scale is not None:  # Command R
            logits = logits * scale
        cap = getattr(self.config, "final_logit_softcapping", None)
        if cap is not None:  # Gemma 2
            logits = torch.tanh(logits / cap) * cap
        return logits.cpu()


def _part(decoder: Any, name: str | None) -> torch.nn.Module | None:
    """The decoder's module of that name, if the family has one and this model too."""
    return getattr(decoder, name, None) if name else None
