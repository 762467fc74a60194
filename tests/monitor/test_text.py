"""The swarm's picture as text (`swarm status`), from hand-built records."""

from __future__ import annotations

from swarm.monitor.snapshot import Observations, build_snapshot
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
                                "SESSIONS", "RTT", "WEIGHTS"]  # fmt: skip
    rows = {line.split()[0]: line.split() for line in lines[2:]}
    assert rows[first.short()] == [first.short(), "0-3", "online", "100.0", "4096", "1",
                                   "1.2", "ms", "bfloat16"]  # fmt: skip
    assert rows[second.short()][1:3] == ["2-3", "online"] and "no reply" in lines[3] + lines[2]
    # the columns line up
    assert len({line.index("online") for line in lines[2:]}) == 1


def test_a_swarm_without_models_says_so() -> None:
    empty = build_snapshot(Observations(now=NOW, models={}, blocks={}))
    assert render_text(empty) == "no model is announced in this swarm\n"
