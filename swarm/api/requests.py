"""The JSON bodies of `/v1/completions` and `/v1/chat/completions`, read and checked.

The fields mean what OpenAI's API says they mean. Those the swarm cannot honour (`suffix`)
are accepted only at their neutral value, and refused by name otherwise; a field the API
does not have is an error too, as OpenAI's API answers it. `temperature` 0 is greedy
decoding; above 0 the tokens are sampled with that temperature and `top_p` (no
top-k: OpenAI has none). The presence and frequency penalties apply to the tokens generated
(`swarm.sampling.PresenceFrequencyPenalty`); `logit_bias` (token id -> -100..100) is
added to those tokens' logits before anything else (transformers' `sequence_bias`). Log
probabilities: completions take `logprobs` N and `echo`, chat takes `logprobs` and
`top_logprobs` N. `response_format` `json_object` and `json_schema` are JSON mode
(`swarm.json_mode`): the answer is a JSON object, or a value of the schema (its subset that
`swarm.json_schema` supports; other keywords get a 400). Chat's `prediction` (predicted
outputs) has drafts copied from its text (`swarm.prompt_lookup`); the answer is the same. A
completion's `prompt` may list several prompts (texts or token ids): each gets `n` answers,
numbered prompt after prompt, as OpenAI numbers them. `best_of` (at least `n`, not streamed)
generates that many answers to each prompt and returns the `n` whose tokens have the highest
mean log probability (the model's own, before any processor), best first.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from ..json_schema import Node, SchemaError, compile_schema
from .errors import ApiError
from .tools import CALL_WHITESPACE, Tool, ToolCall, call_schema, read_tool_choice, read_tools

__all__ = ["ApiError", "ChatMessage", "CompletionRequest", "read_request"]

MAX_STOP_SEQUENCES = 4
MAX_CHOICES = 8  # `n`: answers to each prompt
MAX_ANSWERS = 32  # of one request (n times its prompts), generated side by side
MAX_LOGIT_BIAS = 300  # tokens a request may bias, as OpenAI's API allows
MAX_LOGPROBS = {"completion": 5, "chat": 20}  # the likeliest tokens given per place, at most
ROLES = ("system", "user", "assistant", "tool")
# fields accepted only at their neutral value (what the field means if absent)
NEUTRAL: dict[str, tuple[Any, ...]] = {
    "suffix": (None, ""),
}
IGNORED = ("user", "metadata", "store", "service_tier")
COMMON = ("model", "max_tokens", "temperature", "top_p", "seed", "stop", "stream",
          "stream_options", "presence_penalty", "frequency_penalty", "logit_bias", "n",
          "best_of", "response_format", *NEUTRAL, *IGNORED)  # fmt: skip
CHAT = ("messages", "max_completion_tokens", "logprobs", "top_logprobs", "tools", "tool_choice",
        "parallel_tool_calls", "prediction")  # fmt: skip
FIELDS = {
    "completion": (*COMMON, "prompt", "logprobs", "echo"),
    "chat": (*COMMON, *CHAT),
}


@dataclass(frozen=True)
class ChatMessage:
    role: str
    content: str
    tool_calls: tuple[ToolCall, ...] = ()  # an assistant's calls
    tool_call_id: str = ""  # a tool's answer: to which call


@dataclass(frozen=True)
class CompletionRequest:
    """One request, either kind: `prompts` (completions) or `messages` (chat)."""

    kind: str  # "completion" or "chat"
    model: str
    prompts: tuple[str | tuple[int, ...], ...] = ()  # each text, or token ids
    messages: tuple[ChatMessage, ...] = ()
    max_tokens: int | None = None  # None: the server's default for the kind
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: tuple[tuple[int, float], ...] = ()  # (token id, bias) pairs
    stop: tuple[str, ...] = ()
    stream: bool = False
    include_usage: bool = False  # in a last chunk of the stream
    logprobs: int | None = None  # asked: with this many likeliest tokens per place
    echo: bool = False  # the prompt comes first in the text (and its log probabilities)
    n: int = 1  # answers to each prompt, each generated on its own (the i-th with seed + i)
    best_of: int = 1  # answers generated to each prompt, of which the `n` likeliest return
    json_object: bool = False  # JSON mode: the answer is one JSON object
    json_schema: Node | None = None  # JSON mode: the answer is a value of this schema
    tools: tuple[Tool, ...] = ()  # functions the model may call (chat)
    tool_choice: str = "none"  # "none", "auto", "required" or "function" (one by name)
    prediction: str = ""  # text the answer is expected to resemble: drafts are copied from it
    must_call: tuple[Tool, ...] = ()  # the answer calls one of these (JSON mode)
    parallel_calls: bool = True  # an answer may make several calls (parallel_tool_calls)

    @property
    def candidates(self) -> int:
        """Answers generated to each prompt."""
        return max(self.n, self.best_of)

    def generate_options(self, max_tokens: int, choice: int = 0) -> dict[str, Any]:
        """`generate()`'s arguments for this request's answer number `choice`."""
        options: dict[str, Any] = {
            "max_new_tokens": max_tokens,
            "do_sample": self.temperature > 0,
            "top_k": 0,
            "top_p": self.top_p,
            "repetition_penalty": 1.0,
            "seed": None if self.seed is None else self.seed + choice,
            "presence_penalty": self.presence_penalty,
            "frequency_penalty": self.frequency_penalty,
        }
        if self.temperature > 0:
            options["temperature"] = self.temperature
        if self.stop:
            options["stop_strings"] = list(self.stop)
        if self.logit_bias:
            options["sequence_bias"] = {(token,): bias for token, bias in self.logit_bias}
        if self.logprobs is not None or self.best_of > self.n:  # scores to choose by
            options["logprobs"] = self.logprobs or 0
        if self.json_object:
            options["json_object"] = True
        if self.json_schema is not None:
            options["json_schema"] = self.json_schema
        if self.must_call:
            options["json_schema"] = call_schema(self.must_call, self.parallel_calls)
            options["json_whitespace"] = CALL_WHITESPACE
        return options


def read_request(kind: str, body: bytes) -> CompletionRequest:
    """The request of `kind` ("completion" or "chat") in `body`, or `ApiError` (400)."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError) as error:
        raise ApiError(400, f"the body is not JSON: {error}") from None
    if not isinstance(data, dict):
        raise ApiError(400, "the body must be a JSON object")
    for name in data:
        if name not in FIELDS[kind]:
            raise ApiError(400, f"unrecognized request argument: {name}", name)
    for name, neutral in NEUTRAL.items():
        if name in data and data[name] not in neutral:
            raise ApiError(400, f"{name}={data[name]!r}"[:100] + " is not supported here", name)
    model = _field(data, "model", str)
    if not model:
        raise ApiError(400, "model is required", "model")
    fields: dict[str, Any] = {"kind": kind, "model": model}
    if kind == "chat":
        fields["messages"] = _messages(data.get("messages"))
        tokens = _field(data, "max_completion_tokens", int)
        fields["max_tokens"] = _field(data, "max_tokens", int) if tokens is None else tokens
    else:
        fields["prompts"] = _prompts(data.get("prompt"))
        fields["max_tokens"] = _field(data, "max_tokens", int)
    fields["stream"] = bool(_field(data, "stream", bool))
    fields["logprobs"] = _logprobs(kind, data)
    fields["echo"] = bool(_field(data, "echo", bool))
    n = _field(data, "n", int)
    fields["n"] = 1 if n is None else n
    if not 1 <= fields["n"] <= MAX_CHOICES:
        raise ApiError(400, f"n must be within 1..{MAX_CHOICES}", "n")
    best_of = _field(data, "best_of", int)
    fields["best_of"] = fields["n"] if best_of is None else best_of
    if not fields["n"] <= fields["best_of"] <= MAX_CHOICES:
        raise ApiError(400, f"best_of must be within n..{MAX_CHOICES}", "best_of")
    if fields["best_of"] > fields["n"] and fields["stream"]:
        raise ApiError(400, "best_of answers cannot be streamed", "best_of")
    if len(fields.get("prompts", ())) * fields["best_of"] > MAX_ANSWERS:
        raise ApiError(400, f"n or best_of times the prompts may be at most {MAX_ANSWERS}", "n")
    least = 0 if fields["echo"] else 1
    if fields["max_tokens"] is not None and fields["max_tokens"] < least:
        raise ApiError(400, f"max_tokens must be at least {least}", "max_tokens")
    temperature = _number(data, "temperature", 0.0, 2.0)
    top_p = _number(data, "top_p", 0.0, 1.0)
    if top_p is not None and top_p == 0:
        raise ApiError(400, "top_p must be above 0", "top_p")
    for penalty in ("presence_penalty", "frequency_penalty"):
        fields[penalty] = _number(data, penalty, -2.0, 2.0) or 0.0
    fields["logit_bias"] = _logit_bias(_field(data, "logit_bias", dict) or {})
    fields["temperature"] = 1.0 if temperature is None else temperature
    fields["top_p"] = 1.0 if top_p is None else top_p
    fields["seed"] = _field(data, "seed", int)
    if fields["seed"] is not None and not -(2**63) <= fields["seed"] < 2**63:
        raise ApiError(400, "seed must be a 64-bit integer", "seed")
    fields["stop"] = _stop(data.get("stop"))
    options = _field(data, "stream_options", dict) or {}
    fields["include_usage"] = options.get("include_usage") is True
    response_format = _field(data, "response_format", dict) or {"type": "text"}
    fields["json_object"] = response_format.get("type") == "json_object"
    fields["json_schema"] = _json_schema(response_format)
    if kind == "chat":
        fields["tools"] = read_tools(data.get("tools"))
        fields["tool_choice"], fields["must_call"] = read_tool_choice(
            data.get("tool_choice"), fields["tools"]
        )
        fields["parallel_calls"] = _field(data, "parallel_tool_calls", bool) is not False
        _check_tools(fields)
        fields["prediction"] = _prediction(data.get("prediction"), fields)
    return CompletionRequest(**fields)


def _check_tools(fields: dict[str, Any]) -> None:
    """What tool calls do not go with."""
    if fields["tool_choice"] == "none":
        return
    if fields["logprobs"] is not None:
        raise ApiError(400, "logprobs with tools are not supported here", "logprobs")
    if fields["must_call"] and (fields["json_object"] or fields["json_schema"] is not None):
        choice = fields["tool_choice"]
        raise ApiError(400, f"a tool call is its own JSON: tool_choice {choice} takes no "
                       "response_format", "response_format")  # fmt: skip


def _prediction(value: Any, fields: dict[str, Any]) -> str:
    """`prediction` (OpenAI's predicted outputs): `{"type": "content", "content": text}`."""
    if value is None:
        return ""
    if not isinstance(value, dict) or value.get("type") != "content":
        raise ApiError(400, 'prediction must be {"type": "content", "content": ...}', "prediction")
    if fields["json_object"] or fields["json_schema"] is not None or fields["must_call"]:
        raise ApiError(400, "a prediction drafts free text, not JSON mode or a required tool "
                       "call", "prediction")  # fmt: skip
    return _content(value.get("content"), "prediction")


def _json_schema(response_format: dict[str, Any]) -> Node | None:
    """The schema `response_format` asks the answer to keep to (`json_schema`), or None."""
    kind = response_format.get("type")
    if kind not in ("text", "json_object", "json_schema"):
        raise ApiError(400, f"response_format {kind!r} is not supported here: text, "
                       "json_object and json_schema are", "response_format")  # fmt: skip
    if kind != "json_schema":
        return None
    spec = response_format.get("json_schema")
    if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
        raise ApiError(400, "response_format json_schema needs a json_schema object with a "
                       "name", "response_format")  # fmt: skip
    try:
        return compile_schema(spec.get("schema", True))
    except SchemaError as error:
        raise ApiError(400, f"response_format json_schema: {error}", "response_format") from None


def _logprobs(kind: str, data: dict[str, Any]) -> int | None:
    """How many likeliest tokens per place the request asks for (None: no log probabilities):
    completions say it in `logprobs`, chat in `top_logprobs` once `logprobs` is true."""
    if kind == "chat":
        asked, name = _field(data, "logprobs", bool), "top_logprobs"
        top: int | None = _field(data, name, int)
        if top is not None and not asked:
            raise ApiError(400, "top_logprobs needs logprobs: true", name)
        top = (top or 0) if asked else None
    else:
        name = "logprobs"
        top = _field(data, name, int)
    if top is not None and not 0 <= top <= MAX_LOGPROBS[kind]:
        raise ApiError(400, f"{name} must be within 0..{MAX_LOGPROBS[kind]}", name)
    return top


def _field(data: dict[str, Any], name: str, kind: type) -> Any:
    value = data.get(name)
    if value is None:
        return None
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ApiError(400, f"{name} must be {kind.__name__}, not {value!r}"[:200], name)
    return value


def _number(data: dict[str, Any], name: str, low: float, high: float) -> float | None:
    value = data.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ApiError(400, f"{name} must be a number", name)
    if not low <= value <= high:
        raise ApiError(400, f"{name} must be within {low}..{high}", name)
    return float(value)


def _logit_bias(value: dict[str, Any]) -> tuple[tuple[int, float], ...]:
    """`logit_bias`: token ids (as JSON keys, strings) to biases within -100..100."""
    if len(value) > MAX_LOGIT_BIAS:
        raise ApiError(400, f"logit_bias may bias at most {MAX_LOGIT_BIAS} tokens", "logit_bias")
    biases = []
    for key, bias in value.items():
        if not key.isascii() or not key.isdigit():
            raise ApiError(400, f"logit_bias keys must be token ids, not {key!r}"[:200],
                           "logit_bias")  # fmt: skip
        if isinstance(bias, bool) or not isinstance(bias, int | float) or not -100 <= bias <= 100:
            raise ApiError(400, "logit_bias values must be numbers within -100..100",
                           "logit_bias")  # fmt: skip
        biases.append((int(key), float(bias)))
    return tuple(biases)


def _prompts(value: Any) -> tuple[str | tuple[int, ...], ...]:
    """A string or token ids, or a list of several of either."""
    several = isinstance(value, list) and bool(value) and isinstance(value[0], str | list)
    prompts = [_prompt(prompt) for prompt in value] if several else [_prompt(value)]
    if len(prompts) > MAX_ANSWERS:
        raise ApiError(400, f"at most {MAX_ANSWERS} prompts in one request", "prompt")
    return tuple(prompts)


def _prompt(value: Any) -> str | tuple[int, ...]:
    if isinstance(value, str) and value:
        return value
    if (
        isinstance(value, list)
        and value
        and all(type(token) is int and token >= 0 for token in value)
    ):
        return tuple(value)
    raise ApiError(
        400, "prompt must be a non-empty string or list of token ids, or a list of them", "prompt"
    )


def _stop(value: Any) -> tuple[str, ...]:
    stops = [value] if isinstance(value, str) else value
    if stops is None:
        return ()
    if (
        not isinstance(stops, list)
        or len(stops) > MAX_STOP_SEQUENCES
        or not all(isinstance(s, str) and s for s in stops)
    ):
        raise ApiError(400, f"stop must be a string or up to {MAX_STOP_SEQUENCES} strings", "stop")
    return tuple(stops)


def _messages(value: Any) -> tuple[ChatMessage, ...]:
    if not isinstance(value, list) or not value:
        raise ApiError(400, "messages must be a non-empty list", "messages")
    messages = []
    for index, message in enumerate(value):
        where = f"messages[{index}]"
        if not isinstance(message, dict) or message.get("role") not in ROLES:
            raise ApiError(400, f"{where} must have a role among {', '.join(ROLES)}", where)
        role, content = message["role"], message.get("content")
        calls = _tool_calls(message.get("tool_calls"), where) if role == "assistant" else ()
        text = "" if content is None and calls else _content(content, where)
        answered = message.get("tool_call_id", "")
        if role == "tool" and (not isinstance(answered, str) or not answered):
            raise ApiError(400, f"{where}: a tool message needs its tool_call_id", where)
        messages.append(ChatMessage(role, text, calls, answered if role == "tool" else ""))
    return tuple(messages)


def _tool_calls(value: Any, where: str) -> tuple[ToolCall, ...]:
    """An assistant message's earlier calls: `[{"id", "type": "function", "function":
    {"name", "arguments": JSON text of an object}}]`."""
    if value is None:
        return ()
    malformed = ApiError(400, f"{where}.tool_calls: each is a function with a name and its "
                         "arguments as the JSON text of an object", where)  # fmt: skip
    if not isinstance(value, list):
        raise malformed
    calls = []
    for call in value:
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict):
            raise malformed
        name, arguments = function.get("name"), function.get("arguments")
        if not isinstance(name, str) or not isinstance(arguments, str):
            raise malformed
        try:
            if not isinstance(json.loads(arguments), dict):
                raise malformed
        except ValueError:
            raise malformed from None
        calls.append(ToolCall(name, arguments, str(call.get("id") or "")))
    return tuple(calls)


def _content(value: Any, where: str) -> str:
    """A message's text: a string, or a list of text parts."""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(
        isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)
        for part in value
    ):
        return "".join(part["text"] for part in value)
    raise ApiError(400, f"{where}.content must be text (images and the like are not served)", where)
