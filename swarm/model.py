"""`DistributedModelForCausalLM`: a causal LM whose transformer blocks run in the swarm.

The object holds only what the client computes itself (embeddings, final norm, LM head: see
`head.py`), the model's generation config, and a trio loop in one thread (`trio_thread.py`)
in which its RPC host, its DHT node (client mode: it never advertises itself) and its chains
live. The facade is synchronous and speaks transformers' argument names:

    model = DistributedModelForCausalLM.from_pretrained(path, initial_peers=[address])
    output_ids = model.generate(input_ids, max_new_tokens=20)          # like transformers
    with model.inference_session(max_length=512) as session:           # multi-turn
        for token in session.stream(turn_ids, max_new_tokens=40): ...  # only new turns sent
    model(batch_ids, labels=batch_ids).loss                            # batch forward

Every remote session is closed when its `with` block ends, on errors and Ctrl-C too.
"""

from __future__ import annotations

import logging
import random
from collections.abc import AsyncGenerator, Collection, Generator, Sequence
from contextlib import aclosing
from functools import partial
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import torch

from peer.model_name import model_name
from peer.span import parse_dtype
from routing.address import PeerAddress
from routing.announcement import MODEL_NAME_PATTERN
from routing.client import (
    ClientConfig,
    Failover,
    InferenceChain,
    StepTiming,
    SwarmView,
)
from routing.dht import DHTConfig, DHTNode
from routing.path_selection import Hop
from routing.rpc import RPCConfig, RPCHost
from routing.transport import TcpTransport
from security import Identity, PeerId

from .beam_search import generate_beams
from .checkpoints import resolve_checkpoint
from .errors import SwarmError
from .generation import (
    GenerationError,
    GenerationState,
    TokenLogprob,
    check_attention_mask,
    generate_batch,
    generate_tokens,
    left_padding,
    token_logprobs,
)
from .head import ClientHead
from .prompt_lookup import DEFAULT_NGRAM, PromptLookup
from .remote_blocks import SwarmCall, through_swarm
from .sampling import SamplingConfig
from .speculative import (
    DEFAULT_DRAFT_TOKENS,
    Drafter,
    Proposer,
    check_drafting,
    speculative_tokens,
)
from .trio_thread import TrioThread

if TYPE_CHECKING:
    from transformers.modeling_outputs import CausalLMOutput

logger = logging.getLogger(__name__)

LOGPROB_CHUNK = 256  # positions whose logits `token_logprobs` holds at once


class DistributedModelForCausalLM:
    """Embeddings and LM head here, blocks in the swarm. Create with `from_pretrained`."""

    def __init__(
        self,
        head: ClientHead,
        config: Any,
        generation_config: Any,
        loop: TrioThread,
        view: SwarmView,
    ) -> None:
        self.head = head
        self.config = config  # the checkpoint's transformers config, as `model.config` there
        self.generation_config = generation_config
        self._loop = loop
        self._view = view
        self._rng = random.Random()  # draws the replicas of batch forwards

    @classmethod
    def from_pretrained(
        cls,
        checkpoint: str | Path,
        *,
        initial_peers: Sequence[str | PeerAddress],
        model_name_in_swarm: str | None = None,
        device: str = "cpu",
        dtype: str | torch.dtype = torch.float32,
        config: ClientConfig | None = None,
        adapter: str | None = None,
        identity: Identity | None = None,
        members: Collection[PeerId] | Path | None = None,
    ) -> DistributedModelForCausalLM:
        """Load the head of `checkpoint` and join the swarm through `initial_peers`.

        `dtype`: of the head (embeddings, final norm, LM head); use the peers' dtype
        ("bfloat16" for a bfloat16 swarm) to get what the local model in that dtype gives.
        `adapter`: the name of a LoRA adapter that peers serve (`swarm peer --adapter DIR`):
        generation, forward and backward then run through peers that announce it, with it.
        `identity`: the client's key (default: a fresh one); in a private swarm, `members`
        are its peers' ids, the only peers the client talks to (its own among them), or the
        path of a members file that the client follows as it changes.
        """
        from transformers import GenerationConfig

        path = resolve_checkpoint(str(checkpoint))  # a directory, the default model, a hub id
        peers = [p if isinstance(p, PeerAddress) else PeerAddress.parse(p) for p in initial_peers]
        if not peers:
            raise SwarmError("initial_peers is empty: give the address of a peer of the swarm")
        if adapter is not None and not MODEL_NAME_PATTERN.match(adapter):
            raise SwarmError(f"{adapter!r} cannot be an adapter's name (letters, digits, ._-)")
        head = ClientHead.from_pretrained(path, dtype=parse_dtype(dtype), device=device)
        hf_config = head.config  # the language model's (of a multimodal checkpoint too)
        try:
            generation_config = GenerationConfig.from_pretrained(path)
        except OSError:  # no generation_config.json
            generation_config = GenerationConfig.from_model_config(hf_config)
        loop = TrioThread()
        loop.start()
        try:
            rpc_config = RPCConfig.for_members(members)
            rpc = RPCHost(identity or Identity.generate(), TcpTransport(), rpc_config)
            loop.start_service(rpc.run_outbound)  # a client listens for nobody
            dht = DHTNode(rpc, DHTConfig(client_mode=True))
            loop.start_service(partial(dht.run, initial_peers=peers))
            name = model_name_in_swarm or model_name(checkpoint)  # as typed: not a hub cache
            blocks = int(hf_config.num_hidden_layers)
            view = SwarmView(rpc, dht, name, blocks, config, adapter=adapter)
            loop.start_service(view.run)  # reads the swarm now, then every refresh_period
        except BaseException:
            loop.close()
            raise
        return cls(head, hf_config, generation_config, loop, view)

    def close(self) -> None:
        """Stop the client's loop (its connections and DHT node)."""
        self._loop.close()

    def __enter__(self) -> DistributedModelForCausalLM:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def inference_session(self, max_length: int) -> InferenceSession:
        """Sessions on a chain of peers for up to `max_length` tokens (prompt included)."""
        return InferenceSession(self, max_length)

    def generate(self, input_ids: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        """Like transformers' `generate`: the prompts followed by the new tokens.

        Arguments: max_new_tokens, do_sample, temperature, top_k, top_p, repetition_penalty,
        eos_token_id, stop_strings (with `tokenizer=`), seed, no_repeat_ngram_size,
        min_new_tokens, min_p, typical_p, epsilon_cutoff, eta_cutoff, sequence_bias,
        bad_words_ids, suppress_tokens, begin_suppress_tokens, max_time, logits_processor
        and stopping_criteria (the caller's own, merged as transformers merges them),
        streamer (a callable given each new token id, or transformers' `TextStreamer` and
        the like; one sequence only). Unset ones come from the model's generation config.
        `max_length` (prompt included) stands for `max_new_tokens` if that is not given.
        `use_cache` is ignored; anything else is a GenerationError that names it.

        A batch (`**tokenizer(texts, padding=True, return_tensors="pt")` with the tokenizer
        padding on the left) runs as one, through sessions that know each row's padding, and
        a finished row is padded with `pad_token_id` (the generation config's, else the first
        EOS), as transformers does.

        Beam search: num_beams (above 1), length_penalty, early_stopping,
        num_return_sequences; each prompt's beams are rows of the same sessions, which the
        peers reorder between steps (`swarm.beam_search`).

        Speculative decoding (`swarm.speculative`): assistant_model (a local model that
        drafts) and num_assistant_tokens, or prompt_lookup_num_tokens (the most drafts a
        round copied from earlier in the text, `swarm.prompt_lookup`; fewer after misses)
        with max_matching_ngram_size, and our prediction_ids (token ids the answer is
        expected to resemble, looked up first).
        """
        padding = left_padding(kwargs.pop("attention_mask", None), input_ids)
        _max_length_as_new_tokens(kwargs, input_ids)
        config = self.sampling_config(**kwargs)
        if input_ids.shape[0] > 1 or any(padding) or config.num_beams > 1:
            return self._generate_batch(input_ids, padding, config, kwargs)
        with self.inference_session(int(input_ids.shape[1]) + config.max_new_tokens) as session:
            return session.generate(input_ids, **kwargs)

    def _generate_batch(
        self,
        input_ids: torch.Tensor,
        padding: list[int],
        config: SamplingConfig,
        options: dict[str, Any],
    ) -> torch.Tensor:
        if options.get("streamer") is not None:
            raise GenerationError("a streamer takes one sequence, not a batch or beams")
        if options.get("assistant_model") is not None or options.get(PROMPT_LOOKUP):
            raise GenerationError(
                "an assistant model or prompt lookup drafts for one sequence, not beams"
            )
        if config.json_mode is not None and config.num_beams > 1:
            raise GenerationError("JSON mode takes sequences, not beams")
        pad_token_id = options.get("pad_token_id")
        if pad_token_id is None:
            pad_token_id = getattr(self.generation_config, "pad_token_id", None)
        max_length = int(input_ids.shape[1]) + config.max_new_tokens
        generate = generate_beams if config.num_beams > 1 else generate_batch
        rows = [pad for pad in padding for _ in range(config.num_beams)]  # a beam per row

        async def run() -> torch.Tensor:
            async with InferenceChain(self._view, self._view.rpc, max_length, rows) as chain:
                return await generate(
                    self.head,
                    chain,
                    input_ids,
                    config,
                    padding=padding,
                    pad_token_id=pad_token_id,
                    tokenizer=options.get("tokenizer"),
                )

        return self._loop.run(run)

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
    ) -> CausalLMOutput:
        """Logits of every position of a batch, as transformers' `model(input_ids,
        attention_mask)`; with `labels` (-100: ignored), also the mean next-token loss.

        Stateless: the blocks run through `span.forward` on replicas drawn by their spare
        throughput (`routing.client.forward`), and no session is kept. `attention_mask` (0
        for padding, on either side) hides keys as in transformers, whose positions count
        from the first column whatever the padding. `inputs_embeds` (instead of
        `input_ids`, as in transformers) may require grad: the loss then backpropagates
        through the peers (`span.backward`) to it, for training a soft prompt or adapters
        on the client while the blocks stay frozen.
        """
        from transformers.modeling_outputs import CausalLMOutput

        if inputs_embeds is None:
            if input_ids is None or input_ids.dim() != 2:
                got = None if input_ids is None else list(input_ids.shape)
                raise SwarmError(f"input_ids must be [batch, length], not {got}")
            hidden = self.head.embed(input_ids)
        elif input_ids is not None or inputs_embeds.dim() != 3:
            raise SwarmError("inputs_embeds, [batch, length, hidden], come instead of input_ids")
        else:
            hidden = self.head.blocks_input(inputs_embeds)
        shape = hidden.shape[:2]
        if labels is not None and labels.shape != shape:
            raise SwarmError(f"labels must be {list(shape)}, as the inputs")
        mask = None
        if attention_mask is not None:
            mask = torch.as_tensor(attention_mask)
            if mask.shape != shape or not bool(((mask == 0) | (mask == 1)).all()):
                raise SwarmError("attention_mask must be 0 and 1, in the shape of the inputs")
            mask = None if bool(mask.all()) else mask  # nothing hidden: as without one
        call = SwarmCall(self._loop.run, self._view, self._rng, mask, self._loop.spawn)
        hidden = through_swarm(hidden, call)
        logits = self.head.logits(hidden)
        loss = None if labels is None else _causal_lm_loss(logits, labels)
        return CausalLMOutput(loss=loss, logits=logits)

    def token_logprobs(
        self, input_ids: torch.Tensor, top: int = 0, chunk: int = LOGPROB_CHUNK
    ) -> list[TokenLogprob]:
        """Each token's log probability after the tokens before it, and the `top` likeliest
        tokens at its place (one row; the first token, which nothing predicts, has none).
        One forward through the swarm; the LM head runs `chunk` positions at a time, so a
        long prompt never holds all its logits at once."""
        if input_ids.dim() != 2 or input_ids.shape[0] != 1:
            raise SwarmError(f"input_ids must be [1, length], not {list(input_ids.shape)}")
        call = SwarmCall(self._loop.run, self._view, self._rng, None)
        hidden = through_swarm(self.head.embed(input_ids), call)
        tokens = input_ids[0].tolist()
        records: list[TokenLogprob] = []
        for start in range(0, len(tokens) - 1, chunk):
            end = min(start + chunk, len(tokens) - 1)
            logits = self.head.logits(hidden[:, start:end])[0]
            records += token_logprobs(logits, tokens[start + 1 : end + 1], top)
        return records

    def get_input_embeddings(self) -> torch.nn.Module:
        """The token embeddings, as transformers' models give them (to build `inputs_embeds`)."""
        return self.head.embeddings

    __call__ = forward

    def sampling_config(self, **kwargs: Any) -> SamplingConfig:
        options = {k: v for k, v in kwargs.items() if k not in _NOT_SAMPLING}
        return SamplingConfig.from_generation_config(self.generation_config, **options)


PROMPT_LOOKUP = "prompt_lookup_num_tokens"  # transformers' name: drafts a round, copied
_NOT_SAMPLING = frozenset(
    {"streamer", "tokenizer", "attention_mask", "assistant_model", "num_assistant_tokens",
     PROMPT_LOOKUP, "max_matching_ngram_size", "prediction_ids"}
)  # generate() arguments that are not the sampling config's  # fmt: skip


class InferenceSession:
    """A chain of remote sessions kept across `generate`/`stream` calls (multi-turn)."""

    def __init__(self, model: DistributedModelForCausalLM, max_length: int) -> None:
        self.model = model
        self.max_length = max_length
        self._chain = InferenceChain(model._view, model._view.rpc, max_length)
        self._state: GenerationState | None = None
        self._drafter: Drafter | None = None  # the assistant model's, kept across turns

    def open(self) -> InferenceSession:
        """Open the remote sessions (what `with` does; `close()` ends them; a fork is open)."""
        if self._chain.hops:
            return self
        try:
            self.model._loop.run(self._chain.__aenter__)
        except BaseException:
            self.model._loop.run(self._chain.close)
            raise
        return self

    def close(self) -> None:
        self.model._loop.run(self._chain.close)

    def rewind(self, tokens: int) -> None:
        """Keep only the first `tokens` of `input_ids`: the next turn goes on from there
        (the peers drop what their caches hold after it with that turn's first step)."""
        state, held = self._state, self._held
        if type(tokens) is not int or not 0 <= tokens <= held:
            raise GenerationError(f"a session holding {held} tokens cannot rewind to {tokens}")
        if state is None or tokens == held:
            return
        state.input_ids = state.input_ids[:, :tokens]
        if state.processed > tokens:
            state.processed = tokens

            async def truncate() -> None:  # in the loop, where the chain's hops live
                self._chain.truncate(tokens)

            self.model._loop.run(truncate)

    def fork(self, tokens: int | None = None, max_length: int | None = None) -> InferenceSession:
        """A new session, open, holding this one's first `tokens` (all, by default), whose
        peers copy them from this one's caches instead of computing them again: a system
        prompt or a conversation's beginning, computed once for every conversation that
        shares it. Its `max_length` is this one's unless given. Close it as any session."""
        state, held = self._state, self._held
        tokens = held if tokens is None else tokens
        max_length = self.max_length if max_length is None else max_length
        if not self._chain.hops:
            raise GenerationError("only an open session can be forked")
        if type(tokens) is not int or not 0 <= tokens <= min(held, max_length):
            raise GenerationError(
                f"a session holding {held} tokens cannot fork {tokens} into {max_length}"
            )
        fork = InferenceSession(self.model, max_length)
        copied = 0
        if state is not None and tokens:
            copied = min(state.processed, tokens)
            fork._state = GenerationState(state.input_ids[:, :tokens], processed=copied)

        async def open_fork() -> None:
            fork._chain = await self._chain.fork(copied, max_length)

        self.model._loop.run(open_fork)
        return fork

    def __enter__(self) -> InferenceSession:
        return self.open()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def route(self) -> list[Hop]:
        """The chain in use now: peer id and blocks of every hop."""
        return self._chain.route

    @property
    def failovers(self) -> list[Failover]:
        return list(self._chain.failovers)

    @property
    def timings(self) -> list[tuple[Hop, list[StepTiming]]]:
        """Per hop, how long each step took, and how much of it the peer says it spent."""
        return self._chain.timings

    @property
    def input_ids(self) -> torch.Tensor | None:
        """Every token the session has seen or produced."""
        return None if self._state is None else self._state.input_ids

    @property
    def _held(self) -> int:
        """How many tokens the session holds (`input_ids`' length)."""
        return 0 if self._state is None else int(self._state.input_ids.shape[1])

    @property
    def logprobs(self) -> Sequence[TokenLogprob]:
        """The last turn's new tokens' log-probabilities so far, if it was asked for them
        (`logprobs=N`: each with the N likeliest tokens at its place)."""
        if self._state is None or self._state.logprobs is None:
            return []
        return self._state.logprobs

    @property
    def drafts(self) -> tuple[int, int]:
        """The last turn's drafts (speculative decoding): how many the model took, and how
        many it did not."""
        if self._state is None:
            return 0, 0
        taken = self._state.drafts_taken
        return taken, self._state.drafted - taken

    def stream(
        self, input_ids: torch.Tensor, *, tokenizer: Any = None, **kwargs: Any
    ) -> Generator[int, None, None]:
        """Yield new token ids as they come. `input_ids`: the next turn (only it is sent);
        `logprobs=N` records each new token's log-probability (`self.logprobs`)."""
        tokens = self._tokens(input_ids, tokenizer, kwargs)

        async def next_token() -> int | None:
            try:
                return await anext(tokens)
            except StopAsyncIteration:
                return None

        try:
            while (token := self.model._loop.run(next_token)) is not None:
                yield token
        finally:
            self.model._loop.run(tokens.aclose)

    def generate(self, input_ids: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        """`input_ids` followed by the new tokens (see `DistributedModelForCausalLM.generate`).
        Without a streamer, the whole loop runs in the event loop's thread, with no hop
        between threads per token."""
        streamer = kwargs.pop("streamer", None)
        new_tokens = []
        if streamer is None:
            tokens = self._tokens(input_ids, kwargs.pop("tokenizer", None), kwargs)
            new_tokens = self.model._loop.run(_collect, tokens)
        elif hasattr(streamer, "put"):  # transformers' (TextStreamer...): as generate() feeds it
            streamer.put(input_ids.cpu())
            for token in self.stream(input_ids, **kwargs):
                new_tokens.append(token)
                streamer.put(torch.tensor([token]))
            streamer.end()
        else:
            for token in self.stream(input_ids, **kwargs):
                new_tokens.append(token)
                streamer(token)
        new = torch.tensor([new_tokens], dtype=input_ids.dtype)
        return torch.cat([input_ids, new], dim=-1)

    def _tokens(
        self, input_ids: torch.Tensor, tokenizer: Any, options: dict[str, Any]
    ) -> AsyncGenerator[int, None]:
        """The generation loop for the next turn, not started yet."""
        check_attention_mask(options.pop("attention_mask", None), input_ids)
        _max_length_as_new_tokens(options, input_ids)
        assistant = options.pop("assistant_model", None)
        draft_tokens = options.pop("num_assistant_tokens", DEFAULT_DRAFT_TOKENS)
        lookup_tokens = options.pop(PROMPT_LOOKUP, None)
        ngram = options.pop("max_matching_ngram_size", DEFAULT_NGRAM)
        prediction = options.pop("prediction_ids", ())
        if isinstance(prediction, torch.Tensor):
            prediction = prediction.flatten().tolist()
        logprobs = options.pop("logprobs", None)
        vocabulary = int(self.model.config.vocab_size)
        if logprobs is not None and (type(logprobs) is not int or not 0 <= logprobs <= vocabulary):
            raise GenerationError(f"logprobs must be a count of tokens within 0..{vocabulary}")
        config = self.model.sampling_config(**options)
        if config.num_beams > 1:
            raise GenerationError("beam search runs in model.generate(), not in a session")
        if assistant is not None and lookup_tokens:
            raise GenerationError("drafts come from an assistant model or prompt lookup, not both")
        drafter: Proposer | None = None
        if assistant is not None:
            check_drafting(config, input_ids, draft_tokens)
            if self._drafter is None or self._drafter.model is not assistant:
                self._drafter = Drafter(assistant)
            drafter = self._drafter
        elif lookup_tokens:
            check_drafting(config, input_ids, lookup_tokens)
            begin = self._held + int(input_ids.shape[1])
            drafter = PromptLookup(ngram, tuple(prediction), begin=begin)
            draft_tokens = lookup_tokens
        if self._state is None:
            self._state = GenerationState(input_ids)
        else:
            self._state.input_ids = torch.cat([self._state.input_ids, input_ids], dim=-1)
        self._state.logprobs = None if logprobs is None else []
        self._state.top_logprobs = logprobs or 0
        self._state.drafted = self._state.drafts_taken = 0
        if self._state.input_ids.shape[1] + config.max_new_tokens > self.max_length:
            raise SwarmError(
                f"{self._state.input_ids.shape[1]} tokens + {config.max_new_tokens} new "
                f"exceed the session's max_length {self.max_length}"
            )
        if drafter is not None:
            return speculative_tokens(
                self.model.head, self._chain, self._state, config, drafter, draft_tokens, tokenizer
            )
        return generate_tokens(self.model.head, self._chain, self._state, config, tokenizer)


def _causal_lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """transformers' causal LM loss: position t predicts label t + 1; -100 is ignored."""
    vocabulary = logits.shape[-1]
    predicted = logits[:, :-1, :].float().reshape(-1, vocabulary)
    targets = labels[:, 1:].reshape(-1).to(logits.device)
    return torch.nn.functional.cross_entropy(predicted, targets, ignore_index=-100)


def _max_length_as_new_tokens(options: dict[str, Any], input_ids: torch.Tensor) -> None:
    """transformers' `max_length` (the input included) as `max_new_tokens`, unless given."""
    max_length = options.pop("max_length", None)
    if max_length is not None and options.get("max_new_tokens") is None:
        options["max_new_tokens"] = max(0, int(max_length) - int(input_ids.shape[1]))


async def _collect(tokens: AsyncGenerator[int, None]) -> list[int]:
    async with aclosing(tokens):
        return [token async for token in tokens]
