"""`PeerAddress`: where a peer listens and who it is, written `HOST:PORT/PEER_ID`.

IPv6 hosts are bracketed (`[::1]:4000/PEER_ID`). The peer id pins the secure handshake: a
dialer refuses a remote whose identity does not match it. A peer that cannot be dialled
serves through a circuit relay (`routing.rpc.circuit`): its address names the relay, then
itself, `HOST:PORT/RELAY_ID/circuit/PEER_ID`, where HOST:PORT is the relay's.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from security import InvalidPeerIdError, PeerId

from .errors import AddressError

__all__ = ["PeerAddress"]

_MAX_ADDRESS_LENGTH = 512
CIRCUIT = "/circuit/"  # between a circuit's relay and its peer, in the text form
_MAX_HOST_LENGTH = 253


def _check_host(host: str) -> str:
    if not host or len(host) > _MAX_HOST_LENGTH:
        raise AddressError(f"bad host: {host!r}")
    if ":" in host:  # only IPv6 literals may hold colons
        try:
            ipaddress.IPv6Address(host)
        except ValueError as error:
            raise AddressError(f"bad IPv6 host: {host!r}") from error
        return host
    allowed = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-_")
    if not set(host) <= allowed:
        raise AddressError(f"bad host: {host!r}")
    return host


@dataclass(frozen=True)
class PeerAddress:
    """A peer's listening address and identity (with `via`, the relay's id: a circuit)."""

    host: str
    port: int
    peer_id: PeerId
    via: PeerId | None = None  # a circuit: HOST:PORT is the relay's, which has this id

    def __post_init__(self) -> None:
        _check_host(self.host)
        if isinstance(self.port, bool) or not isinstance(self.port, int):
            raise AddressError(f"bad port: {self.port!r}")
        if not 0 < self.port < 65536:
            raise AddressError(f"port out of range: {self.port}")
        if not isinstance(self.peer_id, PeerId) or not isinstance(self.via, PeerId | None):
            raise AddressError("peer_id and via must be PeerIds")

    @property
    def relay(self) -> PeerAddress | None:
        """The relay's own address, if this is a circuit."""
        return None if self.via is None else PeerAddress(self.host, self.port, self.via)

    @classmethod
    def parse(cls, text: str) -> PeerAddress:
        """Parse `HOST:PORT/PEER_ID` (IPv6: `[HOST]:PORT/PEER_ID`); AddressError if bad."""
        if not isinstance(text, str) or len(text) > _MAX_ADDRESS_LENGTH:
            raise AddressError("a peer address is a string of at most 512 characters")
        text = text.strip()
        relay_text, circuit, peer_text = text.rpartition(CIRCUIT)
        if circuit:
            relay = cls.parse(relay_text)
            if relay.via is not None:
                raise AddressError(f"a circuit through a circuit: {text!r}")
            return cls(relay.host, relay.port, _peer_id(peer_text, text), relay.peer_id)
        location, slash, peer_text = text.rpartition("/")
        if not slash or not location or not peer_text:
            raise AddressError(f"expected HOST:PORT/PEER_ID, got {text!r}")
        if location.startswith("["):
            host, bracket, port_text = location[1:].partition("]")
            if not bracket or not port_text.startswith(":"):
                raise AddressError(f"expected [IPV6]:PORT, got {location!r}")
            port_text = port_text[1:]
            if ":" not in host:
                raise AddressError(f"brackets are for IPv6 hosts only: {location!r}")
        else:
            host, colon, port_text = location.rpartition(":")
            if not colon:
                raise AddressError(f"expected HOST:PORT, got {location!r}")
            if ":" in host:
                raise AddressError(f"IPv6 hosts must be bracketed: {location!r}")
        if not port_text.isascii() or not port_text.isdigit() or len(port_text) > 5:
            raise AddressError(f"bad port: {port_text!r}")
        return cls(host, int(port_text), _peer_id(peer_text, text))

    @property
    def endpoint(self) -> str:
        """`HOST:PORT` (IPv6 bracketed), without the peer id."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def __str__(self) -> str:
        if self.via is None:
            return f"{self.endpoint}/{self.peer_id.to_base58()}"
        return f"{self.endpoint}/{self.via.to_base58()}{CIRCUIT}{self.peer_id.to_base58()}"


def _peer_id(text: str, address: str) -> PeerId:
    try:
        return PeerId.from_base58(text)
    except InvalidPeerIdError as error:
        raise AddressError(f"bad peer id in {address!r}: {error}") from error
