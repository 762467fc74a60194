"""`swarm dht`: run a DHT-only node (a bootstrap point for a swarm); prints the address
others join through (`--public-host`/`--public-port`, or found: `routing.public_address`)."""

from __future__ import annotations

import argparse
from functools import partial

import trio

from routing import PeerAddress, TcpTransport
from routing.dht import serve_dht_node
from routing.public_address import PublicAddress
from routing.rpc import CircuitRelay

from .keys import circuit_relay, identity_from, rpc_config
from .lifecycle import run_service


async def serve_dht(args: argparse.Namespace, *, task_status: trio.TaskStatus[str]) -> None:
    """Run the node; its started value is the address others join through."""
    initial_peers = [PeerAddress.parse(text) for text in args.initial_peers]
    public = PublicAddress(args.public_host, args.public_port, tuple(initial_peers))
    async with trio.open_nursery() as nursery:
        relaying = circuit_relay(args)
        circuits = None if relaying is None else CircuitRelay(relaying)
        serve = partial(serve_dht_node, rpc_config=rpc_config(args), public=public,
                        circuits=circuits)  # fmt: skip
        node = await nursery.start(
            serve, identity_from(args.identity), TcpTransport(), args.host, args.port, initial_peers
        )
        task_status.started(str(node.address))


def run(args: argparse.Namespace) -> int:
    return run_service(serve_dht, args)
