"""Calls streamed as they are written (`CallStream`): each call's first delta once its name
is, then its arguments piece by piece; put together, the same calls as the whole answer's
(`find_calls`), however the text comes in."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest

from swarm.api.call_stream import CallStream
from swarm.api.tools import find_calls, read_tools

TOOLS = read_tools(
    [{"type": "function", "function": {"name": name}} for name in ("get_weather", 'say "hi"')]
)
ANSWERS = [
    '{"name": "get_weather", "arguments": {"city": "Rome", "days": 2}}',
    '{"name":"get_weather","arguments":{"city":"Ro}me,\\"x\\\\","days":[1,{"a":[]}]}}',
    '[{"name": "get_weather", "arguments": {"city": "Paris"}}, '
    '{"name": "say \\"hi\\"", "arguments": {}}]',
    '{"arguments": {"text": "first, the arguments"}, "name": "get_weather"}',
    '{ "name" : "get_weather" , "arguments" : { "a" : 1.5e3 , "b" : null } }  ',
    '[ {"name": "get_weather", "arguments": {"n": -1}} ,{"name": "get_weather", "arguments":'
    ' {"s": "\\u00e9t\\u00e9"}}]',
]


def _streamed(text: str, cuts: list[int]) -> tuple[list[list[dict[str, Any]]], list[Any]]:
    """The deltas of each feed, the text coming cut at `cuts`; and the calls they make."""
    stream, fed = CallStream(), []
    for end in [*cuts, len(text)]:
        fed.append(stream.feed(text[:end]))
    calls: dict[int, dict[str, Any]] = {}
    for delta in (delta for deltas in fed for delta in deltas):
        if delta["index"] not in calls:
            assert {"id", "type"} <= delta.keys() and delta["function"]["name"]
            calls[delta["index"]] = dict(delta["function"])
        else:
            assert delta.keys() == {"index", "function"}  # the rest: pieces of arguments
            assert delta["function"].keys() == {"arguments"} and delta["function"]["arguments"]
            calls[delta["index"]]["arguments"] += delta["function"]["arguments"]
    assert sorted(calls) == list(range(len(calls)))
    made = [(calls[i]["name"], json.loads(calls[i]["arguments"])) for i in sorted(calls)]
    return fed, made


@pytest.mark.parametrize("text", ANSWERS)
def test_the_calls_streamed_are_the_whole_answers_however_they_come(text: str) -> None:
    whole = [(call.name, json.loads(call.arguments)) for call in find_calls(text, TOOLS)]
    assert whole  # each answer is calls
    _, one_by_one = _streamed(text, list(range(len(text))))
    assert one_by_one == whole
    chance = random.Random(text)
    for _ in range(20):
        cuts = sorted(chance.sample(range(len(text)), chance.randint(1, 6)))
        assert _streamed(text, cuts)[1] == whole


def test_a_call_goes_once_its_name_is_written_then_its_arguments_as_they_come() -> None:
    text = ANSWERS[0]
    named = text.index('", "arguments"') + 1
    fed, _ = _streamed(text, list(range(len(text))))
    assert not any(fed[:named]) and fed[named][0]["function"] == {
        "name": "get_weather",
        "arguments": "",
    }
    pieces = [deltas[0]["function"]["arguments"] for deltas in fed[named + 1 :] if deltas]
    assert "".join(pieces) == '{"city": "Rome", "days": 2}' and len(pieces) > 10
    assert not any(" " in piece[-1:] for piece in pieces)  # no whitespace before it is inside


def test_arguments_written_before_the_name_go_with_it() -> None:
    text = ANSWERS[3]
    fed, made = _streamed(text, list(range(len(text))))
    first = next(deltas for deltas in fed if deltas)
    assert first[0]["function"]["arguments"] == '{"text": "first, the arguments"}'
    assert made == [("get_weather", {"text": "first, the arguments"})]
    assert sum(map(len, fed)) == 1
