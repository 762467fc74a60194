"""The swarm's picture as text (`swarm status`), from hand-built records."""

from __future__ import annotations

from routing.rpc import RelayLoad
from swarm.monitor.snapshot import Observations, RelayMeasure, build_snapshot
from swarm.monitor.text import render_text

from .records import NOW, SwarmRecords


def test_each_model_shows_its_coverage_and_a_line_per_peer() -> None:
    records = SwarmRecords()
    records.add_model("tiny", 6)
    first = records.peer("tiny", 0, 4)
    second = records.peer("tiny", 2, 4)
    snapshot = build_snapshot(
        Observations(now=NOW, models=records.models, blocks=records.blocks,
                     rtts={first: 0.0012, second: None})
    )  # fmt: skip
    text = render_text(snapshot)
    lines = text.splitlines()
    assert lines[0] == "tiny: 6 blocks, 2 peers, gaps at blocks 4-5, weakest block 0.0 tok/s"
    assert lines[1].split() == ["PEER", "BLOCKS", "STATE", "TOK/S", "CACHE", "LEFT",
                                "SESSIONS", "RTT", "WEIGHTS", "VIA"]  # fmt: skip
    rows = {line.split()[0]: line.split() for line in lines[2:]}
    assert rows[first.short()] == [first.short(), "0-3", "online", "100.0", "4096", "1",
                                   "1.2", "ms", "bfloat16"]  # fmt: skip
    assert rows[second.short()][1:3] == ["2-3", "online"] and "no reply" in lines[3] + lines[2]
    # the columns line up
    assert len({line.index("online") for line in lines[2:]}) == 1


def test_a_swarm_without_models_says_so() -> None:
    empty = build_snapshot(Observations(now=NOW, models={}, blocks={}))
    assert render_text(empty) == "no model is announced in this swarm\n"


def test_relays_follow_the_models_and_peers_name_theirs() -> None:
    records = SwarmRecords()
    records.add_model("tiny", 2)
    relay, silent = records.add_relay(4100), records.add_relay(4200)
    behind = records.behind(relay, "tiny", 0, 2)
    load = RelayLoad(3, 2, 9, 5000, max_listeners=64, max_circuits=256)
    measures = {relay: RelayMeasure(0.0021, load, NOW), silent: RelayMeasure(missed=2)}
    snapshot = build_snapshot(
        Observations(now=NOW, models=records.models, blocks=records.blocks,
                     relays=records.relays, relay_measures=measures)
    )  # fmt: skip
    lines = render_text(snapshot).splitlines()
    assert lines[2].split()[0] == behind.short() and lines[2].split()[-1] == relay.short()
    at = lines.index("circuit relays: 2")
    assert lines[at + 1].split() == ["RELAY", "ADDRESS", "STATE", "PEERS", "LISTENING",
                                     "CIRCUITS", "RTT"]  # fmt: skip
    assert lines[at + 2].split() == [relay.short(), "10.0.0.9:4100", "online", "1", "3/64",
                                     "2/256", "2.1", "ms"]  # fmt: skip
    assert lines[at + 3].split() == [silent.short(), "10.0.0.9:4200", "unreachable", "0", "?",
                                     "?", "no", "reply"]  # fmt: skip


def test_relays_show_without_models() -> None:
    records = SwarmRecords()
    records.add_relay()
    text = render_text(
        build_snapshot(Observations(now=NOW, models={}, blocks={}, relays=records.relays))
    )
    assert text.splitlines()[:3] == ["no model is announced in this swarm", "", "circuit relays: 1"]
