"""Tool calling in `swarm api`: the tools offered, the calls found in answers, the history
with calls and their results; through the server (OpenAI's client), a call that
`tool_choice` asks for equals a greedy loop over transformers' logits that keeps to the
call's JSON schema, whole and streamed, and its arguments pass the reference validator."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import openai
import pytest
import trio
from transformers import AutoTokenizer

from swarm import DistributedModelForCausalLM
from swarm.api.errors import ApiError
from swarm.api.requests import ChatMessage, read_request
from swarm.api.tools import (
    CALL_WHITESPACE,
    JSON_CHECKED,
    ToolCall,
    call_schema,
    chat_messages,
    find_calls,
    may_be_calls,
    read_tools,
)
from swarm.json_prefix import JsonPrefix
from tests.support.thread_swarm import ThreadSwarm
from tests.support.tiny_model import write_tiny_model

from .test_api import api, call
from .test_json_mode import MODEL, chat_prompt, reference
from .test_model import _swarm_and_model

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city, for some days.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"enum": ["Paris", "Rome"]}, "days": {"type": "integer"}},
            "required": ["city", "days"],
            "additionalProperties": False,
        },
    },
}
TIME = {"type": "function", "function": {"name": "get_time"}}  # no parameters
TOOLS = read_tools([WEATHER, TIME])
QUESTION = [{"role": "user", "content": "What is the weather in Paris?"}]


def request(**fields: Any) -> Any:
    body = {"model": MODEL, "messages": QUESTION, **fields}
    return read_request("chat", json.dumps(body).encode())


@pytest.mark.parametrize(
    "text",
    [
        '{"name": "get_weather", "arguments": {"city": "Rome", "days": 2}}',
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Rome", "days": 2}}\n'
        "</tool_call>",
        '```json\n{"name": "get_weather", "parameters": {"city": "Rome", "days": 2}}\n```',
    ],
)
def test_an_answer_that_is_a_call_is_found(text: str) -> None:
    (found,) = find_calls(text, TOOLS)
    assert found.name == "get_weather"
    assert json.loads(found.arguments) == {"city": "Rome", "days": 2}


@pytest.mark.parametrize(
    "text",
    [
        '[TOOL_CALLS] [{"name": "get_time", "arguments": {}}, '
        '{"name": "get_weather", "arguments": {"city": "Paris", "days": 1}}]',
        '<tool_call>\n{"name": "get_time", "arguments": {}}\n</tool_call>\n<tool_call>\n'
        '{"name": "get_weather", "arguments": {"city": "Paris", "days": 1}}\n</tool_call>',
    ],
)
def test_an_answer_of_several_calls_makes_them_all(text: str) -> None:
    assert [call.name for call in find_calls(text, TOOLS)] == ["get_time", "get_weather"]


@pytest.mark.parametrize(
    "text",
    [
        'Let me see: {"name": "get_weather", "arguments": {}}',  # text besides the call
        '{"name": "get_news", "arguments": {}}',  # no such tool
        '{"name": "get_time", "arguments": "now"}',  # arguments are an object
        '{"name": "get_time", "arguments": {}',  # not JSON
        '{"name": "get_time", "arguments": {"at": NaN}}',  # not strict JSON
        '{"name": "get_time", "name": "get_time", "arguments": {}}',  # a key twice
        '[{"name": "get_time", "arguments": {}}, {"name": "get_news", "arguments": {}}]',
        '{"name": "get_time", "arguments": {}} and {"name": "get_time", "arguments": {}}',
        "[1, 2]",
        "[]",
        "It is sunny in Paris.",
    ],
)
def test_an_answer_that_is_no_call_is_text(text: str) -> None:
    assert find_calls(text, TOOLS) == []


CALLS = [
    '{"name": "get_weather", "arguments": {"city": "Rome", "days": 2}}',
    '<tool_call>\n{"name": "get_time", "arguments": {}}\n</tool_call>',
    '```json\n{"name": "get_time", "parameters": {}}\n```',
    '[TOOL_CALLS] [{"name": "get_time", "arguments": {}}]',
]
TEXTS = [
    "It is sunny in Paris.",
    'Let me see: {"name": "get_weather", "arguments": {}}',
    "<b>Sunny</b> in Paris",
    "<i x <b>sunny</b>",  # a tag that swallows the text next to it, once closed
    "``` code",
    "`x` is sunny",
    "[1, 2]",
    '```json\n{"answer": 42}\n```\nThe answer is 42.',  # JSON, but no call
    '<tool_call>{"name": "get_news", "arguments": {}}</tool_call>',  # no such tool
    '{"name": "get_time", "arguments": {}} is the call I would make',
    "[see below] It is sunny.",  # no JSON
    "{sunny}",
    '<tool_call>{"name": "get_time", "arguments": {"at": -Infinity}}</tool_call>',
    '{"name": "get_time", "arguments": {}, "name": "get_weather"}',
]


@pytest.mark.parametrize("text", CALLS + TEXTS)
def test_an_answer_is_held_back_only_while_it_may_be_calls(text: str) -> None:
    """Every beginning of an answer that is calls may be calls; for one that is not, once a
    beginning may not, no longer one may (what was streamed stays text)."""
    held = [may_be_calls(text[:end], TOOLS) for end in range(len(text) + 1)]
    assert held == sorted(held, reverse=True)  # true, then false for good
    assert held[-1] == bool(find_calls(text, TOOLS))
    if not held[-1]:
        assert not find_calls(text[: held.index(False)] + CALLS[0], TOOLS)


NO_CALLS = [  # an answer, and what it lets go after
    ("[1, 2] are the numbers", "]"),
    ('```json\n{"answer": 42}\n```', "}"),
    ('<tool_call>{"name": "get_news", "arguments": {}}', "}}"),
    ('{"name": "get_time", "arguments": {}} is how', "} i"),
    ("[see below]", "[s"),  # a value that begins no JSON
    ('{"name": "get_time", "arguments": {"at": NaN}}', "N"),
    ('{"a": 1, "a": 2}', ', "a"'),  # a key twice
]


@pytest.mark.parametrize(("text", "after"), NO_CALLS)
def test_an_answer_goes_once_a_value_or_text_is_no_call(text: str, after: str) -> None:
    """A value that is no call, or text after one that is, lets the answer go from there."""
    goes = text.index(after) + len(after)
    assert may_be_calls(text[: goes - 1], TOOLS)
    assert not may_be_calls(text[:goes], TOOLS)


def test_only_the_beginning_of_a_value_is_checked_to_be_json() -> None:
    """Past `JSON_CHECKED` characters, a value that breaks is held until it ends (the check
    over the rest would cost each streamed piece again)."""
    begun = '{"name": "get_time", "arguments": {"note": '
    assert not may_be_calls(begun + "oops", TOOLS)
    assert may_be_calls(begun + '"' + "x" * JSON_CHECKED + '" oops', TOOLS)


def test_the_call_schema_takes_a_tools_name_and_its_arguments() -> None:
    start = JsonPrefix.start(call_schema(TOOLS))
    for good in ['{"name": "get_weather", "arguments": {"city": "Paris", "days": 3}}',
                 '{"arguments": {}, "name": "get_time"}']:  # fmt: skip
        state = start.feed(good)
        assert state is not None and state.complete, good
    for bad in ['{"name": "get_news"', '{"name": "get_weather", "arguments": {"city": "Oslo"',
                '{"name": "get_time", "arguments": {"x"', '{"name": "get_time"}']:  # fmt: skip
        state = start.feed(bad)
        assert state is None or not state.complete, bad
    assert start.feed("[") is None  # one call only
    several = JsonPrefix.start(call_schema(TOOLS, several=True))
    both = several.feed('[{"name": "get_time", "arguments": {}}, {"arguments": {}, "name": '
                        '"get_time"}]')  # fmt: skip
    assert both is not None and both.complete
    assert several.feed("[]") is None
    one = several.feed('{"name": "get_time", "arguments": {}}')
    assert one is not None and one.complete


def test_tool_choice_decides_what_the_answer_must_call() -> None:
    assert request(tools=[WEATHER, TIME]).tool_choice == "auto"  # OpenAI's default with tools
    assert request().tool_choice == "none"
    required = request(tools=[WEATHER, TIME], tool_choice="required")
    assert [tool.name for tool in required.must_call] == ["get_weather", "get_time"]
    named = request(tools=[WEATHER, TIME],
                    tool_choice={"type": "function", "function": {"name": "get_time"}})  # fmt: skip
    assert [tool.name for tool in named.must_call] == ["get_time"]
    assert "json_schema" in named.generate_options(16)
    assert "json_schema" not in request(tools=[WEATHER]).generate_options(16)  # auto: free
    assert named.parallel_calls  # OpenAI's default
    assert not request(tools=[WEATHER], parallel_tool_calls=False).parallel_calls


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"tools": {"a": 1}}, "tools must be a list"),
        ({"tools": [{"type": "function", "function": {}}]}, r"tools\[0\] needs a name"),
        ({"tools": [WEATHER, WEATHER]}, r"tools\[1\] needs a name of its own"),
        ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {
            "type": "integer", "not": {"const": 3}}}}]}, "keyword 'not' is not supported"),
        ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "g"}}},
         "names no function"),
        ({"tool_choice": "required"}, "needs tools"),
        ({"tools": [WEATHER], "tool_choice": "always"}, "tool_choice must be one of"),
        ({"tools": [WEATHER], "logprobs": True}, "logprobs with tools"),
        ({"tools": [WEATHER], "parallel_tool_calls": "yes"}, "parallel_tool_calls must be bool"),
        ({"tools": [WEATHER], "tool_choice": "required",
          "response_format": {"type": "json_object"}}, "takes no response_format"),
        ({"messages": [{"role": "tool", "content": "17 C"}]}, "needs its tool_call_id"),
        ({"messages": [{"role": "assistant", "content": None, "tool_calls": [
            {"id": "a", "type": "function", "function": {"name": "f", "arguments": "[1]"}}]}]},
         "the JSON text of an object"),
    ],
)  # fmt: skip
def test_what_tool_calling_refuses(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ApiError, match=message) as caught:
        request(**fields)
    assert caught.value.status == 400


HISTORY = (
    ChatMessage("user", "Weather in Rome?"),
    ChatMessage("assistant", "", (ToolCall("get_weather", '{"city": "Rome", "days": 1}', "c1"),)),
    ChatMessage("tool", "21 C and sunny", tool_call_id="c1"),
)


def test_a_template_without_tools_gets_them_in_a_system_message() -> None:
    rendered = chat_messages(HISTORY, TOOLS, native=False)
    assert rendered[0]["role"] == "system" and "get_weather" in rendered[0]["content"]
    call = {"name": "get_weather", "arguments": {"city": "Rome", "days": 1}}
    assert json.loads(rendered[2]["content"]) == call
    assert rendered[3] == {"role": "tool", "content": "21 C and sunny", "tool_call_id": "c1"}
    with_system = chat_messages((ChatMessage("system", "Be brief."), *HISTORY), TOOLS, False)
    assert with_system[0]["content"].startswith("Be brief.\n\n") and len(with_system) == 4
    calls = (ToolCall("get_time", "{}"), ToolCall("get_weather", '{"city": "Rome", "days": 1}'))
    both = chat_messages((ChatMessage("assistant", "", tool_calls=calls),), TOOLS, False)
    assert json.loads(both[1]["content"]) == [{"name": "get_time", "arguments": {}}, call]


def test_a_template_with_tools_gets_calls_in_openais_shape() -> None:
    rendered = chat_messages(HISTORY, TOOLS, native=True)
    assert rendered[0] == {"role": "user", "content": "Weather in Rome?"}
    assert rendered[1]["tool_calls"] == [{"id": "c1", "type": "function", "function": {
        "name": "get_weather", "arguments": {"city": "Rome", "days": 1}}}]  # fmt: skip


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_model(
        tmp_path_factory.mktemp("tools") / MODEL, seed=6, max_position_embeddings=2048
    )


@pytest.fixture(scope="module")
def swarm(tiny: Path) -> Iterator[tuple[ThreadSwarm, DistributedModelForCausalLM]]:
    with _swarm_and_model(tiny, [(0, 4)]) as pair:
        yield pair


def expected_calls(tiny: Path, tools: Any, count: int, several: bool) -> list[Any]:
    """The reference's calls: the prompt as the server renders it (the tools in a system
    message), then the greedy loop over transformers' logits that keeps to the call (or,
    if `several`, to a call or a list of them)."""
    tokenizer = AutoTokenizer.from_pretrained(tiny)
    messages = chat_messages(tuple(ChatMessage(**m) for m in QUESTION), tools, native=False)
    prompt = chat_prompt(tokenizer, messages)
    schema = call_schema(tools, several)
    tokens = reference(tiny, tokenizer, prompt, count, schema, CALL_WHITESPACE)
    made = json.loads(tokenizer.decode(tokens, skip_special_tokens=True))
    return made if isinstance(made, list) else [made]


@pytest.mark.parametrize("parallel", [True, False])
async def test_a_required_call_is_the_reference_whole_and_streamed(
    tiny: Path, swarm: Any, parallel: bool
) -> None:
    """`required`: the calls equal the reference's, which may be several unless
    `parallel_tool_calls` is false, and each call's arguments are valid."""
    wanted = await trio.to_thread.run_sync(expected_calls, tiny, TOOLS, 120, parallel)
    options = {"model": MODEL, "messages": QUESTION, "max_tokens": 120, "temperature": 0,
               "tools": [WEATHER, TIME], "tool_choice": "required",
               "parallel_tool_calls": parallel}  # fmt: skip
    async with api(tiny, swarm[1]) as client:
        answer = await call(client.chat.completions.create, **options)
        chunks = await call(lambda: list(client.chat.completions.create(**options, stream=True)))
    made = answer.choices[0].message.tool_calls
    assert answer.choices[0].finish_reason == "tool_calls"
    assert answer.choices[0].message.content is None
    assert [(c.function.name, json.loads(c.function.arguments)) for c in made] == [
        (call["name"], call["arguments"]) for call in wanted
    ]
    for each in wanted:
        parameters = next(t for t in (WEATHER, TIME) if t["function"]["name"] == each["name"])
        jsonschema.validate(each["arguments"], parameters["function"].get("parameters", {}))
    deltas = [d for c in chunks for d in c.choices[0].delta.tool_calls or []]
    streamed: dict[int, list[str]] = {}  # each call's name, and its arguments' pieces
    for delta in deltas:
        if delta.index not in streamed:  # its first: id, type, name (arguments so far)
            assert delta.id and delta.type == "function" and delta.function.name
            streamed[delta.index] = [delta.function.name]
        else:
            assert delta.id is None and delta.function.name is None
        streamed[delta.index].append(delta.function.arguments)
    assert [(name, json.loads("".join(pieces))) for name, *pieces in streamed.values()] == [
        (c.function.name, json.loads(c.function.arguments)) for c in made
    ]
    assert len(deltas) > 2 * len(made)  # the arguments streamed as they were written
    assert not any(c.choices[0].delta.content for c in chunks)
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


async def test_a_named_call_and_a_history_of_calls(tiny: Path, swarm: Any) -> None:
    """A function by name is the one called; a conversation holding a call and its result
    goes on (here, `auto`: this random model answers in text, which streams as it comes)."""
    history = [
        *QUESTION,
        {"role": "assistant", "content": None, "tool_calls": [{"id": "c1", "type": "function",
         "function": {"name": "get_weather", "arguments": '{"city": "Paris", "days": 1}'}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "21 C and sunny"},
    ]  # fmt: skip
    async with api(tiny, swarm[1]) as client:
        named = await call(
            client.chat.completions.create, model=MODEL, messages=QUESTION, max_tokens=200,
            temperature=0, tools=[WEATHER, TIME],
            tool_choice={"type": "function", "function": {"name": "get_time"}},
        )  # fmt: skip
        went_on = await call(client.chat.completions.create, model=MODEL, messages=history,
                             max_tokens=8, temperature=0, tools=[WEATHER, TIME])  # fmt: skip
        chunks = await call(lambda: list(client.chat.completions.create(
            model=MODEL, messages=history, max_tokens=8, temperature=0, tools=[WEATHER, TIME],
            stream=True)))  # fmt: skip
        with pytest.raises(openai.BadRequestError, match="keyword 'not'"):
            bad = {"type": "function", "function": {"name": "f", "parameters": {
                "type": "integer", "not": {"const": 3}}}}  # fmt: skip
            await call(client.chat.completions.create, model=MODEL, messages=QUESTION,
                       tools=[bad])  # fmt: skip
    (made,) = named.choices[0].message.tool_calls
    assert made.function.name == "get_time" and json.loads(made.function.arguments) == {}
    assert went_on.choices[0].message.tool_calls is None
    assert went_on.choices[0].message.content and went_on.choices[0].finish_reason == "length"
    pieces = [c.choices[0].delta.content for c in chunks if c.choices[0].delta.content]
    assert len(pieces) > 1  # text, not calls: streamed as it came, not held to the end
    assert "".join(pieces) == went_on.choices[0].message.content
