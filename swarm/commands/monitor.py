"""`swarm monitor`: serve the swarm monitor page (and its JSON) read from the DHT.

Options (the lead's argparse entry): --host, --port (of the HTTP page), --identity,
--members, --initial-peers, --refresh (seconds, the page's default period), --tls-cert and
--tls-key (HTTPS). Prints the page's URL.
"""

from __future__ import annotations

import argparse
from functools import partial

import trio

from routing.address import PeerAddress
from routing.transport import TcpTransport
from swarm.monitor.collector import CollectorConfig
from swarm.monitor.service import serve_monitor

from .keys import identity_from, tls_from
from .lifecycle import run_service


async def serve(args: argparse.Namespace, *, task_status: trio.TaskStatus[str]) -> None:
    initial_peers = [PeerAddress.parse(text) for text in args.initial_peers]
    refresh = getattr(args, "refresh", None) or CollectorConfig().refresh
    await serve_monitor(
        identity_from(args.identity),
        TcpTransport(),
        initial_peers,
        args.host,
        args.port,
        collector_config=CollectorConfig(refresh=refresh),
        tls=tls_from(args),
        members=args.members,
        task_status=task_status,
    )


def run(args: argparse.Namespace) -> int:
    return run_service(partial(serve, args))
