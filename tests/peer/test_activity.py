"""The peer's activity reports: the pure summary, and the lines a serving peer logs."""

from __future__ import annotations

import logging
import re
import time
from pathlib import Path

import pytest
import torch

from peer.activity import Activity, Load, summary
from swarm import DistributedModelForCausalLM
from tests.support.thread_swarm import ThreadSwarm
from tests.support.tiny_model import write_tiny_model

LOAD = Load(start=0, end=4, sessions=1, cache_tokens_left=900, cache_tokens=1000)


def test_a_quiet_period_says_nothing_and_a_busy_one_counts_what_it_did() -> None:
    before = Activity(sessions=2, steps=10, tokens=40)
    assert summary(before, Activity(sessions=2, steps=10, tokens=40), 60.0, LOAD) is None
    now = Activity(sessions=3, refused=1, steps=14, tokens=60, forwards=2)
    assert summary(before, now, 10.0, LOAD) == (
        "blocks 0..3, last 10 s: 1 sessions opened, 1 refused; 4 steps, 20 tokens (2.0/s); "
        "2 forwards and backwards. Now 1 sessions open, 900 of 1000 cache tokens free"
    )


def test_a_serving_peer_reports_the_sessions_and_steps_it_served(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """One generation of 5 tokens: one session, 5 steps (the prompt's, then one per token
    but the last), the prompt's tokens and 4 more, whatever periods the report splits it in;
    `span.info` gives the same count of tokens served."""
    caplog.set_level(logging.INFO, logger="peer.activity")
    checkpoint = write_tiny_model(tmp_path / "tiny-activity")
    prompt = torch.tensor([[5, 6, 7, 8, 9, 10]])
    with (
        ThreadSwarm(checkpoint, [(0, 4)], report_every=0.1) as swarm,
        DistributedModelForCausalLM.from_pretrained(
            checkpoint, initial_peers=[swarm.bootstrap]
        ) as model,
    ):
        model.generate(prompt, max_new_tokens=5, do_sample=False, eos_token_id=[])
        served = swarm.info(swarm.peers[0])["served_tokens"]  # its counter, for the monitor
        deadline = time.monotonic() + 10.0
        while _reported(caplog) != (1, 5, prompt.shape[1] + 4) and time.monotonic() < deadline:
            time.sleep(0.05)  # polls the log, with a deadline: the peer reports every 0.1 s
    assert _reported(caplog) == (1, 5, prompt.shape[1] + 4) and served == prompt.shape[1] + 4


def _reported(caplog: pytest.LogCaptureFixture) -> tuple[int, int, int]:
    """Sessions, steps and tokens, summed over the reports logged so far."""
    totals = [0, 0, 0]
    pattern = r"(\d+) sessions opened, \d+ refused; (\d+) steps, (\d+) tokens"
    for record in caplog.records:
        if match := re.search(pattern, record.getMessage()):
            totals = [total + int(n) for total, n in zip(totals, match.groups(), strict=True)]
    return totals[0], totals[1], totals[2]
