"""`PublicAddress`: where others dial a node that listens on HOST:PORT, which it announces.

A node that listens on one address announces it. One that listens on a wildcard (`0.0.0.0`,
`::`) can be reached at any of the machine's addresses, but the swarm needs one: the
address this machine reaches its initial peers from (the source address the kernel chooses
for a route to them; no packet is sent), or, for the first node of a swarm, the one of its
default route; loopback as a last resort, with a warning. A node behind NAT, with a port
forwarded, or one known by a DNS name, names its public host and port itself
(`--public-host`, `--public-port`), which win over both.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
from collections.abc import Sequence
from dataclasses import dataclass

from .address import PeerAddress
from .errors import AddressError

__all__ = ["PublicAddress"]

logger = logging.getLogger(__name__)

# where a default route leads (documentation ranges, RFC 5737 and 3849): never sent to
NOWHERE = {socket.AF_INET: "192.0.2.1", socket.AF_INET6: "2001:db8::1"}
LOOPBACK = {socket.AF_INET: "127.0.0.1", socket.AF_INET6: "::1"}


@dataclass(frozen=True)
class PublicAddress:
    """How a node finds the host and port that others dial (see the module doc)."""

    host: str | None = None  # announced as it is (None: the listening host, or found)
    port: int | None = None  # announced as it is (None: the listening port)
    toward: tuple[PeerAddress, ...] = ()  # the initial peers, which must be able to dial it

    def __post_init__(self) -> None:
        if self.port is not None and not 0 < self.port < 65536:
            raise AddressError(f"public port out of range: {self.port}")

    def of(self, listening_host: str, listening_port: int) -> tuple[str, int]:
        """The (host, port) to announce for a listener bound to these."""
        port = self.port or listening_port
        if self.host is not None:
            return self.host, port
        if not _wildcard(listening_host):
            return listening_host, port
        family = socket.AF_INET6 if ":" in listening_host else socket.AF_INET
        return _reachable_host(family, [peer.host for peer in self.toward]), port


def _wildcard(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_unspecified
    except ValueError:  # a name
        return False


def _reachable_host(family: socket.AddressFamily, peers: Sequence[str]) -> str:
    """This machine's address toward `peers`, else toward its default route, else loopback."""
    for toward in [*peers, NOWHERE[family]]:
        found = _source_address(family, toward)
        if found is not None:
            return found
    logger.warning(
        "listening on every address, but no route out of this machine: announcing %s "
        "(give --public-host for others to reach it)",
        LOOPBACK[family],
    )
    return LOOPBACK[family]


def _source_address(family: socket.AddressFamily, toward: str) -> str | None:
    """The address a datagram to `toward` would leave from (None: no route, or no such
    host). Connecting a UDP socket sends nothing."""
    try:
        (_, _, _, _, target), *_ = socket.getaddrinfo(toward, 9, family, socket.SOCK_DGRAM)
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            probe.connect(target)
            host = str(probe.getsockname()[0])
    except (OSError, ValueError):
        return None
    return None if _wildcard(host) else host.partition("%")[0]  # no IPv6 zone
