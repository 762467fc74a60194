"""What `generate()`'s arguments mean: `SamplingConfig`, read with transformers' names
and the model's generation config as defaults, and the logits processors and stopping
criteria it makes, in the order `GenerationMixin.generate` applies them: the rules
(sequence biases, penalties, bans and suppressed tokens, the caller's own processors), then
sampling's warpers (temperature, top-k, top-p and the other cutoffs), each part on its own
for JSON mode, whose last resort keeps to the rules only. Sampling draws from a private
`torch.Generator` seeded from the request, the same stream as `torch.manual_seed(seed)`
followed by a local `generate()`, without touching the global random state.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from typing import Any, TypeVar, cast

import torch
from transformers import (
    EpsilonLogitsWarper,
    EtaLogitsWarper,
    LogitsProcessor,
    LogitsProcessorList,
    MaxTimeCriteria,
    MinNewTokensLengthLogitsProcessor,
    MinPLogitsWarper,
    NoBadWordsLogitsProcessor,
    NoRepeatNGramLogitsProcessor,
    RepetitionPenaltyLogitsProcessor,
    SequenceBiasLogitsProcessor,
    StoppingCriteria,
    StoppingCriteriaList,
    StopStringCriteria,
    SuppressTokensAtBeginLogitsProcessor,
    SuppressTokensLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TypicalLogitsWarper,
)

from .errors import GenerationError
from .json_prefix import MAX_BLANK
from .json_schema import ANY_OBJECT, Node, compile_schema
from .top_p import SortedTopP

_Listed = TypeVar("_Listed", LogitsProcessorList, StoppingCriteriaList)


@dataclass(frozen=True)
class SamplingConfig:
    """The common `generate()` arguments, with transformers' names and meanings."""

    max_new_tokens: int = 32
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int | None = 50
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    eos_token_ids: tuple[int, ...] = ()
    stop_strings: tuple[str, ...] = ()
    seed: int | None = None
    num_beams: int = 1  # beam search above 1 (`swarm.beam_search`)
    length_penalty: float = 1.0
    early_stopping: bool | str = False  # True, False or "never"
    num_return_sequences: int = 1  # of the beams, per prompt
    no_repeat_ngram_size: int = 0  # n-grams that may occur once (0: any)
    min_new_tokens: int = 0  # before which EOS cannot come
    min_p: float | None = None  # sampling: tokens under min_p times the likeliest are out
    typical_p: float = 1.0  # sampling: the most typical tokens that hold this much mass
    epsilon_cutoff: float = 0.0  # sampling: tokens less likely than this are out (0: off)
    eta_cutoff: float = 0.0  # sampling: eta sampling's cutoff (0: off)
    presence_penalty: float = 0.0  # OpenAI's: off each generated token's logit, once
    frequency_penalty: float = 0.0  # OpenAI's: off each generated token's logit, per use
    json_object: bool = False  # JSON mode: the text is one JSON object (`swarm.json_mode`)
    json_schema: Node | None = None  # JSON mode: the text is a value of this schema
    json_whitespace: int = MAX_BLANK  # JSON mode: the longest run of it outside strings
    sequence_bias: tuple[tuple[tuple[int, ...], float], ...] = ()  # (tokens, bias) pairs
    bad_words_ids: tuple[tuple[int, ...], ...] = ()  # token sequences never generated
    suppress_tokens: tuple[int, ...] = ()  # tokens never generated
    begin_suppress_tokens: tuple[int, ...] = ()  # tokens not generated first
    max_time: float | None = None  # seconds, from the start, after which generation stops
    logits_processor: tuple[LogitsProcessor, ...] = ()  # the caller's own, merged as there
    stopping_criteria: tuple[StoppingCriteria, ...] = ()  # the caller's own, merged as there

    @property
    def json_mode(self) -> Node | None:
        """The schema JSON mode keeps the text to, or None for free text."""
        return self.json_schema or (ANY_OBJECT if self.json_object else None)

    def __post_init__(self) -> None:
        if self.max_new_tokens < 0:
            raise GenerationError("max_new_tokens must be >= 0")
        if self.num_beams < 1:
            raise GenerationError("num_beams must be >= 1")
        if self.early_stopping not in (True, False, "never"):
            raise GenerationError("early_stopping must be True, False or 'never'")
        if not 1 <= self.num_return_sequences <= self.num_beams:
            raise GenerationError("num_return_sequences must be within 1..num_beams")
        if self.do_sample and self.temperature <= 0:
            raise GenerationError("temperature must be > 0 when sampling")
        if not 0 < self.top_p <= 1:
            raise GenerationError("top_p must be in (0, 1]")
        if self.repetition_penalty <= 0:
            raise GenerationError("repetition_penalty must be > 0")
        if self.no_repeat_ngram_size < 0 or self.min_new_tokens < 0:
            raise GenerationError("no_repeat_ngram_size and min_new_tokens must be >= 0")
        if self.min_p is not None and not 0 <= self.min_p <= 1:
            raise GenerationError("min_p must be in [0, 1]")
        if not 0 < self.typical_p <= 1:
            raise GenerationError("typical_p must be in (0, 1]")
        if not (0 <= self.epsilon_cutoff < 1 and 0 <= self.eta_cutoff < 1):
            raise GenerationError("epsilon_cutoff and eta_cutoff must be in [0, 1)")
        if not all(math.isfinite(x) for x in (self.presence_penalty, self.frequency_penalty)):
            raise GenerationError("presence_penalty and frequency_penalty must be finite")
        if self.json_whitespace < 0:
            raise GenerationError("json_whitespace must be >= 0")
        if self.max_time is not None and not self.max_time > 0:
            raise GenerationError("max_time must be > 0 seconds")
        if not all(math.isfinite(bias) for _, bias in self.sequence_bias):
            raise GenerationError("sequence_bias must be finite")

    @classmethod
    def from_generation_config(cls, generation_config: Any, **overrides: Any) -> SamplingConfig:
        """Defaults from a transformers `GenerationConfig`, then explicit arguments."""
        eos = getattr(generation_config, "eos_token_id", None)
        values: dict[str, Any] = {
            "do_sample": bool(getattr(generation_config, "do_sample", False)),
            "temperature": _or(getattr(generation_config, "temperature", None), 1.0),
            "top_k": _or(getattr(generation_config, "top_k", None), 50),
            "top_p": _or(getattr(generation_config, "top_p", None), 1.0),
            "repetition_penalty": _or(getattr(generation_config, "repetition_penalty", None), 1.0),
            "eos_token_ids": _as_tuple(eos),
        }
        for name in _FROM_GENERATION_CONFIG:
            value = getattr(generation_config, name, None)
            if value is not None:
                values[name] = _NORMALIZED[name](value, name) if name in _NORMALIZED else value
        max_new = getattr(generation_config, "max_new_tokens", None)
        if max_new is not None:
            values["max_new_tokens"] = max_new
        for name, value in overrides.items():
            if value is None or name in IGNORED_ARGUMENTS:
                continue
            if name == "eos_token_id":
                name, value = "eos_token_ids", _as_tuple(value)
            elif name in _NORMALIZED:
                value = _NORMALIZED[name](value, name)
            elif name == "json_schema" and not isinstance(value, Node):
                value = compile_schema(value)
            elif name not in _ARGUMENTS:
                raise GenerationError(
                    f"generate() does not take {name!r}; it takes {', '.join(sorted(_ARGUMENTS))}"
                )
            values[name] = value
        return cls(**values)


_FROM_GENERATION_CONFIG = (
    *("num_beams", "length_penalty", "early_stopping", "num_return_sequences"),
    *("no_repeat_ngram_size", "min_new_tokens", "min_p", "typical_p", "epsilon_cutoff"),
    *("eta_cutoff", "max_time", "sequence_bias"),
    *("bad_words_ids", "suppress_tokens", "begin_suppress_tokens"),
)


IGNORED_ARGUMENTS = frozenset({"pad_token_id", "use_cache"})  # transformers' that mean nothing here


_ARGUMENTS = frozenset(
    {f.name for f in fields(SamplingConfig) if f.name != "eos_token_ids"} | {"eos_token_id"}
)


def _or(value: Any, default: Any) -> Any:
    return default if value is None else value


def _as_tuple(value: Any, name: str = "") -> tuple[Any, ...]:
    if value is None:
        return ()
    if isinstance(value, (list, tuple)):
        return tuple(value)
    return (value,)


def _token_ids(value: Any, name: str) -> tuple[int, ...]:
    """A list of token ids, as transformers takes one (a tensor too)."""
    ids = value.tolist() if isinstance(value, torch.Tensor) else value
    if not isinstance(ids, (list, tuple)) or not all(type(i) is int and i >= 0 for i in ids):
        raise GenerationError(f"{name} must be a list of token ids")
    return tuple(ids)


def _token_sequences(value: Any, name: str) -> tuple[tuple[int, ...], ...]:
    """A list of non-empty lists of token ids (`bad_words_ids`)."""
    if not isinstance(value, (list, tuple)):
        raise GenerationError(f"{name} must be a list of lists of token ids")
    sequences = tuple(_token_ids(ids, name) for ids in value)
    if not all(sequences):
        raise GenerationError(f"{name} may not hold an empty list")
    return sequences


def _sequence_biases(value: Any, name: str) -> tuple[tuple[tuple[int, ...], float], ...]:
    """`sequence_bias` as transformers takes it: {(ids...): bias} or [[[ids...], bias], ...]."""
    pairs = list(value.items()) if isinstance(value, dict) else value
    if not isinstance(pairs, (list, tuple)) or not all(
        isinstance(pair, (list, tuple)) and len(pair) == 2 for pair in pairs
    ):
        raise GenerationError(f"{name} must map token sequences to biases")
    if not all(isinstance(bias, (int, float)) for _, bias in pairs):
        raise GenerationError(f"{name}'s biases must be numbers")
    sequences = _token_sequences([ids for ids, _ in pairs], name)
    return tuple(zip(sequences, (float(bias) for _, bias in pairs), strict=True))


def _processors(value: Any, name: str) -> tuple[Any, ...]:
    """The caller's own `logits_processor` or `stopping_criteria`: a list of callables."""
    items = _as_tuple(value)
    if not all(callable(item) for item in items):
        raise GenerationError(f"{name} must be a list of callables of (input_ids, scores)")
    return items


_NORMALIZED: dict[str, Callable[[Any, str], Any]] = {
    "stop_strings": _as_tuple,
    "sequence_bias": _sequence_biases,
    "bad_words_ids": _token_sequences,
    "suppress_tokens": _token_ids,
    "begin_suppress_tokens": _token_ids,
    "logits_processor": _processors,
    "stopping_criteria": _processors,
}


def build_logits_processors(
    config: SamplingConfig, prompt_length: int, padding: Sequence[int] = ()
) -> LogitsProcessorList:
    """The processors `generate()` would use for these arguments, in its order, for prompts
    of `prompt_length` tokens whose rows begin with `padding` padding tokens (ignored by the
    repetition penalty, as there): the rules, then the warpers."""
    rules = build_logits_rules(config, prompt_length, padding)
    return LogitsProcessorList([*rules, *build_logits_warpers(config)])


def build_logits_rules(
    config: SamplingConfig, prompt_length: int, padding: Sequence[int] = ()
) -> LogitsProcessorList:
    """The first part of `build_logits_processors`: what changes the model's logits whether
    it samples or not (biases, penalties, bans, suppressed tokens, the caller's own
    processors). A token they make -inf may never come, JSON mode's last resort included."""
    processors = LogitsProcessorList()
    if config.sequence_bias:
        bias = SequenceBiasLogitsProcessor(dict(config.sequence_bias))  # type: ignore[arg-type]
        processors.append(bias)
    if config.repetition_penalty != 1.0:
        ignored = torch.tensor(padding) if any(padding) else None
        penalty = RepetitionPenaltyLogitsProcessor(config.repetition_penalty, ignored)
        processors.append(penalty)
    if config.presence_penalty or config.frequency_penalty:
        processors.append(
            PresenceFrequencyPenalty(
                prompt_length, config.presence_penalty, config.frequency_penalty
            )
        )
    if config.no_repeat_ngram_size:
        processors.append(NoRepeatNGramLogitsProcessor(config.no_repeat_ngram_size))
    if config.bad_words_ids:
        bad_words = [list(ids) for ids in config.bad_words_ids]
        processors.append(NoBadWordsLogitsProcessor(bad_words, list(config.eos_token_ids)))
    if config.min_new_tokens and config.eos_token_ids:
        processors.append(
            MinNewTokensLengthLogitsProcessor(
                prompt_length, config.min_new_tokens, list(config.eos_token_ids)
            )
        )
    if config.suppress_tokens:
        processors.append(SuppressTokensLogitsProcessor(config.suppress_tokens))
    if config.begin_suppress_tokens:
        begin = SuppressTokensAtBeginLogitsProcessor(config.begin_suppress_tokens, prompt_length)
        processors.append(begin)
    return _merged(processors, config.logits_processor)


def build_logits_warpers(config: SamplingConfig) -> LogitsProcessorList:
    """The second part of `build_logits_processors`: sampling's warpers (temperature, then
    the cutoffs: top-k, top-p, min-p, typical, epsilon, eta), none for greedy decoding."""
    processors = LogitsProcessorList()
    if config.do_sample:
        # beams keep a token that is not EOS to go on with, as transformers' do
        keep = max(2, len(config.eos_token_ids) + 1) if config.num_beams > 1 else 1
        if config.temperature != 1.0:
            processors.append(TemperatureLogitsWarper(config.temperature))
        if config.top_k:
            processors.append(TopKLogitsWarper(top_k=config.top_k, min_tokens_to_keep=keep))
        if config.top_p < 1.0:
            processors.append(SortedTopP(top_p=config.top_p, min_tokens_to_keep=keep))
        if config.min_p is not None:
            processors.append(MinPLogitsWarper(min_p=config.min_p, min_tokens_to_keep=keep))
        if config.typical_p < 1.0:
            processors.append(TypicalLogitsWarper(mass=config.typical_p, min_tokens_to_keep=keep))
        if config.epsilon_cutoff:
            processors.append(EpsilonLogitsWarper(config.epsilon_cutoff, min_tokens_to_keep=keep))
        if config.eta_cutoff:
            processors.append(EtaLogitsWarper(config.eta_cutoff, min_tokens_to_keep=keep))
    return processors


class PresenceFrequencyPenalty(LogitsProcessor):
    """OpenAI's presence and frequency penalties: each token generated so far (after the
    first `prompt_length` of a row) has `presence` taken off its logit once and `frequency`
    for each time it came."""

    def __init__(self, prompt_length: int, presence: float, frequency: float) -> None:
        self.prompt_length = prompt_length
        self.presence = presence
        self.frequency = frequency

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        generated = input_ids[:, self.prompt_length :]
        counts = torch.zeros_like(scores).scatter_add_(
            1, generated, torch.ones_like(generated, dtype=scores.dtype)
        )
        penalties = counts * self.frequency + (counts > 0).to(scores.dtype) * self.presence
        return cast(torch.FloatTensor, scores - penalties)


def build_stopping_criteria(config: SamplingConfig, tokenizer: Any) -> StoppingCriteriaList:
    """The stopping criteria `generate()` would use (EOS aside: the loops check it); a
    `max_time` clock starts here."""
    criteria = StoppingCriteriaList()
    if config.max_time is not None:
        criteria.append(MaxTimeCriteria(config.max_time))
    if config.stop_strings:
        if tokenizer is None:
            raise GenerationError("stop_strings need a tokenizer")
        criteria.append(
            StopStringCriteria(tokenizer=tokenizer, stop_strings=list(config.stop_strings))
        )
    return _merged(criteria, config.stopping_criteria)


def time_limit(criteria: StoppingCriteriaList) -> float | None:
    """The `time.time()` after which `criteria` end the generation (their `MaxTimeCriteria`:
    `max_time`'s, or the caller's own), or None if time does not end it. JSON mode's scans
    of the vocabulary, which the criteria cannot interrupt, watch it."""
    limits = [
        criterion.initial_timestamp + criterion.max_time
        for criterion in criteria
        if isinstance(criterion, MaxTimeCriteria)
    ]
    return min(limits, default=None)


def _merged(built: _Listed, own: Sequence[Any]) -> _Listed:
    """`built` with the caller's `own` merged in as transformers merges them: one of a type
    already built takes its place, the others come after."""
    merged = type(built)()
    for entry in built:
        same = [item for item in own if type(item) is type(entry)]
        merged.append(same[0] if same else entry)
    merged.extend(item for item in own if all(item is not entry for entry in merged))
    return merged


def sampling_generator(config: SamplingConfig, device: torch.device) -> torch.Generator:
    """The sampling draws' own generator: seeded, it draws what `torch.manual_seed(seed)`
    then transformers' `generate()` would."""
    generator = torch.Generator(device=device)
    if config.seed is not None:
        generator.manual_seed(config.seed)
    return generator


def choose_tokens(
    scores: torch.Tensor, do_sample: bool, generator: torch.Generator
) -> torch.Tensor:
    """Per row of processed `scores`, the likeliest token, or one drawn as transformers draws."""
    if do_sample:
        probs = torch.nn.functional.softmax(scores, dim=-1)
        return torch.multinomial(probs, num_samples=1, generator=generator).squeeze(1)
    return torch.argmax(scores, dim=-1)
