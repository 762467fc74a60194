"""The swarm's picture as Prometheus metrics, read back with Prometheus' own parser
(`prometheus_client`), from hand-built records."""

from __future__ import annotations

from routing.announcement import PeerState
from routing.rpc import RelayLoad
from security import PeerId
from swarm.monitor.metrics import PEER_GAUGES, RELAY_GAUGES, render_metrics
from swarm.monitor.snapshot import Observations, PeerLoad, RelayMeasure, build_snapshot
from tests.support.prometheus import Samples, parsed

from .records import NOW, TTL, SwarmRecords


def gauges(text: str) -> Samples:
    """Every sample (see `parsed`); every metric a gauge."""
    kinds, samples = parsed(text)
    assert set(kinds.values()) == {"gauge"}
    return samples


def of(peer: PeerId, model: str = "tiny") -> tuple[tuple[str, str], ...]:
    return (("model", model), ("peer", peer.to_base58()))


def test_every_figure_of_the_page_is_a_gauge_prometheus_reads() -> None:
    records = SwarmRecords()
    records.add_model("tiny", 6)
    records.add_model("other", 2)
    hostile = 'v"1\\2\nx'  # a peer's free text, which the format must escape
    first = records.peer("tiny", 0, 4, version=hostile)
    second = records.peer("tiny", 2, 4, throughput=50.0)
    joining = records.peer("tiny", 4, 6, state=PeerState.JOINING)
    lost = records.peer("other", 0, 2)
    snapshot = build_snapshot(
        Observations(
            now=NOW, models=records.models, blocks=records.blocks,
            rtts={first: 0.0012, second: None}, last_seen={first: NOW - 1},
            missed={lost: 2}, loads={second: PeerLoad(3, 77, 500)}, serving={second: 12.5},
        )
    )  # fmt: skip
    samples = gauges(render_metrics(snapshot))

    assert samples["swarm_snapshot_timestamp_seconds"] == {(): NOW}
    assert samples["swarm_model_blocks"] == {(("model", "other"),): 2, (("model", "tiny"),): 6}
    assert samples["swarm_model_full_chain"] == {(("model", "other"),): 0,
                                                 (("model", "tiny"),): 0}  # fmt: skip
    by_state = samples["swarm_model_peers"]
    assert by_state[(("model", "tiny"), ("state", "online"))] == 2
    assert by_state[(("model", "tiny"), ("state", "joining"))] == 1
    assert by_state[(("model", "tiny"), ("state", "unreachable"))] == 0
    assert by_state[(("model", "other"), ("state", "unreachable"))] == 1
    blocks = samples["swarm_block_peers"]
    assert [blocks[(("block", str(b)), ("model", "tiny"))] for b in range(6)] == [1, 1, 2, 2, 0, 0]
    throughput = samples["swarm_block_throughput_tokens_per_second"]
    assert throughput[(("block", "2"), ("model", "tiny"))] == 150.0

    info = {dict(labels)["peer"]: dict(labels) for labels in samples["swarm_peer_info"]}
    assert info[first.to_base58()]["version"] == hostile  # escaped, and read back whole
    assert info[joining.to_base58()]["state"] == "joining"
    assert info[lost.to_base58()]["state"] == "unreachable"
    assert info[second.to_base58()]["address"] == f"10.0.0.7:4000/{second.to_base58()}"

    assert samples["swarm_peer_span_start"][of(second)] == 2
    assert samples["swarm_peer_span_end"][of(second)] == 4
    assert samples["swarm_peer_sessions"][of(second)] == 3  # as probed, not as announced
    assert samples["swarm_peer_cache_tokens_left"][of(second)] == 77
    assert samples["swarm_peer_serving_tokens_per_second"] == {of(second): 12.5}
    assert samples["swarm_peer_throughput_tokens_per_second"][of(second)] == 50.0
    assert samples["swarm_peer_rtt_seconds"] == {of(first): 0.0012}  # unknown: no sample
    assert samples["swarm_peer_last_seen_timestamp_seconds"] == {of(first): NOW - 1}
    assert samples["swarm_peer_reachable"][of(lost, "other")] == 0
    assert samples["swarm_peer_reachable"][of(first)] == 1
    expiring = samples["swarm_peer_record_expiration_timestamp_seconds"]
    assert expiring[of(first)] == NOW + TTL
    assert set(PEER_GAUGES) <= set(samples)


def test_a_swarm_without_models_has_only_its_own_figures() -> None:
    empty = build_snapshot(Observations(now=NOW, models={}, blocks={}))
    samples = gauges(render_metrics(empty))
    assert samples == {"swarm_snapshot_timestamp_seconds": {(): NOW},
                       "swarm_skipped_records": {(): 0}}  # fmt: skip


def test_each_relay_is_a_set_of_gauges() -> None:
    records = SwarmRecords()
    records.add_model("tiny", 2)
    relay, silent = records.add_relay(4100), records.add_relay(4200)
    records.behind(relay, "tiny", 0, 2)
    load = RelayLoad(3, 2, 9, 5000, max_listeners=64, max_circuits=256)
    measures = {relay: RelayMeasure(0.0021, load, NOW - 1), silent: RelayMeasure(missed=2)}
    snapshot = build_snapshot(
        Observations(now=NOW, models=records.models, blocks=records.blocks,
                     relays=records.relays, relay_measures=measures)
    )  # fmt: skip
    samples = gauges(render_metrics(snapshot))

    def at(peer_id: PeerId) -> tuple[tuple[str, str], ...]:
        return (("relay", peer_id.to_base58()),)

    assert samples["swarm_relay_reachable"] == {at(relay): 1, at(silent): 0}
    assert samples["swarm_relay_peers"] == {at(relay): 1, at(silent): 0}
    assert samples["swarm_relay_listeners"] == {at(relay): 3}  # unknown: no sample
    assert samples["swarm_relay_max_listeners"] == {at(relay): 64}
    assert samples["swarm_relay_circuits_open"] == {at(relay): 2}
    assert samples["swarm_relay_max_circuits"] == {at(relay): 256}
    assert samples["swarm_relay_rtt_seconds"] == {at(relay): 0.0021}
    assert samples["swarm_relay_last_seen_timestamp_seconds"] == {at(relay): NOW - 1}
    assert samples["swarm_relay_listing_expiration_timestamp_seconds"][at(silent)] == NOW + TTL
    info = {dict(labels)["relay"]: dict(labels) for labels in samples["swarm_relay_info"]}
    address = f"10.0.0.9:4200/{silent.to_base58()}"
    assert info[silent.to_base58()] == {
        "relay": silent.to_base58(), "state": "unreachable", "address": address
    }  # fmt: skip
    assert set(RELAY_GAUGES) <= set(samples)
