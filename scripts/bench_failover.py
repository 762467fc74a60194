#!/usr/bin/env python3
"""Benchmark failover: the stall when the peer in use is killed or frozen mid-generation.

Layouts of `swarm peer` processes on 127.0.0.1: `whole`, two peers serving the whole model
each; `halves`, four peers, two for each half of the blocks (a 2-hop chain, relayed). The
client generates; after `--kill-after` tokens it stops the first peer of its chain and keeps
generating (with `halves`, the second hop is rebuilt too: the relayed step may or may not
have reached it). Faults: `kill` (SIGKILL: its connections close) and `freeze` (SIGSTOP:
nothing closes and nothing answers, as with a hung machine or a silent network; the client
finds out when the peer answers neither the step nor a ping). Reported, per run: the normal
time per token (median of the other steps), the time from the fault to the next token, and
the stall = that minus a normal token; the tokens are checked against a run without a
fault. Medians over `--runs` runs.

    .venv/bin/python scripts/bench_failover.py [--models tiny smollm2] [--layouts whole halves]
        [--faults kill freeze] [--runs 3] [--json PATH]
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import os
import signal
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from scripts._bench_models import bench_checkpoints  # noqa: E402
from swarm import DistributedModelForCausalLM  # noqa: E402
from swarm.local_swarm import LocalSwarm  # noqa: E402


def spans(checkpoint: Path, layout: str) -> list[tuple[int, int]]:
    blocks = int(AutoConfig.from_pretrained(checkpoint).num_hidden_layers)
    if layout == "whole":
        return [(0, blocks)] * 2
    half = blocks // 2
    return [(0, half), (half, blocks)] * 2


SIGNALS = {"kill": signal.SIGKILL, "freeze": signal.SIGSTOP}


def one_run(
    checkpoint: Path, layout: str, fault: str, tokens: int, kill_after: int
) -> dict[str, Any]:
    prompt = torch.tensor([[1, 2, 3, 4]])
    with (
        LocalSwarm(checkpoint, spans(checkpoint, layout), monitor=False) as swarm,
        DistributedModelForCausalLM.from_pretrained(
            checkpoint, initial_peers=[swarm.bootstrap]
        ) as model,
    ):
        reference = model.generate(prompt, max_new_tokens=tokens, do_sample=False)
        produced, gaps, kill_gap, killed_at = [], [], 0.0, 0.0
        with model.inference_session(max_length=4 + tokens) as session:
            previous = time.perf_counter()
            for token in session.stream(prompt, max_new_tokens=tokens, do_sample=False):
                now = time.perf_counter()
                if len(produced) == kill_after:
                    kill_gap = now - killed_at
                elif produced:
                    gaps.append(now - previous)
                produced.append(token)
                if len(produced) == kill_after:
                    victim = swarm.peer(session.route[0].peer)
                    killed_at = time.perf_counter()
                    os.kill(victim.process.pid, SIGNALS[fault])
                previous = time.perf_counter()
            recovery = session.failovers[0].seconds
        os.kill(victim.process.pid, signal.SIGKILL)  # a frozen peer would not stop by itself
    normal = statistics.median(gaps)
    return {
        "normal_ms": normal * 1000,
        "fault_to_next_token_ms": kill_gap * 1000,
        "stall_ms": (kill_gap - normal) * 1000,
        "recovery_ms": recovery * 1000,
        "same_tokens": produced == reference[0, 4:].tolist(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=["tiny", "smollm2"])
    parser.add_argument("--layouts", nargs="+", default=["whole", "halves"])
    parser.add_argument("--faults", nargs="+", choices=list(SIGNALS), default=list(SIGNALS))
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--kill-after", type=int, default=12)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    checkpoints = bench_checkpoints(args.models)
    results: dict[str, Any] = {}
    print(f"{'model':8} {'layout':7} {'fault':6} {'ms/token':>9} {'fault->next token':>18} "
          f"{'stall':>9} {'same tokens':>12}")  # fmt: skip
    for (name, checkpoint), layout, fault in itertools.product(
        checkpoints.items(), args.layouts, args.faults
    ):
        runs = [
            one_run(checkpoint, layout, fault, args.tokens, args.kill_after)
            for _ in range(args.runs)
        ]
        results.setdefault(name, {}).setdefault(layout, {})[fault] = runs

        def median(key: str, runs: list[dict[str, Any]] = runs) -> float:
            return statistics.median(run[key] for run in runs)

        same = all(run["same_tokens"] for run in runs)
        print(f"{name:8} {layout:7} {fault:6} {median('normal_ms'):7.1f}ms "
              f"{median('fault_to_next_token_ms'):16.1f}ms {median('stall_ms'):7.1f}ms "
              f"{same!s:>12}")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
