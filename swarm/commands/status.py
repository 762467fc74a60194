"""`swarm status --initial-peers ADDR`: one picture of the swarm, printed (text or JSON).

It joins the DHT like the monitor, reads every model's records, probes every peer once and
prints what the monitor page would show: per model its coverage and its peers' spans,
states, throughput, free cache, sessions and round trips. `--json` prints the page's JSON.
"""

from __future__ import annotations

import argparse
import logging
import sys
from functools import partial

import trio

from routing.address import PeerAddress
from routing.transport import TcpTransport
from swarm.monitor.service import read_swarm
from swarm.monitor.snapshot import SwarmSnapshot
from swarm.monitor.text import render_text

from .keys import identity_from

logger = logging.getLogger(__name__)


def run(args: argparse.Namespace) -> int:
    peers = [PeerAddress.parse(text) for text in args.initial_peers]
    identity = identity_from(args.identity)
    read = partial(read_swarm, identity, TcpTransport(), peers, members=args.members)

    async def bounded() -> SwarmSnapshot | None:
        with trio.move_on_after(args.timeout):
            return await read()
        return None

    snapshot = trio.run(bounded)
    if snapshot is None:
        logger.error("no picture of the swarm within %.0f s", args.timeout)
        return 1
    sys.stdout.write(snapshot.to_json() + "\n" if args.json else render_text(snapshot))
    return 0
