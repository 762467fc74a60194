"""What a peer announces about itself, per block it serves: the swarm's shared vocabulary.

A peer publishes one `PeerAnnouncement` under the DHT key `<model>.<block>` for every block
of its span (subkey: its peer id; the DHT signs and verifies the envelope). Clients build
their routes from these records, the monitor draws them, peers choose their blocks by them.
The record is plain data: encoded with msgpack, decoded with every field checked, because it
comes from the network.
"""

from __future__ import annotations

import enum
import math
import re
from dataclasses import asdict, dataclass, field
from typing import Any, cast

import msgpack

from .address import PeerAddress
from .errors import AddressError, ProtocolError

PROTOCOL_VERSION = 1
MAX_ANNOUNCEMENT_BYTES = 4096
MAX_ADAPTERS = 8  # announced per peer
MODEL_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._\-]{0,127}$")
QUANTIZATION_PATTERN = re.compile(r"^[a-z0-9_]{0,16}$")


class PeerState(enum.Enum):
    JOINING = "joining"  # claiming its span, loading it
    ONLINE = "online"
    DRAINING = "draining"  # serving the sessions it has, taking no new one
    OFFLINE = "offline"


MODELS_KEY = "swarm.models"


def block_key(model: str, block: int) -> str:
    """The DHT key under which the servers of one block announce themselves."""
    return f"{model}.{block}"


@dataclass(frozen=True)
class ModelEntry:
    """Announced under `MODELS_KEY` by every peer, so a monitor can list the models served."""

    model: str
    num_blocks: int

    def __post_init__(self) -> None:
        if not MODEL_NAME_PATTERN.match(self.model):
            raise ProtocolError(f"invalid model name {self.model!r}")
        if not 0 < self.num_blocks <= 4096:
            raise ProtocolError(f"invalid number of blocks {self.num_blocks}")

    def encode(self) -> bytes:
        return cast(bytes, msgpack.packb([self.model, self.num_blocks], use_bin_type=True))

    @classmethod
    def decode(cls, data: bytes) -> ModelEntry:
        try:
            model, num_blocks = msgpack.unpackb(data, raw=False)
        except Exception as error:  # msgpack raises several unrelated types
            raise ProtocolError(f"invalid model entry: {error}") from None
        if not isinstance(model, str) or not isinstance(num_blocks, int):
            raise ProtocolError("invalid model entry")
        return cls(model, num_blocks)


@dataclass(frozen=True)
class PeerAnnouncement:
    """One peer's public state. `start`/`end` is its span, end exclusive."""

    address: PeerAddress
    model: str
    start: int
    end: int
    state: PeerState
    throughput: float  # tokens per second through ONE block of the span (measured)
    cache_tokens_left: int
    sessions: int
    dtype: str
    version: str
    rtt_hints: dict[str, float] = field(default_factory=dict)  # peer id -> seconds
    protocol: int = PROTOCOL_VERSION
    adapters: tuple[str, ...] = ()  # the LoRA adapters it runs on request, by name
    quantization: str = ""  # of its weights: "" (its dtype's), or "int8"
    max_session_length: int = 0  # the longest session it opens (0: it does not say)
    served_tokens: int = 0  # positions its inference steps ran since it started (a counter)

    def __post_init__(self) -> None:
        if not MODEL_NAME_PATTERN.match(self.model):
            raise ProtocolError(f"invalid model name {self.model!r}")
        if not 0 <= self.start < self.end:
            raise ProtocolError(f"invalid span {self.start}:{self.end}")
        if not (math.isfinite(self.throughput) and self.throughput >= 0):
            raise ProtocolError("throughput must be a finite number >= 0")
        counts = (self.cache_tokens_left, self.sessions, self.max_session_length,
                  self.served_tokens)  # fmt: skip
        if min(counts) < 0:
            raise ProtocolError("counts must be >= 0")
        if len(self.adapters) > MAX_ADAPTERS or not all(
            isinstance(name, str) and MODEL_NAME_PATTERN.match(name) for name in self.adapters
        ):
            raise ProtocolError(f"adapters must be at most {MAX_ADAPTERS} names")
        if not QUANTIZATION_PATTERN.match(self.quantization):
            raise ProtocolError("quantization must be a short name, or empty")

    @property
    def blocks(self) -> range:
        return range(self.start, self.end)

    def to_fields(self) -> dict[str, Any]:
        """The record as a msgpack-able map (also the `span.info` reply)."""
        fields = asdict(self)
        fields["address"] = str(self.address)
        fields["state"] = self.state.value
        fields["adapters"] = list(self.adapters)
        return fields

    def encode(self) -> bytes:
        return cast(bytes, msgpack.packb(self.to_fields(), use_bin_type=True))

    @classmethod
    def decode(cls, data: bytes) -> PeerAnnouncement:
        """Parse a record from the network; any defect is a `ProtocolError`."""
        if len(data) > MAX_ANNOUNCEMENT_BYTES:
            raise ProtocolError("announcement too large")
        try:
            fields = msgpack.unpackb(data, raw=False, strict_map_key=True)
        except Exception as error:  # msgpack raises several unrelated types
            raise ProtocolError(f"announcement is not msgpack: {error}") from None
        return cls.from_fields(fields)

    @classmethod
    def from_fields(cls, fields: Any) -> PeerAnnouncement:
        """Parse the map form (remote input); any defect is a `ProtocolError`."""
        if not isinstance(fields, dict):
            raise ProtocolError("announcement must be a map")
        try:
            return cls(
                address=PeerAddress.parse(_typed(fields, "address", str)),
                model=_typed(fields, "model", str),
                start=_typed(fields, "start", int),
                end=_typed(fields, "end", int),
                state=PeerState(_typed(fields, "state", str)),
                throughput=float(_typed(fields, "throughput", (int, float))),
                cache_tokens_left=_typed(fields, "cache_tokens_left", int),
                sessions=_typed(fields, "sessions", int),
                dtype=_typed(fields, "dtype", str),
                version=_typed(fields, "version", str),
                rtt_hints=_rtt_hints(fields.get("rtt_hints", {})),
                protocol=_typed(fields, "protocol", int),
                adapters=_adapters(fields.get("adapters", [])),
                quantization=_typed(fields, "quantization", str, default=""),
                max_session_length=_typed(fields, "max_session_length", int, default=0),
                served_tokens=_typed(fields, "served_tokens", int, default=0),
            )
        except (ValueError, AddressError) as error:  # an unknown state, a bad address
            raise ProtocolError(f"invalid announcement: {error}") from None


def _typed(
    fields: dict[str, Any], name: str, kind: type | tuple[type, ...], default: Any = None
) -> Any:
    """`fields[name]` if it is a `kind` (`default` if absent and not None)."""
    value = fields.get(name, default)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise ProtocolError(f"announcement field {name!r} is missing or of the wrong type")
    return value


def _adapters(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or len(value) > MAX_ADAPTERS:
        raise ProtocolError(f"adapters must be a list of at most {MAX_ADAPTERS} names")
    return tuple(value)  # each checked by the record itself


def _rtt_hints(value: Any) -> dict[str, float]:
    if not isinstance(value, dict) or len(value) > 64:
        raise ProtocolError("rtt_hints must be a small map")
    hints = {}
    for peer, seconds in value.items():
        if not isinstance(peer, str) or not isinstance(seconds, (int, float)):
            raise ProtocolError("rtt_hints maps peer ids to seconds")
        hints[peer] = float(seconds)
    return hints
