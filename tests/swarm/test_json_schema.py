"""JSON schemas in JSON mode: the prefix checker against the reference validator
(`jsonschema`). Values drawn from each schema, in several layouts, are accepted at every
prefix and complete at the end; near misses of each schema, and of each constraint alone,
are complete exactly when the validator accepts them; bounded numbers and unique items
have no dead ends (what the checker takes can still end); edges fall on the right side;
and the schema keywords it cannot honour are refused by name."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from enum import IntEnum, StrEnum
from ipaddress import IPv4Address
from typing import Annotated, Any, Literal, cast
from uuid import UUID

import jsonschema
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ConfigDict, Field, HttpUrl, StringConstraints

from swarm import json_schema
from swarm.json_prefix import JsonPrefix
from swarm.json_schema import SchemaError, StringNode, compile_schema, literal_key

PET = {
    "type": "object",
    "properties": {
        "kind": {"enum": ["cat", "dog"]},
        "legs": {"type": "integer", "minimum": 0, "maximum": 8},
    },
    "required": ["kind"],
    "additionalProperties": False,
}
PERSON = {  # as pydantic writes one: titles, $defs, anyOf with null
    "$defs": {"Pet": PET},
    "title": "Person",
    "type": "object",
    "properties": {
        "name": {"type": "string", "title": "Name"},
        "age": {"anyOf": [{"type": "integer"}, {"type": "null"}], "default": None},
        "score": {"type": "number"},
        "pets": {"type": "array", "items": {"$ref": "#/$defs/Pet"}, "maxItems": 2},
        "tags": {"type": "array", "items": {"type": "string"}, "minItems": 1},
        "ok": {"type": "boolean"},
        "unit": {"const": "kg"},
    },
    "required": ["name", "pets"],
    "additionalProperties": False,
}
TREE = {  # recursive
    "$defs": {
        "node": {
            "type": "object",
            "properties": {
                "value": {"type": "integer"},
                "children": {"type": "array", "items": {"$ref": "#/$defs/node"}},
            },
            "required": ["value"],
            "additionalProperties": False,
        }
    },
    "$ref": "#/$defs/node",
}
OPEN = {  # other keys allowed, with a schema of their own
    "type": "object",
    "properties": {"id": {"type": "integer"}},
    "required": ["id"],
    "additionalProperties": {"type": "string"},
}
CHOICES = {"type": "array", "items": {"enum": [1, 2.5, "x", None, True]}, "minItems": 1,
           "maxItems": 3}  # fmt: skip
SHOP = {  # bounds and combinators, as pydantic writes constr, conint, tuples and unions
    "$defs": {
        "Card": {
            "type": "object",
            "properties": {"method": {"const": "card", "type": "string"},
                           "last4": {"type": "string", "pattern": "^[0-9]{4}$"}},
            "required": ["method", "last4"],
            "additionalProperties": {"type": "boolean"},
        },
        "Cash": {
            "type": "object",
            "properties": {"method": {"const": "cash"},
                           "change": {"type": "number", "minimum": 0, "exclusiveMaximum": 20}},
            "required": ["method"],
            "additionalProperties": False,
        },
    },
    "type": "object",
    "properties": {
        "code": {"type": "string", "minLength": 2, "maxLength": 4},
        "count": {"type": "integer", "exclusiveMinimum": 0, "maximum": 120},
        "price": {"type": "number", "minimum": -2.5, "maximum": 99.5},
        "where": {"type": "array", "prefixItems": [{"type": "number"}, {"type": "string"}],
                  "items": False, "minItems": 1},
        "payment": {"oneOf": [{"$ref": "#/$defs/Card"}, {"$ref": "#/$defs/Cash"}],
                    "discriminator": {"propertyName": "method"}},
        "note": {"allOf": [{"type": "string", "maxLength": 3}], "description": "short"},
        "labels": {"type": "object", "additionalProperties": {"type": "integer"},
                   "minProperties": 1, "maxProperties": 2},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 2},
                 "uniqueItems": True, "maxItems": 3},
    },
    "required": ["code", "count"],
    "additionalProperties": False,
}  # fmt: skip
FALSE = {"type": "object", "properties": {"a": True, "b": False, "c": {"items": False}}}
NAMES = {"additionalProperties": {"type": "integer"}, "propertyNames": {"maxLength": 2}}
COLORS = {"additionalProperties": {"type": "integer"}, "propertyNames": {"enum": ["red", "blue"]}}
ONLY_K = {"patternProperties": {"^k": {"type": "integer"}}, "additionalProperties": False}
BILLING = {  # JSON Schema's own example of dependentRequired, with a chain and a bound
    "type": "object",
    "properties": {"name": {"type": "string"}, "card": {"type": "integer"},
                   "address": {"type": "string"}, "zip": {"type": "string", "maxLength": 5}},
    "required": ["name"],
    "dependentRequired": {"card": ["address"], "address": ["zip"]},
    "maxProperties": 4,
    "additionalProperties": False,
}  # fmt: skip
DRAFT_7 = {  # the same in draft 7's words, which jsonschema reads by its $schema
    "$schema": "http://json-schema.org/draft-07/schema#",
    "properties": {"a": {}, "b": {}},
    "dependencies": {"a": ["b"]},
}
SCHEMAS = {"person": PERSON, "tree": TREE, "open": OPEN, "choices": CHOICES, "shop": SHOP,
           "billing": BILLING}  # fmt: skip


def instances(schema: Any, root: Any, loose: bool = False) -> Any:
    """A strategy for values of `schema` (the keywords above only). `loose`: values that
    are near misses as often as not (keys left out or added, enum values and types not
    asked for, too many or too few items), and no integer-valued float, which the validator
    takes for an integer but JSON mode never writes for one."""
    if "$ref" in schema:
        name = schema["$ref"].split("/")[-1]
        return st.deferred(lambda: instances(root["$defs"][name], root, loose))
    for combinator in ("anyOf", "oneOf", "allOf"):
        if combinator in schema:
            return st.one_of([instances(option, root, loose) for option in schema[combinator]])
    strays = st.sampled_from(["cow", 7, None, 0.5, [], {}]) if loose else st.nothing()
    if "const" in schema or "enum" in schema:
        return st.sampled_from(schema.get("enum", [schema.get("const")])) | strays
    kind = schema["type"]
    if kind == "object":
        properties = schema.get("properties", {})
        required = [] if loose else schema.get("required", [])
        fixed = st.fixed_dictionaries(
            {name: instances(properties[name], root, loose) for name in required},
            optional={
                name: instances(sub, root, loose)
                for name, sub in properties.items()
                if name not in required
            },
        )
        other = schema.get("additionalProperties", True)
        keys = st.text(max_size=4)
        for pattern, value in schema.get("patternProperties", {}).items():  # one, if any
            keys, other = keys if loose else st.from_regex(pattern, fullmatch=True), value
        if "propertyNames" in schema and not loose:  # names of its strings, with its $defs
            names = {"$defs": root.get("$defs", {}), "type": "string", **schema["propertyNames"]}
            is_name = jsonschema.Draft202012Validator(names).is_valid
            if "patternProperties" not in schema:
                keys = instances(names, root)
            keys = keys.filter(is_name)
        merged = fixed
        if other is not False or loose:
            keys = keys.filter(lambda key: key not in properties)
            extra = st.dictionaries(keys, instances(other or {"type": "null"}, root, loose),
                                    max_size=3)  # fmt: skip
            merged = st.tuples(fixed, extra).map(lambda pair: {**pair[1], **pair[0]})
        least, most = schema.get("minProperties", 0), schema.get("maxProperties", 3)
        dependent = schema.get("dependentRequired", {})

        def fits(value: dict[str, Any]) -> bool:
            needed = all(set(dependent[key]) <= set(value) for key in dependent.keys() & value)
            return least <= len(value) <= most and needed

        if not loose:
            merged = merged.filter(fits)
        return merged | strays
    if kind == "array":
        least, most = schema.get("minItems", 0), schema.get("maxItems", 2)
        firsts = [instances(first, root, loose) for first in schema.get("prefixItems", [])]
        if firsts and not loose:  # a tuple (items false): its first items
            sizes = st.integers(least, len(firsts))
            return sizes.flatmap(lambda size: st.tuples(*firsts[:size]).map(list))
        items = st.one_of(firsts) if firsts else instances(schema["items"], root, loose)
        if loose:
            least, most = 0, max(most, len(firsts)) + 1
        elif schema.get("uniqueItems"):
            unique = lambda value: literal_key(json.dumps(value))  # noqa: E731
            return st.lists(items, min_size=least, max_size=most, unique_by=unique)
        return st.lists(items, min_size=least, max_size=most) | strays
    if kind == "string" and "pattern" in schema:
        like = st.text(alphabet="0123456789a", max_size=5) if loose else st.nothing()
        return st.from_regex(schema["pattern"], fullmatch=True) | like | strays
    if kind == "string":
        least, most = schema.get("minLength", 0), schema.get("maxLength", 6)
        if loose:
            least, most = max(0, least - 1), most + 1
        return st.text(min_size=least, max_size=most) | strays
    if kind in ("number", "integer") and {"minimum", "exclusiveMinimum"} & set(schema):
        return bounded_numbers(schema, loose) | strays
    floats = st.floats(allow_nan=False, allow_infinity=False)
    fractions = floats.filter(lambda number: not number.is_integer())
    numbers = st.integers() | (fractions if loose else floats)
    leaves = {"integer": st.integers(), "number": numbers, "boolean": st.booleans(),
              "null": st.none()}  # fmt: skip
    return leaves[kind] | strays


def bounded_numbers(schema: Any, loose: bool) -> Any:
    """Numbers within the schema's bounds (a little beyond them if `loose`), written without
    an exponent, as JSON mode writes bounded ones."""
    low = schema.get("minimum", schema.get("exclusiveMinimum"))
    high = schema.get("maximum", schema.get("exclusiveMaximum"))
    low_open, high_open = "exclusiveMinimum" in schema, "exclusiveMaximum" in schema
    if loose:
        low, high, low_open, high_open = low - 3, high + 3, False, False
    step = schema.get("multipleOf")
    if step is not None and not loose:  # multiples of a step that floats hold exactly
        multiples = st.integers(math.ceil(low / step), math.floor(high / step))
        on_grid = multiples.map(lambda count: count * step)
        return on_grid.filter(lambda number: valid(schema, json.dumps(number)))
    if schema["type"] == "integer":
        return st.integers(math.floor(low) + low_open, math.ceil(high) - high_open)
    floats = st.floats(low, high, exclude_min=low_open, exclude_max=high_open)
    return floats.filter(lambda number: "e" not in json.dumps(number))


@st.composite
def schema_and_text(draw: Any, loose: bool = False) -> tuple[Any, str]:
    schema = SCHEMAS[draw(st.sampled_from(sorted(SCHEMAS)))]
    value = draw(instances(schema, schema, loose))
    layout = draw(st.sampled_from([{}, {"indent": 1}, {"separators": (",", ":")},
                                   {"ensure_ascii": False}]))  # fmt: skip
    return schema, json.dumps(value, **layout)


def complete(schema: Any, text: str) -> bool:
    state = JsonPrefix.start(compile_schema(schema)).feed(text)
    return state is not None and state.complete


def valid(schema: Any, text: str) -> bool:
    try:
        jsonschema.validate(json.loads(text), schema)
    except (ValueError, jsonschema.ValidationError):
        return False
    return True


@settings(max_examples=400, deadline=None)
@given(schema_and_text())
def test_every_prefix_of_a_value_of_the_schema_begins_one(case: tuple[Any, str]) -> None:
    schema, text = case
    assert valid(schema, text), text  # the strategy draws values of the schema
    state: JsonPrefix | None = JsonPrefix.start(compile_schema(schema))
    for position, char in enumerate(text):
        assert state is not None and not state.complete, text[:position]
        state = state.feed(char)
        assert state is not None, text[: position + 1]
    assert state is not None and state.complete and state.whole


@settings(max_examples=1500, deadline=None)
@given(schema_and_text(loose=True))
def test_the_checker_agrees_with_the_reference_validator(case: tuple[Any, str]) -> None:
    """Values that as often as not break the schema: complete exactly when the validator
    accepts them."""
    schema, text = case
    assert complete(schema, text) == valid(schema, text), text


ONE_AT_A_TIME = [  # the newer keywords alone, where a near miss is not drowned by others
    {"type": "string", "minLength": 2, "maxLength": 4},
    {"type": "string", "pattern": "^[0-9]{4}$"},
    {"type": "string", "pattern": "a[0-9]"},  # found anywhere in the string
    {"type": "integer", "exclusiveMinimum": 0, "maximum": 120},
    {"type": "number", "minimum": -2.5, "exclusiveMaximum": 99.5},
    {"type": "number", "exclusiveMinimum": 1, "maximum": 1.5},
    {"type": "integer", "multipleOf": 5, "minimum": -20, "maximum": 40},
    {"type": "number", "multipleOf": 0.25, "minimum": 0, "exclusiveMaximum": 3},
    SHOP["properties"]["labels"],
    SHOP["properties"]["where"],
    SHOP["properties"]["tags"],
    {"type": "array", "items": {"enum": ["a", 1, True, None]}, "uniqueItems": True},
    {"type": "array", "items": {"type": "number"}, "uniqueItems": True, "maxItems": 4},
    {
        "type": "array",
        "items": {"type": "integer", "minimum": 0, "maximum": 2},
        "uniqueItems": True,
    },
    {"$defs": SHOP["$defs"], **SHOP["properties"]["payment"]},
    # pydantic's dict[Literal["x", "y"], int], dict[Color, float], dict[constr(max_length=2),
    # int], dict[constr(pattern="^k"), bool]
    {"type": "object", "additionalProperties": {"type": "integer"},
     "propertyNames": {"enum": ["x", "y"]}},
    {"$defs": {"Color": {"enum": ["red", "blue"], "type": "string"}}, "type": "object",
     "additionalProperties": {"type": "number"}, "propertyNames": {"$ref": "#/$defs/Color"}},
    {"type": "object", "additionalProperties": {"type": "integer"},
     "propertyNames": {"maxLength": 2}},
    {"type": "object", "patternProperties": {"^k[a-z]{0,2}$": {"type": "boolean"}},
     "additionalProperties": False},
    {"type": "object", "properties": {"id": {"type": "integer"}}, "required": ["id"],
     "patternProperties": {"^[ab][0-9]*$": {"type": "integer"}}, "propertyNames": {"minLength": 1,
     "maxLength": 3}, "additionalProperties": False},
    BILLING,
    {"type": "object", "properties": {"a": {"type": "integer"}},
     "additionalProperties": {"type": "boolean"},
     "dependentRequired": {"a": ["b", "c"], "x": ["a"]}, "maxProperties": 3},
]  # fmt: skip


@pytest.mark.parametrize("schema", ONE_AT_A_TIME, ids=lambda schema: json.dumps(schema)[:60])
@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_each_keyword_agrees_with_the_reference_validator(schema: Any, data: Any) -> None:
    """One keyword at a time: every prefix of a value of the schema begins one, and a near
    miss is a value (a number may still grow) exactly when the validator accepts it."""
    text = json.dumps(data.draw(instances(schema, schema)))
    assert valid(schema, text), text
    state: JsonPrefix | None = JsonPrefix.start(compile_schema(schema))
    for position, char in enumerate(text):
        assert state is not None, text[:position]
        state = state.feed(char)
    assert state is not None and state.whole, text
    miss = json.dumps(data.draw(instances(schema, schema, loose=True)))
    state = JsonPrefix.start(compile_schema(schema)).feed(miss)
    assert (state is not None and state.whole) == valid(schema, miss), miss


@st.composite
def bounded_numbers_and_text(draw: Any) -> tuple[Any, str, str]:
    """A schema of a bounded number (tenths from -30 to 30), a number within its bounds as
    JSON mode writes it, and the beginning of a number, both without an exponent."""
    integer = draw(st.booleans())
    schema: dict[str, Any] = {"type": "integer" if integer else "number"}
    low, high = sorted(draw(st.lists(st.integers(-300, 300), min_size=2, max_size=2)))
    if draw(st.booleans()):
        schema[draw(st.sampled_from(["minimum", "exclusiveMinimum"]))] = low / 10
    if draw(st.booleans()):
        schema[draw(st.sampled_from(["maximum", "exclusiveMaximum"]))] = high / 10
    step = draw(st.sampled_from([None, 0.25, 0.5, 2, 3]))  # held exactly by floats
    if step is not None:
        schema["multipleOf"] = step
    checker = jsonschema.Draft202012Validator(schema)
    if step is None and not integer:
        within = st.decimals(-50, 50, places=3).filter(lambda value: checker.is_valid(float(value)))
    else:  # few values: those that the validator takes, listed
        values = [count * (step or 1) for count in range(-200, 201)]
        values = [value for value in values if checker.is_valid(value)]
        assume(values)
        within = st.sampled_from(values).map(lambda value: int(value) if integer else value)
    prefix = draw(st.from_regex(r"-?(0|[1-9][0-9]{0,2})(\.[0-9]{0,3})?", fullmatch=True))
    value = draw(within)
    if isinstance(value, Decimal):
        return schema, format(value, "f"), prefix
    return schema, json.dumps(value), prefix


def finishes(state: JsonPrefix, alphabet: str, depth: int, budget: Iterator[int]) -> bool:
    """Whether some text of up to `depth` more characters of `alphabet` makes a value of the
    schema (looked for depth first, guided by the checker, over as many states as `budget`
    yields)."""
    if state.whole:
        return True
    if depth == 0 or next(budget, None) is None:
        return False
    return any(
        after is not None and finishes(after, alphabet, depth - 1, budget)
        for after in map(state.feed, alphabet)
    )


@settings(max_examples=300, deadline=None)
@given(bounded_numbers_and_text())
def test_a_bounded_number_begins_exactly_where_one_within_its_bounds_may(
    case: tuple[Any, str, str],
) -> None:
    """No dead end: a beginning the checker accepts ends within the bounds (the
    validator says so) a few characters on; and no number within them is refused."""
    schema, within, prefix = case
    start = JsonPrefix.start(compile_schema(schema))
    for end in range(1, len(within) + 1):
        assert start.feed(within[:end]) is not None, within[:end]
    state = start.feed(prefix)
    if state is not None:
        assert finishes(state, "0123456789.-", 7, iter(range(200))), prefix


@pytest.mark.parametrize(
    ("schema", "text", "whole"),
    [
        ({"type": "integer", "minimum": 100, "maximum": 999}, "5", False),
        ({"type": "integer", "minimum": 100, "maximum": 999}, "50", False),
        ({"type": "integer", "minimum": 100, "maximum": 999}, "500", True),
        ({"type": "integer", "minimum": 100, "maximum": 999}, "1000", None),
        ({"type": "integer", "minimum": 10, "maximum": 20}, "3", None),
        ({"type": "integer", "minimum": 10, "maximum": 20}, "0", None),
        ({"type": "integer", "minimum": 10, "maximum": 20}, "-", None),
        ({"type": "integer", "minimum": 10, "maximum": 20}, "2", False),
        ({"type": "integer", "minimum": 0, "exclusiveMinimum": 0}, "0", None),  # the tighter
        ({"type": "integer", "minimum": 0, "exclusiveMinimum": 3}, "3", False),  # 30 and on
        ({"type": "integer", "minimum": 4, "exclusiveMinimum": 3}, "4", True),
        ({"type": "integer", "maximum": 5, "exclusiveMaximum": 6}, "6", None),
        ({"type": "number", "exclusiveMinimum": 0, "maximum": 1}, "0", False),
        ({"type": "number", "exclusiveMinimum": 0, "maximum": 1}, "0.000", False),
        ({"type": "number", "exclusiveMinimum": 0, "maximum": 1}, "1.0", True),
        ({"type": "number", "exclusiveMinimum": 0, "maximum": 1}, "1.01", None),
        ({"type": "number", "exclusiveMinimum": 0, "maximum": 1}, "-", None),
        ({"type": "number", "minimum": 0.1, "maximum": 0.2}, "0.099", None),
        ({"type": "number", "maximum": 5}, "1e", None),  # bounded: no exponent
        ({"type": "number", "minimum": -2.5}, "-2.50", True),
        ({"type": "number", "minimum": -2.5}, "-2.500001", None),
        ({"type": "integer", "multipleOf": 5, "maximum": 14}, "12", None),  # 120 is too high
        ({"type": "integer", "multipleOf": 5, "maximum": 14}, "1", False),  # 10
        ({"type": "integer", "multipleOf": 5, "maximum": 14}, "10", True),
        ({"type": "integer", "multipleOf": 1.5}, "6", True),
        ({"type": "integer", "multipleOf": 1.5}, "4", False),  # 45
        ({"type": "integer", "multipleOf": 1.5, "maximum": 5}, "4", None),  # 4.5 is no integer
        ({"type": "number", "multipleOf": 0.25}, "1.3", None),
        ({"type": "number", "multipleOf": 0.25}, "1.2", False),  # 1.25
        ({"type": "number", "multipleOf": 0.25}, "1.250", True),
        ({"type": "number", "multipleOf": 0.25}, "1.2501", None),
        ({"type": "string", "maxLength": 1}, '"\\ud83d\\ude00"', True),  # one character
        ({"type": "string", "maxLength": 1}, '"\\n\\t', None),
        ({"type": "string", "minLength": 2}, '"\\u00e9"', None),
        ({"type": "string", "pattern": "^a\nb$"}, '"a\\nb"', True),  # escapes decoded
        ({"type": "string", "pattern": "^a\nb$"}, '"a\\nc', None),
        ({"type": "string", "pattern": "^[a-z]+$"}, '"ab"', True),
        ({"type": "string", "pattern": "^[a-z]+$"}, '""', None),
        ({"type": "string", "maxLength": 1}, '"a\\', None),  # an escape adds a character
        ({"type": "string", "maxLength": 2}, '"a\\u00e9"', True),
        ({"type": "string", "pattern": "^[a-z]{2}"}, '"a\\', None),  # no escape is a-z
        ({"type": "string", "pattern": "^a/"}, '"a\\/', False),
        ({"type": "string", "pattern": "^[a-z]+$"}, '"\\u0061', None),  # write "a" itself
        (
            {"maxProperties": 1, "properties": {"a": {}, "b": {}}, "required": ["a"]},
            '{"b',
            None,
        ),
        ({"maxProperties": 1, "properties": {"a": {}, "b": {}}}, '{"b": 1, ', None),
        ({"minProperties": 2}, '{"a": 1}', None),
        ({"minProperties": 2}, '{"a": 1, "b": 2}', True),
        ({"required": ["x"], "maxProperties": 1}, '{"x": 1}', True),  # no room but for x
        ({"required": ["x"], "maxProperties": 1}, '{"y', None),
        (BILLING, '{"name": "x", "card": 1}', None),  # the address, then the zip
        (BILLING, '{"name": "x", "card": 1, "address": "y"}', None),
        (BILLING, '{"name": "x", "card": 1, "address": "y", "zip": "z"}', True),
        (BILLING, '{"zip": "z", "name": "x"}', True),
        (BILLING, '{"zip": "z", "name": "x", "address": "y"}', True),
        ({**BILLING, "maxProperties": 3}, '{"zip": "z", "name": "x", "ca', None),  # 4 keys
        ({**BILLING, "maxProperties": 3}, '{"zip": "z", "name": "x", "address": "y"}', True),
        ({"prefixItems": [{"type": "string"}], "items": {"type": "integer"}}, '["a", 1]', True),
        ({"prefixItems": [{"type": "string"}], "items": {"type": "integer"}}, "[1", None),
        ({"prefixItems": [{"type": "string"}, False]}, '["a", ', None),
        ({"items": {"enum": ["a", "b"]}, "uniqueItems": True}, '["a", "b"]', True),
        ({"items": {"enum": ["a", "b"]}, "uniqueItems": True}, '["a", "b", ', None),  # none left
        ({"items": {"enum": ["a", "b"]}, "uniqueItems": True}, '["a", "a', None),
        ({"items": {"type": "string"}, "uniqueItems": True}, '["a", "a', False),  # "ab"...
        ({"items": {"type": "string"}, "uniqueItems": True}, '["a", "a"', None),
        ({"items": {"type": "number"}, "uniqueItems": True}, "[1, 1.0]", None),
        ({"items": {"type": "number"}, "uniqueItems": True}, "[1, 10]", True),
        ({"items": {"enum": [True, 1]}, "uniqueItems": True}, "[true, 1]", True),
        (
            {"items": {"type": "integer", "maximum": 1, "minimum": 0}, "uniqueItems": True},
            "[0, 1, ",
            None,
        ),
        ({"items": {"type": "integer"}, "uniqueItems": True}, "[0, 0", None),  # 0 ends there
        ({"items": {"type": "integer"}, "uniqueItems": True}, "[0, -0", None),
        ({"items": {"type": "integer"}, "uniqueItems": True}, "[1, 1", False),  # 10...
        (  # each integer from 1 is used
            {"items": {"type": "integer", "minimum": 0, "maximum": 12}, "uniqueItems": True},
            "[1, 10, 11, 12, 1",
            None,
        ),
        ({"items": {"type": "string", "maxLength": 1}, "uniqueItems": True}, '["a", "a', None),
    ],
)
def test_bounds_at_their_edges(schema: Any, text: str, whole: bool | None) -> None:
    """`whole`: whether the text is a value of the schema; None: nothing begins with it."""
    state = JsonPrefix.start(compile_schema(schema)).feed(text)
    assert (None if state is None else state.whole) == whole
    if whole is not None:
        assert valid(schema, text) == whole


@pytest.mark.parametrize("text", ['{"a": 1}', '{"a": 1, "b": 2}', '{"b": 2}', "{}"])
def test_draft_7_dependencies_of_names_are_dependent_required(text: str) -> None:
    assert complete(DRAFT_7, text) == valid(DRAFT_7, text), text


NARROW = [  # where a value could begin that cannot end: uniqueItems over few values, keys of
    # few names, a pattern that needs more characters than maxLength leaves
    {"type": "string", "pattern": "^a+b$", "maxLength": 3},
    {"type": "string", "pattern": "^(a|b)*0(a|b)$", "maxLength": 4},
    {"items": {"enum": ["a", "b", 1]}, "uniqueItems": True},
    {"items": {"type": "integer", "minimum": 0, "maximum": 12}, "uniqueItems": True},
    {"items": {"type": "integer"}, "uniqueItems": True},
    {"items": {"type": "string", "maxLength": 1}, "uniqueItems": True},
    {"items": {"type": "number", "minimum": 1, "maximum": 1}, "uniqueItems": True},
    {"additionalProperties": {"type": "integer"}, "propertyNames": {"maxLength": 1}},
    {"additionalProperties": {"type": "integer"}, "propertyNames": {"enum": ["a", "b"]}},
    {"patternProperties": {"^[ab]$": {"type": "integer"}}, "additionalProperties": False},
    {"items": {"type": "string", "pattern": "^(a|b0)$"}, "uniqueItems": True},
    {"items": {"type": "string", "pattern": "^a[0-9]*$", "maxLength": 2}, "uniqueItems": True},
    {  # a key whose dependents leave no room, or only after other keys were written
        "properties": {name: {"const": 0} for name in ("a", "b", "ab", "ba")},
        "dependentRequired": {"a": ["b", "ab"], "b": ["ba"]},
        "maxProperties": 3,
        "additionalProperties": False,
    },
    {
        "additionalProperties": {"const": 0},
        "propertyNames": {"maxLength": 1},
        "dependentRequired": {"a": ["b"], "n": ["a"]},
        "maxProperties": 2,
    },
]


WALK = '[]{}:"ab01-.,\\nu'  # enough to write these schemas' values, escapes included


@pytest.mark.parametrize("schema", NARROW, ids=lambda schema: json.dumps(schema)[:60])
@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_no_dead_end_where_values_are_few(schema: Any, data: Any) -> None:
    """A random walk of up to 16 characters, each one the checker takes, can still be
    completed: no item begins that could only repeat one before it, no key that could only
    repeat one, no string that its pattern could end only beyond its maxLength, and no
    escape that no character could end."""
    state = JsonPrefix.start(compile_schema(schema))
    walked = ""
    for _ in range(data.draw(st.integers(0, 16))):
        taken = [char for char in WALK if state.feed(char) is not None]
        if not taken:
            break
        char = data.draw(st.sampled_from(taken))
        walked += char
        state = cast(JsonPrefix, state.feed(char))
    assert finishes(state, WALK + "23456789", 12, iter(range(3000))), walked


def test_a_search_for_an_ending_gives_up_unsure(monkeypatch: pytest.MonkeyPatch) -> None:
    """Past its time (a slow pattern is slow at every try) or its tries, the search lets the
    string go on, as unsure; else it finds that a used code has no other ending."""
    node = cast(StringNode, compile_schema({"type": "string", "pattern": "^[A-Z]{2}$"}))
    unused = lambda text: text != "PX"  # noqa: E731
    assert not node.may_end("PX", unused) and node.may_end("P", unused)
    monkeypatch.setattr(json_schema, "SEARCH_SECONDS", -1.0)
    assert node.may_end("PX", unused)
    monkeypatch.setattr(json_schema, "SEARCH_SECONDS", 1.0)
    monkeypatch.setattr(json_schema, "SEARCH_BUDGET", 0)
    assert node.may_end("PX", unused)


def test_a_constrained_string_takes_half_a_character_only_where_a_whole_one_may_follow() -> None:
    """A token that ends inside a character's bytes may not come where the character could
    break a pattern, or a length already reached."""
    start = JsonPrefix.start(compile_schema({"type": "string", "maxLength": 2}))
    room, full = start.feed('"a'), start.feed('"ab')
    assert room is not None and room.wide_char_next
    assert full is not None and not full.wide_char_next
    pattern = JsonPrefix.start(compile_schema({"type": "string", "pattern": "."})).feed('"')
    assert pattern is not None and not pattern.wide_char_next


@pytest.mark.parametrize(
    ("schema", "text"),
    [
        (PERSON, '{"ni'),  # no such key, and no others allowed
        (PERSON, '{"name": 1'),
        (PERSON, '{"name": "a"}'),  # pets is required
        (PERSON, '{"name": "a", "name"'),  # a key twice
        (PERSON, '{"pets": [{"kind": "cow"'),
        (PERSON, '{"pets": [{"legs": 4}'),  # kind is required
        (PERSON, '{"pets": [{"kind": "cat"}, {"kind": "cat"},'),  # at most 2
        (PERSON, '{"tags": []'),  # at least 1
        (PERSON, '{"age": 1.5'),
        (PERSON, '{"age": 1e3'),
        (PERSON, '{"unit": "g'),
        (TREE, '{"value": 1, "children": [{"value": "x"'),
        (OPEN, '{"id": 1, "x": 2'),
        (CHOICES, "[3"),
        (CHOICES, "[]"),
        (CHOICES, " ["),  # the value comes first
        (FALSE, '{"b": 1'),  # a property whose schema is false, though others may come
        (FALSE, '{"c": [1'),  # items false
        (NAMES, '{"abc'),  # propertyNames: at most 2 characters
        (NAMES, '{"ab": 1, "ab'),  # a name that can only be one already used
        (COLORS, '{"gr'),
        (COLORS, '{"red": 1, "blue": 2,'),  # no name left
        (ONLY_K, '{"j'),  # patternProperties, and no other key
        ({"properties": {"a": {}, "b": False}, "dependentRequired": {"a": ["b"]}}, '{"a"'),
        (  # 3 keys a requires, 2 used already: no room for them
            {"dependentRequired": {"a": ["b", "c"]}, "maxProperties": 4},
            '{"x": 1, "y": 2, "a"',
        ),
        (  # a reference to a definition that is false
            {"$defs": {"no": False}, "properties": {"a": {"$ref": "#/$defs/no"}, "b": {}}},
            '{"a"',
        ),
        (
            {
                "$defs": {"no": False},
                "properties": {"a": {"$ref": "#/$defs/no"}, "b": {}},
                "additionalProperties": False,
            },
            '{"a',
        ),
    ],
)
def test_what_begins_no_value_of_the_schema(schema: Any, text: str) -> None:
    assert JsonPrefix.start(compile_schema(schema)).feed(text) is None


@pytest.mark.parametrize(
    ("pattern", "text", "whole"),
    [
        ("^[A-Z]{2}$", '"PX"', True),
        ("^[A-Z]{2}$", '"PX\\n"', False),  # Python's $ also matches before a last newline
        ("^a.b$", '"a-b"', True),
        ("^a.b$", '"a\\rb"', False),  # ECMA-262's . takes no line's end
        ("^[.$]+$", '"$."', True),  # in a class, $ and . are themselves
        ("^\\$\\.$", '"$."', True),
        ("^\\d\\w$", '"1a"', True),
        ("^\\d$", '"\u0661"', False),  # ECMA-262's digits are ASCII ones; Python's are not
    ],
)
def test_a_pattern_means_what_it_means_in_ecma_262(pattern: str, text: str, whole: bool) -> None:
    """JSON Schema patterns are ECMA-262 expressions (as pydantic's Rust validator reads
    them): they are compiled to Python's so that they mean the same."""
    schema = {"type": "string", "pattern": pattern}
    assert complete(schema, text) == whole, text


def test_a_number_is_whole_before_it_is_complete() -> None:
    """A top-level number may always grow: EOS may end it, but it closes only at a space."""
    state = JsonPrefix.start(compile_schema({"type": "integer"})).feed("12")
    assert state is not None and state.whole and not state.complete
    after = state.feed(" ")
    assert after is not None and after.complete and state.feed(".") is None


@pytest.mark.parametrize(
    ("schema", "message"),
    [
        ({"type": "array", "contains": {}}, "#: the keyword 'contains' is not supported"),
        ({"items": {"type": "object"}, "uniqueItems": True}, "uniqueItems over objects"),
        ({"items": {"enum": [[1]]}, "uniqueItems": True}, "uniqueItems over objects"),
        ({"uniqueItems": True}, "uniqueItems over objects"),  # any value
        ({"prefixItems": [{}], "uniqueItems": True}, "uniqueItems next to prefixItems"),
        ({"items": {"enum": [1, 1.0]}, "uniqueItems": True, "minItems": 2}, "1 values, too"),
        ({"uniqueItems": 1}, "uniqueItems must be true or false"),
        ({"properties": {"a": {"not": {}}}}, "#/properties/a: the keyword 'not' is not"),
        ({"type": "number", "multipleOf": 0}, "multipleOf must be above 0"),
        ({"type": "integer", "multipleOf": 10, "minimum": 1, "maximum": 9}, "no integer lies"),
        ({"type": "integer", "multipleOf": 0.5, "minimum": 0.2, "maximum": 0.8}, "no integer"),
        ({"oneOf": [{"type": "integer"}, {"type": "number"}]}, "options 0 and 1 may both"),
        (  # k is not required, so {} is a value of both
            {"oneOf": [{"properties": {"k": {"const": 1}}}, {"properties": {"k": {"const": 2}}}]},
            "options 0 and 1 may both",
        ),
        ({"allOf": [{"type": "integer"}, {"minimum": 1}]}, "allOf of more than one"),
        ({"type": "string", "pattern": "(a"}, "#: pattern '\\(a'"),
        ({"type": "number", "minimum": 2, "maximum": 1}, "no number lies within"),
        ({"type": "integer", "minimum": 0.2, "maximum": 0.8}, "no integer lies within"),
        ({"type": "number", "exclusiveMinimum": 1, "maximum": 1}, "no number lies within"),
        ({"type": "number", "minimum": True}, "minimum must be a number"),
        ({"type": "string", "minLength": 3, "maxLength": 2}, "maxLength must be a count of at"),
        ({"type": "array", "items": [{"type": "integer"}]}, "items as a list"),
        ({"prefixItems": [False], "minItems": 1}, "leave no array of 1 items"),
        ({"enum": ["a", "bb"], "maxLength": 1}, "maxLength next to enum"),
        ({"required": ["a", "b"], "maxProperties": 1}, "maxProperties is below"),
        ({"required": ["a"], "dependentRequired": {"a": ["b"]}, "maxProperties": 1}, "is below"),
        (
            {
                "properties": {"a": {}},
                "required": ["a"],
                "dependentRequired": {"a": ["b"]},
                "additionalProperties": False,
            },
            "'b' is required but may not appear",
        ),
        ({"dependentRequired": {"a": ["b"]}, "minProperties": 1}, "next to minProperties"),
        ({"dependencies": {"a": {"required": ["b"]}}}, "dependencies must map each name"),
        ({"dependentRequired": ["a"]}, "dependentRequired must map each name"),
        (
            {"properties": {"a": {}}, "additionalProperties": False, "minProperties": 2},
            "minProperties asks for more",
        ),
        ({"type": "strange"}, "type must be one of"),
        ({"$ref": "#/$defs/missing"}, "names no definition"),
        ({"$ref": "https://example.com/s.json"}, "only #, #/\\$defs"),
        ({"$defs": {"a": {"$ref": "#/$defs/a"}}, "$ref": "#/$defs/a"}, "refers to itself"),
        ({"required": ["x"], "additionalProperties": False}, "'x' is required but may not"),
        ({"required": ["ab"], "propertyNames": {"maxLength": 1}}, "'ab' is required but may"),
        ({"required": ["c"], "propertyNames": {"enum": ["a", "b"]}}, "'c' is required but"),
        ({"propertyNames": {"type": "integer"}}, "propertyNames must be an enum of names or"),
        ({"patternProperties": {"^a": {}, "^b": {}}}, "patternProperties of more than one"),
        ({"patternProperties": ["^a"]}, "patternProperties must be an object"),
        ({"properties": {"ab": {}}, "patternProperties": {"^a": {}}}, "'ab' matches the pattern"),
        ({"properties": {"x": False}, "required": ["x"]}, "'x' is required but may not"),
        (False, "the schema false accepts no value"),
        ({"type": "integer", "enum": ["a", "b"]}, "no value of the enum"),
        ({"type": "array", "minItems": 2, "maxItems": 1}, "maxItems"),
        ("{not json", "the schema is not JSON"),
        (3, "a schema is an object or a boolean"),
    ],
)
def test_what_json_mode_cannot_honour_is_refused_by_name(schema: Any, message: str) -> None:
    with pytest.raises(SchemaError, match=message):
        compile_schema(schema)


class Color(StrEnum):
    RED = "red"
    BLUE = "blue"


class Level(IntEnum):
    LOW = 1
    HIGH = 2


class Everything(BaseModel):
    """Pydantic's common field types, as its `model_json_schema()` writes them."""

    model_config = ConfigDict(extra="forbid")
    name: Annotated[str, StringConstraints(min_length=1, max_length=12, pattern="^[A-Z]")]
    code: Annotated[str, StringConstraints(pattern="^[A-Z]{2}$")]
    count: Annotated[int, Field(gt=0, le=99)]
    price: Decimal
    ratio: float
    level: Level
    colors: set[Color]
    weights: dict[Color, float]
    sizes: dict[Literal["small", "large"], int]
    codes: dict[Annotated[str, StringConstraints(pattern="^[a-z]{2}$")], int]
    short: dict[Annotated[str, StringConstraints(max_length=3)], bool]
    owners: dict[UUID, str]
    point: tuple[float, float]
    tags: list[str] = Field(max_length=3)
    when: datetime
    day: date
    wait: timedelta
    id: UUID
    host: IPv4Address
    site: HttpUrl
    note: str | None = None
    kind: Literal["a", 1, None]


def test_what_pydantic_writes_for_a_model_is_a_value_of_its_schema() -> None:
    """The schema pydantic writes compiles, and its JSON of an instance, in two layouts,
    is taken whole."""
    instance = Everything(
        name="Ada", code="PX", count=3, price=Decimal("12.50"), ratio=0.25, level=Level.HIGH,
        colors={Color.RED, Color.BLUE}, weights={Color.RED: 1.5}, sizes={"small": 2},
        codes={"ab": 1, "cd": 2}, short={"x": True}, owners={UUID(int=7): "me"},
        point=(1.0, -2.5), tags=["a", "b"], when=datetime(2024, 2, 29, 12, 30, tzinfo=UTC),
        day=date(2000, 1, 1), wait=timedelta(days=1, hours=2), id=UUID(int=42),
        host=IPv4Address("10.0.0.1"), site=HttpUrl("https://example.com/x"), kind=1,
    )  # fmt: skip
    schema = Everything.model_json_schema()
    for text in (instance.model_dump_json(), instance.model_dump_json(indent=2)):
        assert complete(schema, text), text
    assert not complete(schema, instance.model_dump_json().replace('"PX"', '"PX\\n"'))


def test_annotations_and_implied_types() -> None:
    """Annotations change nothing; `properties` without `type` describes an object."""
    annotated = {"title": "T", "description": "d", "format": "color", "examples": ["x"],
                 "contentMediaType": "application/json", "type": "string"}  # fmt: skip
    assert complete(annotated, '"anything"')
    implied = {"properties": {"a": {"type": "boolean"}}, "required": ["a"]}
    assert complete(implied, '{"a": true}') and not complete(implied, "[]")
    assert complete(True, "[1]") and complete({}, '"x" ')


def test_half_a_character_may_come_only_where_a_wide_one_may() -> None:
    """A token that ends in the middle of a character's bytes fits only where a character
    beyond ASCII may come: in a free string or key, or where a name or enum value has one."""
    schema = {"type": "object", "properties": {"café": {"enum": ["thé", "tea"]}},
              "additionalProperties": False}  # fmt: skip
    start = JsonPrefix.start(compile_schema(schema))
    for text, wide in [('{"caf', True), ('{"ca', False), ('{"café": "th', True),
                       ('{"café": "te', False), ('{"café": ', False)]:  # fmt: skip
        state = start.feed(text)
        assert state is not None and state.wide_char_next == wide, text
    free = JsonPrefix.start().feed('{"a": "x')
    assert free is not None and free.wide_char_next
    key = JsonPrefix.start().feed('{"')
    assert key is not None and key.wide_char_next
