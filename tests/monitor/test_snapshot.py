"""The monitor's pure core: coverage, gaps, the peer table, and what it refuses to believe."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import replace

import msgpack
import pytest

from routing.address import PeerAddress
from routing.announcement import ModelEntry, PeerState
from routing.records import DHTValue
from routing.rpc import RelayLoad
from security import Identity, PeerId
from swarm.monitor.snapshot import (
    Observations,
    RelayMeasure,
    SwarmSnapshot,
    build_snapshot,
    select_models,
)

from .records import NOW, TTL, SwarmRecords, announcement


def snapshot_of(
    records: SwarmRecords,
    rtts: Mapping[PeerId, float | None] | None = None,
    last_seen: Mapping[PeerId, float] | None = None,
    missed: Mapping[PeerId, int] | None = None,
) -> SwarmSnapshot:
    observations = Observations(
        now=NOW,
        models=records.models,
        blocks=records.blocks,
        rtts=rtts or {},
        last_seen=last_seen or {},
        missed=missed or {},
    )
    return build_snapshot(observations)


def test_two_peers_cover_the_model_end_to_end() -> None:
    records = SwarmRecords()
    records.add_model("tiny", 8)
    first = records.peer("tiny", 0, 5, throughput=30.0)
    second = records.peer("tiny", 5, 8, throughput=70.0)

    view = snapshot_of(records).model("tiny")

    assert view is not None and view.num_blocks == 8
    assert [block.peers for block in view.blocks] == [1] * 8
    assert [block.throughput for block in view.blocks] == [30.0] * 5 + [70.0] * 3
    assert view.full_chain and view.gaps == ()
    assert [(row.peer_id, row.start, row.end) for row in view.peers] == [
        (first, 0, 5),
        (second, 5, 8),
    ]


def test_overlapping_spans_add_up() -> None:
    records = SwarmRecords()
    records.add_model("tiny", 6)
    records.peer("tiny", 0, 4, throughput=10.0)
    records.peer("tiny", 2, 6, throughput=25.5)
    records.peer("tiny", 3, 4, throughput=1.0)

    view = snapshot_of(records).model("tiny")

    assert view is not None
    assert [block.peers for block in view.blocks] == [1, 1, 2, 3, 1, 1]
    assert [block.throughput for block in view.blocks] == [10.0, 10.0, 35.5, 36.5, 25.5, 25.5]


@pytest.mark.parametrize(
    ("spans", "gaps"),
    [
        ([(0, 3), (5, 8)], ((3, 5),)),
        ([(2, 8)], ((0, 2),)),
        ([(0, 6)], ((6, 8),)),
        ([(1, 2), (4, 5)], ((0, 1), (2, 4), (5, 8))),
        ([], ((0, 8),)),
    ],
)
def test_uncovered_blocks_are_reported_as_gaps(
    spans: list[tuple[int, int]], gaps: tuple[tuple[int, int], ...]
) -> None:
    records = SwarmRecords()
    records.add_model("tiny", 8)
    for start, end in spans:
        records.peer("tiny", start, end)

    view = snapshot_of(records).model("tiny")

    assert view is not None
    assert view.gaps == gaps
    assert not view.full_chain
    covered = {block for start, end in spans for block in range(start, end)}
    assert [block.peers > 0 for block in view.blocks] == [i in covered for i in range(8)]


def test_an_offline_peer_disappears_at_once() -> None:
    records = SwarmRecords()
    records.add_model("tiny", 4)
    staying = records.peer("tiny", 0, 4)
    leaving_id = Identity.generate().peer_id
    online = announcement(leaving_id, "tiny", 0, 4)
    records.announce(online, expiration=NOW + 30)
    # It said goodbye under block 0 only so far; block 1-3 still hold its older record.
    records.announce(replace(online, state=PeerState.OFFLINE), expiration=NOW + 60, blocks=range(1))

    view = snapshot_of(records).model("tiny")

    assert view is not None
    assert [row.peer_id for row in view.peers] == [staying]
    assert [block.peers for block in view.blocks] == [1, 1, 1, 1]


def test_joining_and_draining_peers_are_listed_but_do_not_cover() -> None:
    """Neither takes a new session: one is loading, the other serves only those it has."""
    records = SwarmRecords()
    records.add_model("tiny", 6)
    records.peer("tiny", 0, 2)
    joining = records.peer("tiny", 2, 4, state=PeerState.JOINING)
    draining = records.peer("tiny", 4, 6, state=PeerState.DRAINING)

    view = snapshot_of(records).model("tiny")

    assert view is not None
    assert view.gaps == ((2, 6),)
    assert [block.joining for block in view.blocks] == [0, 0, 1, 1, 0, 0]
    states = {row.peer_id: row.state for row in view.peers}
    assert (states[joining], states[draining]) == ("joining", "draining")


def test_expired_records_and_model_entries_are_gone() -> None:
    records = SwarmRecords()
    records.add_model("tiny", 4)
    records.add_model("old-model", 4, expiration=NOW - 1)
    records.peer("tiny", 0, 4, expiration=NOW - 0.5)
    fresh = records.peer("tiny", 0, 2)

    snapshot = snapshot_of(records)

    assert [view.model for view in snapshot.models] == ["tiny"]
    view = snapshot.model("tiny")
    assert view is not None
    assert [row.peer_id for row in view.peers] == [fresh]
    assert view.gaps == ((2, 4),)
    assert snapshot.skipped_records == 0  # expired is not malformed


def test_several_models_are_kept_apart() -> None:
    records = SwarmRecords()
    records.add_model("llama-a", 4)
    records.add_model("qwen-b", 2)
    records.peer("llama-a", 0, 4, throughput=5.0)
    records.peer("qwen-b", 0, 1, throughput=9.0)

    snapshot = snapshot_of(records)

    assert [view.model for view in snapshot.models] == ["llama-a", "qwen-b"]
    a, b = snapshot.models
    assert a.full_chain and [x.throughput for x in a.blocks] == [5.0] * 4
    assert not b.full_chain and b.gaps == ((1, 2),)
    assert len(snapshot.peer_addresses()) == 2


def test_malformed_and_inconsistent_records_are_skipped() -> None:
    records = SwarmRecords()
    records.add_model("tiny", 4)
    good = records.peer("tiny", 0, 4)
    liar = Identity.generate().peer_id
    records.put("tiny", 0, liar, DHTValue(b"\x93not an announcement", NOW + TTL))
    records.put("tiny", 1, liar, DHTValue(b"", NOW + TTL))
    # A record stored under a block outside its own span.
    outside = Identity.generate().peer_id
    records.announce(announcement(outside, "tiny", 2, 3), blocks=range(1))
    # A record for another model under this model's key.
    other = Identity.generate().peer_id
    elsewhere = announcement(other, "other", 0, 4).encode()
    for block in range(4):
        records.put("tiny", block, other, DHTValue(elsewhere, NOW + TTL))
    # Someone advertising another peer's address (its record is signed by `thief`).
    thief = Identity.generate().peer_id
    stolen = announcement(good, "tiny", 0, 4, port=9999)
    for block in range(4):
        records.put("tiny", block, thief, DHTValue(stolen.encode(), NOW + TTL))
    # A span that runs past the end of the model.
    too_long = Identity.generate().peer_id
    records.announce(announcement(too_long, "tiny", 2, 9), blocks=range(2, 4))

    snapshot = snapshot_of(records)
    view = snapshot.model("tiny")

    assert view is not None
    assert [row.peer_id for row in view.peers] == [good]
    assert [block.peers for block in view.blocks] == [1, 1, 1, 1]
    assert snapshot.skipped_records == 2 + 1 + 4 + 4 + 2


def test_the_model_length_is_what_most_entries_say() -> None:
    records = SwarmRecords()
    for _ in range(3):
        records.add_model("tiny", 8)
    records.add_model("tiny", 4000)  # one peer lying
    records.add_model("even", 2)
    records.add_model("even", 3)  # a tie: the larger wins
    junk = Identity.generate().peer_id
    records.models[junk] = DHTValue(b"\xc1", NOW + TTL)

    assert select_models(records.models, NOW) == {"tiny": 8, "even": 3}
    assert select_models(records.models, NOW, limit=1) == {"tiny": 8}


def test_a_peer_that_missed_two_pings_is_unreachable_and_covers_nothing() -> None:
    records = SwarmRecords()
    records.add_model("tiny", 4)
    records.peer("tiny", 0, 4)
    killed = records.peer("tiny", 2, 4)
    stuck = records.peer("tiny", 0, 2, state=PeerState.JOINING)

    once = snapshot_of(records, missed={killed: 1, stuck: 1}).model("tiny")
    twice = snapshot_of(records, missed={killed: 2, stuck: 2}).model("tiny")

    assert once is not None and twice is not None
    assert [b.peers for b in once.blocks] == [1, 1, 2, 2]
    assert [b.joining for b in once.blocks] == [1, 1, 0, 0]
    assert [b.peers for b in twice.blocks] == [1, 1, 1, 1]
    assert [b.joining for b in twice.blocks] == [0, 0, 0, 0]
    states = {row.peer_id: row.state for row in twice.peers}
    assert states[killed] == states[stuck] == "unreachable"


def test_rtts_last_seen_and_adapters_reach_the_table_and_json() -> None:
    records = SwarmRecords()
    records.add_model("tiny", 2)
    fast = records.peer("tiny", 0, 1, version="<img src=x onerror=alert(1)>" + "x" * 100)
    silent = records.peer("tiny", 1, 2, adapters=("tuned", "chat-v2"))

    snapshot = snapshot_of(records, rtts={fast: 0.012, silent: None}, last_seen={fast: NOW - 3})
    data = json.loads(snapshot.to_json())

    model = data["models"][0]
    rows = {row["peer_id"]: row for row in model["peers"]}
    assert rows[str(fast)]["rtt"] == 0.012 and rows[str(fast)]["last_seen"] == NOW - 3
    assert rows[str(silent)]["rtt"] is None and rows[str(silent)]["last_seen"] is None
    assert rows[str(fast)]["short_id"] == fast.short()
    assert rows[str(fast)]["adapters"] == [] and rows[str(fast)]["quantization"] == ""
    assert rows[str(silent)]["adapters"] == ["tuned", "chat-v2"]
    assert rows[str(fast)]["version"] == ("<img src=x onerror=alert(1)>" + "x" * 100)[:64]
    assert PeerAddress.parse(rows[str(fast)]["address"]).peer_id == fast
    assert model["full_chain"] is True and model["gaps"] == []
    assert [block["peers"] for block in model["blocks"]] == [1, 1]
    assert data["taken_at"] == NOW and data["skipped_records"] == 0


def test_an_empty_swarm() -> None:
    snapshot = build_snapshot(Observations(now=NOW, models={}, blocks={}))
    assert snapshot.models == () and json.loads(snapshot.to_json())["models"] == []


def test_model_entry_checks_come_from_the_shared_record() -> None:
    # The monitor trusts ModelEntry's own validation: names it refuses never reach the page.
    records = SwarmRecords()
    bad_name = Identity.generate().peer_id
    records.models[bad_name] = DHTValue(msgpack.packb(["<script>", 4]), NOW + TTL)
    records.models[Identity.generate().peer_id] = DHTValue(ModelEntry("ok", 1).encode(), NOW + TTL)
    assert select_models(records.models, NOW) == {"ok": 1}


def test_a_non_finite_expiration_is_not_live() -> None:
    records = SwarmRecords()
    records.add_model("tiny", 2, expiration=float("nan"))
    records.add_model("tiny", 2)
    records.peer("tiny", 0, 2, expiration=float("inf"))
    snapshot = snapshot_of(records)
    assert snapshot.models[0].peers == () and json.loads(snapshot.to_json())


def relays_of(
    records: SwarmRecords, measures: Mapping[PeerId, RelayMeasure] | None = None
) -> SwarmSnapshot:
    observations = Observations(now=NOW, models=records.models, blocks=records.blocks,
                                relays=records.relays, relay_measures=measures or {})  # fmt: skip
    return build_snapshot(observations)


def test_relays_are_listed_with_the_peers_behind_them_and_their_load() -> None:
    records = SwarmRecords()
    records.add_model("tiny", 4)
    records.add_model("other", 2)
    busy, idle = records.add_relay(4100), records.add_relay(4200)
    behind = records.behind(busy, "tiny", 0, 4)
    records.announce(replace(announcement(behind, "other", 0, 2), address=PeerAddress(
        "10.0.0.9", 4100, behind, busy)))  # fmt: skip  # one peer, two models: counted once
    records.behind(busy, "other", 0, 2)
    records.peer("tiny", 0, 4)  # direct
    load = RelayLoad(2, 1, 9, 5000, max_listeners=64, max_circuits=256)
    snapshot = relays_of(records, {busy: RelayMeasure(0.003, load, NOW - 1)})

    rows = {row.peer_id: row for row in snapshot.relays}
    assert [row.address for row in snapshot.relays] == [
        f"10.0.0.9:4100/{busy.to_base58()}", f"10.0.0.9:4200/{idle.to_base58()}"
    ]  # fmt: skip
    assert (rows[busy].peers, rows[busy].state, rows[busy].rtt) == (2, "online", 0.003)
    assert (rows[idle].peers, rows[idle].load, rows[idle].rtt) == (0, None, None)
    tiny = snapshot.model("tiny")
    assert tiny is not None
    assert {row.peer_id: row.via for row in tiny.peers}[behind] == busy
    state = json.loads(snapshot.to_json())
    by_id = {relay["peer_id"]: relay for relay in state["relays"]}
    assert by_id[busy.to_base58()] | {"expiration": 0} == {
        "peer_id": busy.to_base58(), "short_id": busy.short(), "address": rows[busy].address,
        "state": "online", "expiration": 0, "peers": 2, "rtt": 0.003, "last_seen": NOW - 1,
        "listeners": 2, "open": 1, "circuits": 9, "relayed_bytes": 5000, "max_listeners": 64,
        "max_circuits": 256,
    }  # fmt: skip
    assert by_id[idle.to_base58()]["listeners"] is None
    assert {peer["via"] for peer in state["models"][1]["peers"]} == {busy.to_base58(), None}


def test_a_relay_listing_counts_only_if_it_is_its_own_direct_address() -> None:
    records = SwarmRecords()
    good = records.add_relay(4100)
    expired = records.add_relay(4300, expiration=NOW - 1)
    impostor, other = Identity.generate().peer_id, Identity.generate().peer_id
    records.relays[impostor] = DHTValue(str(PeerAddress("10.0.0.9", 1, other)).encode(), NOW + TTL)
    circuit = Identity.generate().peer_id
    records.relays[circuit] = DHTValue(
        str(PeerAddress("10.0.0.9", 1, circuit, other)).encode(), NOW + TTL
    )
    garbage = Identity.generate().peer_id
    records.relays[garbage] = DHTValue(b"\xff not an address", NOW + TTL)

    snapshot = relays_of(records)

    assert [row.peer_id for row in snapshot.relays] == [good]
    assert expired not in {row.peer_id for row in snapshot.relays}
    assert snapshot.skipped_records == 3  # the expired one is gone, not wrong


def test_a_relay_that_missed_two_probes_is_unreachable() -> None:
    records = SwarmRecords()
    relay = records.add_relay()
    once = relays_of(records, {relay: RelayMeasure(missed=1, last_seen=NOW - 5)})
    twice = relays_of(records, {relay: RelayMeasure(missed=2, last_seen=NOW - 5)})
    assert once.relays[0].state == "online"
    assert twice.relays[0].state == "unreachable" and twice.relays[0].last_seen == NOW - 5
