"""How much of a peer's room one client host may hold (`swarm peer --host-share`). Pure.

An open swarm serves clients it does not know, and one of them could reserve a peer's whole
cache with sessions it never uses. With a share below 1, the peer refuses a new session
(`host_share`) that would give its caller's host more than that share of the peer's cache
tokens or of its sessions; other hosts still find room. A host is the caller's IP address
(IPv6: its /64, which one machine usually holds whole), through a circuit the one its relay
says it calls from; a caller whose host is unknown counts alone, by its peer id; this
machine (loopback) is not limited.
"""

from __future__ import annotations

import ipaddress
from collections import Counter
from dataclasses import dataclass, field

from routing.rpc import CallContext

from .errors import HostShareError

__all__ = ["HostShares", "client_host"]


def client_host(caller: CallContext) -> str | None:
    """Whose share a caller draws on (None: this machine's, which is not limited)."""
    if caller.remote_host:
        return _group(caller.remote_host)
    through = _group(caller.circuit_host) if caller.circuit_host else None
    return through or f"peer {caller.peer_id}"  # loopback at the relay is not our machine


def _group(host: str) -> str | None:
    """The share `host` draws on: its address, or an IPv6 address's /64; None: loopback."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:  # a name, not an address
        return host
    if address.is_loopback:
        return None
    if address.version == 6:
        return str(ipaddress.ip_network(f"{address}/64", strict=False))
    return str(address)


@dataclass
class HostShares:
    """The cache tokens and sessions each client host holds on a peer, against `share` of
    the peer's `max_tokens` and `max_sessions`."""

    share: float
    max_tokens: int
    max_sessions: int
    tokens: Counter[str] = field(default_factory=Counter)
    sessions: Counter[str] = field(default_factory=Counter)

    def __post_init__(self) -> None:
        if not 0 < self.share <= 1:
            raise ValueError("a host's share of a peer must be in (0, 1]")

    def take(self, host: str | None, tokens: int) -> None:
        """Count a new session of `host` holding `tokens`; HostShareError if that is more
        than its share (nothing is counted then)."""
        if host is None or self.share >= 1:
            return
        tokens_cap, sessions_cap = self.share * self.max_tokens, self.share * self.max_sessions
        if self.tokens[host] + tokens > tokens_cap or self.sessions[host] + 1 > sessions_cap:
            raise HostShareError(
                f"your host holds {self.sessions[host]} sessions and {self.tokens[host]} cache "
                f"tokens here, and may hold {self.share:g} of this peer's "
                f"{self.max_sessions} sessions and {self.max_tokens} tokens"
            )
        self.tokens[host] += tokens
        self.sessions[host] += 1

    def give_back(self, host: str | None, tokens: int) -> None:
        """A session that `take` counted has ended."""
        if host is None or self.share >= 1:
            return
        self.tokens[host] -= tokens
        self.sessions[host] -= 1
        if not self.sessions[host]:
            del self.tokens[host], self.sessions[host]
