"""Circuit relays list themselves in the DHT; a peer that others cannot reach takes the
nearest.

A node that relays circuits (`routing.rpc.circuit`) stores its address under `RELAYS_KEY`,
signed as its own subkey and republished while it runs (`list_relay`). A peer whose reach
check failed (`routing.rpc.reach`) reads them (`find_relays`: a listing counts if its
address carries the id of the node that signed it and is a direct one, not itself a
circuit: `listed_relay`), pings each, and serves through the one that answers first
(`nearest_relay`). The monitor reads them too, to show the relays.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

import trio

from .address import PeerAddress
from .errors import AddressError, RoutingError

if TYPE_CHECKING:
    from security import PeerId

    from .dht import DHTNode
    from .rpc import RPCHost

__all__ = ["RELAYS_KEY", "find_relays", "list_relay", "listed_relay", "nearest_relay"]

logger = logging.getLogger(__name__)

RELAYS_KEY = "swarm.circuit_relays"
RELAY_TTL = 300.0  # seconds a listing lives; the DHT node republishes it before then
PING_TIMEOUT = 2.0  # seconds for a relay to answer, when choosing one


async def list_relay(dht: DHTNode, address: PeerAddress) -> None:
    """List `address` as a circuit relay (kept listed while `dht` runs)."""
    stored = await dht.store_own(RELAYS_KEY, str(address).encode(), RELAY_TTL)
    logger.info("listed as a circuit relay on %d DHT nodes", stored)


def listed_relay(signer: PeerId, listing: bytes) -> PeerAddress | None:
    """The relay address `signer` listed under `RELAYS_KEY`, if it is a valid listing: its
    own, and direct."""
    try:
        address = PeerAddress.parse(listing.decode("utf-8"))
    except (AddressError, UnicodeDecodeError):
        return None
    return address if address.peer_id == signer and address.via is None else None


async def find_relays(dht: DHTNode) -> list[PeerAddress]:
    """The relays listed in the DHT, each at the address it signed for itself."""
    values = await dht.get(RELAYS_KEY)
    listed = (listed_relay(signer, value.value) for signer, value in values.items())
    return [address for address in listed if address is not None]


async def nearest_relay(rpc: RPCHost, relays: Sequence[PeerAddress]) -> PeerAddress | None:
    """The relay whose ping comes back first (None if none answers within PING_TIMEOUT)."""
    fastest: list[PeerAddress] = []

    async def ping(relay: PeerAddress, done: trio.CancelScope) -> None:
        try:
            await rpc.ping(relay, timeout=PING_TIMEOUT)
        except RoutingError as error:
            logger.debug("the relay %s did not answer: %s", relay, error)
            return
        fastest.append(relay)
        done.cancel()

    async with trio.open_nursery() as nursery:
        for relay in relays:
            if relay.peer_id != rpc.peer_id:
                nursery.start_soon(ping, relay, nursery.cancel_scope)
    return fastest[0] if fastest else None
