"""What handlers and callers exchange: `Packet` (header + raw body) and `CallContext`."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from security import PeerId

if TYPE_CHECKING:
    from .stream import BidiStream

__all__ = ["CallContext", "Packet", "StreamHandler", "UnaryHandler"]


@dataclass(frozen=True)
class Packet:
    """One request, reply or stream item.

    `header` is a msgpack-able mapping (str keys); `body` is a raw payload (tensor bytes,
    see `routing.tensor_codec`). A received body is a `memoryview` into the receive buffer:
    no copy was made; call `bytes(packet.body)` to keep it independently.
    """

    header: Mapping[str, Any] = field(default_factory=dict)
    body: bytes | bytearray | memoryview = b""


@dataclass(frozen=True)
class CallContext:
    """Who is calling: the authenticated peer id and the host the connection comes from
    ("" through a circuit, whose relay says where it comes from: `circuit_host`)."""

    peer_id: PeerId
    remote_host: str
    circuit_host: str = ""


UnaryHandler = Callable[[Packet, CallContext], Awaitable[Packet]]
StreamHandler = Callable[["BidiStream", CallContext], Awaitable[None]]
