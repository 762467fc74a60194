#!/usr/bin/env python3
"""Benchmark generation: milliseconds per token through 1, 2 and 3 peers vs local transformers.

For each model (a tiny random Llama and SmolLM2-135M-Instruct by default), a local baseline is
measured first in this process: transformers' model with its KV cache, one token per forward
(the same dtype and thread count as the peers). Then a swarm of `swarm peer` processes on
127.0.0.1 splits the blocks into 1, 2 or 3 equal spans, and the client generates through it.
Per-token figures are medians over the decoding steps (the prompt's step excluded), with the
interquartile range; "per hop" is (swarm - local) / hops. A 512-token prefill is timed the
same way (one step through the chain against one local forward).

    .venv/bin/python scripts/bench_generation.py [--tokens 48] [--models tiny smollm2]
        [--json PATH]
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from swarm import DistributedModelForCausalLM  # noqa: E402
from swarm.default_model import prepare_default_model  # noqa: E402
from swarm.local_swarm import LocalSwarm  # noqa: E402
from tests.support.tiny_model import write_tiny_model  # noqa: E402

PREFILL = 512


def _stats(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    quarter = max(1, len(ordered) // 4)
    return {
        "median_ms": statistics.median(ordered) * 1000,
        "iqr_ms": (ordered[-quarter] - ordered[quarter - 1]) * 1000,
    }


def local_baseline(checkpoint: Path, tokens: int) -> dict[str, Any]:
    model = AutoModelForCausalLM.from_pretrained(checkpoint).eval()
    ids = torch.tensor([[1, 2, 3, 4]])
    times = []
    with torch.inference_mode():
        output = model(ids, use_cache=True)
        past, token = output.past_key_values, output.logits[:, -1:].argmax(-1)
        for _ in range(tokens):
            began = time.perf_counter()
            output = model(token, past_key_values=past, use_cache=True)
            past, token = output.past_key_values, output.logits[:, -1:].argmax(-1)
            times.append(time.perf_counter() - began)
        long = torch.randint(5, 100, (1, PREFILL))
        model(long[:, :8])  # warm-up
        began = time.perf_counter()
        model(long, use_cache=True)
        prefill = time.perf_counter() - began
    return {"per_token": _stats(times), "prefill_ms": prefill * 1000}


def swarm_run(checkpoint: Path, hops: int, tokens: int) -> dict[str, Any]:
    num_blocks = AutoModelForCausalLM.from_pretrained(checkpoint).config.num_hidden_layers
    bounds = [round(i * num_blocks / hops) for i in range(hops + 1)]
    spans = list(itertools.pairwise(bounds))
    with (
        LocalSwarm(checkpoint, spans, monitor=False) as swarm,
        DistributedModelForCausalLM.from_pretrained(
            checkpoint, initial_peers=[swarm.bootstrap]
        ) as model,
    ):
        ids = torch.tensor([[1, 2, 3, 4]])
        times = []
        with model.inference_session(max_length=8 + tokens) as session:
            previous = time.perf_counter()
            for index, _ in enumerate(session.stream(ids, max_new_tokens=tokens, do_sample=False)):
                now = time.perf_counter()
                if index:  # the first token includes the prompt's step
                    times.append(now - previous)
                previous = now
        long = torch.randint(5, 100, (1, PREFILL))
        with model.inference_session(max_length=PREFILL + 1) as session:
            began = time.perf_counter()
            next(iter(session.stream(long, max_new_tokens=1)))
            prefill = time.perf_counter() - began
    return {"per_token": _stats(times), "prefill_ms": prefill * 1000}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tokens", type=int, default=48)
    parser.add_argument("--models", nargs="+", default=["tiny", "smollm2"])
    parser.add_argument("--hops", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    checkpoints = {}
    if "tiny" in args.models:
        checkpoints["tiny"] = write_tiny_model(
            Path(tempfile.mkdtemp()) / "tiny", num_layers=6, max_position_embeddings=1024
        )
    if "smollm2" in args.models:
        checkpoints["smollm2"] = prepare_default_model()
    results: dict[str, Any] = {"threads": torch.get_num_threads(), "dtype": "float32"}
    print(f"threads {torch.get_num_threads()}, float32, loopback; medians (IQR) over "
          f"{args.tokens} tokens")  # fmt: skip
    print(f"{'model':8} {'chain':>9} {'ms/token':>16} {'x local':>8} {'+ms/hop':>8} "
          f"{'prefill 512':>12}")  # fmt: skip
    for name, checkpoint in checkpoints.items():
        local = local_baseline(checkpoint, args.tokens)
        results[name] = {"local": local}
        base = local["per_token"]["median_ms"]
        print(f"{name:8} {'local':>9} {base:9.2f} ({local['per_token']['iqr_ms']:4.2f}) "
              f"{1:8.2f} {'':>8} {local['prefill_ms']:10.0f}ms")  # fmt: skip
        for hops in args.hops:
            run = swarm_run(checkpoint, hops, args.tokens)
            results[name][f"{hops}_peers"] = run
            median, spread = run["per_token"]["median_ms"], run["per_token"]["iqr_ms"]
            print(f"{name:8} {f'{hops} peers':>9} {median:9.2f} ({spread:4.2f}) "
                  f"{median / base:8.2f} {(median - base) / hops:8.2f} "
                  f"{run['prefill_ms']:10.0f}ms")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
