"""A JSON Schema, compiled into the nodes that JSON mode's prefix checker walks. Pure.

`compile_schema` takes the schema a user gives (as OpenAI's structured outputs and
pydantic's `model_json_schema()` write them) and returns its root `Node`. The nodes describe
a subset of the values the schema accepts, which is all a generation needs: every value they
describe is valid, but they may leave out some valid ones. Integers are written without a
fraction or exponent, `enum` and `const` values in compact JSON, and a schema without `type`
that names `properties` (or `items`) is taken as an object (or array).

Supported: `type` (one or a list), `properties`, `required`, `additionalProperties`,
`items`, `minItems`, `maxItems`, `enum`, `const`, `anyOf`, `$ref` into `$defs` or
`definitions` (recursion included), and `true` / `{}` for any value. Annotations (`title`,
`description`, `default`, `examples`, `format`, ...) are ignored, as JSON Schema itself
asserts nothing with them. Any other keyword raises `SchemaError` naming it, rather than
being silently left out.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .errors import GenerationError

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
    "compile_schema",
    "json_text",
]

IGNORED = frozenset(  # annotations, and the definitions that $ref reads
    {"$schema", "$id", "$comment", "title", "description", "default", "examples", "format"}
    | {"deprecated", "readOnly", "writeOnly", "$defs", "definitions"}
)
HANDLED = frozenset(
    {"type", "properties", "required", "additionalProperties", "items", "minItems"}
    | {"maxItems", "enum", "const", "anyOf", "$ref"}
)
TYPES = ("object", "array", "string", "number", "integer", "boolean", "null")


class SchemaError(GenerationError):
    """The schema uses what JSON mode does not support, or no value can satisfy it."""


class Node:
    """A compiled schema: the values it describes."""


@dataclass(frozen=True, eq=False)
class ObjectNode(Node):
    """An object: its properties by name, those required, the schema of other keys (None:
    no other key), and the names that may not appear (their schema is false)."""

    properties: Mapping[str, Node]
    required: frozenset[str] = frozenset()
    additional: Node | None = None
    forbidden: frozenset[str] = frozenset()


@dataclass(frozen=True, eq=False)
class ArrayNode(Node):
    items: Node
    min_items: int = 0
    max_items: int | None = None


@dataclass(frozen=True, eq=False)
class StringNode(Node):
    pass


@dataclass(frozen=True, eq=False)
class NumberNode(Node):
    integer: bool = False


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
    return root


class _Compiler:
    def __init__(self, root: Any, table: dict[str, Node]) -> None:
        self.root = root
        self.table = table

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
        if "$ref" in schema:
            if len(set(schema) & HANDLED) > 1:
                raise SchemaError(f"{where}: $ref next to other keywords is not supported")
            return self.ref(schema["$ref"], where)
        if "anyOf" in schema:
            return self.any_of(schema, where)
        if "const" in schema or "enum" in schema:
            return self.literals(schema, where)
        types = schema.get("type", self.implied_type(schema))
        if types is None:
            return ANY_VALUE
        if isinstance(types, str):
            types = [types]
        if not isinstance(types, list) or not types or any(t not in TYPES for t in types):
            raise SchemaError(f"{where}: type must be one of {', '.join(TYPES)}, or a list")
        options = [self.typed(kind, schema, where) for kind in dict.fromkeys(types)]
        return options[0] if len(options) == 1 else Choice(tuple(options))

    def implied_type(self, schema: dict[str, Any]) -> str | None:
        if {"properties", "required", "additionalProperties"} & set(schema):
            return "object"
        if {"items", "minItems", "maxItems"} & set(schema):
            return "array"
        return None

    def typed(self, kind: str, schema: dict[str, Any], where: str) -> Node:
        if kind == "object":
            return self.object(schema, where)
        if kind == "array":
            return self.array(schema, where)
        if kind == "string":
            return StringNode()
        if kind in ("number", "integer"):
            return NumberNode(integer=kind == "integer")
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
        nodes = {name: node for name, node in compiled.items() if node is not NOTHING}
        forbidden = frozenset(compiled) - set(nodes)
        additional_schema = schema.get("additionalProperties", True)
        additional = (
            None
            if additional_schema is False
            else self.node(additional_schema, f"{where}/additionalProperties")
        )
        for name in required:
            if name in forbidden or (name not in nodes and additional is None):
                raise SchemaError(f"{where}: {name!r} is required but may not appear")
        return ObjectNode(nodes, frozenset(required), additional, forbidden)

    def array(self, schema: dict[str, Any], where: str) -> Node:
        items = self.node(schema.get("items", True), f"{where}/items")
        least, most = schema.get("minItems", 0), schema.get("maxItems")
        if not isinstance(least, int) or least < 0:
            raise SchemaError(f"{where}: minItems must be a count")
        if most is not None and (not isinstance(most, int) or most < least):
            raise SchemaError(f"{where}: maxItems must be a count of at least minItems")
        if items is NOTHING:
            if least > 0:
                raise SchemaError(f"{where}: items false leaves no array of {least} items")
            most = 0
        return ArrayNode(items, least, most)

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

    def any_of(self, schema: dict[str, Any], where: str) -> Node:
        options = schema["anyOf"]
        if not isinstance(options, list) or not options:
            raise SchemaError(f"{where}: anyOf must be a list of schemas")
        if len(set(schema) & HANDLED) > 1:
            raise SchemaError(f"{where}: anyOf next to other keywords is not supported")
        return Choice(tuple(self.node(o, f"{where}/anyOf/{i}") for i, o in enumerate(options)))

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
