"""PeerAddress: HOST:PORT/PEER_ID parsing and printing."""

from __future__ import annotations

import pytest

from routing.address import PeerAddress
from routing.errors import AddressError
from security import Identity, PeerId

PEER = Identity.generate().peer_id


@pytest.mark.parametrize("host", ["127.0.0.1", "example.org", "my-host_1", "::1", "fe80::1"])
def test_round_trip(host: str) -> None:
    address = PeerAddress(host, 4000, PEER)
    text = str(address)
    assert PeerAddress.parse(text) == address
    if ":" in host:
        assert text.startswith(f"[{host}]:4000/")
    else:
        assert text == f"{host}:4000/{PEER.to_base58()}"


def test_parse_known_text() -> None:
    peer = PeerId(bytes(range(32)))
    address = PeerAddress.parse(f"[::1]:65535/{peer.to_base58()}")
    assert (address.host, address.port, address.peer_id) == ("::1", 65535, peer)
    assert address.endpoint == "[::1]:65535"


@pytest.mark.parametrize(
    "text",
    [
        "",
        "127.0.0.1:4000",
        "127.0.0.1/ID",
        f"127.0.0.1:0/{PEER}",
        f"127.0.0.1:65536/{PEER}",
        f"127.0.0.1:-1/{PEER}",
        f"127.0.0.1:+80/{PEER}",
        f"127.0.0.1:８０/{PEER}",  # noqa: RUF001 (fullwidth digits on purpose)
        f"::1:4000/{PEER}",
        f"[127.0.0.1]:4000/{PEER}",
        f"[::1]4000/{PEER}",
        f"[::zz]:4000/{PEER}",
        f":4000/{PEER}",
        f"bad host:4000/{PEER}",
        "127.0.0.1:4000/notbase58!",
        "127.0.0.1:4000/abc",
        "x" * 600,
    ],
)
def test_bad_addresses(text: str) -> None:
    with pytest.raises(AddressError):
        PeerAddress.parse(text)


def test_constructor_validates() -> None:
    with pytest.raises(AddressError):
        PeerAddress("127.0.0.1", 0, PEER)
    with pytest.raises(AddressError):
        PeerAddress("127.0.0.1", True, PEER)
    with pytest.raises(AddressError):
        PeerAddress("a b", 1, PEER)
