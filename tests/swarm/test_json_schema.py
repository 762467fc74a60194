"""JSON schemas in JSON mode: the prefix checker against the reference validator
(`jsonschema`). Values drawn from each schema, in several layouts, are accepted at every
prefix and complete at the end; near misses of each schema are complete exactly when the
validator accepts them; and the schema keywords it cannot honour are refused
by name."""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from swarm.json_prefix import JsonPrefix
from swarm.json_schema import SchemaError, compile_schema

PET = {
    "type": "object",
    "properties": {"kind": {"enum": ["cat", "dog"]}, "legs": {"type": "integer"}},
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
FALSE = {"type": "object", "properties": {"a": True, "b": False, "c": {"items": False}}}
SCHEMAS = {"person": PERSON, "tree": TREE, "open": OPEN, "choices": CHOICES}


def instances(schema: Any, root: Any, loose: bool = False) -> Any:
    """A strategy for values of `schema` (the keywords above only). `loose`: values that
    are near misses as often as not (keys left out or added, enum values and types not
    asked for, too many or too few items), and no integer-valued float, which the validator
    takes for an integer but JSON mode never writes for one."""
    if "$ref" in schema:
        name = schema["$ref"].split("/")[-1]
        return st.deferred(lambda: instances(root["$defs"][name], root, loose))
    if "anyOf" in schema:
        return st.one_of([instances(option, root, loose) for option in schema["anyOf"]])
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
        if other is False and not loose:
            return fixed
        keys = st.text(max_size=4).filter(lambda key: key not in properties)
        extra = st.dictionaries(keys, instances(other or {"type": "null"}, root, loose),
                                max_size=2)  # fmt: skip
        return st.tuples(fixed, extra).map(lambda pair: {**pair[1], **pair[0]}) | strays
    if kind == "array":
        least, most = schema.get("minItems", 0), schema.get("maxItems", 2)
        items = instances(schema["items"], root, loose)
        if loose:
            least, most = 0, most + 1
        return st.lists(items, min_size=least, max_size=most) | strays
    floats = st.floats(allow_nan=False, allow_infinity=False)
    fractions = floats.filter(lambda number: not number.is_integer())
    numbers = st.integers() | (fractions if loose else floats)
    leaves = {"string": st.text(max_size=6), "integer": st.integers(), "number": numbers,
              "boolean": st.booleans(), "null": st.none()}  # fmt: skip
    return leaves[kind] | strays


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
    ],
)
def test_what_begins_no_value_of_the_schema(schema: Any, text: str) -> None:
    assert JsonPrefix.start(compile_schema(schema)).feed(text) is None


def test_a_number_is_whole_before_it_is_complete() -> None:
    """A top-level number may always grow: EOS may end it, but it closes only at a space."""
    state = JsonPrefix.start(compile_schema({"type": "integer"})).feed("12")
    assert state is not None and state.whole and not state.complete
    after = state.feed(" ")
    assert after is not None and after.complete and state.feed(".") is None


@pytest.mark.parametrize(
    ("schema", "message"),
    [
        ({"type": "string", "pattern": "a+"}, "#: the keyword 'pattern' is not supported"),
        ({"properties": {"a": {"minimum": 1}}}, "#/properties/a: the keyword 'minimum'"),
        ({"type": "strange"}, "type must be one of"),
        ({"$ref": "#/$defs/missing"}, "names no definition"),
        ({"$ref": "https://example.com/s.json"}, "only #, #/\\$defs"),
        ({"$defs": {"a": {"$ref": "#/$defs/a"}}, "$ref": "#/$defs/a"}, "refers to itself"),
        ({"required": ["x"], "additionalProperties": False}, "'x' is required but may not"),
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


def test_annotations_and_implied_types() -> None:
    """Annotations change nothing; `properties` without `type` describes an object."""
    annotated = {"title": "T", "description": "d", "format": "date", "examples": ["x"],
                 "type": "string"}  # fmt: skip
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
