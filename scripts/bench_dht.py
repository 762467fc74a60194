#!/usr/bin/env python3
"""Benchmark the DHT: lookup time and hops for 50, 200 and 1,000 simulated nodes, and memory.

All nodes run in this process on the in-memory network (Noise, RPC and all), with a
simulated one-way latency per message, under trio's MockClock: lookup times are simulated
time (what a real network with that latency would see, minus CPU), and the run finishes as
fast as the CPU allows. Baseline, measured in the same run: one ping round trip, so the
table also gives each lookup in round trips.

Bootstrap: `join` (default) makes each node join through three random earlier nodes with
the real protocol (ping + self-lookup; a Noise handshake per new pair of nodes); `oracle`
fills every routing table as a fully converged network would hold it (every node offered
every other, buckets keep what they can) without messages: with b = 5, tables then hold
everyone up to about 600 nodes, so lookups take one hop.

Memory per node: tracemalloc, Python heap after bootstrap and after the lookups (the
connections opened by lookups stay pooled), divided by the number of nodes.

    .venv/bin/python scripts/bench_dht.py [--sizes 50 200 1000] [--lookups 200]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import random
import statistics
import sys
import time
import tracemalloc
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import trio
import trio.testing

from routing.dht import DHTNode, serve_dht_node
from routing.dht.ids import MAX_ID
from routing.memory_network import MemoryNetwork
from security import Identity


@dataclass
class Row:
    size: int
    bootstrap_wall: float
    rtt: float
    get_median: float
    get_p90: float
    get_hops_mean: float
    get_hops_max: int
    get_queries: float
    find_median: float
    find_hops_mean: float
    find_hops_max: int
    find_queries: float
    memory_built: float
    memory_after: float
    wall: float


async def _start(nursery: trio.Nursery, network: MemoryNetwork, index: int, peers: list) -> DHTNode:
    host = f"10.{index // 65536}.{index // 256 % 256}.{index % 256}"
    node: DHTNode = await nursery.start(
        partial(
            serve_dht_node,
            Identity.generate(),
            network.transport(host),
            host,
            4000,
            peers,
            clock=trio.current_time,
        )
    )
    return node


async def bench(size: int, lookups: int, latency: float, bootstrap: str, seed: int) -> Row:
    rng = random.Random(seed)
    wall_start = time.perf_counter()
    tracemalloc.reset_peak()
    base = tracemalloc.get_traced_memory()[0]
    network = MemoryNetwork()
    network.set_latency(latency)
    async with trio.open_nursery() as nursery:
        nodes: list[DHTNode] = []
        for index in range(size):
            peers = []
            if bootstrap == "join" and nodes:
                peers = [node.address for node in rng.sample(nodes, min(3, len(nodes)))]
            nodes.append(await _start(nursery, network, index, peers))
        if bootstrap == "oracle":
            now = trio.current_time()
            addresses = [node.address for node in nodes]
            for node in nodes:
                for address in rng.sample(addresses, len(addresses)):
                    node.table.update(address, now)
        bootstrap_wall = time.perf_counter() - wall_start
        memory_built = (tracemalloc.get_traced_memory()[0] - base) / size

        start = trio.current_time()
        assert await nodes[0].ping(nodes[1].address)
        await nodes[0].ping(nodes[1].address)  # second ping: connection already open
        rtt = trio.current_time() - start
        rtt = rtt / 2

        keys = [f"bench-model.{block}" for block in range(10)]
        for index, node in enumerate(rng.sample(nodes, 20)):
            await node.store_own(keys[index % len(keys)], f"peer {index}".encode(), ttl=300)

        get_times, get_hops, get_queries = [], [], []
        find_times, find_hops, find_queries = [], [], []
        for _ in range(lookups):
            node = rng.choice(nodes)
            start = trio.current_time()
            result = await node.get_with_stats(rng.choice(keys))
            get_times.append(trio.current_time() - start)
            get_hops.append(result.hops)
            get_queries.append(result.queries)
            if not result.values:
                raise RuntimeError("a get found nothing")
            start = trio.current_time()
            found = await node.find_nodes(rng.randrange(MAX_ID))
            find_times.append(trio.current_time() - start)
            find_hops.append(found.hops)
            find_queries.append(found.queries)
        memory_after = (tracemalloc.get_traced_memory()[0] - base) / size
        nursery.cancel_scope.cancel()
    return Row(
        size,
        bootstrap_wall,
        rtt,
        statistics.median(get_times),
        _p90(get_times),
        statistics.mean(get_hops),
        max(get_hops),
        statistics.mean(get_queries),
        statistics.median(find_times),
        statistics.mean(find_hops),
        max(find_hops),
        statistics.mean(find_queries),
        memory_built,
        memory_after,
        time.perf_counter() - wall_start,
    )


def _p90(values: list[float]) -> float:
    return sorted(values)[int(0.9 * (len(values) - 1))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[50, 200, 1000])
    parser.add_argument("--lookups", type=int, default=200)
    parser.add_argument("--latency", type=float, default=0.010, help="one-way, seconds")
    parser.add_argument("--bootstrap", choices=["join", "oracle"], default="join")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args()
    tracemalloc.start()
    rows = []
    for size in args.sizes:
        clock = trio.testing.MockClock(autojump_threshold=0)
        run = partial(bench, size, args.lookups, args.latency, args.bootstrap, args.seed)
        rows.append(trio.run(run, clock=clock))
        print(f"  {size} nodes done in {rows[-1].wall:.1f} s", file=sys.stderr, flush=True)
    ms = 1000.0
    print(
        f"\nDHT, in-memory network, {args.latency * ms:.0f} ms one-way latency, "
        f"{args.lookups} gets + {args.lookups} find_node per size, bootstrap={args.bootstrap}\n"
    )
    header = (
        f"{'nodes':>6} {'ping RTT':>9} {'get p50':>8} {'get p90':>8} {'get/RTT':>8} "
        f"{'hops':>5} {'max':>4} {'queries':>8} {'find p50':>9} {'find/RTT':>9} {'hops':>5} "
        f"{'max':>4} {'queries':>8} {'log2 N':>7} {'KiB/node':>9} {'+conns':>7} {'wall s':>7}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        print(
            f"{r.size:>6} {r.rtt * ms:>7.1f}ms "
            f"{r.get_median * ms:>6.0f}ms {r.get_p90 * ms:>6.0f}ms "
            f"{r.get_median / r.rtt:>8.1f} {r.get_hops_mean:>5.2f} {r.get_hops_max:>4} "
            f"{r.get_queries:>8.1f} {r.find_median * ms:>7.0f}ms {r.find_median / r.rtt:>9.1f} "
            f"{r.find_hops_mean:>5.2f} {r.find_hops_max:>4} {r.find_queries:>8.1f} "
            f"{math.log2(r.size):>7.1f} {r.memory_built / 1024:>9.1f} "
            f"{r.memory_after / 1024:>7.1f} {r.wall:>7.1f}"
        )
    print(
        "\nget/find: simulated time per lookup; x/RTT: in ping round trips (the baseline);"
        "\nhops: reply chain to the nearest node that answered; KiB/node: heap after"
        " bootstrap; +conns: after the lookups, with their pooled connections."
    )
    if args.json:
        args.json.write_text(json.dumps([dataclasses.asdict(r) for r in rows], indent=1))


if __name__ == "__main__":
    main()
