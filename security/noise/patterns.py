"""Noise handshake patterns (spec rev 34, section 7) as data.

A pattern is its pre-messages (keys each side knows of the other beforehand) and its
message patterns, alternating initiator -> responder -> initiator ... The swarm uses XX;
the other fundamental patterns are here so the core is checked against more vectors.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["PATTERNS", "HandshakePattern"]

Tokens = tuple[str, ...]


@dataclass(frozen=True)
class HandshakePattern:
    name: str
    initiator_pre: Tokens
    responder_pre: Tokens
    messages: tuple[Tokens, ...]


def _pattern(name: str, pre_i: str, pre_r: str, *messages: str) -> HandshakePattern:
    def tokens(text: str) -> Tokens:
        return tuple(token.strip() for token in text.split(",") if token.strip())

    return HandshakePattern(
        name, tokens(pre_i), tokens(pre_r), tuple(tokens(message) for message in messages)
    )


PATTERNS: dict[str, HandshakePattern] = {
    pattern.name: pattern
    for pattern in (
        # one-way
        _pattern("N", "", "s", "e, es"),
        _pattern("K", "s", "s", "e, es, ss"),
        _pattern("X", "", "s", "e, es, s, ss"),
        # interactive
        _pattern("NN", "", "", "e", "e, ee"),
        _pattern("NK", "", "s", "e, es", "e, ee"),
        _pattern("NX", "", "", "e", "e, ee, s, es"),
        _pattern("KN", "s", "", "e", "e, ee, se"),
        _pattern("KK", "s", "s", "e, es, ss", "e, ee, se"),
        _pattern("KX", "s", "", "e", "e, ee, se, s, es"),
        _pattern("XN", "", "", "e", "e, ee", "s, se"),
        _pattern("XK", "", "s", "e, es", "e, ee", "s, se"),
        _pattern("XX", "", "", "e", "e, ee, s, es", "s, se"),
        _pattern("IN", "", "", "e, s", "e, ee, se"),
        _pattern("IK", "", "s", "e, es, s, ss", "e, ee, se"),
        _pattern("IX", "", "", "e, s", "e, ee, se, s, es"),
    )
}
