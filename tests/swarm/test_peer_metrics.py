"""A peer's own Prometheus metrics (`swarm peer --metrics-port`): its status written as
counters and gauges and read back with Prometheus' parser (`prometheus_client`); its totals
counted while a client generates through it; the route served by the command, a drain
(SIGUSR1) included."""

from __future__ import annotations

import logging
import os
import re
import signal
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import torch
import trio

from peer.activity import STEP_BUCKETS, Activity, Durations, PeerStatus
from routing.address import PeerAddress
from routing.announcement import PeerAnnouncement, PeerState
from routing.dht import serve_dht_node
from routing.rpc import RelayLoad, RPCStats
from routing.transport import TcpTransport
from security import Identity
from swarm import DistributedModelForCausalLM
from swarm.cli import build_parser
from swarm.commands import peer as peer_command
from swarm.http_server import HttpServer
from swarm.peer_metrics import COUNTERS, peer_metrics_handler, render_peer_metrics
from tests.monitor.test_http import get
from tests.support.prometheus import parsed
from tests.support.thread_swarm import ThreadSwarm
from tests.support.tiny_model import write_tiny_model

from .test_model import _until

PROMPT = torch.tensor([[1, 40, 41, 42, 43, 44, 45]])


def status_of(peer_id: Identity, **activity: Any) -> PeerStatus:
    announced = PeerAnnouncement(
        address=PeerAddress("127.0.0.1", 4000, peer_id.peer_id), model="tiny", start=2, end=4,
        state=PeerState.DRAINING, throughput=12.5, cache_tokens_left=100, sessions=2,
        dtype="bfloat16", version='v"1\\', quantization="int8",
    )  # fmt: skip
    times = Durations(STEP_BUCKETS)
    for seconds in (0.002, 0.004, 0.03, 20.0):  # buckets ..0.0025, ..0.005, ..0.05, over all
        times.observe(seconds)
    return PeerStatus(announced, Activity(**activity), times, cache_tokens=4096,
                      kept_bytes=5_000_000, kept_backwards=7, kept_released=3,
                      kept_too_large=2)  # fmt: skip


def test_the_status_is_written_as_counters_gauges_and_a_histogram() -> None:
    identity = Identity.generate()
    status = status_of(identity, sessions=3, refused=1, steps=40, tokens=50, forwards=2,
                       compute_seconds=0.25, forked=2, forked_tokens=30,
                       merged=12)  # fmt: skip
    kinds, samples = parsed(render_peer_metrics(status))
    peer = (("model", "tiny"), ("peer", identity.peer_id.to_base58()))
    expected = {"swarm_peer_sessions_opened_total": 3, "swarm_peer_sessions_refused_total": 1,
                "swarm_peer_sessions_forked_total": 2, "swarm_peer_forked_tokens_total": 30,
                "swarm_peer_steps_total": 40, "swarm_peer_tokens_total": 50,
                "swarm_peer_merged_steps_total": 12,
                "swarm_peer_forwards_total": 2,
                "swarm_peer_compute_seconds_total": 0.25}  # fmt: skip
    assert set(expected) == set(COUNTERS)
    expected["swarm_peer_kept_backwards_total"] = 7
    expected["swarm_peer_kept_released_total"] = 3
    expected["swarm_peer_kept_too_large_total"] = 2
    for name, value in expected.items():
        assert (kinds[name], samples[name]) == ("counter", {peer: value}), name
    gauges = {"swarm_peer_span_start": 2, "swarm_peer_span_end": 4, "swarm_peer_sessions": 2,
              "swarm_peer_kept_activation_bytes": 5_000_000,
              "swarm_peer_cache_tokens_left": 100, "swarm_peer_cache_tokens": 4096,
              "swarm_peer_throughput_tokens_per_second": 12.5,
              "swarm_peer_draining": 1}  # fmt: skip
    for name, value in gauges.items():
        assert (kinds[name], samples[name]) == ("gauge", {peer: value}), name
    buckets = {dict(labels)["le"]: count
               for labels, count in samples["swarm_peer_step_seconds_bucket"].items()}  # fmt: skip
    assert kinds["swarm_peer_step_seconds_bucket"] == "histogram"
    assert [buckets[le] for le in ("0.001", "0.0025", "0.005", "0.05", "10.0", "+Inf")] == [
        0,
        1,
        2,
        3,
        3,
        4,  # cumulative
    ]
    assert samples["swarm_peer_step_seconds_count"] == {peer: 4}
    assert samples["swarm_peer_step_seconds_sum"] == {peer: 0.002 + 0.004 + 0.03 + 20.0}
    (info,) = samples["swarm_peer_info"]
    assert dict(info)["version"] == 'v"1\\' and dict(info)["quantization"] == "int8"
    assert dict(info)["address"] == f"127.0.0.1:4000/{identity.peer_id.to_base58()}"
    assert samples["swarm_peer_circuit"] == {peer: 0}
    assert "swarm_peer_reached" not in samples  # not checked
    assert not [name for name in samples if name.startswith("swarm_relay_")]  # relays none


def test_how_others_reach_the_peer_and_the_circuits_it_relays_are_written() -> None:
    identity = Identity.generate()
    status = status_of(identity)
    relay = Identity.generate().peer_id
    circuit = PeerAddress("10.0.0.9", 4100, identity.peer_id, relay)
    announced = replace(status.announcement, address=circuit)
    load = RelayLoad(3, 2, 7, 123456, max_listeners=64, max_circuits=256)
    connections = RPCStats(5, 3, 2, relayed=4, unauthenticated=0, dials=0, calls=0, handlers=0)
    status = replace(status, announcement=announced, reached=False, relay=load,
                     connections=connections)  # fmt: skip
    kinds, samples = parsed(render_peer_metrics(status))
    peer = (("model", "tiny"), ("peer", identity.peer_id.to_base58()))
    assert kinds["swarm_peer_connections"] == "gauge"
    assert samples["swarm_peer_connections"] == {
        tuple(sorted((*peer, ("kind", kind)))): count
        for kind, count in (("direct", 1), ("relayed", 4))
    }
    expected = {"swarm_peer_circuit": ("gauge", 1), "swarm_peer_reached": ("gauge", 0),
                "swarm_relay_listeners": ("gauge", 3), "swarm_relay_circuits_open": ("gauge", 2),
                "swarm_relay_circuits_total": ("counter", 7),
                "swarm_relay_bytes_total": ("counter", 123456)}  # fmt: skip
    for name, (kind, value) in expected.items():
        assert (kinds[name], samples[name]) == (kind, {peer: value}), name


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_model(tmp_path_factory.mktemp("metrics") / "tiny", "llama", seed=3)


def test_a_peer_counts_the_steps_tokens_and_time_it_serves(tiny: Path) -> None:
    """8 new tokens through 2 peers: each ran the prompt's 7 positions, then 7 more steps of
    one; the step times hold the compute times."""
    with (
        ThreadSwarm(tiny, [(0, 2), (2, 4)]) as swarm,
        DistributedModelForCausalLM.from_pretrained(tiny, initial_peers=[swarm.bootstrap]) as model,
    ):
        model.generate(PROMPT, max_new_tokens=8, do_sample=False)
        assert all(_until(lambda p=p: swarm.status(p).announcement.sessions == 0)
                   for p in swarm.peers)  # fmt: skip
        for peer in swarm.peers:
            status = swarm.status(peer)
            done = status.activity
            assert (done.sessions, done.refused, done.steps, done.tokens) == (1, 0, 8, 14)
            assert status.step_times.total >= done.compute_seconds > 0
            assert sum(status.step_times.counts) == 8
            assert (status.announcement.start, status.announcement.end) == (peer.start, peer.end)
            assert not status.draining
            _, samples = parsed(render_peer_metrics(status))
            labels = (("model", status.announcement.model), ("peer", peer.peer))
            assert samples["swarm_peer_steps_total"] == {labels: 8}
            assert samples["swarm_peer_step_seconds_count"] == {labels: 8}


async def test_the_metrics_route_answers_only_metrics_and_waits_for_the_peer() -> None:
    status: list[PeerStatus] = []
    handler = peer_metrics_handler(lambda: status[0] if status else None)
    async with trio.open_nursery() as nursery:
        address = await nursery.start(HttpServer(handler, name="metrics").run, "127.0.0.1", 0)
        assert (await get(address, "/metrics")).status == 503  # not serving yet
        status.append(status_of(Identity.generate()))
        reply = await get(address, "/metrics")
        assert reply.status == 200 and b"swarm_peer_draining" in reply.body
        assert reply.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
        assert (await get(address, "/metrics", "HEAD")).status == 200
        assert (await get(address, "/api/state")).status == 404
        assert (await get(address, "/metrics", "POST")).status == 405
        nursery.cancel_scope.cancel()


async def test_swarm_peer_serves_its_metrics_and_shows_a_drain(
    tiny: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """`swarm peer --metrics-port 0` as the command runs it (in this process): the port
    comes from its log; SIGUSR1 makes it drain, and the metrics say so."""
    caplog.set_level(logging.INFO, logger="swarm.http_server")
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            dht = partial(serve_dht_node, Identity.generate(), TcpTransport(), "127.0.0.1", 0, [])
            node = await nursery.start(dht)
            args = build_parser().parse_args(
                ["peer", str(tiny), "--initial-peers", str(node.address), "--blocks", "0:2",
                 "--metrics-port", "0", "--report-every", "0", "--circuit-relay"]
            )  # fmt: skip
            address = await nursery.start(partial(peer_command.serve, args))
            found = re.search(r"metrics server at http://127\.0\.0\.1:(\d+)", caplog.text)
            assert found is not None
            metrics = ("127.0.0.1", int(found.group(1)))
            labels = (("model", "tiny"), ("peer", address.peer_id.to_base58()))

            async def draining() -> float:
                reply = await get(metrics, "/metrics")
                assert reply.status == 200
                _, samples = parsed(reply.body.decode())
                assert samples["swarm_peer_span_end"] == {labels: 2}
                assert samples["swarm_peer_reached"] == {labels: 1}  # the DHT node dialled back
                assert samples["swarm_peer_circuit"] == {labels: 0}
                assert samples["swarm_relay_listeners"] == {labels: 0}  # --circuit-relay
                return samples["swarm_peer_draining"][labels]

            assert await draining() == 0
            os.kill(os.getpid(), signal.SIGUSR1)
            while True:  # polled, bounded by fail_after
                if await draining() == 1:
                    break
                await trio.sleep(0.02)
            nursery.cancel_scope.cancel()
