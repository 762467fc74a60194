"""`PublicAddress`: the address a node announces, for each way it may listen."""

from __future__ import annotations

import ipaddress
import socket

import pytest

from routing.address import PeerAddress
from routing.errors import AddressError
from routing.public_address import PublicAddress
from security import Identity

PEER_ID = Identity.generate().peer_id


def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as probe:
            probe.connect(("::1", 9))
    except OSError:
        return False
    return True


def test_a_given_host_and_port_are_announced_as_they_are() -> None:
    assert PublicAddress("swarm.example.org", 31337).of("0.0.0.0", 4000) == (
        "swarm.example.org",
        31337,
    )
    assert PublicAddress(port=31337).of("127.0.0.1", 4000) == ("127.0.0.1", 31337)
    assert PublicAddress("203.0.113.7").of("10.0.0.2", 4000) == ("203.0.113.7", 4000)
    with pytest.raises(AddressError):
        PublicAddress(port=70000)


def test_a_concrete_listening_host_is_its_own_address() -> None:
    toward = (PeerAddress("127.0.0.1", 5000, PEER_ID),)
    assert PublicAddress(toward=toward).of("10.0.0.2", 4000) == ("10.0.0.2", 4000)
    assert PublicAddress().of("localhost", 4000) == ("localhost", 4000)


def test_a_wildcard_is_the_address_toward_the_initial_peers() -> None:
    """A peer that listens everywhere and joins through 127.0.0.1 reaches it from
    127.0.0.1: that is what it announces, not 0.0.0.0. A peer whose name does not resolve
    is passed over for the next."""
    toward = (
        PeerAddress("no-such-host.invalid", 5000, PEER_ID),
        PeerAddress("127.0.0.1", 5000, PEER_ID),
    )
    assert PublicAddress(toward=toward).of("0.0.0.0", 4000) == ("127.0.0.1", 4000)


@pytest.mark.skipif(not _has_ipv6_loopback(), reason="no IPv6 loopback here")
def test_an_ipv6_wildcard_is_the_ipv6_address_toward_the_initial_peers() -> None:
    toward = (PeerAddress("::1", 5000, PEER_ID),)
    assert PublicAddress(toward=toward).of("::", 4000) == ("::1", 4000)


def test_a_wildcard_with_no_peers_is_a_concrete_address_of_this_machine() -> None:
    """The first node of a swarm: its default route's address, or loopback without one;
    never the wildcard, and an address this machine listens on."""
    host, port = PublicAddress().of("0.0.0.0", 4000)
    assert port == 4000 and not ipaddress.ip_address(host).is_unspecified
    with socket.socket() as listener:  # it is one of ours: a listener can bind it
        listener.bind((host, 0))
