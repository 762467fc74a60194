"""Drive a pure `Lookup` with trio: up to alpha queries in flight, in one nursery.

Each query runs in its own task and reports back through a channel; the loop applies the
outcome to the state machine in one place, starts the queries it asks for next, and stops
when the lookup is done (or `enough()` says so), cancelling the queries still in flight.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Sequence

import trio

from ..address import PeerAddress
from .lookup import Lookup

# returns the nodes a peer named, or None if the query failed (any way it can)
Ask = Callable[[PeerAddress], Awaitable[Sequence[PeerAddress] | None]]


def _never() -> bool:
    return False


async def drive(lookup: Lookup, ask: Ask, enough: Callable[[], bool] = _never) -> Lookup:
    send, receive = trio.open_memory_channel[tuple[PeerAddress, Sequence[PeerAddress] | None]](
        math.inf
    )

    async def query(peer: PeerAddress) -> None:
        send.send_nowait((peer, await ask(peer)))

    async with trio.open_nursery() as nursery:
        while True:
            for peer in lookup.next_queries():
                nursery.start_soon(query, peer)
            if lookup.done or not lookup.in_flight:
                break
            peer, nodes = await receive.receive()
            if nodes is None:
                lookup.on_failure(peer)
            else:
                lookup.on_reply(peer, nodes)
                if enough():
                    lookup.stop()
        nursery.cancel_scope.cancel()
    return lookup
