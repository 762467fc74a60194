"""`RPCConfig` (caps, timeouts, windows) and `RPCStats` (what a host holds right now)."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

from security import PeerId

from ..wire import DEFAULT_MAX_MESSAGE_SIZE, INITIAL_STREAM_WINDOW, PREFIX_SIZE

__all__ = ["RPCConfig", "RPCStats"]


@dataclass(frozen=True)
class RPCConfig:
    """Limits of one `RPCHost`. Both peers of a connection may use different values."""

    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE  # per message, prefix included
    max_header_size: int = 4 * 1024 * 1024  # msgpack header of one message
    max_concurrent_calls: int = 256  # handlers (unary + streams) running per connection
    max_unauthenticated: int = 64  # inbound connections still in their handshake
    handshake_timeout: float = 10.0
    connect_timeout: float = 10.0  # TCP connect + handshake of an outgoing connection
    idle_timeout: float | None = 300.0  # close a connection with no call for this long
    stream_window: int = 4 * 1024 * 1024  # receive credit per stream, in bytes
    write_high_water: int = 1024 * 1024  # queued bytes beyond which senders wait
    write_stall_timeout: float = 60.0  # a write taking longer closes the connection
    receive_size: int = 256 * 1024  # bytes asked from the transport per read
    members: frozenset[PeerId] | None = None  # a private swarm's peers (None: anyone)
    members_file: Path | None = None  # or their list, read again whenever it changes
    members_check: float = 5.0  # seconds between looks at `members_file`

    def __post_init__(self) -> None:
        if self.max_message_size < PREFIX_SIZE + 64:
            raise ValueError("max_message_size is too small")
        if not 0 < self.max_header_size <= self.max_message_size:
            raise ValueError("max_header_size must be in 1..max_message_size")
        if self.max_concurrent_calls < 1 or self.max_unauthenticated < 1:
            raise ValueError("caps must be >= 1")
        if min(self.handshake_timeout, self.connect_timeout, self.write_stall_timeout) <= 0:
            raise ValueError("timeouts must be positive")
        if self.idle_timeout is not None and self.idle_timeout <= 0:
            raise ValueError("idle_timeout must be positive or None")
        if self.stream_window < INITIAL_STREAM_WINDOW:
            raise ValueError(f"stream_window must be >= {INITIAL_STREAM_WINDOW}")
        if self.members is not None and self.members_file is not None:
            raise ValueError("give members or members_file, not both")
        if self.members_check <= 0:
            raise ValueError("members_check must be positive")
        if self.write_high_water < 1 or self.receive_size < 1:
            raise ValueError("write_high_water and receive_size must be >= 1")

    @classmethod
    def for_members(cls, members: Collection[PeerId] | Path | None) -> RPCConfig:
        """The defaults, in a private swarm of `members`: their peer ids, or the path of a
        members file to follow (None: anyone)."""
        if isinstance(members, Path):
            return cls(members_file=members)
        return cls(members=None if members is None else frozenset(members))


@dataclass(frozen=True)
class RPCStats:
    """A snapshot of an `RPCHost` (tests use it to check that nothing leaks)."""

    connections: int  # authenticated connections open
    inbound: int
    outbound: int
    relayed: int  # of them, through a circuit relay (the rest are direct)
    unauthenticated: int  # inbound connections in their handshake
    dials: int  # outgoing connection attempts in progress
    calls: int  # our unary calls and streams waiting on remotes
    handlers: int  # remote calls and streams our handlers are serving
