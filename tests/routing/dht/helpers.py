"""Small builders shared by the DHT tests."""

from __future__ import annotations

import random

from routing.address import PeerAddress
from security import PeerId


def random_address(rng: random.Random, host: str = "10.0.0.1", port: int = 4000) -> PeerAddress:
    """An address with a random peer id (no key behind it: enough for pure tests)."""
    return PeerAddress(host, port, PeerId(rng.randbytes(32)))
