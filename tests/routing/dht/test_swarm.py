"""200 DHT nodes in one process on the in-memory network, under the autojump clock."""

from __future__ import annotations

import math
import random
from collections import Counter

import trio

from routing.memory_network import MemoryNetwork

from .swarm import Swarm

N = 200
ANNOUNCERS = 40
KEYS = [f"tiny-model.{block}" for block in range(4)]
TTL = 120.0


def _histogram(hops: list[int]) -> str:
    counts = Counter(hops)
    return ", ".join(f"{h} hops: {counts[h]}" for h in sorted(counts))


async def test_two_hundred_nodes_find_every_record_even_after_losing_30_percent(
    autojump_clock: trio.testing.MockClock,
) -> None:
    rng = random.Random(30)
    network = MemoryNetwork()
    async with trio.open_nursery() as nursery:
        swarm = Swarm(network, nursery)
        await swarm.grow(N, rng)
        announcers = rng.sample(swarm.members, ANNOUNCERS)
        expected: dict[str, dict[object, bytes]] = {key: {} for key in KEYS}
        for index, member in enumerate(announcers):
            key = KEYS[index % len(KEYS)]
            value = f"peer {index} serves {key}".encode()
            assert await member.node.store_own(key, value, ttl=TTL) >= member.node.config.k // 2
            expected[key][member.node.peer_id] = value

        hops = []
        for member in swarm.members:
            for key in KEYS:
                result = await member.node.get_with_stats(key)
                assert {peer: v.value for peer, v in result.values.items()} == expected[key]
                hops.append(result.hops)
        bound = 2 * math.log2(N) + 2
        print(f"\n{N} nodes, {len(hops)} gets: {_histogram(hops)}; bound {bound:.1f}")
        assert max(hops) <= bound

        others = [m for m in swarm.members if m not in announcers]
        dead = rng.sample(others, int(0.3 * N))
        for member in dead:
            member.kill()
        alive = [m for m in swarm.members if m not in dead]
        # past the first records' lifetime: only republished copies are left
        await trio.sleep(TTL * 1.5)
        hops = []
        for member in alive:
            for key in KEYS:
                result = await member.node.get_with_stats(key)
                assert {peer: v.value for peer, v in result.values.items()} == expected[key]
                hops.append(result.hops)
        print(f"after killing {len(dead)}: {len(hops)} gets: {_histogram(hops)}")
        assert max(hops) <= bound
        nursery.cancel_scope.cancel()
