"""`JsonPrefix`: whether a text can still grow into one JSON object (RFC 8259). Pure.

The state after some text is a small immutable value: the open containers, and where in
the grammar the text stands (a string, a key, a number, a literal...). `feed(text)` returns
the state after more text, or None if no JSON object begins with it; `complete` says the
object has closed (only whitespace may follow). JSON mode's generation tries tokens against
it (`swarm.json_mode`), so a state is never changed in place.

Two limits keep a generation from running on in whitespace, as a model may (OpenAI warns of
it too): the text begins with the object's `{`, and whitespace outside strings comes in runs
of at most `MAX_BLANK` characters (enough to indent 15 levels by 2).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["STRING_MODES", "JsonPrefix"]

WHITESPACE = " \t\n\r"
STRING_MODES = ("str", "key")
DIGITS = "0123456789"
HEX = "0123456789abcdefABCDEF"
ESCAPES = '"\\/bfnrt'
LITERALS = {"t": "rue", "f": "alse", "n": "ull"}
NUMBER_ENDS = {"zero", "int", "frac", "exp_digits"}  # a number may stop here
MAX_BLANK = 32  # whitespace characters in a row, outside strings


@dataclass(frozen=True)
class JsonPrefix:
    """Where a text stands in a JSON object (start: nothing read yet)."""

    stack: tuple[str, ...] = ()  # "{" or "[" for each open container
    mode: str = "top"
    left: str = ""  # a literal's letters still to come, or a \\u escape's digits ("xx")
    blank: int = 0  # whitespace characters just read, outside strings

    @property
    def complete(self) -> bool:
        return self.mode == "done"

    def feed(self, text: str) -> JsonPrefix | None:
        """The state after `text`, or None if no JSON object starts with what was read."""
        stack, mode, left, blank = list(self.stack), self.mode, self.left, self.blank
        for char in text:
            step = _step(stack, mode, left, char)
            if step is None:
                return None
            blank = blank + 1 if char in WHITESPACE and step[0] not in STRING_MODES else 0
            if blank > MAX_BLANK:
                return None
            mode, left = step
        return JsonPrefix(tuple(stack), mode, left, blank)


def _after_value(stack: list[str]) -> str:
    return "after" if stack else "done"


def _step(stack: list[str], mode: str, left: str, char: str) -> tuple[str, str] | None:
    """The mode and letters left after `char` (`stack` changes in place); None: invalid."""
    if mode in STRING_MODES:
        if char == '"':
            return ("colon" if mode == "key" else _after_value(stack)), ""
        if char == "\\":
            return mode + "_esc", ""
        return (mode, "") if char >= " " else None
    if mode.endswith("_esc"):
        kind = mode[:3]
        if char == "u":
            return kind + "_u", "xxxx"
        return (kind, "") if char in ESCAPES else None
    if mode.endswith("_u"):
        if char not in HEX:
            return None
        return (mode[:3], "") if len(left) == 1 else (mode, left[1:])
    if mode == "literal":
        if char != left[0]:
            return None
        return (_after_value(stack), "") if len(left) == 1 else (mode, left[1:])
    if mode in NUMBER_TRANSITIONS:
        following = _number(mode, char)
        if following is not None:
            return following, ""
        if mode not in NUMBER_ENDS:
            return None
        return _step(stack, _after_value(stack), "", char)  # the number ended before it
    if mode == "top":
        return _open(stack, char) if char == "{" else None
    if char in WHITESPACE:
        return mode, left
    if mode in ("value", "first_item"):
        if mode == "first_item" and char == "]":
            return _close(stack, char)
        return _value(stack, char)
    if mode in ("first_key", "key_next"):
        if char == '"':
            return "key", ""
        return _close(stack, char) if mode == "first_key" and char == "}" else None
    if mode == "colon":
        return ("value", "") if char == ":" else None
    if mode == "after":
        if char == ",":
            return ("key_next" if stack[-1] == "{" else "value"), ""
        return _close(stack, char)
    return None  # done: nothing but whitespace


def _open(stack: list[str], char: str) -> tuple[str, str]:
    stack.append(char)
    return ("first_key" if char == "{" else "first_item"), ""


def _close(stack: list[str], char: str) -> tuple[str, str] | None:
    if not stack or {"}": "{", "]": "["}.get(char) != stack[-1]:
        return None
    stack.pop()
    return _after_value(stack), ""


def _value(stack: list[str], char: str) -> tuple[str, str] | None:
    if char in "{[":
        return _open(stack, char)
    if char == '"':
        return "str", ""
    if char in LITERALS:
        return "literal", LITERALS[char]
    if char == "-":
        return "minus", ""
    if char in DIGITS:
        return ("zero" if char == "0" else "int"), ""
    return None


NUMBER_TRANSITIONS: dict[str, dict[str, str]] = {
    # mode: {characters: next mode}; a number is -?(0|[1-9]\d*)(\.\d+)?([eE][+-]?\d+)?
    "minus": {"0": "zero", "123456789": "int"},
    "zero": {".": "dot", "eE": "exp"},
    "int": {DIGITS: "int", ".": "dot", "eE": "exp"},
    "dot": {DIGITS: "frac"},
    "frac": {DIGITS: "frac", "eE": "exp"},
    "exp": {"+-": "exp_sign", DIGITS: "exp_digits"},
    "exp_sign": {DIGITS: "exp_digits"},
    "exp_digits": {DIGITS: "exp_digits"},
}


def _number(mode: str, char: str) -> str | None:
    return next((to for chars, to in NUMBER_TRANSITIONS[mode].items() if char in chars), None)
