#!/usr/bin/env python3
"""Benchmark startup: seconds until a peer serves, and until a client's first token.

For each model (a tiny random Llama and SmolLM2-135M-Instruct by default), three figures,
each the median of `--runs` runs with min..max, all measured in the same run:

- local (the baseline of both ratios): transformers' `AutoModelForCausalLM.from_pretrained`
  in this process, then one forward over a 4-token prompt and its next token;
- peer: from launching a `swarm peer` process serving every block (`SwarmProcess`, next to
  a DHT node started once) until it prints its address, that is once it serves and is
  announced; this includes the interpreter start and the imports of a fresh process;
- client: from `DistributedModelForCausalLM.from_pretrained(...)` until the first token of
  the same prompt arrives through `session.stream(...)`, against a swarm (`LocalSwarm`, one
  peer with every block) that already serves the model.

Before the timed runs, the local load and the client run once untimed (lazy imports, the
file cache), so local and client compare warm against warm; the peer is always a new process.

    .venv/bin/python scripts/bench_startup.py [--models tiny smollm2] [--runs 3]
        [--dtype float32] [--device cpu] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForCausalLM

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from scripts._bench_models import bench_checkpoints  # noqa: E402
from scripts._bench_timing import median_range  # noqa: E402
from swarm import DistributedModelForCausalLM  # noqa: E402
from swarm.local_swarm import LocalSwarm  # noqa: E402
from swarm.processes import SwarmProcess, swarm_processes  # noqa: E402

READY_TIMEOUT = 300.0
PROMPT = [[1, 2, 3, 4]]
logger = logging.getLogger("bench_startup")


def _blocks(checkpoint: Path) -> int:
    return int(AutoConfig.from_pretrained(checkpoint).num_hidden_layers)


def local_first_token(checkpoint: Path, dtype: str, device: str) -> float:
    """Seconds to load the model with transformers and compute the prompt's next token."""
    began = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(
        checkpoint, dtype=getattr(torch, dtype), device_map=device
    )  # from_pretrained returns the model in eval mode
    with torch.inference_mode():
        model(torch.tensor(PROMPT, device=device)).logits[:, -1].argmax(-1).item()
    return time.perf_counter() - began


def client_first_token(checkpoint: Path, bootstrap: str, dtype: str, device: str) -> float:
    """Seconds from loading the client to the first token through the running swarm."""
    began = time.perf_counter()
    with (
        DistributedModelForCausalLM.from_pretrained(
            checkpoint, initial_peers=[bootstrap], device=device, dtype=dtype
        ) as model,
        model.inference_session(max_length=len(PROMPT[0]) + 1) as session,
    ):
        next(iter(session.stream(torch.tensor(PROMPT), max_new_tokens=1, do_sample=False)))
        seconds = time.perf_counter() - began
    return seconds


def peer_ready_times(checkpoint: Path, runs: int, options: list[str]) -> list[float]:
    """Seconds from launching `swarm peer` (every block) until it serves, one new peer a run."""
    samples = []
    with swarm_processes() as started:
        dht = SwarmProcess(["dht"])
        started.append(dht)
        bootstrap = dht.wait_ready(READY_TIMEOUT)
        join = ["--initial-peers", bootstrap, "--blocks", f"0:{_blocks(checkpoint)}"]
        for _ in range(runs):
            began = time.perf_counter()
            peer = SwarmProcess(["peer", str(checkpoint), *join, *options])
            started.append(peer)
            peer.wait_ready(READY_TIMEOUT)
            samples.append(time.perf_counter() - began)
            peer.stop()
    return samples


def bench_model(checkpoint: Path, runs: int, dtype: str, device: str) -> dict[str, Any]:
    options = ["--dtype", dtype, "--device", device]
    logger.info("%s: peer startup", checkpoint.name)
    peer = peer_ready_times(checkpoint, runs, options)
    local, client = [], []
    spans = [(0, _blocks(checkpoint))]
    with LocalSwarm(checkpoint, spans, monitor=False, peer_options=options) as swarm:
        local_first_token(checkpoint, dtype, device)  # warm-up, untimed
        client_first_token(checkpoint, swarm.bootstrap, dtype, device)
        for _ in range(runs):  # interleaved, so that both see the same machine
            local.append(local_first_token(checkpoint, dtype, device))
            client.append(client_first_token(checkpoint, swarm.bootstrap, dtype, device))
    base = statistics.median(local)
    return {
        "local_first_token": median_range(local, "_s"),
        "peer_ready": median_range(peer, "_s"),
        "client_first_token": median_range(client, "_s"),
        "peer_ready_x_local": statistics.median(peer) / base,
        "client_first_token_x_local": statistics.median(client) / base,
    }


def _cell(stats: dict[str, Any]) -> str:
    return f"{stats['median_s']:6.2f} ({stats['min_s']:.2f}..{stats['max_s']:.2f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=["tiny", "smollm2"])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (local and peers)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    checkpoints = bench_checkpoints(args.models)
    results: dict[str, Any] = {
        "threads": torch.get_num_threads(),
        "dtype": args.dtype,
        "device": args.device,
        "runs": args.runs,
    }
    print(f"threads {torch.get_num_threads()}, {args.dtype} on {args.device}; seconds: "
          f"median (min..max) of {args.runs} runs; "
          "x local: ratio to local load + 1st token")  # fmt: skip
    print(f"{'model':8} {'local load+1st token':>22} {'peer start->serves':>22} {'x local':>7} "
          f"{'client load->1st token':>22} {'x local':>7}")  # fmt: skip
    for name, checkpoint in checkpoints.items():
        result = bench_model(checkpoint, args.runs, args.dtype, args.device)
        results[name] = result
        print(f"{name:8} {_cell(result['local_first_token']):>22} "
              f"{_cell(result['peer_ready']):>22} {result['peer_ready_x_local']:7.1f} "
              f"{_cell(result['client_first_token']):>22} "
              f"{result['client_first_token_x_local']:7.1f}", flush=True)  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
