"""`CallStream`: the calls of an answer that JSON mode holds to calls, delta by delta.

With `tool_choice` "required", or a function by name, the answer is a call
`{"name": ..., "arguments": {...}}`, or a list of them, by JSON mode (`tools.call_schema`),
so its calls can stream as OpenAI's do: a call's first delta comes once its name is
written (its index, id and name, and its arguments so far), and then its arguments' text,
piece by piece, as the model writes it. Concatenated, a call's pieces are the arguments'
JSON text as written (not laid out anew, as a whole answer's are: the same value).

`CallStream.feed(text)` takes the answer so far (each text the one before it and more)
and returns the deltas that the new text makes. It reads the JSON as it grows, one
character at a time, keeping only where it is: the open containers, whether it is in a
string, and, in a call, the key being read and where its value began. Pure.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from typing import Any

__all__ = ["CallStream"]

WHITESPACE = " \t\n\r"


@dataclass
class _Call:
    """A call being read: its name once written, its arguments' text so far."""

    id: str = field(default_factory=lambda: f"call_{uuid.uuid4().hex[:24]}")
    name: str | None = None
    arguments: str = ""  # up to its last character that is not whitespace
    sent: int = -1  # characters of `arguments` sent (-1: not even the name)


@dataclass
class CallStream:
    """Reads an answer that is a call or a list of calls (see the module doc)."""

    calls: list[_Call] = field(default_factory=list)
    _read: int = 0  # characters of the text read
    _open: list[str] = field(default_factory=list)  # the containers open, "{" or "["
    _call_depth: int | None = None  # len(_open) inside a call: 1, or 2 in a list of calls
    _in_string: bool = False
    _escaped: bool = False
    _key_start: int | None = None  # where the key being read began (its quote)
    _key: str | None = None  # the call's key whose value comes or is being read
    _value_start: int | None = None  # where that value began

    def feed(self, text: str) -> list[dict[str, Any]]:
        """The deltas (OpenAI's `tool_calls` entries) that `text` adds to the text before."""
        for at in range(self._read, len(text)):
            self._step(text, at)
        self._read = len(text)
        if self._value_start is not None and self._key == "arguments":
            self.calls[-1].arguments = text[self._value_start :].rstrip(WHITESPACE)
        return [delta for index, call in enumerate(self.calls) if (delta := _delta(index, call))]

    def _step(self, text: str, at: int) -> None:
        char = text[at]
        if self._in_string:
            if self._escaped:
                self._escaped = False
            elif char == "\\":
                self._escaped = True
            elif char == '"':
                self._in_string = False
                if self._key_start is not None:  # a key of the call's ends
                    self._key = json.loads(text[self._key_start : at + 1])
                    self._key_start = None
                elif self._in_call():  # a string value of the call's
                    self._end_value(text, at)
            return
        in_call = self._in_call()
        if in_call and self._key is not None and self._value_start is None:
            if char not in WHITESPACE + ":":
                self._value_start = at
        elif in_call and char in ",}" and self._value_start is not None:  # a number, true...
            self._end_value(text, at - 1)
        elif in_call and char == '"' and self._key is None:
            self._key_start = at
        if char == '"':
            self._in_string = True
        elif char in "{[":
            if self._call_depth is None:  # the answer's first value: a call, or a list
                self._call_depth = 1 if char == "{" else 2
            self._open.append(char)
            if len(self._open) == self._call_depth:
                self.calls.append(_Call())
        elif char in "}]" and self._open:
            self._open.pop()
            if self._in_call() and self._value_start is not None:  # an object or a list
                self._end_value(text, at)

    def _in_call(self) -> bool:
        """Whether what is read is a call's own: its keys and values, not inside them."""
        return len(self._open) == self._call_depth

    def _end_value(self, text: str, last: int) -> None:
        """The value of the call's key being read ends at `last` (whitespace after it aside)."""
        start, self._value_start = self._value_start, None
        if start is None:
            return
        value = text[start : last + 1].rstrip(WHITESPACE)
        call = self.calls[-1]
        if self._key == "name":
            call.name = json.loads(value)
        elif self._key == "arguments":
            call.arguments = value
        self._key = None


def _delta(index: int, call: _Call) -> dict[str, Any] | None:
    """What a call has that was not sent: its first delta once it has a name, then each
    piece of its arguments."""
    if call.name is None or call.sent == len(call.arguments):
        return None
    piece, first = call.arguments[max(call.sent, 0) :], call.sent < 0
    call.sent = len(call.arguments)
    if first:
        function = {"name": call.name, "arguments": piece}
        return {"index": index, "id": call.id, "type": "function", "function": function}
    return {"index": index, "function": {"arguments": piece}}
