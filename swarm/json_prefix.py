"""`JsonPrefix`: whether a text can still grow into a JSON value (RFC 8259) that a compiled
schema (`swarm.json_schema`) describes. Pure.

The state after some text is a small immutable value: the ways the text can be read so far
(an `anyOf` may allow several), each a stack of frames, one per value still open (an object
and the keys it has, an array and its count, a string, a number, a literal...). A frame
keeps what the schema's constraints need and no more: a string its decoded characters if it
has lengths or patterns, a number its text if it has bounds, an array its items' values if
they must differ. `feed(text)` returns the state after more text, or None if no value of
the schema begins with it; a beginning that can no longer end is refused (numbers beyond
their bounds, an item or a key that could only repeat one before it, a string that its
pattern could end only beyond its `maxLength`), as far as `StringNode.may_end`'s short
search for an ending sees.
`whole` says the text is a value of the schema; `complete` that, besides, only whitespace may
follow (an object or array has closed), which is where JSON mode stops. JSON mode's
generation tries tokens against a state (`swarm.json_mode`), so it never changes.

Two limits keep a generation from running on in whitespace, as a model may (OpenAI warns of
it too): the text begins with the value itself, and whitespace outside strings comes in runs
of at most `max_blank` characters (by default `MAX_BLANK`, enough to indent 15 levels by 2;
1 keeps the JSON on one line, as tool calls do).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from fractions import Fraction
from functools import lru_cache
from typing import cast

from .json_numbers import Bounds
from .json_schema import (
    ANY_OBJECT,
    ArrayNode,
    Literals,
    Node,
    NumberNode,
    ObjectNode,
    StringNode,
    ValueKey,
    alternatives,
    distinct_values,
    json_text,
    literal_key,
)

__all__ = ["MAX_BLANK", "JsonPrefix"]

WHITESPACE = " \t\n\r"
DIGITS = "0123456789"
HEX = "0123456789abcdefABCDEF"
ESCAPES = {'"': '"', "\\": "\\", "/": "/", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t"}
MAX_BLANK = 32  # whitespace characters in a row, outside strings

Stack = tuple["Frame", ...]


class Frame:
    """One open value: `step` gives the stacks after a character (none: it cannot come)."""

    def step(self, below: Stack, char: str) -> list[Stack]:
        raise NotImplementedError

    def child_done(self, ended: Frame) -> Frame | None:
        """This frame once the value it waits for has ended, as frame `ended` read it
        (None: that value may not come here, as a repeated item of `uniqueItems`)."""
        raise NotImplementedError

    def key(self) -> ValueKey:
        """The value this frame read, as `uniqueItems` compares values (scalars only)."""
        raise NotImplementedError


@dataclass(frozen=True)
class JsonPrefix:
    """The readings of a text so far: stacks, each with the whitespace just read."""

    paths: tuple[tuple[Stack, int], ...]
    max_blank: int = MAX_BLANK

    @classmethod
    def start(cls, schema: Node = ANY_OBJECT, max_blank: int = MAX_BLANK) -> JsonPrefix:
        return cls((((_Root(schema),), 0),), max_blank)

    @property
    def complete(self) -> bool:
        """A whole value has been read, and nothing but whitespace may follow."""
        return any(_closed(stack[-1]) for stack, _ in self.paths)

    @property
    def whole(self) -> bool:
        """The text read is a value of the schema (a number may yet grow longer)."""
        return any(_may_end(stack) for stack, _ in self.paths)

    @property
    def wide_char_next(self) -> bool:
        """A character beyond ASCII may come next (so a token of half of one may)."""
        return any(_wide_char_next(stack) for stack, _ in self.paths)

    def feed(self, text: str) -> JsonPrefix | None:
        """The state after `text`, or None if no value of the schema begins with it."""
        paths = self.paths
        for char in text:
            stepped: dict[Stack, int] = {}
            space = char in WHITESPACE
            for stack, blank in paths:
                for after in _step(stack, char):
                    run = blank + 1 if space and not isinstance(after[-1], _Inside) else 0
                    if run <= self.max_blank:
                        stepped[after] = min(run, stepped.get(after, run))
            if not stepped:
                return None
            paths = tuple(stepped.items())
        return JsonPrefix(paths, self.max_blank)


def _step(stack: Stack, char: str) -> list[Stack]:
    return stack[-1].step(stack[:-1], char)


def _end(below: Stack, ended: Frame) -> list[Stack]:
    """The stack once the value on top of `below` has ended, read by `ended` (none if
    the value may not come there)."""
    after = below[-1].child_done(ended)
    return [] if after is None else [(*below[:-1], after)]


def _end_before(below: Stack, ended: Frame, char: str) -> list[Stack]:
    """The stacks after `char`, which ended the value that `ended` read."""
    return [stepped for stack in _end(below, ended) for stepped in _step(stack, char)]


def _closed(top: Frame) -> bool:
    return isinstance(top, _Root) and top.phase == "done"


def _may_end(stack: Stack) -> bool:
    top = stack[-1]
    if _closed(top):
        return True
    if isinstance(top, _Number | _Literal) and top.may_end:
        return any(_may_end(after) for after in _end(stack[:-1], top))
    return False


def _wide_char_next(stack: Stack) -> bool:
    top = stack[-1]
    if isinstance(top, _String):
        return _wide_fits(top.node, top.value)
    if isinstance(top, _Key):
        owner = cast(_Object, stack[-2])
        names = owner.node.names
        other = owner.node.additional is not None and (
            names is None or _wide_fits(names, top.value)
        )
        return other or any(
            _wide(_key_text(name), len(top.raw))
            for name in owner.node.properties
            if name not in owner.used
        )
    if isinstance(top, _Literal):
        return any(_wide(text, len(top.read)) for text in top.texts)
    return False


def _wide_fits(node: StringNode, value: str) -> bool:
    """Whether a character beyond ASCII may follow `value` in a string of `node`: where the
    string is constrained, only if no pattern needs to know which character it is."""
    return not node.constrained or (not node.patterns and node.may_grow(value + "\x80"))


def _wide(text: str, position: int) -> bool:
    return position < len(text) and text[position] >= "\x80"


def _begin(below: Stack, node: Node, char: str) -> list[Stack]:
    """The stacks after `char` begins a value of `node` above `below` (whose top waits)."""
    found = []
    keep = isinstance(below[-1], _Array) and below[-1].node.unique  # its value is compared
    for option in alternatives(node):
        if isinstance(option, ObjectNode) and char == "{":
            found.append((*below, _Object(option)))
        elif isinstance(option, ArrayNode) and char == "[":
            found.append((*below, _Array(option)))
        elif isinstance(option, StringNode) and char == '"':
            if not keep or _string_left(option, below[-1]):
                found.append((*below, _String(option, keep)))
        elif isinstance(option, NumberNode) and (char == "-" or char in DIGITS):
            mode = "minus" if char == "-" else "zero" if char == "0" else "int"
            found.extend(_Number(option, mode, "", keep).grown(below, char))
        elif isinstance(option, Literals):
            texts = option.texts if not keep else _unseen(option.texts, below[-1])
            found.extend(_Literal(texts, "").step(below, char))
    return found


def _string_left(node: StringNode, array: Frame, value: str = "") -> bool:
    """Whether a string of `node` that begins `value` may end as none of the items of
    `array` so far (`uniqueItems`)."""
    seen = cast(_Array, array).seen
    return node.may_end(value, lambda text: ("string", text) not in seen)


def _unseen(texts: tuple[str, ...], array: Frame) -> tuple[str, ...]:
    """The literals that differ from the items of `array` so far (`uniqueItems`)."""
    seen = cast(_Array, array).seen
    return tuple(text for text in texts if literal_key(text) not in seen)


def _integers_left(text: str, node: NumberNode, array: Frame) -> bool:
    """Whether an integer that begins `text` may still differ from the items of `array`
    so far (`uniqueItems`): "0" has no other ending, nor has an integer at its bounds."""
    count = (node.bounds or Bounds()).integers_from(text)
    if count is None:
        return True
    magnitude, negative = text.lstrip("-"), text.startswith("-")
    taken = [
        abs(value)
        for kind, value in cast(_Array, array).seen
        if kind == "number" and value.denominator == 1 and (value <= 0 if negative else value >= 0)
    ]
    return count > sum(str(value).startswith(magnitude) for value in taken)


class _Inside(Frame):
    """A frame whose text is inside a token, not whitespace around one (strings, numbers)."""


@dataclass(frozen=True)
class _Root(Frame):
    node: Node
    phase: str = "start"  # start | value (on top of it) | done

    def step(self, below: Stack, char: str) -> list[Stack]:
        if self.phase == "start":
            return _begin((replace(self, phase="value"),), self.node, char)
        return [(self,)] if char in WHITESPACE else []

    def child_done(self, ended: Frame) -> Frame | None:
        return replace(self, phase="done")


@dataclass(frozen=True)
class _Object(Frame):
    node: ObjectNode
    used: frozenset[str] = frozenset()  # the keys read, decoded
    phase: str = "first"  # first | colon | value | in_value | after | next
    pending: Node | None = None  # the value's schema, once its key is read

    def step(self, below: Stack, char: str) -> list[Stack]:
        here = (*below, self)
        if self.phase == "value" and char not in WHITESPACE:
            waiting = replace(self, phase="in_value")
            return _begin((*below, waiting), cast(Node, self.pending), char)
        if char in WHITESPACE:
            return [here]
        if self.phase in ("first", "next") and char == '"' and self.more_keys:
            return [(*here, _Key())]
        if self.phase in ("first", "after") and char == "}" and self.may_close:
            return _end(below, self)
        if self.phase == "after" and char == "," and self.more_keys:
            return [(*below, replace(self, phase="next"))]
        if self.phase == "colon" and char == ":":
            return [(*below, replace(self, phase="value"))]
        return []

    @property
    def needed(self) -> frozenset[str]:
        """The keys the object must have: those read, those required, and those that these
        require (`dependentRequired`)."""
        return self.node.with_dependents(self.node.required | self.used)

    @property
    def may_close(self) -> bool:
        return self.needed <= self.used and len(self.used) >= self.node.min_properties

    @property
    def room_for_optional(self) -> bool:
        """Whether a key that is not needed (and requires none) may come, and still leave
        room for those that are (`maxProperties`)."""
        most = self.node.max_properties
        return most is None or len(self.needed) < most

    @property
    def more_keys(self) -> bool:
        names = self.node.names
        others = self.node.additional is not None and (
            names is None or names.may_end("", self.may_take)
        )
        return bool(self.needed - self.used) or (
            self.room_for_optional and (others or any(map(self.may_take, self.node.properties)))
        )

    def key_may_begin(self, raw: str, value: str, escape: str) -> bool:
        """Whether a key whose JSON text begins `raw` may come: `value` decoded, and the
        `escape` it is within (other keys: any string, or those of `names`; where no optional
        key has room, only the other keys needed)."""
        names = self.node.names
        other = self.node.additional is not None and self.room_for_optional
        if other and (names is None or self.other_key_may_begin(names, value, escape)):
            return True
        return any(
            _key_text(name).startswith(raw)
            for name in self.node.properties.keys() | self.needed
            if self.may_take(name)
        )

    def other_key_may_begin(self, names: StringNode, value: str, escape: str) -> bool:
        """Whether a key not among the properties, `value` so far (within `escape`), may
        be one of `names`."""
        if escape:
            return _escape_may_fit(names, value, escape)
        return names.may_grow(value) and names.may_end(value, self.may_take)

    def may_use(self, name: str) -> bool:
        """Whether key `name` leaves room for the keys needed then (`maxProperties`)."""
        most = self.node.max_properties
        needed = self.needed
        return (
            name in needed
            or most is None
            or len(self.node.with_dependents(needed | {name})) <= most
        )

    def may_take(self, name: str) -> bool:
        """Whether key `name` may come next."""
        return self.value_if_taken(name) is not None

    def value_if_taken(self, name: str) -> Node | None:
        """The schema of the value of key `name` if the key may come next, else None."""
        if name in self.used or not self.may_use(name):
            return None
        return self.node.value_node(name)

    def with_key(self, raw: str) -> Frame | None:
        name = json.loads(f'"{raw}"')
        pending = self.value_if_taken(name)
        if pending is None:
            return None
        return replace(self, used=self.used | {name}, phase="colon", pending=pending)

    def child_done(self, ended: Frame) -> Frame | None:
        return replace(self, phase="after", pending=None)


@lru_cache(maxsize=4096)
def _key_text(name: str) -> str:
    return json_text(name)[1:-1]


@dataclass(frozen=True)
class _Array(Frame):
    node: ArrayNode
    count: int = 0
    phase: str = "first"  # first | in_value | after | next
    seen: frozenset[ValueKey] = frozenset()  # the items' values, if they must differ

    def step(self, below: Stack, char: str) -> list[Stack]:
        if char in WHITESPACE:
            return [(*below, self)]
        least, most = self.node.min_items, self.node.max_items
        if self.phase in ("first", "after") and char == "]" and self.count >= least:
            return _end(below, self)
        if self.phase == "after":
            room = (most is None or self.count < most) and self.values_left
            return [(*below, replace(self, phase="next"))] if char == "," and room else []
        if self.phase == "first" and most == 0:
            return []
        waiting = replace(self, phase="in_value")
        return _begin((*below, waiting), self.node.item(self.count), char)

    @property
    def values_left(self) -> bool:
        """Whether an item may still come that differs from those before (`uniqueItems`
        over a finite set of values, an enum say, may run out)."""
        if not self.node.unique:
            return True
        count = distinct_values(self.node.items)
        if count is not None:
            return len(self.seen) < count
        return any(  # strings of a pattern, say, may run out too
            not isinstance(leaf, StringNode | Literals)
            or (isinstance(leaf, Literals) and bool(_unseen(leaf.texts, self)))
            or (isinstance(leaf, StringNode) and _string_left(leaf, self))
            for leaf in alternatives(self.node.items)
        )

    def child_done(self, ended: Frame) -> Frame | None:
        if not self.node.unique:
            return replace(self, count=self.count + 1, phase="after")
        key = ended.key()
        if key in self.seen:
            return None
        return replace(self, count=self.count + 1, phase="after", seen=self.seen | {key})


@dataclass(frozen=True)
class _String(_Inside):
    """A string value: its escape so far, and its decoded characters if the schema
    constrains them (lengths, a pattern) or `keep` asks for them (`uniqueItems`)."""

    node: StringNode
    keep: bool = False
    escape: str = ""  # "" plain, "\\" after a backslash, "u" and the hex digits of a \\u escape
    value: str = ""

    def step(self, below: Stack, char: str) -> list[Stack]:
        if char == '"' and not self.escape:
            return _end(below, self) if self.node.holds(self.value) else []
        escape = _string_char(self.escape, char)
        if escape is None:
            return []
        if not (self.node.constrained or self.keep):
            return [(*below, replace(self, escape=escape))]
        if escape:  # within an escape: only one that may decode to a character that fits
            fits = _escape_may_fit(self.node, self.value, escape)
            return [(*below, replace(self, escape=escape))] if fits else []
        value = _decoded(self.value, self.escape, char)
        if not self.node.may_grow(value) or not self.may_end(value, below[-1]):
            return []
        return [(*below, replace(self, escape="", value=value))]

    def may_end(self, value: str, array: Frame) -> bool:
        """Whether a string that begins `value` may still end: as no item of `array` before
        it (`keep`), and within its `maxLength` where a pattern asks for more characters."""
        if self.keep:
            return _string_left(self.node, array, value)
        if self.node.patterns and self.node.max_length is not None:
            return self.node.may_end(value, lambda text: True)
        return True

    def key(self) -> ValueKey:
        return ("string", self.value)


def _escape_may_fit(node: StringNode, value: str, escape: str) -> bool:
    """Whether an escape begun as `escape` after `value` may end in a character that fits:
    a short one's (`\\n`, ...), or, where no pattern constrains the string, any (`\\u`)."""
    if escape == "\\":
        short = any(node.may_grow(value + char) for char in ESCAPES.values())
        return short or (not node.patterns and _high_surrogate(value))
    return not node.patterns  # a \\u escape: a character a pattern cannot foresee


@dataclass(frozen=True)
class _Key(_Inside):
    """An object's key being read: its JSON text so far, its escape, and what it decodes to
    (the object is below)."""

    raw: str = ""
    escape: str = ""
    value: str = ""

    def step(self, below: Stack, char: str) -> list[Stack]:
        owner = cast(_Object, below[-1])
        if char == '"' and not self.escape:
            after = owner.with_key(self.raw)
            return [] if after is None else [(*below[:-1], after)]
        escape = _string_char(self.escape, char)
        if escape is None:
            return []
        value = self.value if escape else _decoded(self.value, self.escape, char)
        raw = self.raw + char
        if not owner.key_may_begin(raw, value, escape):
            return []
        return [(*below, _Key(raw, escape, value))]


def _high_surrogate(value: str) -> bool:
    """Whether `value` ends in the first half of a surrogate pair (whose second half adds
    no character)."""
    return bool(value) and "\ud800" <= value[-1] <= "\udbff"


def _decoded(value: str, escape: str, char: str) -> str:
    """`value` and the character that `char` completes after `escape` (a surrogate pair
    of \\u escapes joined into one)."""
    if not escape:
        return value + char
    if escape == "\\":
        return value + ESCAPES[char]
    decoded = chr(int(escape[1:] + char, 16))
    if "\udc00" <= decoded <= "\udfff" and _high_surrogate(value):
        high, low = ord(value[-1]) - 0xD800, ord(decoded) - 0xDC00
        return value[:-1] + chr(0x10000 + (high << 10) + low)
    return value + decoded


def _string_char(escape: str, char: str) -> str | None:
    """The escape state after `char` within a string (not its closing quote), or None."""
    if not escape:
        if char == "\\":
            return "\\"
        return "" if char >= " " else None
    if escape == "\\":
        if char == "u":
            return "u"
        return "" if char in ESCAPES else None
    if char not in HEX:
        return None
    return "" if len(escape) == 4 else escape + char


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
NUMBER_ENDS = {"zero", "int", "frac", "exp_digits"}  # a number may stop here


@dataclass(frozen=True)
class _Number(_Inside):
    """A number: where in its grammar the text stands, and the text itself if the schema
    bounds it (then it has no exponent) or `keep` asks for it (`uniqueItems`)."""

    node: NumberNode
    mode: str
    text: str
    keep: bool = False

    @property
    def may_end(self) -> bool:
        if self.mode not in NUMBER_ENDS:
            return False
        bounds = self.node.bounds
        return bounds is None or bounds.holds(Fraction(self.text))

    def step(self, below: Stack, char: str) -> list[Stack]:
        following = next(
            (to for chars, to in NUMBER_TRANSITIONS[self.mode].items() if char in chars), None
        )
        refused = ("dot", "exp") if self.node.integer else ("exp",) if self.node.bounds else ()
        if following is not None and following not in refused:
            return replace(self, mode=following).grown(below, char)
        return _end_before(below, self, char) if self.may_end else []  # it ended before

    def grown(self, below: Stack, char: str) -> list[Stack]:
        """This frame, on top of `below`, with `char` read (no stack if the bounds now
        cannot be met)."""
        bounds = self.node.bounds
        if bounds is None and not self.keep:
            return [(*below, self)]
        text = self.text + char
        if bounds is not None and not bounds.may_reach(text, self.node.integer):
            return []
        if self.keep and self.node.integer and not _integers_left(text, self.node, below[-1]):
            return []
        return [(*below, replace(self, text=text))]

    def key(self) -> ValueKey:
        return ("number", Fraction(self.text))


@dataclass(frozen=True)
class _Literal(_Inside):
    """One of several exact texts (true, an enum's values): those still possible."""

    texts: tuple[str, ...]
    read: str

    @property
    def may_end(self) -> bool:
        return self.read in self.texts

    def step(self, below: Stack, char: str) -> list[Stack]:
        read = self.read + char
        texts = tuple(text for text in self.texts if text.startswith(read))
        if not texts:
            return _end_before(below, self, char) if self.may_end else []
        if texts == (read,):
            return _end(below, _Literal(texts, read))
        return [(*below, _Literal(texts, read))]

    def key(self) -> ValueKey:
        return literal_key(self.read)
