#!/usr/bin/env python3
"""Benchmark relay: ms/token through 1, 2 and 3 peers over links with a one-way delay, with
the peers passing hidden states straight to each other (relay) or with the client in the
middle of every hop (`ClientConfig(relay=False)`).

The peers run in this process (`tests/support/thread_swarm.py`: one trio loop, TCP on
127.0.0.1), each behind a fault relay that holds every chunk of every connection it accepts
for `--delays-ms` each way: the client's links and the links between peers alike, as on a
network where the client and the peers are apart. The model is a tiny random one: this
measures the path, not the compute. A token through N hops crosses 2N delayed legs with the
client in the middle, and N + 1 with relay.

    .venv/bin/python scripts/bench_relay.py [--delays-ms 0 5] [--hops 1 2 3] [--tokens 24]
        [--runs 3] [--json PATH]
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from routing.client import ClientConfig  # noqa: E402
from scripts._bench_models import equal_spans  # noqa: E402
from scripts._bench_timing import token_gaps  # noqa: E402
from swarm import DistributedModelForCausalLM  # noqa: E402
from tests.support.thread_swarm import ThreadSwarm  # noqa: E402
from tests.support.tiny_model import write_tiny_model  # noqa: E402

BLOCKS = 6


def per_token_ms(checkpoint: Path, hops: int, delay: float, relay: bool, tokens: int) -> float:
    """Median milliseconds between streamed tokens (the prompt's step left out)."""
    with ThreadSwarm(checkpoint, equal_spans(BLOCKS, hops)) as swarm:
        for peer in swarm.peers:
            swarm.fault(peer, "delay", delay)
        with DistributedModelForCausalLM.from_pretrained(
            checkpoint, initial_peers=[swarm.bootstrap], config=ClientConfig(relay=relay)
        ) as model:
            ids = torch.tensor([[1, 2, 3, 4]])
            with model.inference_session(max_length=8 + tokens) as session:
                gaps = token_gaps(session.stream(ids, max_new_tokens=tokens, do_sample=False))
    return statistics.median(gaps) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--delays-ms", type=float, nargs="+", default=[0.0, 5.0])
    parser.add_argument("--hops", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--tokens", type=int, default=24)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    checkpoint = write_tiny_model(Path(tempfile.mkdtemp()) / "tiny", num_layers=BLOCKS)
    print(f"one-way delay on every link; ms/token: median (min..max) of {args.runs} runs, each")
    print("the median over its tokens; the client in the middle of every hop -> relay")
    print(f"{'delay ms':>8} {'hops':>4} {'middle':>20} {'relay':>20} {'saved':>6}")
    rows: list[dict[str, Any]] = []
    for delay_ms, hops in itertools.product(args.delays_ms, args.hops):
        runs: dict[bool, list[float]] = {False: [], True: []}
        for _, relay in itertools.product(range(args.runs), (False, True)):  # interleaved
            runs[relay].append(per_token_ms(checkpoint, hops, delay_ms / 1000, relay, args.tokens))
        middle, relay = (statistics.median(runs[mode]) for mode in (False, True))
        rows.append({"delay_ms": delay_ms, "hops": hops, "middle_ms": runs[False],
                     "relay_ms": runs[True]})  # fmt: skip
        print(f"{delay_ms:8.1f} {hops:4d} {_spread(runs[False]):>20} {_spread(runs[True]):>20} "
              f"{middle - relay:6.2f}")  # fmt: skip
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"tiny": rows}, indent=1))


def _spread(samples: list[float]) -> str:
    return f"{statistics.median(samples):.2f} ({min(samples):.1f}..{max(samples):.1f})"


if __name__ == "__main__":
    main()
