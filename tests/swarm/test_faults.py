"""Routing around slow and stalled peers (the fault relay sits in front of every peer)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from routing.client import ClientConfig, Failover, StepTiming
from swarm import DistributedModelForCausalLM
from tests.support.thread_swarm import ThreadSwarm
from tests.support.tiny_model import write_tiny_model

PROMPT = torch.tensor([[1, 20, 21, 22]])


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_model(tmp_path_factory.mktemp("faults") / "tiny-faults", seed=9)


def _local(checkpoint: Path, new_tokens: int) -> list[int]:
    model = AutoModelForCausalLM.from_pretrained(checkpoint)
    output = model.generate(
        PROMPT, attention_mask=torch.ones_like(PROMPT), max_new_tokens=new_tokens, do_sample=False
    )
    return [int(t) for t in output[0, PROMPT.shape[1] :]]


@pytest.mark.parametrize("fault", ["stall", "drop", "cut"])
def test_a_faulty_peer_is_routed_around_with_the_same_tokens(tiny: Path, fault: str) -> None:
    """Stalled (nothing moves either way, as with a frozen process): it answers neither the
    step nor the client's ping, long before the step's 10 s deadline. Dropping or cut: the
    connection breaks."""
    expected = _local(tiny, 30)
    with (
        ThreadSwarm(tiny, [(0, 4), (0, 4)]) as swarm,
        DistributedModelForCausalLM.from_pretrained(tiny, initial_peers=[swarm.bootstrap]) as model,
        model.inference_session(max_length=64) as session,
    ):
        tokens = []
        for token in session.stream(PROMPT, max_new_tokens=30, do_sample=False):
            tokens.append(token)
            if len(tokens) == 8:
                faulty = swarm.peer(session.route[0].peer)
                swarm.fault(faulty, fault, *([1.0] if fault == "drop" else []))
        assert [f.peer for f in session.failovers] == [faulty.peer]
        if fault == "stall":
            assert "answered neither the step nor a ping" in session.failovers[0].error
        assert session.route[0].peer != faulty.peer
        swarm.fault(faulty, "resume")
    assert tokens == expected


def test_a_stalled_hop_that_gets_relayed_steps_is_replaced(tiny: Path) -> None:
    """The second hop gets its inputs from the first peer; when it stalls, it answers neither
    the step nor a ping, so it is banned and replaced (not mistaken for a lost relay)."""
    expected = _local(tiny, 20)
    with (
        ThreadSwarm(tiny, [(0, 2), (2, 4), (2, 4)]) as swarm,
        DistributedModelForCausalLM.from_pretrained(tiny, initial_peers=[swarm.bootstrap]) as model,
        model.inference_session(max_length=64) as session,
    ):
        tokens = []
        for token in session.stream(PROMPT, max_new_tokens=20, do_sample=False):
            tokens.append(token)
            if len(tokens) == 6:
                stalled = swarm.peer(session.route[1].peer)
                swarm.fault(stalled, "stall")
        assert [f.peer for f in session.failovers] == [stalled.peer]
        assert "answered neither the step nor a ping" in session.failovers[0].error
        assert session.route[1].peer != stalled.peer
        relayed = [t.relayed for t in session.timings[1][1]]
        swarm.fault(stalled, "resume")
    assert tokens == expected
    assert relayed[-1]  # the replacement gets relayed steps again


def _through_a_slow_peer(
    tiny: Path, spans: list[tuple[int, int]], slow: int
) -> tuple[list[int], list[Failover], list[list[StepTiming]]]:
    """Three tokens with peer `slow` 0.2 s away each way, from a client that pings a peer
    0.1 s into a late step: the tokens, the failovers and each hop's step timings."""
    config = ClientConfig(liveness_after=0.1)
    with ThreadSwarm(tiny, spans) as swarm:
        swarm.fault(swarm.peers[slow], "delay", 0.2)
        with (
            DistributedModelForCausalLM.from_pretrained(
                tiny, initial_peers=[swarm.bootstrap], config=config
            ) as model,
            model.inference_session(max_length=16) as session,
        ):
            tokens = list(session.stream(PROMPT, max_new_tokens=3, do_sample=False))
            return tokens, session.failovers, [steps for _, steps in session.timings]


def test_a_slow_peer_that_answers_pings_is_waited_for(tiny: Path) -> None:
    """Every step takes over 0.4 s, longer than the client waits before it pings; the pings
    come back, so the only peer is kept (a failover would find no other)."""
    tokens, failovers, timings = _through_a_slow_peer(tiny, [(0, 4)], slow=0)
    assert tokens == _local(tiny, 3)
    assert failovers == []
    assert min(timing.seconds for timing in timings[0]) > 0.4


def test_a_slow_relayed_hop_keeps_getting_relayed_steps(tiny: Path) -> None:
    """The second hop is late on every step: the client sends it a copy of each input too,
    which it ignores, having taken the relayed one first; so the first peer goes on
    relaying, and nothing is replaced."""
    tokens, failovers, timings = _through_a_slow_peer(tiny, [(0, 2), (2, 4)], slow=1)
    assert tokens == _local(tiny, 3)
    assert failovers == []
    assert [timing.relayed for timing in timings[1]] == [True, True, True]
    assert min(timing.seconds for timing in timings[1]) > 0.2


def test_a_replica_behind_50_ms_gets_few_steps(tiny: Path) -> None:
    with ThreadSwarm(tiny, [(0, 4), (0, 4)]) as swarm:
        slow, fast = swarm.peers
        swarm.fault(slow, "delay", 0.05)
        steps = {slow.peer: 0, fast.peer: 0}
        with DistributedModelForCausalLM.from_pretrained(
            tiny, initial_peers=[swarm.bootstrap]
        ) as model:
            for _ in range(5):
                with model.inference_session(max_length=32) as session:
                    for _ in session.stream(PROMPT, max_new_tokens=8, do_sample=False):
                        steps[session.route[0].peer] += 1
    assert steps[fast.peer] >= 0.8 * (steps[fast.peer] + steps[slow.peer])
