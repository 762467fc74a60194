"""The wire format between a client and a peer's span server. Pure: no I/O, no torch.

Methods (block indices are the model's, `end` exclusive):
- `span.info` (unary): `{}` -> the peer's announcement fields plus `max_session_length`.
- `span.forward` (unary): `{"start", "end", "tensor"}` + bytes -> `{"tensor"}` + bytes.
- `span.inference` (stream): `{"open": {"max_length", "batch_size", "start", "end"}}` ->
  `{"opened": {"session", "start", "end", "max_length"}}`; then per step
  `{"step": n, "tensor"}` + bytes -> `{"step": n, "tensor", "server_ms", "compute_ms"}` +
  bytes (the time the peer spent on the step, from receiving it to replying, and the part
  of it its compute thread ran the blocks; both for timing only). The client ends the
  stream to close the session; failures come back as remote errors with a code.
`"tensor"` is `routing.tensor_codec`'s header (dtype and shape); the payload is its bytes.
Parsers raise `ProtocolError` on anything malformed: they read remote input.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .errors import ProtocolError

INFO = "span.info"
FORWARD = "span.forward"
INFERENCE = "span.inference"


@dataclass(frozen=True)
class SessionRequest:
    """What a client asks for when it opens an inference session."""

    start: int
    end: int
    max_length: int
    batch_size: int = 1

    def header(self) -> dict[str, Any]:
        return {"open": {"start": self.start, "end": self.end, "max_length": self.max_length,
                         "batch_size": self.batch_size}}  # fmt: skip

    @classmethod
    def parse(cls, header: Mapping[str, Any]) -> SessionRequest:
        fields = _map(header, "open")
        return cls(
            start=_int(fields, "start"),
            end=_int(fields, "end"),
            max_length=_int(fields, "max_length"),
            batch_size=_int(fields, "batch_size"),
        )


@dataclass(frozen=True)
class SessionOpened:
    """The peer's answer to `SessionRequest`."""

    session: str
    start: int
    end: int
    max_length: int

    def header(self) -> dict[str, Any]:
        return {"opened": {"session": self.session, "start": self.start, "end": self.end,
                           "max_length": self.max_length}}  # fmt: skip

    @classmethod
    def parse(cls, header: Mapping[str, Any]) -> SessionOpened:
        fields = _map(header, "opened")
        session = fields.get("session")
        if not isinstance(session, str):
            raise ProtocolError("opened.session must be a string")
        return cls(session, _int(fields, "start"), _int(fields, "end"), _int(fields, "max_length"))


def forward_header(start: int, end: int, tensor: Mapping[str, Any]) -> dict[str, Any]:
    return {"start": start, "end": end, "tensor": dict(tensor)}


def parse_forward(header: Mapping[str, Any]) -> tuple[int, int, Mapping[str, Any]]:
    """(start, end, tensor header) of a forward request."""
    return _int(header, "start"), _int(header, "end"), tensor_header(header)


def step_header(
    step: int,
    tensor: Mapping[str, Any],
    server_ms: float | None = None,
    compute_ms: float | None = None,
) -> dict[str, Any]:
    header: dict[str, Any] = {"step": step, "tensor": dict(tensor)}
    if server_ms is not None:
        header["server_ms"] = server_ms
    if compute_ms is not None:
        header["compute_ms"] = compute_ms
    return header


def server_time(header: Mapping[str, Any], field: str = "server_ms") -> float | None:
    """The peer's own time for a step (`server_ms`, or `compute_ms`: its blocks), in seconds,
    if it said (timing only: never trusted)."""
    value = header.get(field)
    if isinstance(value, int | float) and not isinstance(value, bool) and 0 <= value < 1e7:
        return float(value) / 1000
    return None


def parse_step(header: Mapping[str, Any]) -> tuple[int, Mapping[str, Any]]:
    """(step number, tensor header) of an inference step or its reply."""
    return _int(header, "step"), tensor_header(header)


def tensor_header(header: Mapping[str, Any]) -> Mapping[str, Any]:
    """The tensor description inside a message (checked further by `decode_tensor`)."""
    return _map(header, "tensor")


def _map(header: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    if not isinstance(header, Mapping):
        raise ProtocolError("a message header must be a map")
    value = header.get(name)
    if not isinstance(value, Mapping):
        raise ProtocolError(f"field {name!r} must be a map")
    return value


def _int(fields: Mapping[str, Any], name: str) -> int:
    value = fields.get(name)
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 2**31:
        raise ProtocolError(f"field {name!r} must be a non-negative integer")
    return value
