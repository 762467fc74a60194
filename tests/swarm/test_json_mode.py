"""JSON mode. The prefix checker against Python's own JSON parser; the token choice against
a scan of the whole vocabulary (greedy), and a count of seeded draws (sampling); generation
that stops where the object closes; and through the swarm and `swarm api`, the tokens of a
greedy loop over transformers' logits that keeps, at each step, the likeliest token whose
text still begins a JSON object."""

from __future__ import annotations

import json
import math
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import openai
import pytest
import torch
import trio
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import AutoModelForCausalLM, AutoTokenizer

from swarm import DistributedModelForCausalLM, json_mode
from swarm.cli import main
from swarm.errors import GenerationError
from swarm.generation import GenerationState, generate_batch, generate_tokens
from swarm.json_mode import JsonConstraint
from swarm.json_prefix import MAX_BLANK, JsonPrefix
from swarm.json_schema import ANY_OBJECT, Node, compile_schema
from swarm.sampling import SamplingConfig
from tests.support.thread_swarm import ThreadSwarm
from tests.support.tiny_model import write_tiny_model

from .test_api import api, call
from .test_json_schema import PET
from .test_model import _swarm_and_model

MODEL = "tiny-api"  # the name `api()` serves under

COUNTS = {  # dict[Literal["cats", "dogs"], conint(ge=0, le=9)], dict[constr(max_length=3), bool]
    "type": "object",
    "properties": {
        "counts": {"propertyNames": {"enum": ["cats", "dogs"]},
                   "additionalProperties": {"type": "integer", "minimum": 0, "maximum": 9}},
        "flags": {"propertyNames": {"maxLength": 3}, "additionalProperties": {"type": "boolean"},
                  "maxProperties": 2},
    },
    "required": ["counts", "flags"],
    "additionalProperties": False,
}  # fmt: skip


def parses_as_object(text: str) -> bool:
    """Python's verdict: one JSON object (NaN and Infinity, which it allows, are not JSON)."""

    def refuse(constant: str) -> Any:
        raise ValueError(constant)

    try:
        return isinstance(json.loads(text, parse_constant=refuse), dict)
    except ValueError:
        return False


def complete(text: str, schema: Node = ANY_OBJECT, max_blank: int = MAX_BLANK) -> bool:
    state = JsonPrefix.start(schema, max_blank).feed(text)
    return state is not None and state.complete


numbers = st.integers() | st.floats(allow_nan=False, allow_infinity=False)
leaves = st.none() | st.booleans() | numbers | st.text()


def containers(inner: Any) -> Any:
    return st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4)


values = st.recursive(leaves, containers)
layouts = st.sampled_from([{}, {"indent": 1}, {"separators": (",", ":")}, {"ensure_ascii": False}])


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.text(), values, max_size=4), layouts)
def test_every_prefix_of_a_json_object_begins_one(document: dict[str, Any], layout: Any) -> None:
    text = json.dumps(document, **layout) + "\n"
    state: JsonPrefix | None = JsonPrefix.start()
    for position, char in enumerate(text):
        assert state is not None and not (state.complete and char not in " \n")
        state = state.feed(char)
        assert state is not None, text[: position + 1]
    assert state is not None and state.complete


@settings(max_examples=2000, deadline=None)
@given(st.text(alphabet='{}[]":,. -+0123456789eEtrufalsn\\\t\n\u00e9\x01', max_size=24))
def test_the_checker_agrees_with_pythons_parser(text: str) -> None:
    """Complete exactly when Python parses an object that the text begins with (no
    whitespace first); a text refused part way never parses."""
    assert complete(text) == (parses_as_object(text) and text.startswith("{"))
    if JsonPrefix.start().feed(text) is None:
        assert not parses_as_object(text) or not text.startswith("{")


def test_what_begins_no_json_object() -> None:
    for text in ['[1]', '"a"', '{"a" 1', '{"a": 01', '{"a": 1.}', '{"a":1,}', '{"a": tru}',
                 '{"a": "\x01', '{}x', '{"a": [}', '{"\\x"', ' {}']:  # fmt: skip
        assert JsonPrefix.start().feed(text) is None, text
    blank = "{" + " " * MAX_BLANK  # whitespace runs are bounded, outside strings only
    start = JsonPrefix.start()
    assert start.feed(blank) is not None and start.feed(blank + " ") is None
    assert start.feed('{"' + " " * 100) is not None


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_model(tmp_path_factory.mktemp("json") / MODEL, seed=6)


@pytest.fixture(scope="module")
def tokenizer(tiny: Path) -> Any:
    return AutoTokenizer.from_pretrained(tiny)


def fitting(
    tokenizer: Any,
    tokens: list[int],
    eos: int,
    *,
    closed: bool = False,
    schema: Node = ANY_OBJECT,
    max_blank: int = MAX_BLANK,
) -> list[int]:
    """Every token that keeps the decode of `tokens` the beginning of a value of `schema`
    (a JSON object), found by decoding each after them (EOS: only once it is `closed`)."""
    found = []
    for token in range(len(tokenizer)):
        if token == eos:
            if closed:
                found.append(token)
            continue
        text = tokenizer.decode([*tokens, token])
        if token not in tokenizer.all_special_ids and JsonPrefix.start(schema, max_blank).feed(
            text
        ):
            found.append(token)
    return found


def following(tokenizer: Any, text: str) -> tuple[JsonConstraint, list[int]]:
    """A constraint that has taken the tokens of `text`, and those tokens."""
    prefix = tokenizer(text, add_special_tokens=False)["input_ids"]
    constraint = JsonConstraint(tokenizer, [tokenizer.eos_token_id])
    for token in prefix:
        constraint.take(token)
    return constraint, prefix


def test_a_dead_end_is_told_with_where_it_is(tokenizer: Any) -> None:
    """A schema that leaves no way on (a pattern whose strings need more characters than
    `maxLength` leaves, further on than the checker looks): the error says so, with the
    text it stopped after."""
    schema = compile_schema({"type": "string", "maxLength": 40, "pattern": "^a*b{30}$"})
    constraint = JsonConstraint(tokenizer, [tokenizer.eos_token_id], schema)
    for token in tokenizer('"' + "a" * 12, add_special_tokens=False)["input_ids"]:
        constraint.take(token)  # 12 + 30 characters: no way to end within 40
    scores = torch.zeros(1, len(tokenizer))
    with pytest.raises(GenerationError, match=r"continues the JSON after \.\.\.'\"?a+b*'"):
        for _ in range(40):
            constraint.take(constraint.choose(scores, scores, lambda s: int(s.argmax())))


def test_greedy_takes_the_likeliest_token_that_fits(tokenizer: Any) -> None:
    constraint, prefix = following(tokenizer, '{"name": "Ada", "tags": [')
    allowed = fitting(tokenizer, prefix, tokenizer.eos_token_id)
    breaking = [token for token in range(len(tokenizer)) if token not in allowed]
    for seed in range(5):
        scores = torch.randn(1, len(tokenizer), generator=torch.Generator().manual_seed(seed))
        scores[0, breaking[seed]] = 10.0  # the likeliest breaks the JSON
        expected = max(allowed, key=lambda token: float(scores[0, token]))
        assert constraint.choose(scores, scores, lambda s: int(s.argmax())) == expected


def test_sampling_draws_from_the_fitting_tokens_renormalised(tokenizer: Any) -> None:
    constraint, prefix = following(tokenizer, '{"a": 1')
    scores = torch.full((1, len(tokenizer)), -math.inf)
    candidates = tokenizer(["}", ",", "x", "2", "]", ":"], add_special_tokens=False)["input_ids"]
    for (token,), score in zip(candidates, [0.0, 1.0, 3.0, -0.5, 2.0, 1.5], strict=True):
        scores[0, token] = score
    fit = fitting(tokenizer, prefix, tokenizer.eos_token_id)
    allowed = [token for (token,) in candidates if token in fit]
    assert len(allowed) == 3  # "}", "," and "2"
    weights = torch.softmax(scores[0, allowed], dim=0)
    generator = torch.Generator().manual_seed(0)

    def draw(s: torch.Tensor) -> int:
        return int(torch.multinomial(torch.softmax(s, dim=-1), 1, generator=generator))

    counts = Counter(constraint.choose(scores, scores, draw) for _ in range(4000))
    assert set(counts) == set(allowed)
    for token, weight in zip(allowed, weights.tolist(), strict=True):
        assert abs(counts[token] / 4000 - weight) < 0.03


class ScriptedHead:
    """A head whose logits rank, at each step, a token that JSON never holds first (10) and
    the target's next token second (5)."""

    def __init__(self, target: list[int], breaking: int, vocabulary: int) -> None:
        self.target, self.breaking, self.vocabulary = target, breaking, vocabulary
        self.steps = 0

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        return torch.zeros(1, input_ids.shape[1], 4)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        logits = torch.zeros(1, hidden.shape[1], self.vocabulary)
        logits[0, -1, self.breaking] = 10.0
        if self.steps < len(self.target):
            logits[0, -1, self.target[self.steps]] = 5.0
        self.steps += 1
        return logits


class NoPipeline:
    async def step(self, hidden: torch.Tensor) -> torch.Tensor:
        return hidden


async def test_generation_keeps_to_json_and_stops_where_the_object_closes(tokenizer: Any) -> None:
    text = '{"a": [1, true], "b": "é"}'
    target = tokenizer(text, add_special_tokens=False)["input_ids"]
    breaking = tokenizer("\x01", add_special_tokens=False)["input_ids"][0]  # nowhere in JSON
    head = ScriptedHead(target, breaking, len(tokenizer))
    config = SamplingConfig(max_new_tokens=60, json_object=True,
                            eos_token_ids=(tokenizer.eos_token_id,))  # fmt: skip
    state = GenerationState(input_ids=torch.tensor([[5]]))
    tokens = [t async for t in generate_tokens(head, NoPipeline(), state, config, tokenizer)]
    assert tokens == target and tokenizer.decode(tokens) == text
    with pytest.raises(GenerationError, match="tokenizer"):
        async for _ in generate_tokens(head, NoPipeline(), state, config):
            pass


async def scripted(
    tokenizer: Any, target: list[int], config: SamplingConfig, batch: bool = False
) -> list[int]:
    """The tokens a generation takes from a `ScriptedHead` that ranks `target` second after
    a token that breaks JSON, through `generate_tokens` or (`batch`) `generate_batch`."""
    breaking = tokenizer("\x01", add_special_tokens=False)["input_ids"][0]
    head = ScriptedHead(target, breaking, len(tokenizer))
    prompt = torch.tensor([[5]])
    if batch:
        output = await generate_batch(head, NoPipeline(), prompt, config, tokenizer=tokenizer)
        return list(output[0, 1:].tolist())
    state = GenerationState(input_ids=prompt)
    return [t async for t in generate_tokens(head, NoPipeline(), state, config, tokenizer)]


def banning(how: str, token: int) -> dict[str, Any]:
    """`generate()`'s options that ban `token`, `how`."""
    if how == "suppress_tokens":
        return {"suppress_tokens": (token,)}
    if how == "bad_words_ids":
        return {"bad_words_ids": ((token,),)}

    def ban(input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        return scores.index_fill(1, torch.tensor([token]), -math.inf)

    return {"logits_processor": (ban,)}


@pytest.mark.parametrize("how", ["suppress_tokens", "bad_words_ids", "logits_processor"])
async def test_the_last_resort_never_takes_a_banned_token(tokenizer: Any, how: str) -> None:
    """top_k=1 keeps only the token that breaks JSON, so each token is the last resort's:
    the likeliest that fits by the scores after the bans (ties: the first). The quote that
    the target's key needs next is the likeliest that fits by the raw logits, but banned: it
    never comes, and the object closes at once."""
    text = '{"a": 1}'
    target = tokenizer(text, add_special_tokens=False)["input_ids"]
    quote, eos = target[1], tokenizer.eos_token_id
    config = SamplingConfig(max_new_tokens=20, do_sample=True, top_k=1, seed=0, json_object=True,
                            eos_token_ids=(eos,), **banning(how, quote))  # fmt: skip
    expected: list[int] = []  # each step: the likeliest fitting token, the banned one aside
    while not expected or not complete(tokenizer.decode(expected)):
        logits = [5.0 if token == target[len(expected)] else 0.0 for token in range(len(tokenizer))]
        allowed = [t for t in fitting(tokenizer, expected, eos) if t != quote]
        expected.append(max(allowed, key=lambda token: logits[token]))
    tokens = await scripted(tokenizer, target, config)
    assert tokens == expected and quote not in tokens
    assert tokenizer.decode(tokens) == "{}"


async def test_the_last_resort_keeps_eos_back_until_min_new_tokens(tokenizer: Any) -> None:
    """A whole integer after its first digit, and EOS the likeliest that fits by the raw
    logits; but `min_new_tokens` bans it for the first 3 tokens, and the last resort too
    keeps to that."""
    eos, integer = tokenizer.eos_token_id, compile_schema({"type": "integer"})
    config = SamplingConfig(max_new_tokens=10, do_sample=True, top_k=1, min_new_tokens=3,
                            json_schema=integer, eos_token_ids=(eos,))  # fmt: skip
    (seven,) = tokenizer("7", add_special_tokens=False)["input_ids"]
    tokens = await scripted(tokenizer, [seven, eos], config)
    assert tokens[0] == seven and eos not in tokens[:3] and tokens[-1] == eos
    assert JsonPrefix.start(integer).feed(tokenizer.decode(tokens[:-1])) is not None


async def test_no_token_the_bans_allow_fits_is_an_error(tokenizer: Any) -> None:
    """Only "{" begins an object in this vocabulary; banned, nothing may come."""
    eos = tokenizer.eos_token_id
    (brace,) = fitting(tokenizer, [], eos)
    config = SamplingConfig(max_new_tokens=10, do_sample=True, top_k=1, json_object=True,
                            eos_token_ids=(eos,), begin_suppress_tokens=(brace,))  # fmt: skip
    with pytest.raises(GenerationError, match=r"logits processors allow .* continues the JSON"):
        await scripted(tokenizer, [brace], config)
    ruled = torch.zeros(1, len(tokenizer))
    ruled[0, brace] = -math.inf  # straight to `choose`, greedy: no warpers, the same scores
    constraint = JsonConstraint(tokenizer, [eos])
    with pytest.raises(GenerationError, match="banned every way on"):
        constraint.choose(ruled, ruled, lambda s: int(s.argmax()))


@pytest.mark.parametrize("batch", [False, True])
@pytest.mark.parametrize("do_sample", [False, True])  # greedy: the scan of the kept tokens
async def test_a_slow_scan_ends_the_generation_at_max_time(
    tokenizer: Any, monkeypatch: pytest.MonkeyPatch, do_sample: bool, batch: bool
) -> None:
    """After the target's first 3 tokens, `fits` turns slow (10 ms a token) and finds none:
    each scan of the vocabulary would take over 3 s, then fail. With `max_time`, the scan
    (greedy: after 32 draws, 0.32 s) gives up soon after the time has passed, and the
    generation returns what it had."""
    fits = JsonConstraint.fits

    def slow(self: JsonConstraint, token: int) -> JsonPrefix | None:
        if len(self.texts.tokens) < 3:
            return fits(self, token)
        time.sleep(0.01)
        return None

    monkeypatch.setattr(JsonConstraint, "fits", slow)
    monkeypatch.setattr(json_mode, "CLOCK_EVERY", 16)  # so few tokens: read the clock often
    target = tokenizer('{"a": 1}', add_special_tokens=False)["input_ids"]
    config = SamplingConfig(max_new_tokens=20, do_sample=do_sample, top_k=1, seed=0,
                            json_object=True, eos_token_ids=(tokenizer.eos_token_id,),
                            max_time=0.5)  # fmt: skip
    started = time.monotonic()
    tokens = await scripted(tokenizer, target, config, batch)
    assert time.monotonic() - started < 2.0  # 0.5 s, then at most 16 tokens' checks
    assert tokens == target[:3]


@pytest.fixture(scope="module")
def swarm(tiny: Path) -> Iterator[tuple[ThreadSwarm, DistributedModelForCausalLM]]:
    with _swarm_and_model(tiny, [(0, 2), (2, 4)]) as pair:
        yield pair


def chat_prompt(tokenizer: Any, messages: list[dict[str, Any]]) -> torch.Tensor:
    """The prompt's tokens, as the chat template renders the messages for an answer."""
    return tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )["input_ids"]


def reference(
    tiny: Path,
    tokenizer: Any,
    prompt: torch.Tensor,
    count: int,
    schema: Node = ANY_OBJECT,
    max_blank: int = MAX_BLANK,
) -> list[int]:
    """Greedy over transformers' logits, each step's likeliest token that fits `schema` (a
    scan of the whole vocabulary), ending where the value closes."""
    model = AutoModelForCausalLM.from_pretrained(tiny)
    eos = tokenizer.eos_token_id
    tokens: list[int] = []
    for _ in range(count):
        with torch.no_grad():
            logits = model(torch.cat([prompt, torch.tensor([tokens], dtype=torch.long)], 1)).logits
        closed = complete(tokenizer.decode(tokens), schema, max_blank) if tokens else False
        allowed = fitting(tokenizer, tokens, eos, closed=closed, schema=schema, max_blank=max_blank)
        tokens.append(max(allowed, key=lambda token: float(logits[0, -1, token])))
        if complete(tokenizer.decode(tokens), schema, max_blank):
            break
    return tokens


def test_json_mode_through_the_swarm_is_the_reference(
    tiny: Path, tokenizer: Any, swarm: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    prompt = tokenizer("Answer in JSON:", return_tensors="pt")["input_ids"]
    expected = reference(tiny, tokenizer, prompt, 40)
    output = swarm[1].generate(prompt, max_new_tokens=40, json_object=True, tokenizer=tokenizer)
    assert output[0, prompt.shape[1] :].tolist() == expected
    command = ["generate", str(tiny), "Answer in JSON:", "--initial-peers", swarm[0].bootstrap]
    assert main([*command, "--json", "--max-new-tokens", "40"]) == 0
    assert capsys.readouterr().out == tokenizer.decode(expected, skip_special_tokens=True) + "\n"
    with pytest.raises(GenerationError, match="JSON mode takes sequences, not beams"):
        swarm[1].generate(prompt, num_beams=2, json_object=True, tokenizer=tokenizer)


def test_json_mode_in_a_batch_is_each_prompt_alone(tiny: Path, swarm: Any) -> None:
    """Left-padded prompts of different lengths: each row's tokens are its prompt's alone
    (checked above against the reference), a row whose object closed padded after it."""
    tokenizer = AutoTokenizer.from_pretrained(tiny, padding_side="left")
    prompts = ["Answer in JSON:", "A cat, as JSON"]
    json = {"json_object": True, "json_whitespace": 1}  # objects close sooner on one line
    model = swarm[1]
    alone = []
    for prompt in prompts:
        ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
        output = model.generate(ids, max_new_tokens=60, tokenizer=tokenizer, **json)
        alone.append(output[0, ids.shape[1] :].tolist())
    batch = tokenizer(prompts, padding=True, return_tensors="pt")
    output = model.generate(**batch, max_new_tokens=60, tokenizer=tokenizer, **json)
    width = batch["input_ids"].shape[1]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    for row, tokens in enumerate(alone):
        made = output[row, width:].tolist()
        assert made == tokens + [pad] * (len(made) - len(tokens)), prompts[row]
    assert any(complete(tokenizer.decode(tokens), max_blank=1) for tokens in alone)  # closed early


async def test_the_api_takes_response_format_json_object(
    tiny: Path, tokenizer: Any, swarm: Any
) -> None:
    messages = [{"role": "user", "content": "Answer in JSON."}]
    prompt = chat_prompt(tokenizer, messages)
    expected = await trio.to_thread.run_sync(reference, tiny, tokenizer, prompt, 24)
    async with api(tiny, swarm[1]) as client:
        options = {"model": MODEL, "messages": messages, "max_tokens": 24, "temperature": 0}
        answer = await call(client.chat.completions.create, **options,
                            response_format={"type": "json_object"})  # fmt: skip
    content = answer.choices[0].message.content
    assert content == tokenizer.decode(expected, skip_special_tokens=True)
    assert JsonPrefix.start().feed(content) is not None


def test_a_schema_of_dictionaries_through_the_swarm_is_the_reference(
    tiny: Path, tokenizer: Any, swarm: Any
) -> None:
    """Pydantic's dictionaries with `Literal` keys and with keys of at most 3 characters:
    the reference's tokens, and a value the validator accepts (on lines of their own: this
    random model writes blank lines as long as it may)."""
    prompt = tokenizer("Answer in JSON:", return_tensors="pt")["input_ids"]
    expected = reference(tiny, tokenizer, prompt, 150, compile_schema(COUNTS), max_blank=1)
    text = tokenizer.decode(expected, skip_special_tokens=True)
    jsonschema.validate(json.loads(text), COUNTS)
    output = swarm[1].generate(prompt, max_new_tokens=150, json_schema=COUNTS, json_whitespace=1,
                               tokenizer=tokenizer)  # fmt: skip
    assert output[0, prompt.shape[1] :].tolist() == expected


def test_a_json_schema_through_the_swarm_is_the_reference(
    tiny: Path, tokenizer: Any, swarm: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """From Python and from `swarm generate --json-schema`: the reference's tokens, here
    keeping to the schema, and a value the validator accepts."""
    prompt = tokenizer("Answer in JSON:", return_tensors="pt")["input_ids"]
    expected = reference(tiny, tokenizer, prompt, 150, compile_schema(PET))
    text = tokenizer.decode(expected, skip_special_tokens=True)
    assert json.loads(text).keys() == {"kind", "legs"}  # both, whitespace aside
    jsonschema.validate(json.loads(text), PET)
    output = swarm[1].generate(prompt, max_new_tokens=150, json_schema=PET, tokenizer=tokenizer)
    assert output[0, prompt.shape[1] :].tolist() == expected
    (tmp_path / "pet.json").write_text(json.dumps(PET))
    command = ["generate", str(tiny), "Answer in JSON:", "--initial-peers", swarm[0].bootstrap]
    assert main([*command, "--json-schema", str(tmp_path / "pet.json"), "--max-new-tokens",
                 "150"]) == 0  # fmt: skip
    assert capsys.readouterr().out == text + "\n"
    (tmp_path / "bad.json").write_text('{"type": "integer", "not": {"const": 3}}')
    assert main([*command, "--json-schema", str(tmp_path / "bad.json")]) == 1
    assert "SchemaError: #: the keyword 'not' is not supported" in capsys.readouterr().err


async def test_the_api_takes_response_format_json_schema(
    tiny: Path, tokenizer: Any, swarm: Any
) -> None:
    messages = [{"role": "user", "content": "Describe a pet."}]
    expected = await trio.to_thread.run_sync(
        reference, tiny, tokenizer, chat_prompt(tokenizer, messages), 80, compile_schema(PET)
    )
    wanted = {"type": "json_schema", "json_schema": {"name": "pet", "schema": PET}}
    async with api(tiny, swarm[1]) as client:
        options = {"model": MODEL, "messages": messages, "max_tokens": 80, "temperature": 0}
        answer = await call(client.chat.completions.create, **options, response_format=wanted)
        refused = {"name": "x", "schema": {"type": "integer", "not": {"const": 3}}}
        with pytest.raises(openai.BadRequestError, match="keyword 'not' is not supported"):
            await call(client.chat.completions.create, **options,
                       response_format={"type": "json_schema", "json_schema": refused})  # fmt: skip
    content = answer.choices[0].message.content
    assert content == tokenizer.decode(expected, skip_special_tokens=True)
    jsonschema.validate(json.loads(content), PET)
    assert answer.choices[0].finish_reason == "stop"
