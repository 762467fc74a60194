"""The string formats that JSON mode holds answers to, as regular expressions. Pure.

JSON Schema makes `format` an annotation unless a validator chooses to assert it; OpenAI's
structured outputs assert these, and pydantic writes them for `datetime`, `date`, `time`,
`timedelta`, `UUID`, `EmailStr` and the IP address types, whose parsers refuse what does not
match. Each expression describes a subset of its format, so that what JSON mode writes
always parses: RFC 3339 dates and times with real calendar days (leap years included), an
offset, no leap second and at most 9 digits of a second; durations as RFC 3339's appendix
writes them, with counts of at most 6 digits; IPv6 without an embedded IPv4 address; email
addresses of dot-atoms only. Other formats stay annotations.
"""

from __future__ import annotations

import regex

__all__ = ["FORMATS"]

_YEAR = r"(?:[0-9]{3}[1-9]|[0-9]{2}[1-9][0-9]|[0-9][1-9][0-9]{2}|[1-9][0-9]{3})"  # from 0001
_LEAP_YEAR = r"(?:[0-9]{2}(?:0[48]|[2468][048]|[13579][26])|(?:0[48]|[2468][048]|[13579][26])00)"
_MONTH_DAY = (
    r"(?:(?:0[13578]|1[02])-(?:0[1-9]|[12][0-9]|3[01])"
    r"|(?:0[469]|11)-(?:0[1-9]|[12][0-9]|30)"
    r"|02-(?:0[1-9]|1[0-9]|2[0-8]))"
)
_DATE = rf"(?:{_YEAR}-{_MONTH_DAY}|{_LEAP_YEAR}-02-29)"
_TIME = (
    r"(?:[01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](?:\.[0-9]{1,9})?"
    r"(?:[Zz]|[+-](?:[01][0-9]|2[0-3]):[0-5][0-9])"
)
_N = "[0-9]{1,6}"  # a duration's count: a million years still fits Python's timedelta
_DURATION_TIME = rf"T(?:{_N}H(?:{_N}M(?:{_N}S)?)?|{_N}M(?:{_N}S)?|{_N}S)"
_DURATION = (
    rf"P(?:(?:{_N}D|{_N}M(?:{_N}D)?|{_N}Y(?:{_N}M(?:{_N}D)?)?)(?:{_DURATION_TIME})?"
    rf"|{_DURATION_TIME}|{_N}W)"
)
_HEX = "[0-9a-fA-F]"
_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_GROUP = f"{_HEX}{{1,4}}"
_IPV6 = "|".join(  # eight groups, or fewer around one "::"
    [
        f"(?:{_GROUP}:){{7}}{_GROUP}",
        f"(?:{_GROUP}:){{1,7}}:",
        *(f"(?:{_GROUP}:){{1,{7 - n}}}(?::{_GROUP}){{1,{n}}}" for n in range(1, 7)),
        f":(?:(?::{_GROUP}){{1,7}}|:)",
    ]
)

FORMATS: dict[str, regex.Pattern[str]] = {
    name: regex.compile(rf"\A(?:{expression})\Z")
    for name, expression in {
        "date": _DATE,
        "time": _TIME,
        "date-time": rf"{_DATE}[Tt]{_TIME}",
        "duration": _DURATION,
        "uuid": rf"{_HEX}{{8}}-{_HEX}{{4}}-{_HEX}{{4}}-{_HEX}{{4}}-{_HEX}{{12}}",
        "email": rf"{_ATOM}(?:\.{_ATOM})*@{_LABEL}(?:\.{_LABEL})+",
        "hostname": rf"{_LABEL}(?:\.{_LABEL})*",
        "ipv4": rf"(?:{_OCTET}\.){{3}}{_OCTET}",
        "ipv6": _IPV6,
    }.items()
}
