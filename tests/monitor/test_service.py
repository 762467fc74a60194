"""The whole monitor service in one process, over real TCP on 127.0.0.1, without a browser:
a DHT node, two announcing peers, `serve_monitor`, and `/api/state` and `/metrics` read over
HTTP."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from functools import partial
from typing import Any

import pytest
import trio

from routing.announcement import PeerAnnouncement, PeerState
from routing.dht import DHTNode, serve_dht_node
from routing.rpc import CallContext, Packet
from routing.span_protocol import INFO
from routing.transport import TcpTransport
from security import Identity
from swarm.cli import main
from swarm.monitor.collector import CollectorConfig
from swarm.monitor.service import serve_monitor

from .announcer import publish
from .test_http import get

MODEL = "tiny-llama"
NUM_BLOCKS = 6
REFRESH = 0.4


def online(node: DHTNode, start: int, end: int) -> PeerAnnouncement:
    assert node.address is not None
    return PeerAnnouncement(
        address=node.address,
        model=MODEL,
        start=start,
        end=end,
        state=PeerState.ONLINE,
        throughput=10.0 * (start + 1),
        cache_tokens_left=100,
        sessions=0,
        dtype="float32",
        version="test",
    )


async def state_when(
    address: tuple[str, int], ok: Callable[[dict[str, Any]], bool], within: float
) -> dict[str, Any]:
    """Poll `/api/state` until `ok(state)`, for at most `within` seconds."""
    with trio.fail_after(within):
        while True:
            reply = await get(address, "/api/state")
            state: dict[str, Any] = json.loads(reply.body)
            if reply.status == 200 and ok(state):
                return state
            await trio.sleep(REFRESH / 4)


def peers(state: dict[str, Any]) -> list[tuple[int, int]]:
    return [(p["start"], p["end"]) for m in state["models"] for p in m["peers"]]


def serving(state: dict[str, Any]) -> list[float | None]:
    return [p["serving"] for m in state["models"] for p in m["peers"]]


def loads(state: dict[str, Any]) -> list[tuple[int, int]]:
    return [(p["sessions"], p["cache_tokens_left"]) for m in state["models"] for p in m["peers"]]


async def test_the_monitor_follows_a_live_swarm(capsys: pytest.CaptureFixture[str]) -> None:
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:

            async def dht_node(initial: list[Any]) -> DHTNode:
                start = partial(
                    serve_dht_node, Identity.generate(), TcpTransport(), "127.0.0.1", 0, initial
                )
                node: DHTNode = await nursery.start(start)
                return node

            bootstrap = await dht_node([])
            assert bootstrap.address is not None
            first, second = await dht_node([bootstrap.address]), await dht_node([bootstrap.address])
            records = [online(first, 0, 4), online(second, 4, NUM_BLOCKS)]
            for node, record in zip((first, second), records, strict=True):
                await publish(node, record, NUM_BLOCKS, ttl=30)

            served = [0]

            async def busy(request: Packet, context: CallContext) -> Packet:
                """The second peer's answer to a probe: 2 sessions now, 36 tokens left, and
                100 tokens more served at every probe."""
                served[0] += 100
                now = replace(records[1], sessions=2, cache_tokens_left=36, served_tokens=served[0])
                return Packet(now.to_fields())

            second.rpc.add_unary(INFO, busy)  # the first serves no span: it answers an error

            url = await nursery.start(
                partial(
                    serve_monitor,
                    Identity.generate(),
                    TcpTransport(),
                    [bootstrap.address],
                    collector_config=CollectorConfig(refresh=REFRESH),
                )
            )
            assert url.startswith("http://127.0.0.1:") and url.endswith("/")
            host, port = url.removeprefix("http://").rstrip("/").rsplit(":", 1)
            address = (host, int(port))

            state = await state_when(address, lambda s: len(peers(s)) == 2, within=10)
            (model,) = state["models"]
            assert model["model"] == MODEL and model["full_chain"] is True
            assert [b["throughput"] for b in model["blocks"]] == [10.0] * 4 + [50.0] * 2
            assert all(p["rtt"] is not None and p["rtt"] > 0 for p in model["peers"])
            state = await state_when(address, lambda s: loads(s) == [(0, 100), (2, 36)], within=5)
            state = await state_when(address, lambda s: serving(s)[1] is not None, within=5)
            assert serving(state)[0] is None and serving(state)[1] > 0
            metrics = (await get(address, "/metrics")).body.decode()
            busy_peer = records[1].address.peer_id.to_base58()
            assert f'swarm_peer_sessions{{model="{MODEL}",peer="{busy_peer}"}} 2.0' in metrics
            assert f'swarm_model_full_chain{{model="{MODEL}"}} 1.0' in metrics

            # `swarm status` takes the same picture once, from the command line
            command = ["status", "--initial-peers", str(bootstrap.address), "--json"]
            assert await trio.to_thread.run_sync(main, command) == 0
            printed = json.loads(capsys.readouterr().out)
            assert peers(printed) == [(0, 4), (4, 6)] and loads(printed) == [(0, 100), (2, 36)]
            assert await trio.to_thread.run_sync(main, command[:-1]) == 0
            assert f"{MODEL}: {NUM_BLOCKS} blocks, 2 peers, full chain" in capsys.readouterr().out
            assert (await get(address, "/")).status == 200

            await publish(first, replace(records[0], state=PeerState.OFFLINE), NUM_BLOCKS, 30)
            # Read twice per period, the change shows after about half a period; the bound is
            # loose because this machine is shared (the e2e test prints the measured delay).
            state = await state_when(address, lambda s: peers(s) == [(4, 6)], within=5)
            assert state["models"][0]["gaps"] == [[0, 4]]
            nursery.cancel_scope.cancel()
