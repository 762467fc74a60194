"""Tool calling in the chat API: the `tools` a request offers, its `tool_choice`, the calls
in its history, and the calls found in an answer. Pure.

The model sees the tools through its chat template (`tools=`) when the template takes them;
otherwise a system message lists them (`TOOL_NOTE`) and asks for a call as one JSON object
`{"name": ..., "arguments": {...}}` (several: a JSON list of them), which is also how earlier
calls in the conversation are written back for it. `tool_choice` `required`, or a function
by name, makes the answer such an object, or a list of them unless `parallel_tool_calls` is
false, by JSON mode (`call_schema`: the name is one of the tools', the arguments a value of
its `parameters`). With `auto`, the model answers freely, and an answer made of calls (JSON
objects, or a list of them, alone or inside tags such as `<tool_call>`) is returned as
calls (`find_calls`; calls are strict JSON: no `NaN`, no key twice in an object); while it
streams, it is held back only as long as it may still turn out to be calls (`may_be_calls`:
text outside tags, a JSON value that is no call, or a value whose first `JSON_CHECKED`
characters begin no JSON lets it go). `none` offers the tools but never returns a call. A
call that JSON mode writes keeps to one line (`CALL_WHITESPACE`), which saves the tokens of
a layout that nobody reads.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..json_prefix import JsonPrefix
from ..json_schema import (
    ANY_VALUE,
    ArrayNode,
    Choice,
    Literals,
    Node,
    ObjectNode,
    SchemaError,
    compile_schema,
    json_text,
)
from .errors import ApiError

if TYPE_CHECKING:
    from .requests import ChatMessage

__all__ = [
    "CALL_WHITESPACE",
    "TOOL_NOTE",
    "Tool",
    "ToolCall",
    "call_schema",
    "chat_messages",
    "find_calls",
    "may_be_calls",
    "read_tool_choice",
    "read_tools",
]

CHOICES = ("none", "auto", "required")
CALL_WHITESPACE = 1  # a call is JSON on one line: its layout is nobody's, and costs tokens
FUNCTION_SHAPE = '{"type": "function", "function": {"name": ..., "parameters": {...}}}'
_UNFINISHED_FENCE = re.compile(r"`{1,3}(j(s(on?)?)?)?$")  # what may still become "```json"
MISTRAL_TAG = "[TOOL_CALLS]"  # before Mistral's calls
JSON_CHECKED = 256  # characters of an unfinished value checked to begin JSON (bounds the cost)
TOOL_NOTE = (
    "You can call these functions. To call one, answer with only a JSON object "
    '{"name": <the function\'s name>, "arguments": <an object of its arguments>}; to call '
    "several at once, with a JSON list of such objects.\n"
)


@dataclass(frozen=True)
class Tool:
    """A function the model may call: its name, description and parameters' schema."""

    name: str
    description: str
    parameters: dict[str, Any]
    node: Node = field(compare=False)  # the parameters, compiled

    def to_json(self) -> dict[str, Any]:
        function = {"name": self.name, "description": self.description,
                    "parameters": self.parameters}  # fmt: skip
        return {"type": "function", "function": function}


@dataclass(frozen=True)
class ToolCall:
    """One call of a function, its arguments as JSON text (as OpenAI's API carries them)."""

    name: str
    arguments: str
    id: str = field(default_factory=lambda: f"call_{uuid.uuid4().hex[:24]}")

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "type": "function",
                "function": {"name": self.name, "arguments": self.arguments}}  # fmt: skip

    def delta(self, index: int) -> dict[str, Any]:
        """The call whole, as a streamed answer's `index`th call."""
        return {"index": index, **self.to_json()}

    def as_text(self) -> str:
        """The call as the model writes one (see `TOOL_NOTE`)."""
        return json.dumps({"name": self.name, "arguments": json.loads(self.arguments)})


def read_tools(value: Any) -> tuple[Tool, ...]:
    """The request's `tools` (None or a list of functions), checked and compiled."""
    if value is None:
        return ()
    if not isinstance(value, list):
        raise ApiError(400, "tools must be a list of functions", "tools")
    tools: list[Tool] = []
    for index, entry in enumerate(value):
        where = f"tools[{index}]"
        function = entry.get("function") if isinstance(entry, dict) else None
        if not isinstance(function, dict) or entry.get("type") != "function":
            raise ApiError(400, f"{where} must be a function: {FUNCTION_SHAPE}", where)
        name = function.get("name")
        if not isinstance(name, str) or not name or name in {t.name for t in tools}:
            raise ApiError(400, f"{where} needs a name of its own", where)
        parameters = function.get("parameters", {"type": "object", "properties": {},
                                                 "additionalProperties": False})  # fmt: skip
        try:
            node = compile_schema(parameters)
        except SchemaError as error:
            raise ApiError(400, f"{where} parameters: {error}", where) from None
        description = function.get("description", "")
        if not isinstance(description, str):
            raise ApiError(400, f"{where} description must be text", where)
        tools.append(Tool(name, description, parameters, node))
    return tuple(tools)


def read_tool_choice(value: Any, tools: Sequence[Tool]) -> tuple[str, tuple[Tool, ...]]:
    """`tool_choice` ("none", "auto", "required" or a function by name; absent: "auto" with
    tools, else "none") and the tools an answer must call one of (none unless it must)."""
    if value is None:
        value = "auto" if tools else "none"
    if isinstance(value, dict):
        function = value.get("function")
        name = function.get("name") if isinstance(function, dict) else None
        named = [tool for tool in tools if tool.name == name]
        if value.get("type") != "function" or not named:
            raise ApiError(400, "tool_choice names no function of tools", "tool_choice")
        return "function", tuple(named)
    if value not in CHOICES:
        raise ApiError(400, f"tool_choice must be one of {', '.join(CHOICES)} or a function",
                       "tool_choice")  # fmt: skip
    if value != "none" and not tools:
        raise ApiError(400, f"tool_choice {value} needs tools", "tool_choice")
    return value, tuple(tools) if value == "required" else ()


def call_schema(tools: Sequence[Tool], several: bool = False) -> Node:
    """The answer that calls one of `tools`, `{"name": ..., "arguments": ...}`; if
    `several`, or a list of such calls (parallel calls)."""
    one = Choice(
        tuple(
            ObjectNode(
                {"name": Literals((json_text(tool.name),)), "arguments": tool.node},
                frozenset({"name", "arguments"}),
            )
            for tool in tools
        )
    )
    return Choice((one, ArrayNode(one, min_items=1))) if several else one


def chat_messages(
    messages: Sequence[ChatMessage], tools: Sequence[Tool], native: bool
) -> list[dict[str, Any]]:
    """The messages as the chat template takes them. `native`: the template takes `tools=`
    and calls in OpenAI's shape; else a system message lists the tools, and calls are
    written as the JSON of a call."""
    rendered: list[dict[str, Any]] = []
    for message in messages:
        entry: dict[str, Any] = {"role": message.role, "content": message.content}
        if message.tool_call_id:
            entry["tool_call_id"] = message.tool_call_id
        if message.tool_calls and native:
            entry["tool_calls"] = [
                {"id": call.id, "type": "function",
                 "function": {"name": call.name, "arguments": json.loads(call.arguments)}}
                for call in message.tool_calls
            ]  # fmt: skip
        elif message.tool_calls:
            written = [call.as_text() for call in message.tool_calls]
            calls = written[0] if len(written) == 1 else f"[{', '.join(written)}]"
            entry["content"] = f"{message.content}\n{calls}".lstrip("\n")
        rendered.append(entry)
    if tools and not native:
        listed = "\n".join(json.dumps(tool.to_json()["function"]) for tool in tools)
        note = TOOL_NOTE + listed
        if rendered[0]["role"] == "system":
            rendered[0]["content"] = f"{rendered[0]['content']}\n\n{note}"
        else:
            rendered.insert(0, {"role": "system", "content": note})
    return rendered


def find_calls(text: str, tools: Sequence[Tool]) -> list[ToolCall]:
    """The calls an answer makes, if it is made of calls: JSON objects each naming one of
    `tools` and its arguments (`arguments` or `parameters`), or lists of them, alone or
    between tags (`<tool_call>` around each, Mistral's `[TOOL_CALLS]`, a code fence); else
    none."""
    entries, rest, stop = _values(text)
    if stop or not entries or _outside_tags(rest):
        return []
    calls = [call for entry in entries if (call := _call(entry, tools)) is not None]
    return calls if len(calls) == len(entries) else []


def may_be_calls(text: str, tools: Sequence[Tool]) -> bool:
    """Whether an answer that begins with `text` may still turn out to be made of calls (see
    `find_calls`): its JSON values so far are calls, with nothing but whitespace, tags and
    code fences around them, where the end may be a value, a tag or a fence not yet
    finished. Once false, false for any text that goes on from this one."""
    entries, rest, stop = _values(text)
    if stop == "outside" or any(_call(entry, tools) is None for entry in entries):
        return False
    if stop == "unparsed":  # not finished yet (held), or not JSON (let go)
        value = rest[_next_value(rest) :][:JSON_CHECKED]
        unlimited = JsonPrefix.start(ANY_VALUE, max_blank=len(text))
        return MISTRAL_TAG.startswith(value) or unlimited.feed(value) is not None
    rest = _UNFINISHED_FENCE.sub("", rest)
    return not _untagged(rest).split("<", 1)[0].strip()  # from a "<" left on: a tag to come


def _values(text: str) -> tuple[list[Any], str, str]:
    """The JSON objects and lists of an answer, those in lists one by one, as long as only
    whitespace, tags and code fences come before each; the text after them; and why the
    reading stopped: "" (no value after), "outside" (other text before the next one) or
    "unparsed" (the next one does not parse, or is not finished)."""
    body, decoder = text.replace(MISTRAL_TAG, ""), _STRICT_JSON
    entries: list[Any] = []
    while (start := _next_value(body)) >= 0:
        if _outside_tags(body[:start]):
            return entries, body, "outside"
        try:
            found, end = decoder.raw_decode(body, start)
        except ValueError:
            return entries, body, "unparsed"
        entries.extend(found if isinstance(found, list) else [found])
        body = body[end:]
    return entries, body, ""


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    entry = dict(pairs)
    if len(entry) < len(pairs):
        raise ValueError("a key comes twice")
    return entry


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


_STRICT_JSON = json.JSONDecoder(object_pairs_hook=_unique_keys, parse_constant=_no_constant)


def _next_value(text: str) -> int:
    """Where the next JSON object or list in `text` begins (-1: none)."""
    return min((at for at in (text.find("{"), text.find("[")) if at >= 0), default=-1)


def _call(entry: Any, tools: Sequence[Tool]) -> ToolCall | None:
    if not isinstance(entry, dict):
        return None
    arguments = entry.get("arguments", entry.get("parameters"))
    if entry.get("name") not in {tool.name for tool in tools} or not isinstance(arguments, dict):
        return None
    return ToolCall(entry["name"], json.dumps(arguments, ensure_ascii=False))


def _outside_tags(text: str) -> bool:
    """Whether `text`, around a call, holds more than whitespace, tags and code fences."""
    return bool(_untagged(text).strip())


def _untagged(text: str) -> str:
    """`text` without its code fences and its tags (`<` to the next `>`)."""
    for tag in ("```json", "```"):
        text = text.replace(tag, "")
    while "<" in text and ">" in text[text.index("<") :]:
        opening = text.index("<")
        text = text[:opening] + text[text.index(">", opening) + 1 :]
    return text
