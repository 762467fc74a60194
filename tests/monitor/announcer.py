"""A stand-in for `swarm peer` in the monitor's end-to-end test, run as a process:

    python -m tests.monitor.announcer --initial-peers ADDR --model M --num-blocks N \
        --start S --end E [--throughput T] [--version V] [--ttl SECONDS]

It runs a real DHT node on 127.0.0.1 and announces, exactly as a serving peer will, a signed
`PeerAnnouncement` under every block key of its span and a `ModelEntry` under `MODELS_KEY`
(republished by the DHT node at half their TTL). It prints its address once announced; on
SIGTERM/SIGINT it announces `offline` for its span, then exits. SIGKILL makes it vanish
without a word, so its records expire after `--ttl` seconds.
"""

from __future__ import annotations

import argparse
import signal
import sys
from dataclasses import replace

import trio

from routing.address import PeerAddress
from routing.announcement import (
    MODELS_KEY,
    ModelEntry,
    PeerAnnouncement,
    PeerState,
    block_key,
)
from routing.dht import DHTNode, open_dht_node
from routing.transport import TcpTransport
from security import Identity


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="announcer")
    parser.add_argument("--initial-peers", nargs="+", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--num-blocks", type=int, required=True)
    parser.add_argument("--start", type=int, required=True)
    parser.add_argument("--end", type=int, required=True)
    parser.add_argument("--throughput", type=float, default=100.0)
    parser.add_argument("--version", default="0.1.0")
    parser.add_argument("--ttl", type=float, default=30.0)
    return parser.parse_args(argv)


async def publish(node: DHTNode, record: PeerAnnouncement, num_blocks: int, ttl: float) -> None:
    entry = ModelEntry(record.model, num_blocks).encode()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(node.store_own, MODELS_KEY, entry, ttl)
        for block in record.blocks:
            nursery.start_soon(node.store_own, block_key(record.model, block), record.encode(), ttl)


async def main(args: argparse.Namespace) -> None:
    initial_peers = [PeerAddress.parse(text) for text in args.initial_peers]
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with open_dht_node(
            Identity.generate(), TcpTransport(), initial_peers=initial_peers
        ) as node:
            assert node.address is not None  # a serving node has one
            record = PeerAnnouncement(
                address=node.address,
                model=args.model,
                start=args.start,
                end=args.end,
                state=PeerState.ONLINE,
                throughput=args.throughput,
                cache_tokens_left=8192,
                sessions=0,
                dtype="float32",
                version=args.version,
            )
            await publish(node, record, args.num_blocks, args.ttl)
            print(node.address, flush=True)
            async for _ in signals:
                break
            with trio.move_on_after(5):
                await publish(
                    node, replace(record, state=PeerState.OFFLINE), args.num_blocks, args.ttl
                )


if __name__ == "__main__":
    trio.run(main, parse_args(sys.argv[1:]))
