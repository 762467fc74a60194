"""The wire format between a client and a peer's span server. Pure: no I/O, no torch.

Methods (block indices are the model's, `end` exclusive):
- `span.info` (unary): `{}` -> the peer's announcement fields plus `max_session_length`.
- `span.forward` (unary): `{"start", "end", "tensor"}` + bytes -> `{"tensor"}` + bytes;
  `"attention_mask"` (rows of 0 and 1, 0 for padding) as transformers' model takes it, and
  `"adapter"`: the name of a LoRA adapter the peer announces, to run the blocks with. With
  `"keep": true` (a backward will follow), the reply may add `"kept"`: a token naming the
  forward's graph, which the peer keeps a while (`peer.kept_forwards`).
- `span.backward` (unary): the same request, its tensor `[2, batch, length, hidden]`: the
  span's inputs and the gradient of its outputs -> `{"tensor"}` + bytes: the gradient of its
  inputs (the blocks' weights are frozen). `"kept"`: the forward's token, if it had one.
- `span.release` (unary): `{"release": [token, ...]}` (at most `MAX_RELEASE`) -> `{"released":
  n}`: the caller's forwards those tokens name will see no backward, and the peer drops
  their graphs now (another caller's tokens drop nothing).
- `span.inference` (stream): `{"open": {"max_length", "batch_size", "start", "end"}}`, with
  `"padding": [n, ...]` for rows whose first n tokens are left padding (a batch of prompts)
  and `"adapter"` as in `span.forward`, and `"fork": {"session", "tokens"}` to begin with a
  copy of the first `tokens` cached tokens of the caller's own `session` on this peer (same
  blocks, rows, padding and adapter: a shared prompt is computed once; another caller's
  session, or none, is `session_not_found`) ->
  `{"opened": {"session", "start", "end", "max_length"}}`; then per step
  `{"step": n, "tensor"}` + bytes -> `{"step": n, "tensor", "server_ms", "compute_ms"}` +
  bytes (the time the peer spent on the step, from receiving it to replying, and the part
  of it its compute thread ran the blocks; both for timing only). A step may carry
  `"position": p` (speculative decoding): its tokens follow the first p cached ones, and
  any after them are dropped first; and `"reorder": [r, ...]` (beam search): then row i of
  the session's cache becomes what row r_i was. The client ends the stream to close the
  session; failures come back as remote errors with a code. A peer refuses to open a
  session with `cache_budget`, `session_limit` or `draining` when it has no room for it now
  (`NO_ROOM`), and with `invalid_request`, `unknown_adapter`, `bad_request` or `host_share`
  (the caller's host holds its share of the peer already) when it takes no such request from
  this caller (`REFUSED_REQUEST`).
- Relay (a pipeline through the chain). `opened` carries a `relay` token: whoever holds it
  may push steps into that session. A step may carry `"relay": [{"to", "session", "token",
  "step"}, ...]`, the rest of the chain: the peer sends its output as step `step` of the
  first of them (with the others as that step's own `relay`, its own `"position"`, and the
  target's `"reorder"`, if it has one), then answers its client as
  usual, adding `"relayed": true|false` (whether the output went out). The next peer
  answers *its* client as if the client had sent the step, adding `"from_relay": true`.
  A step may thus reach a peer twice (relayed, and from a client that found it late): the
  first copy is taken, a copy of a step already taken is ignored, and a step ahead of the
  next one due is refused (`step_order`).
- `span.relay` (stream, peer to peer): `{"join": {"session", "token"}}`, then steps as
  above, nothing back (a failure ends the stream with a remote error, and the session's own
  stream with it).
`"tensor"` is `routing.tensor_codec`'s header (dtype and shape); the payload is its bytes.
Parsers raise `ProtocolError` on anything malformed: they read remote input.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .address import PeerAddress
from .announcement import MODEL_NAME_PATTERN
from .errors import AddressError, ProtocolError

INFO = "span.info"
FORWARD = "span.forward"
BACKWARD = "span.backward"
INFERENCE = "span.inference"
RELAY = "span.relay"
RELEASE = "span.release"

NO_ROOM = frozenset({"cache_budget", "session_limit", "draining"})  # codes: the peer is full
REFUSED_REQUEST = frozenset({"invalid_request", "unknown_adapter", "bad_request", "host_share"})

MAX_RELAY_HOPS = 64  # the rest of a chain one step may name
MAX_MASK_CELLS = 1 << 18  # of a forward's attention_mask: checked before its values are
MAX_ROWS = 1 << 12  # of a session's padding or a step's reorder, likewise
MAX_TOKEN_LENGTH = 64  # characters of a session id or a relay token
MAX_RELEASE = 64  # kept tokens one `span.release` may name


@dataclass(frozen=True)
class SessionFork:
    """A new session's beginning: the first `tokens` of the caller's `session` on the peer."""

    session: str
    tokens: int


@dataclass(frozen=True)
class SessionRequest:
    """What a client asks for when it opens an inference session."""

    start: int
    end: int
    max_length: int
    batch_size: int = 1
    padding: tuple[int, ...] = ()  # per row; () when no row is padded
    adapter: str | None = None
    fork: SessionFork | None = None

    def header(self) -> dict[str, Any]:
        fields: dict[str, Any] = {
            "start": self.start,
            "end": self.end,
            "max_length": self.max_length,
            "batch_size": self.batch_size,
        }
        if any(self.padding):
            fields["padding"] = list(self.padding)
        if self.fork is not None:
            fields["fork"] = {"session": self.fork.session, "tokens": self.fork.tokens}
        return {"open": fields | _adapter_field(self.adapter)}

    @classmethod
    def parse(cls, header: Mapping[str, Any]) -> SessionRequest:
        fields = _map(header, "open")
        batch_size = _int(fields, "batch_size")
        padding = fields.get("padding", [])
        if (
            not isinstance(padding, list)
            or len(padding) != (batch_size if padding else 0)
            or len(padding) > MAX_ROWS  # before the loop below reads it
        ):
            raise ProtocolError(
                f"'padding' must list one count per row of the batch, at most {MAX_ROWS}"
            )
        return cls(
            start=_int(fields, "start"),
            end=_int(fields, "end"),
            max_length=_int(fields, "max_length"),
            batch_size=batch_size,
            padding=tuple(_int({"padding": count}, "padding") for count in padding),
            adapter=_adapter(fields),
            fork=_fork(fields),
        )


@dataclass(frozen=True)
class SessionOpened:
    """The peer's answer to `SessionRequest`; `relay` is empty if it takes no relayed steps."""

    session: str
    start: int
    end: int
    max_length: int
    relay: str = ""

    def header(self) -> dict[str, Any]:
        return {"opened": {"session": self.session, "start": self.start, "end": self.end,
                           "max_length": self.max_length, "relay": self.relay}}  # fmt: skip

    @classmethod
    def parse(cls, header: Mapping[str, Any]) -> SessionOpened:
        fields = _map(header, "opened")
        return cls(
            _text(fields, "session"),
            _int(fields, "start"),
            _int(fields, "end"),
            _int(fields, "max_length"),
            _text(fields, "relay", empty=True) if "relay" in fields else "",
        )


@dataclass(frozen=True)
class RelayTarget:
    """The next hop of a relayed step: where it listens, its session there, and the number
    the step has in that session."""

    address: PeerAddress
    session: str
    token: str
    step: int
    reorder: tuple[int, ...] = ()  # that step's new order of the session's rows, if any

    def wire(self) -> dict[str, Any]:
        return {"to": str(self.address), "session": self.session, "token": self.token,
                "step": self.step} | _reorder_field(self.reorder)  # fmt: skip

    @classmethod
    def parse(cls, fields: Any) -> RelayTarget:
        if not isinstance(fields, Mapping):
            raise ProtocolError("a relay target must be a map")
        to = fields.get("to")
        if not isinstance(to, str):
            raise ProtocolError("a relay target needs its address, 'to'")
        try:
            address = PeerAddress.parse(to)
        except AddressError as error:
            raise ProtocolError(f"bad relay address: {error}") from None
        return cls(
            address,
            _text(fields, "session"),
            _text(fields, "token"),
            _int(fields, "step"),
            parse_reorder(fields),
        )


@dataclass(frozen=True)
class RelayJoin:
    """The first message of a `span.relay` stream: which session, and its token."""

    session: str
    token: str

    def header(self) -> dict[str, Any]:
        return {"join": {"session": self.session, "token": self.token}}

    @classmethod
    def parse(cls, header: Mapping[str, Any]) -> RelayJoin:
        fields = _map(header, "join")
        return cls(_text(fields, "session"), _text(fields, "token"))


@dataclass(frozen=True)
class ForwardRequest:
    """A `span.forward` or `span.backward` request, but for its tensor's bytes."""

    start: int
    end: int
    tensor: Mapping[str, Any]  # `routing.tensor_codec`'s header
    attention_mask: list[list[int]] | None = None  # rows of 0 and 1, 0 for padding
    adapter: str | None = None
    keep: bool = False  # forward: keep the graph for a backward
    kept: str | None = None  # backward: the token of the forward's graph

    def header(self) -> dict[str, Any]:
        header = {"start": self.start, "end": self.end, "tensor": dict(self.tensor)}
        if self.attention_mask is not None:
            header["attention_mask"] = [list(row) for row in self.attention_mask]
        if self.keep:
            header["keep"] = True
        if self.kept is not None:
            header["kept"] = self.kept
        return header | _adapter_field(self.adapter)

    @classmethod
    def parse(cls, header: Mapping[str, Any]) -> ForwardRequest:
        tensor = tensor_header(header)  # and the header is a map
        mask = header.get("attention_mask")
        width = len(mask[0]) if isinstance(mask, list) and mask and isinstance(mask[0], list) else 0
        if mask is not None and not (  # sizes first: the loops below read remote input
            isinstance(mask, list)
            and len(mask) <= MAX_MASK_CELLS
            and len(mask) * width <= MAX_MASK_CELLS
            and all(isinstance(row, list) and len(row) == width for row in mask)
            and all(type(value) is int and value in (0, 1) for row in mask for value in row)
        ):
            raise ProtocolError(
                f"'attention_mask' must be rows of 0 and 1, all of one length, at most "
                f"{MAX_MASK_CELLS} in all"
            )
        keep = header.get("keep", False)
        if not isinstance(keep, bool):
            raise ProtocolError("field 'keep' must be true or false")
        return cls(
            _int(header, "start"), _int(header, "end"), tensor, mask, _adapter(header), keep,
            kept_token(header),
        )  # fmt: skip


def kept_token(header: Mapping[str, Any]) -> str | None:
    """The `kept` token of a forward's reply or a backward's request, if any."""
    return None if header.get("kept") is None else _text(header, "kept")


def released_tokens(header: Mapping[str, Any]) -> tuple[str, ...]:
    """The tokens a `span.release` request names."""
    tokens = header.get("release") if isinstance(header, Mapping) else None
    if not (isinstance(tokens, list) and 0 < len(tokens) <= MAX_RELEASE):
        raise ProtocolError(f"field 'release' must be a list of 1 to {MAX_RELEASE} tokens")
    return tuple(_text({"release": token}, "release") for token in tokens)


def step_header(
    step: int,
    tensor: Mapping[str, Any],
    server_ms: float | None = None,
    compute_ms: float | None = None,
    *,
    relay: Sequence[RelayTarget] = (),
    relayed: bool | None = None,
    from_relay: bool = False,
    reorder: Sequence[int] = (),
    position: int | None = None,
) -> dict[str, Any]:
    header: dict[str, Any] = {"step": step, "tensor": dict(tensor)} | _reorder_field(reorder)
    if position is not None:
        header["position"] = position
    if server_ms is not None:
        header["server_ms"] = server_ms
    if compute_ms is not None:
        header["compute_ms"] = compute_ms
    if relay:
        header["relay"] = [target.wire() for target in relay]
    if relayed is not None:
        header["relayed"] = relayed
    if from_relay:
        header["from_relay"] = True
    return header


def parse_relay(header: Mapping[str, Any]) -> tuple[RelayTarget, ...]:
    """The rest of the chain a step names (empty: answer the client only)."""
    targets = header.get("relay", [])
    if not isinstance(targets, list) or len(targets) > MAX_RELAY_HOPS:
        raise ProtocolError(f"relay must be a list of at most {MAX_RELAY_HOPS} targets")
    return tuple(RelayTarget.parse(target) for target in targets)


def parse_reorder(fields: Mapping[str, Any]) -> tuple[int, ...]:
    """A step's new order of the session's rows (empty: as they are); the peer checks it
    against the session."""
    reorder = fields.get("reorder", [])
    if not isinstance(reorder, list) or len(reorder) > MAX_ROWS:
        raise ProtocolError(f"'reorder' must list at most {MAX_ROWS} rows")
    return tuple(_int({"reorder": row}, "reorder") for row in reorder)


def parse_position(header: Mapping[str, Any]) -> int | None:
    """How many cached tokens a step's tokens follow (None: all of them); the peer checks it
    against the session."""
    return None if header.get("position") is None else _int(header, "position")


def _reorder_field(reorder: Sequence[int]) -> dict[str, Any]:
    return {"reorder": list(reorder)} if reorder else {}


def was_relayed(header: Mapping[str, Any]) -> bool:
    """Whether a peer's answer says it passed its output on to the next hop."""
    return header.get("relayed") is True


def came_by_relay(header: Mapping[str, Any]) -> bool:
    """Whether a peer's answer says the step's input came from the previous peer."""
    return header.get("from_relay") is True


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


def _adapter(fields: Mapping[str, Any]) -> str | None:
    value = fields.get("adapter")
    if value is not None and not (isinstance(value, str) and MODEL_NAME_PATTERN.match(value)):
        raise ProtocolError("field 'adapter' must name an adapter (letters, digits, ._-)")
    return value


def _fork(fields: Mapping[str, Any]) -> SessionFork | None:
    if "fork" not in fields:
        return None
    fork = _map(fields, "fork")
    return SessionFork(_text(fork, "session"), _int(fork, "tokens"))


def _adapter_field(adapter: str | None) -> dict[str, Any]:
    return {} if adapter is None else {"adapter": adapter}


def _text(fields: Mapping[str, Any], name: str, *, empty: bool = False) -> str:
    value = fields.get(name)
    if not isinstance(value, str) or len(value) > MAX_TOKEN_LENGTH or not (value or empty):
        raise ProtocolError(
            f"field {name!r} must be a string of 1 to {MAX_TOKEN_LENGTH} characters"
        )
    return value
