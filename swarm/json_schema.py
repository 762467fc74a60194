"""A JSON Schema, compiled into the nodes that JSON mode's prefix checker walks. Pure.

`compile_schema` takes the schema a user gives (as OpenAI's structured outputs and
pydantic's `model_json_schema()` write them) and returns its root `Node`. The nodes describe
a subset of the values the schema accepts, which is all a generation needs: every value they
describe is valid, but they may leave out some valid ones. Integers are written without a
fraction or exponent, `enum` and `const` values in compact JSON, and a schema without `type`
that names `properties` (or `items`) is taken as an object (or array).

Supported: `type` (one or a list), `properties`, `required`, `additionalProperties`,
`minProperties`, `maxProperties`, `dependentRequired` (and draft 7's `dependencies` of
names; not next to `minProperties`), `propertyNames` (an enum of names, or a string's
constraints), `patternProperties` of one pattern (then the other keys written are the
pattern's: pydantic's `dict` with constrained keys), `items`, `prefixItems`, `minItems`,
`maxItems`, `uniqueItems` (over scalars), `minLength`, `maxLength`, `pattern` (ECMA-262's
meaning, in the `regex` module), `format` (those of `swarm.json_formats`; others are
annotations), `minimum`, `maximum`, `exclusiveMinimum`, `exclusiveMaximum`, `multipleOf` (a
bounded number is written without an exponent), `enum`, `const`, `anyOf`, `oneOf` whose
options no value can match twice (a discriminated union: objects told apart by a required
constant, or by keys that the others forbid; values of different types), `allOf` of one
schema, `$ref` into `$defs` or `definitions` (recursion included), and `true` / `{}` for any
value. Annotations (`title`, `description`, `default`, `examples`, OpenAPI's
`discriminator`, ...) are ignored, as JSON Schema itself asserts nothing with them. Any
other keyword raises `SchemaError` naming it, rather than being silently left out.
"""

from __future__ import annotations

import itertools
import json
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from fractions import Fraction
from functools import cached_property, lru_cache
from typing import Any, cast

import regex

from .errors import GenerationError
from .json_formats import FORMATS
from .json_numbers import Bounds

__all__ = [
    "ANY_OBJECT",
    "ANY_VALUE",
    "ArrayNode",
    "Choice",
    "Literals",
    "Node",
    "NumberNode",
    "ObjectNode",
    "Ref",
    "SchemaError",
    "StringNode",
    "ValueKey",
    "alternatives",
    "compile_schema",
    "distinct_values",
    "json_text",
    "literal_key",
]

IGNORED = frozenset(  # annotations, and the definitions that $ref reads
    {"$schema", "$id", "$comment", "title", "description", "default", "examples", "format"}
    | {"deprecated", "readOnly", "writeOnly", "$defs", "definitions", "discriminator"}
    | {"contentMediaType", "contentEncoding", "contentSchema"}  # annotations in 2020-12
)
KEYWORDS_OF = {  # the keywords that constrain values of one type
    "object": {"properties", "required", "additionalProperties", "minProperties"}
    | {"maxProperties", "propertyNames", "patternProperties", "dependentRequired", "dependencies"},
    "array": {"items", "prefixItems", "minItems", "maxItems", "uniqueItems"},
    "string": {"minLength", "maxLength", "pattern"},
    "number": {"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf"},
}
HANDLED = frozenset(
    {"type", "enum", "const", "anyOf", "oneOf", "allOf", "$ref"}.union(*KEYWORDS_OF.values())
)
PATTERN_TIMEOUT = 1.0  # seconds a pattern may take on one string's beginning
PROBES = "aA0 _-."  # what a search for a string's ending tries, after its patterns' characters
_CODE_ESCAPE = regex.compile(r"\\(?:u[0-9a-fA-F]{4}|x[0-9a-fA-F]{2})")  # \u00e9, \x41
SEARCH_DEPTH = 16  # characters a search for an ending looks ahead (where no maxLength ends it)
SEARCH_BUDGET = 32  # strings a search for an ending may try before it gives up (unsure)
SEARCH_SECONDS = 0.05  # and the time it may take (a slow pattern is slow at every try)
TYPES = ("object", "array", "string", "number", "integer", "boolean", "null")
ValueKey = tuple[str, Any]  # a scalar as `uniqueItems` compares it: its type, its value


class SchemaError(GenerationError):
    """The schema uses what JSON mode does not support, or no value can satisfy it."""


class Node:
    """A compiled schema: the values it describes."""


@dataclass(frozen=True, eq=False)
class ObjectNode(Node):
    """An object: its properties by name, those required, the schema of other keys' values
    (None: no other key) and the string their names must be (None: any), the names that
    may not appear (their schema is false, or they require one that may not), and the keys
    that each key requires once it appears (`dependentRequired`)."""

    properties: Mapping[str, Node]
    required: frozenset[str] = frozenset()
    additional: Node | None = None
    forbidden: frozenset[str] = frozenset()
    min_properties: int = 0
    max_properties: int | None = None
    names: StringNode | None = None
    dependent: Mapping[str, frozenset[str]] = field(default_factory=dict)

    def with_dependents(self, names: frozenset[str]) -> frozenset[str]:
        """`names` and the keys they require, and those require, and so on."""
        if not self.dependent:
            return names
        needed, todo = set(names), list(names)
        while todo:
            for other in self.dependent.get(todo.pop(), ()):
                if other not in needed:
                    needed.add(other)
                    todo.append(other)
        return frozenset(needed)

    def value_node(self, name: str) -> Node | None:
        """The schema of key `name`'s value, or None if the key may not appear (its schema
        is false, or a reference to a definition that is, or it is no name of other keys)."""
        if name in self.forbidden:
            return None
        node = self.properties.get(name)
        if node is None and (self.names is None or self.names.holds(name)):
            node = self.additional
        return node if node is not None and alternatives(node) else None


@dataclass(frozen=True, eq=False)
class ArrayNode(Node):
    """An array: its first items' schemas (`prefix`), then `items` for the rest; if
    `unique`, no two items equal (scalars only)."""

    items: Node
    min_items: int = 0
    max_items: int | None = None
    prefix: tuple[Node, ...] = ()
    unique: bool = False

    def item(self, index: int) -> Node:
        return self.prefix[index] if index < len(self.prefix) else self.items


@dataclass(frozen=True, eq=False)
class StringNode(Node):
    """A string of `min_length` to `max_length` characters (code points) in which each
    of `patterns` (a `pattern`, a `format`) finds a match."""

    min_length: int = 0
    max_length: int | None = None
    patterns: tuple[regex.Pattern[str], ...] = ()

    @property
    def constrained(self) -> bool:
        return bool(self.min_length or self.patterns) or self.max_length is not None

    def may_grow(self, value: str) -> bool:
        """Whether a string that begins `value` (decoded) may still be one of these."""
        if self.max_length is not None and len(value) > self.max_length:
            return False
        return all(_search(pattern, value, partial=True) for pattern in self.patterns)

    def holds(self, value: str) -> bool:
        """Whether `value` (decoded) is one of these strings."""
        if len(value) < self.min_length or not self.may_grow(value):
            return False
        return all(_search(pattern, value, partial=False) for pattern in self.patterns)

    def may_end(self, value: str, fits: Callable[[str], bool]) -> bool:
        """Whether a string of these that begins `value` may end as one that `fits` (not
        one already used, say), looked for depth first over the characters the patterns
        name and a few others; True where the search gives up unsure (too deep, too many
        tries, too long)."""
        budget = iter(range(SEARCH_BUDGET))
        deadline = time.monotonic() + SEARCH_SECONDS
        longest = len(value) + SEARCH_DEPTH if self.max_length is None else self.max_length

        def ends(text: str) -> bool:
            if self.holds(text) and fits(text):
                return True
            if len(text) >= longest and self.max_length is not None:
                return False
            if len(text) >= longest or next(budget, None) is None:
                raise _Unsure
            for char in self.probes:
                if time.monotonic() > deadline:
                    raise _Unsure
                if self.may_grow(text + char) and ends(text + char):
                    return True
            return False

        try:
            return ends(value)
        except _Unsure:
            return True

    @cached_property
    def probes(self) -> str:
        """The characters a search for an ending tries: those the patterns name (written or
        escaped, a range by its ends), then a few (a digit, a letter, a space...)."""
        named = "".join(pattern.pattern for pattern in self.patterns)
        escaped = "".join(chr(int(code[2:], 16)) for code in _CODE_ESCAPE.findall(named))
        return "".join(dict.fromkeys(c for c in named + escaped + PROBES if c.isprintable()))


class _Unsure(Exception):
    """A search for a string's ending gave up."""


def _search(pattern: regex.Pattern[str], value: str, partial: bool) -> bool:
    """Whether `pattern` finds a match in `value` (`partial`: in `value` and more text)."""
    try:
        return pattern.search(value, partial=partial, timeout=PATTERN_TIMEOUT) is not None
    except TimeoutError:
        raise SchemaError(
            f"the pattern {pattern.pattern!r} took over {PATTERN_TIMEOUT} s "
            f"on a string of {len(value)} characters"
        ) from None


@dataclass(frozen=True, eq=False)
class NumberNode(Node):
    """A number (an integer if `integer`), within `bounds` if there are any."""

    integer: bool = False
    bounds: Bounds | None = None


@dataclass(frozen=True, eq=False)
class Literals(Node):
    """One of these texts, exactly (`true`, `null`, an enum's values in compact JSON)."""

    texts: tuple[str, ...]


@dataclass(frozen=True, eq=False)
class Choice(Node):
    """Any of the options (`anyOf`, a list of types)."""

    options: tuple[Node, ...]


@dataclass(frozen=True, eq=False)
class Ref(Node):
    """The node named `name` in `table`, looked up when needed (so schemas may recurse)."""

    name: str
    table: dict[str, Node] = field(repr=False)

    @property
    def target(self) -> Node:
        return self.table[self.name]


@lru_cache(maxsize=4096)
def alternatives(node: Node) -> tuple[Node, ...]:
    """The nodes one of which a value of `node` is (choices and references unfolded)."""
    if isinstance(node, Ref):
        return alternatives(node.target)
    if isinstance(node, Choice):
        return tuple(leaf for option in node.options for leaf in alternatives(option))
    return (node,)


@lru_cache(maxsize=4096)
def distinct_values(node: Node) -> int | None:
    """How many different scalar values `node` has, if they are few enough to count (its
    enum values, integers within bounds; None: more than can be counted)."""
    literals: set[ValueKey] = set()
    numbers = 0
    for leaf in alternatives(node):
        if isinstance(leaf, Literals):
            literals.update(literal_key(text) for text in leaf.texts)
        elif isinstance(leaf, NumberNode) and leaf.bounds is not None:
            count = leaf.bounds.value_count(leaf.integer)
            if count is None:
                return None
            numbers += count
        else:
            return None
    return len(literals) + numbers


def literal_key(text: str) -> ValueKey:
    """A scalar's JSON text as `uniqueItems` compares values: numbers by value (1 is 1.0),
    but true is not 1."""
    value = json.loads(text)
    if isinstance(value, bool):
        return ("boolean", value)
    if isinstance(value, int | float):
        return ("number", Fraction(text))
    return ("string" if isinstance(value, str) else "null", value)


def json_text(value: Any) -> str:
    """A value as compact JSON, the one spelling JSON mode writes it in."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def _any_value() -> Node:
    table: dict[str, Node] = {}
    any_value = Ref("any value", table)
    table["any value"] = Choice(
        (
            ObjectNode({}, additional=any_value),
            ArrayNode(any_value),
            StringNode(),
            NumberNode(),
            Literals(("true", "false", "null")),
        )
    )
    return any_value


ANY_VALUE = _any_value()
NOTHING = Choice(())  # the schema false
ANY_OBJECT = ObjectNode({}, additional=ANY_VALUE)


def compile_schema(schema: Any) -> Node:
    """The root node of `schema` (a dict, a bool, or its JSON text), or `SchemaError`."""
    if isinstance(schema, str):
        try:
            schema = json.loads(schema)
        except ValueError as error:
            raise SchemaError(f"the schema is not JSON: {error}") from None
    table: dict[str, Node] = {}
    compiler = _Compiler(schema, table)
    root = compiler.node(schema, "#")
    if root is NOTHING:
        raise SchemaError("#: the schema false accepts no value")
    table["#"] = root
    for name in list(table):
        _check_refs(table[name], [])
    for where, choice in compiler.exclusive:
        _check_exclusive(choice, where)
    for where, array in compiler.unique:
        _check_unique(array, where)
    return root


class _Compiler:
    def __init__(self, root: Any, table: dict[str, Node]) -> None:
        self.root = root
        self.table = table
        self.exclusive: list[tuple[str, Choice]] = []  # each oneOf, checked once all is read
        self.unique: list[tuple[str, ArrayNode]] = []  # each uniqueItems, the same

    def node(self, schema: Any, where: str) -> Node:
        if schema is True or schema == {}:
            return ANY_VALUE
        if schema is False:
            return NOTHING
        if not isinstance(schema, dict):
            raise SchemaError(f"{where}: a schema is an object or a boolean, not {schema!r}")
        for keyword in schema:
            if keyword not in HANDLED and keyword not in IGNORED:
                raise SchemaError(f"{where}: the keyword {keyword!r} is not supported")
        handled = set(schema) & HANDLED
        for keyword in ("$ref", "anyOf", "oneOf", "allOf"):
            if keyword in schema and len(handled) > 1:
                raise SchemaError(f"{where}: {keyword} next to other keywords is not supported")
        if "$ref" in schema:
            return self.ref(schema["$ref"], where)
        if "anyOf" in schema:
            return Choice(self.options(schema, "anyOf", where))
        if "oneOf" in schema:
            choice = Choice(self.options(schema, "oneOf", where))
            self.exclusive.append((where, choice))
            return choice
        if "allOf" in schema:
            options = self.options(schema, "allOf", where)
            if len(options) > 1:
                raise SchemaError(f"{where}: allOf of more than one schema is not supported")
            return options[0]
        if "const" in schema or "enum" in schema:
            beside = sorted(handled - {"const", "enum", "type"})
            if beside:
                raise SchemaError(f"{where}: {beside[0]} next to enum or const is not supported")
            return self.literals(schema, where)
        implied = [kind for kind, keywords in KEYWORDS_OF.items() if keywords & handled]
        types = schema.get("type", implied or None)
        if types is None:
            return ANY_VALUE
        if isinstance(types, str):
            types = [types]
        if not isinstance(types, list) or not types or any(t not in TYPES for t in types):
            raise SchemaError(f"{where}: type must be one of {', '.join(TYPES)}, or a list")
        typed = [self.typed(kind, schema, where) for kind in dict.fromkeys(types)]
        return typed[0] if len(typed) == 1 else Choice(tuple(typed))

    def options(self, schema: dict[str, Any], keyword: str, where: str) -> tuple[Node, ...]:
        options = schema[keyword]
        if not isinstance(options, list) or not options:
            raise SchemaError(f"{where}: {keyword} must be a list of schemas")
        return tuple(self.node(o, f"{where}/{keyword}/{i}") for i, o in enumerate(options))

    def typed(self, kind: str, schema: dict[str, Any], where: str) -> Node:
        if kind == "object":
            return self.object(schema, where)
        if kind == "array":
            return self.array(schema, where)
        if kind == "string":
            return self.string(schema, where)
        if kind in ("number", "integer"):
            integer = kind == "integer"
            return NumberNode(integer, self.bounds(schema, integer, where))
        return Literals(("true", "false") if kind == "boolean" else ("null",))

    def object(self, schema: dict[str, Any], where: str) -> Node:
        properties = schema.get("properties", {})
        required = schema.get("required", [])
        if not isinstance(properties, dict):
            raise SchemaError(f"{where}: properties must be an object")
        if not isinstance(required, list) or not all(isinstance(r, str) for r in required):
            raise SchemaError(f"{where}: required must be a list of names")
        compiled = {
            name: self.node(sub, f"{where}/properties/{name}") for name, sub in properties.items()
        }
        additional_schema = schema.get("additionalProperties", True)
        additional = (
            None
            if additional_schema is False
            else self.node(additional_schema, f"{where}/additionalProperties")
        )
        names = None
        if schema.get("patternProperties"):
            names, additional = self.pattern_keys(schema["patternProperties"], compiled, where)
        if "propertyNames" in schema:
            given = self.node(schema["propertyNames"], f"{where}/propertyNames")
            compiled, names, additional = self.key_names(given, compiled, names, additional, where)
        nodes = {name: node for name, node in compiled.items() if node is not NOTHING}
        forbidden = frozenset(properties) - set(nodes)
        least, most = self.counts(schema, "minProperties", "maxProperties", where)
        dependent = self.dependents(schema, where)
        if dependent and "minProperties" in schema:
            raise SchemaError(f"{where}: dependentRequired next to minProperties is not supported")
        node = ObjectNode(nodes, frozenset(required), additional, forbidden, least, most, names,
                          dependent)  # fmt: skip

        def fits(keys: frozenset[str]) -> bool:  # all may appear, and together
            return (most is None or len(keys) <= most) and all(
                name not in forbidden
                and (
                    name in nodes
                    or (additional is not None and (names is None or names.holds(name)))
                )
                for name in keys
            )

        needed = node.with_dependents(frozenset(required))
        for name in sorted(needed):
            if not fits(frozenset({name})):
                raise SchemaError(f"{where}: {name!r} is required but may not appear")
        if not fits(needed):
            raise SchemaError(f"{where}: maxProperties is below the count of required keys")
        if additional is None and least > len(nodes):
            raise SchemaError(f"{where}: minProperties asks for more keys than may appear")
        barred = {key for key in dependent if not fits(node.with_dependents(needed | {key}))}
        return replace(node, forbidden=forbidden | barred) if barred else node

    def dependents(self, schema: dict[str, Any], where: str) -> dict[str, frozenset[str]]:
        """The keys each key requires: `dependentRequired`, and `dependencies` where it
        names keys (draft 7; where it gives a schema, `dependentSchemas`, it is refused)."""
        dependent: dict[str, frozenset[str]] = {}
        for keyword in ("dependentRequired", "dependencies"):
            given = schema.get(keyword, {})
            if not isinstance(given, dict) or not all(
                isinstance(names, list) and all(isinstance(name, str) for name in names)
                for names in given.values()
            ):
                raise SchemaError(f"{where}: {keyword} must map each name to a list of names "
                                  "(schemas there are not supported)")  # fmt: skip
            for name, names in given.items():
                dependent[name] = dependent.get(name, frozenset()) | (frozenset(names) - {name})
        return {name: names for name, names in dependent.items() if names}

    def pattern_keys(
        self, patterns: Any, properties: dict[str, Node], where: str
    ) -> tuple[StringNode, Node]:
        """`patternProperties`: the string that other keys are (its one pattern's), and the
        schema of their values. Keys that match no pattern are not written, even where
        `additionalProperties` allows them (JSON mode writes a part of what a schema
        allows)."""
        if not isinstance(patterns, dict):
            raise SchemaError(f"{where}: patternProperties must be an object")
        if len(patterns) > 1:
            raise SchemaError(f"{where}: patternProperties of more than one pattern is not "
                              "supported")  # fmt: skip
        ((pattern, value),) = patterns.items()
        names = self.string({"pattern": pattern}, f"{where}/patternProperties")
        for name in properties:
            if names.holds(name):
                raise SchemaError(f"{where}: property {name!r} matches the pattern {pattern!r} "
                                  "of patternProperties too: not supported")  # fmt: skip
        return names, self.node(value, f"{where}/patternProperties/{pattern}")

    def key_names(
        self,
        given: Node,
        properties: dict[str, Node],
        names: StringNode | None,
        additional: Node | None,
        where: str,
    ) -> tuple[dict[str, Node], StringNode | None, Node | None]:
        """`propertyNames` (compiled: `given`) over an object's properties, the string other
        keys are and their values' schema. An enum of names (pydantic's `dict` with `Literal`
        or `Enum` keys) leaves only its names, those not among `properties` with the schema
        of other keys; a string's constraints join those other keys already have."""
        if given is ANY_VALUE:
            return properties, names, additional
        leaves = alternatives(given)
        if leaves and all(isinstance(leaf, Literals) for leaf in leaves):
            listed = [json.loads(text) for leaf in leaves for text in cast(Literals, leaf).texts]
            keys = [key for key in listed if isinstance(key, str)]
            others = {} if additional is None else {
                key: additional for key in keys if names is None or names.holds(key)
            }  # fmt: skip
            return others | {n: properties[n] for n in keys if n in properties}, None, None
        if len(leaves) == 1 and isinstance(leaves[0], StringNode):
            string = leaves[0]
            kept = {name: node for name, node in properties.items() if string.holds(name)}
            return kept, string if names is None else _both(names, string), additional
        raise SchemaError(f"{where}: propertyNames must be an enum of names or a string's "
                          "constraints")  # fmt: skip

    def array(self, schema: dict[str, Any], where: str) -> Node:
        if isinstance(schema.get("items"), list):
            raise SchemaError(f"{where}: items as a list is not supported (prefixItems is)")
        prefix = schema.get("prefixItems", [])
        if not isinstance(prefix, list):
            raise SchemaError(f"{where}: prefixItems must be a list of schemas")
        firsts = [self.node(sub, f"{where}/prefixItems/{i}") for i, sub in enumerate(prefix)]
        items = self.node(schema.get("items", True), f"{where}/items")
        least, most = self.counts(schema, "minItems", "maxItems", where)
        ends = [index for index, node in enumerate(firsts) if node is NOTHING]
        limit = ends[0] if ends else len(firsts) if items is NOTHING else None
        if limit is not None:
            if least > limit:
                raise SchemaError(f"{where}: its items leave no array of {least} items")
            most = limit if most is None else min(most, limit)
        unique = schema.get("uniqueItems", False)
        if not isinstance(unique, bool):
            raise SchemaError(f"{where}: uniqueItems must be true or false")
        if unique and firsts:
            raise SchemaError(f"{where}: uniqueItems next to prefixItems is not supported")
        array = ArrayNode(items, least, most, tuple(firsts[:limit]), unique)
        if unique and most != 0:
            self.unique.append((where, array))
        return array

    def string(self, schema: dict[str, Any], where: str) -> StringNode:
        least, most = self.counts(schema, "minLength", "maxLength", where)
        name = schema.get("format")
        patterns = [FORMATS[name]] if isinstance(name, str) and name in FORMATS else []
        pattern = schema.get("pattern")
        if pattern is not None and not isinstance(pattern, str):
            raise SchemaError(f"{where}: pattern must be a string")
        if pattern is not None:
            try:
                patterns.append(regex.compile(_ecma_pattern(pattern), regex.ASCII))
            except regex.error as error:
                raise SchemaError(f"{where}: pattern {pattern!r}: {error}") from None
        return StringNode(least, most, tuple(patterns))

    def counts(
        self, schema: dict[str, Any], low: str, high: str, where: str
    ) -> tuple[int, int | None]:
        """The counts that keywords `low` and `high` set (0 and None when absent)."""
        least, most = schema.get(low, 0), schema.get(high)
        if isinstance(least, bool) or not isinstance(least, int) or least < 0:
            raise SchemaError(f"{where}: {low} must be a count")
        if most is not None and (isinstance(most, bool) or not isinstance(most, int)):
            raise SchemaError(f"{where}: {high} must be a count")
        if most is not None and most < least:
            raise SchemaError(f"{where}: {high} must be a count of at least {low}")
        return least, most

    def bounds(self, schema: dict[str, Any], integer: bool, where: str) -> Bounds | None:
        """The bounds that `minimum` and the others set (the tighter of two at one end)."""
        ends: dict[str, Fraction] = {}
        for keyword in KEYWORDS_OF["number"]:
            value = schema.get(keyword)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise SchemaError(f"{where}: {keyword} must be a number")
            if not math.isfinite(value):
                raise SchemaError(f"{where}: {keyword} must be finite")
            ends[keyword] = Fraction(repr(value)) if isinstance(value, float) else Fraction(value)
        if not ends:
            return None
        step = ends.get("multipleOf")
        if step is not None and step <= 0:
            raise SchemaError(f"{where}: multipleOf must be above 0")
        low, low_open = _tighter(ends.get("minimum"), ends.get("exclusiveMinimum"), max)
        high, high_open = _tighter(ends.get("maximum"), ends.get("exclusiveMaximum"), min)
        bounds = Bounds(low, high, low_open, high_open, step)
        if bounds.empty or not (bounds.may_reach("", integer) or bounds.may_reach("-", integer)):
            kind = "integer" if integer else "number"
            raise SchemaError(f"{where}: no {kind} lies within its bounds")
        return bounds

    def literals(self, schema: dict[str, Any], where: str) -> Node:
        values = [schema["const"]] if "const" in schema else schema["enum"]
        if not isinstance(values, list) or not values:
            raise SchemaError(f"{where}: enum must be a list of values")
        types = schema.get("type")
        if types is not None:
            kinds = {types} if isinstance(types, str) else set(types)
            values = [value for value in values if _kinds(value) & kinds]
        if not values:
            raise SchemaError(f"{where}: no value of the enum has the type asked for")
        try:
            return Literals(tuple(dict.fromkeys(json_text(value) for value in values)))
        except ValueError as error:  # NaN or infinity
            raise SchemaError(f"{where}: {error}") from None

    def ref(self, target: Any, where: str) -> Node:
        if target == "#":
            return Ref("#", self.table)
        for section in ("$defs", "definitions"):
            prefix = f"#/{section}/"
            if isinstance(target, str) and target.startswith(prefix):
                name = target[len(prefix) :]
                definitions = self.root.get(section, {}) if isinstance(self.root, dict) else {}
                if name not in definitions:
                    raise SchemaError(f"{where}: $ref {target!r} names no definition")
                if target not in self.table:
                    self.table[target] = NOTHING  # held while compiling (recursion)
                    self.table[target] = self.node(definitions[name], target)
                return Ref(target, self.table)
        raise SchemaError(f"{where}: $ref {target!r}: only #, #/$defs/... and #/definitions/...")


def _ecma_pattern(pattern: str) -> str:
    """A JSON Schema `pattern` (ECMA-262's syntax) in Python's, to compile with `regex.ASCII`
    (`\\d`, `\\w` ASCII only, as ECMA-262's are): `$` is the end of the string (Python's
    is also before a last newline) and `.` no line's end (Python's is any but a newline)."""
    out: list[str] = []
    position, in_class = 0, False
    while position < len(pattern):
        char = pattern[position]
        if char == "\\":
            out.append(pattern[position : position + 2])
            position += 2
            continue
        if in_class:
            in_class = char != "]"
        elif char == "[":
            in_class = True
            first = position + 2 if pattern.startswith("^", position + 1) else position + 1
            if pattern.startswith("]", first):  # a first "]" is one of the class's characters
                out.append(pattern[position : first + 1])
                position = first + 1
                continue
        elif char == "$":
            char = "\\Z"
        elif char == ".":
            char = "[^\\n\\r\\u2028\\u2029]"
        out.append(char)
        position += 1
    return "".join(out)


def _both(first: StringNode, second: StringNode) -> StringNode:
    """The strings that are both."""
    lengths = [node.max_length for node in (first, second) if node.max_length is not None]
    least = max(first.min_length, second.min_length)
    return StringNode(least, min(lengths, default=None), first.patterns + second.patterns)


def _tighter(
    closed: Fraction | None, open_: Fraction | None, pick: Callable[[Fraction, Fraction], Fraction]
) -> tuple[Fraction | None, bool]:
    """The tighter of a bound that holds its end (`minimum`) and one that does not
    (`exclusiveMinimum`): `pick` is max for a low bound, min for a high one."""
    if closed is None or open_ is None:
        return (open_, True) if closed is None else (closed, False)
    tighter = pick(closed, open_)
    return tighter, tighter == open_


def _kinds(value: Any) -> set[str]:
    """The JSON Schema types a Python value has (an integer is a number too)."""
    if isinstance(value, bool):
        return {"boolean"}
    if value is None:
        return {"null"}
    if isinstance(value, int) or (isinstance(value, float) and value.is_integer()):
        return {"integer", "number"}
    if isinstance(value, float):
        return {"number"}
    names: dict[type, str] = {str: "string", list: "array", dict: "object"}
    return {names.get(type(value), "?")}


def _check_refs(node: Node, chain: list[str]) -> None:
    """Refuse a reference that reaches itself before any text (`A: {$ref: A}`)."""
    if isinstance(node, Ref):
        if node.name in chain:
            raise SchemaError(f"$ref {node.name!r} refers to itself before any value begins")
        _check_refs(node.target, [*chain, node.name])
    elif isinstance(node, Choice):
        for option in node.options:
            _check_refs(option, chain)


def _check_unique(array: ArrayNode, where: str) -> None:
    """Refuse `uniqueItems` over items that are not all scalars, or too few to count."""
    leaves = alternatives(array.items)
    texts = [text for leaf in leaves if isinstance(leaf, Literals) for text in leaf.texts]
    if any(isinstance(leaf, ObjectNode | ArrayNode) for leaf in leaves) or any(
        text[0] in "[{" for text in texts
    ):
        raise SchemaError(f"{where}: uniqueItems over objects or arrays is not supported")
    count = distinct_values(array.items)
    if count is not None and array.min_items > count:
        raise SchemaError(f"{where}: its items have {count} values, too few for minItems")


def _check_exclusive(choice: Choice, where: str) -> None:
    """Refuse a `oneOf` unless no value can match two of its options: then it is `anyOf`."""
    for first, second in itertools.combinations(range(len(choice.options)), 2):
        if not _disjoint(choice.options[first], choice.options[second], frozenset()):
            raise SchemaError(
                f"{where}: oneOf's options {first} and {second} may both match a value (JSON "
                "mode takes a oneOf whose options are told apart, as a discriminated "
                "union's are by a constant; anyOf otherwise)"
            )


def _disjoint(first: Node, second: Node, seen: frozenset[tuple[int, int]]) -> bool:
    """Whether no value is of both nodes, as far as their types, constants and required
    keys tell (False also when they do not tell)."""
    pair = (id(first), id(second))
    if pair in seen:  # a recursive schema, back where it was
        return False
    return all(
        _leaves_disjoint(one, other, seen | {pair})
        for one in alternatives(first)
        for other in alternatives(second)
    )


LEAF_KINDS: dict[type, set[str]] = {
    ObjectNode: {"object"},
    ArrayNode: {"array"},
    StringNode: {"string"},
    NumberNode: {"number", "integer"},
}


def _leaves_disjoint(first: Node, second: Node, seen: frozenset[tuple[int, int]]) -> bool:
    if isinstance(first, Literals) and isinstance(second, Literals):
        values = [json.loads(text) for text in first.texts]
        return not any(
            _kinds(one) & _kinds(other) and one == other
            for one in values
            for other in map(json.loads, second.texts)
        )
    if isinstance(second, Literals):
        first, second = second, first
    if isinstance(first, Literals):
        kinds = LEAF_KINDS[type(second)]
        return not any(_kinds(json.loads(text)) & kinds for text in first.texts)
    if type(first) is not type(second):
        return True
    if isinstance(first, ObjectNode) and isinstance(second, ObjectNode):
        return any(
            _key_tells_apart(first, second, name, seen)
            for name in sorted(first.required | second.required)
        )
    return False


def _key_tells_apart(
    first: ObjectNode, second: ObjectNode, name: str, seen: frozenset[tuple[int, int]]
) -> bool:
    """Whether key `name`, required by one of the objects, tells them apart: the other
    may not have it, or both require it with values that differ."""
    one, other = first.value_node(name), second.value_node(name)
    if one is None or other is None:
        return True
    both = name in first.required and name in second.required
    return both and _disjoint(one, other, seen)
