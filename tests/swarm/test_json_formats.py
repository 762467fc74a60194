"""String formats in JSON mode (`swarm.json_formats`): what each expression describes parses
with the format's own parser (Python's), what the format's writers write (drawn at random)
is taken at every prefix, and examples at the edges (leap years, offsets, "::") fall on the
right side."""

from __future__ import annotations

import ipaddress
import json
import uuid
from datetime import date, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.provisional import domains

from swarm.json_formats import FORMATS
from swarm.json_prefix import JsonPrefix
from swarm.json_schema import compile_schema


def parses(name: str, text: str) -> bool:
    """Whether the format's reference parser takes `text` (Python's own, where it has one)."""
    parsers: dict[str, Any] = {
        "date": date.fromisoformat,
        "date-time": lambda text: datetime.fromisoformat(text.upper()).tzinfo or 1 / 0,
        "time": lambda text: datetime.fromisoformat(f"2000-01-01T{text.upper()}").tzinfo or 1 / 0,
        "uuid": uuid.UUID,
        "ipv4": ipaddress.IPv4Address,
        "ipv6": ipaddress.IPv6Address,
        "email": lambda text: text.count("@") == 1 or 1 / 0,  # as jsonschema checks it
    }
    try:
        parsers[name](text)
    except (ValueError, ZeroDivisionError):
        return False
    return True


def takes(name: str, text: str) -> bool:
    """Whether JSON mode takes `text` as a whole string of format `name`."""
    state = JsonPrefix.start(compile_schema({"type": "string", "format": name}))
    after = state.feed(json.dumps(text))
    return after is not None and after.complete


@pytest.mark.parametrize("name", sorted(set(FORMATS) - {"duration", "hostname"}))
@settings(max_examples=100, deadline=None)
@given(data=st.data())
def test_what_a_format_describes_parses(name: str, data: Any) -> None:
    text = data.draw(st.from_regex(FORMATS[name].pattern))
    assert takes(name, text) and parses(name, text), text


def offsets() -> Any:
    minutes = st.integers(-(23 * 60 + 59), 23 * 60 + 59)
    return minutes.map(lambda count: timezone(timedelta(minutes=count)))


WRITTEN = {  # what the formats' own writers write
    "date": st.dates().map(date.isoformat),
    "date-time": st.datetimes(timezones=offsets()).map(datetime.isoformat),
    "time": st.times(timezones=offsets()).map(lambda time: time.isoformat()),
    "uuid": st.uuids().map(str),
    "ipv4": st.ip_addresses(v=4).map(str),
    "ipv6": st.ip_addresses(v=6).map(str).filter(lambda text: "." not in text),
    "email": st.emails(),
    "hostname": domains(),
}


@pytest.mark.parametrize("name", sorted(WRITTEN))
@settings(max_examples=100, deadline=None)
@given(data=st.data())
def test_what_a_formats_writer_writes_is_taken_at_every_prefix(name: str, data: Any) -> None:
    text = json.dumps(data.draw(WRITTEN[name]))
    state: JsonPrefix | None = JsonPrefix.start(compile_schema({"format": name, "type": "string"}))
    for end in range(len(text)):
        assert state is not None, text[:end]
        state = state.feed(text[end])
    assert state is not None and state.complete, text


EDGES = {  # format: (taken, refused)
    "date": (["2024-02-29", "2000-02-29", "0001-01-01", "1999-12-31"],
             ["2023-02-29", "1900-02-29", "2024-04-31", "2024-13-01", "2024-1-01", "0000-01-01"]),
    "time": (["23:59:59Z", "00:00:00.5+01:00", "12:30:00-05:30", "08:00:00z"],
             ["24:00:00Z", "12:30:00", "12:60:00Z", "12:30Z", "12:30:00+24:00"]),
    "date-time": (["2024-02-29T23:59:59Z", "1999-12-31t00:00:00.123+05:30"],
                  ["2024-02-30T00:00:00Z", "2024-01-01T00:00:00", "2024-01-01T00:00:00+1"]),
    "duration": (["P1D", "PT1H30M", "P1Y2M3DT4H5M6S", "P2W", "PT0S", "P1M", "PT1M"],
                 ["P", "PT", "P1H", "1D", "P1DT", "P1W2D", "PT1H1S"]),
    "uuid": (["123e4567-e89b-12d3-a456-426614174000"],
             ["123e4567e89b12d3a456426614174000", "123e4567-e89b-12d3-a456-42661417400g"]),
    "email": (["a@b.co", "first.last+tag@mail.example.org"],
              ["a@b", "@b.co", "a..b@c.de", "a b@c.de", "a@-b.co"]),
    "hostname": (["example.com", "a-b.c1", "localhost"], ["-a.com", "a-.com", "a..b", ""]),
    "ipv4": (["0.0.0.0", "192.168.1.255"], ["256.1.1.1", "01.2.3.4", "1.2.3"]),
    "ipv6": (["::", "::1", "1::", "2001:db8::8a2e:370:7334", "fe80:0:0:0:0:0:0:1"],
             [":::", "1:2:3:4:5:6:7:8:9", "12345::", "1::2::3", "1:2:3:4:5:6:7::8"]),
}  # fmt: skip


@pytest.mark.parametrize(("name", "text", "taken"), [
    (name, text, taken) for name, (good, bad) in EDGES.items()
    for taken, texts in ((True, good), (False, bad)) for text in texts
])  # fmt: skip
def test_formats_at_their_edges(name: str, text: str, taken: bool) -> None:
    """The refused break RFC 3339's grammar or the format's own, which Python's parsers
    do not all enforce (they take "12:30Z"), so only the taken are checked against them."""
    assert takes(name, text) == taken
    if taken and name not in ("duration", "hostname"):  # no parser of their own here
        assert parses(name, text)


def test_other_formats_are_annotations() -> None:
    assert takes("color", "anything at all")
    assert JsonPrefix.start(compile_schema({"type": "integer", "format": "int32"})).feed("12")
