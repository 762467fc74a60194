"""`swarm dht`: run a DHT-only node (a bootstrap point for a swarm)."""

from __future__ import annotations

import argparse

import trio

from routing import PeerAddress, TcpTransport
from routing.dht import serve_dht_node

from .identity_file import identity_from
from .lifecycle import run_service


async def serve_dht(args: argparse.Namespace, *, task_status: trio.TaskStatus[str]) -> None:
    """Run the node; its started value is the address others join through."""
    initial_peers = [PeerAddress.parse(text) for text in args.initial_peers]
    async with trio.open_nursery() as nursery:
        node = await nursery.start(
            serve_dht_node,
            identity_from(args.identity),
            TcpTransport(),
            args.host,
            args.port,
            initial_peers,
        )
        task_status.started(str(node.address))


def run(args: argparse.Namespace) -> int:
    return run_service(serve_dht, args)
