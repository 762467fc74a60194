#!/usr/bin/env python3
"""Benchmark generation: milliseconds per token through 1, 2 and 3 peers vs local transformers.

For each model (a tiny random Llama and SmolLM2-135M-Instruct by default) and each dtype
(float32 and bfloat16 by default), a local baseline is measured first in this process:
transformers' model loaded in that dtype with its KV cache, one token per forward (the same
thread count as the peers). Then a swarm of `swarm peer --dtype D --device DEV` processes on
127.0.0.1 splits the blocks into 1, 2 or 3 equal spans, and the client generates through it
(its embeddings and LM head in the same dtype, like the local model); `--quantize int8`
gives the peers int8 weights, against the same local baseline. Per-token figures are
medians over the decoding steps (the prompt's step excluded), with the interquartile range;
"x local" is the ratio to the local baseline of the same run, "+ms/hop" is
(swarm - local) / hops. A 512-token prefill is timed `--prefill-runs` times (one step
through the chain against one local forward): median and min..max.

    .venv/bin/python scripts/bench_generation.py [--tokens 48] [--models tiny smollm2]
        [--dtypes float32 bfloat16] [--hops 1 2 3] [--prefill-runs 3] [--device cpu]
        [--quantize int8] [--json PATH]
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
from transformers import AutoConfig, AutoModelForCausalLM, DynamicCache

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from peer.span import cache_keyword  # noqa: E402
from scripts._bench_models import bench_checkpoints, equal_spans  # noqa: E402
from scripts._bench_timing import median_range, token_gaps  # noqa: E402
from swarm import DistributedModelForCausalLM  # noqa: E402
from swarm.local_swarm import LocalSwarm  # noqa: E402

PREFILL = 512
logger = logging.getLogger("bench_generation")


def _iqr_stats(samples: list[float]) -> dict[str, float]:
    """Median and interquartile range, in milliseconds."""
    ordered = sorted(samples)
    quarter = max(1, len(ordered) // 4)
    return {
        "median_ms": statistics.median(ordered) * 1000,
        "iqr_ms": (ordered[-quarter] - ordered[quarter - 1]) * 1000,
    }


def _prefill_stats(prefills: list[float]) -> dict[str, Any] | None:
    """Median and range of the prefill runs, or None with `--prefill-runs 0`."""
    return median_range(prefills, "_ms", 1000) if prefills else None


def _synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def local_baseline(
    checkpoint: Path, tokens: int, dtype: str, device: str, prefill_runs: int
) -> dict[str, Any]:
    model = AutoModelForCausalLM.from_pretrained(
        checkpoint, dtype=getattr(torch, dtype), device_map=device
    )  # from_pretrained returns the model in eval mode
    ids = torch.tensor([[1, 2, 3, 4]], device=device)
    times, prefills = [], []
    cache = {cache_keyword(type(model).forward): DynamicCache(config=model.config)}
    with torch.inference_mode():
        token = model(ids, use_cache=True, **cache).logits[:, -1:].argmax(-1)
        for _ in range(tokens):
            _synchronize(device)
            began = time.perf_counter()
            token = model(token, use_cache=True, **cache).logits[:, -1:].argmax(-1)
            token.item()  # wait for the result, as a client would
            times.append(time.perf_counter() - began)
        long = torch.randint(5, 100, (1, PREFILL), device=device)
        model(long[:, :8])  # warm-up
        for _ in range(prefill_runs):
            _synchronize(device)
            began = time.perf_counter()
            model(long, use_cache=True).logits[:, -1].argmax(-1).item()
            prefills.append(time.perf_counter() - began)
    return {"per_token": _iqr_stats(times), "prefill": _prefill_stats(prefills)}


def swarm_run(
    checkpoint: Path,
    hops: int,
    tokens: int,
    dtype: str,
    device: str,
    prefill_runs: int,
    quantize: str | None = None,
) -> dict[str, Any]:
    num_blocks = int(AutoConfig.from_pretrained(checkpoint).num_hidden_layers)
    spans = equal_spans(num_blocks, hops)
    options = [
        "--dtype",
        dtype,
        "--device",
        device,
        *(["--quantize", quantize] if quantize else []),
    ]
    with (
        LocalSwarm(checkpoint, spans, monitor=False, peer_options=options) as swarm,
        DistributedModelForCausalLM.from_pretrained(
            checkpoint, initial_peers=[swarm.bootstrap], device=device, dtype=dtype
        ) as model,
    ):
        ids = torch.tensor([[1, 2, 3, 4]])
        prefills = []
        with model.inference_session(max_length=8 + tokens) as session:
            times = token_gaps(session.stream(ids, max_new_tokens=tokens, do_sample=False))
        long = torch.randint(5, 100, (1, PREFILL))
        for _ in range(prefill_runs):
            with model.inference_session(max_length=PREFILL + 1) as session:
                began = time.perf_counter()
                next(iter(session.stream(long, max_new_tokens=1, do_sample=False)))
                prefills.append(time.perf_counter() - began)
    return {"per_token": _iqr_stats(times), "prefill": _prefill_stats(prefills)}


def _row(name: str, dtype: str, hops: int, run: dict[str, Any], local: dict[str, Any]) -> str:
    """One table row; `hops` 0 is the local baseline."""
    token, prefill = run["per_token"], run["prefill"]
    base = local["per_token"]["median_ms"]
    ratio = token["median_ms"] / base
    chain = f"{hops} peers" if hops else "local"
    per_hop = f"{(token['median_ms'] - base) / hops:8.2f}" if hops else ""
    row = (
        f"{name:8} {dtype:9} {chain:>8} {token['median_ms']:9.2f} ({token['iqr_ms']:5.2f}) "
        f"{ratio:7.2f} {per_hop:>8}"
    )
    if prefill is None:
        return row
    prefill_ratio = prefill["median_ms"] / local["prefill"]["median_ms"]
    spread = f"{prefill['min_ms']:.0f}..{prefill['max_ms']:.0f}"
    return f"{row} {prefill['median_ms']:9.0f} ({spread:>11}) {prefill_ratio:7.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tokens", type=int, default=48)
    parser.add_argument("--models", nargs="+", default=["tiny", "smollm2"])
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    parser.add_argument("--hops", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--prefill-runs", type=int, default=3)
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (local and peers)")
    parser.add_argument(
        "--quantize", choices=["int8"], help="int8 peers (against the local model unquantized)"
    )
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    checkpoints = bench_checkpoints(args.models)
    results: dict[str, Any] = {
        "threads": torch.get_num_threads(),
        "device": args.device,
        "tokens": args.tokens,
        "prefill_tokens": PREFILL,
        "prefill_runs": args.prefill_runs,
        "quantize": args.quantize,
    }
    print(f"threads {torch.get_num_threads()}, {args.device}, loopback; ms/token: median (IQR) "
          f"over {args.tokens} tokens; prefill {PREFILL}: median (min..max) of "
          f"{args.prefill_runs} runs; x local: ratio to the local baseline")  # fmt: skip
    print(f"{'model':8} {'dtype':9} {'chain':>8} {'ms/token':>17} {'x local':>7} {'+ms/hop':>8} "
          f"{'prefill 512 ms':>23} {'x local':>7}")  # fmt: skip
    for name, checkpoint in checkpoints.items():
        results[name] = {}
        for dtype in args.dtypes:
            logger.info("%s %s: local baseline", name, dtype)
            local = local_baseline(checkpoint, args.tokens, dtype, args.device, args.prefill_runs)
            entry: dict[str, Any] = {"local": local}
            print(_row(name, dtype, 0, local, local), flush=True)
            for hops in args.hops:
                logger.info("%s %s: %d peers", name, dtype, hops)
                run = swarm_run(
                    checkpoint, hops, args.tokens, dtype, args.device, args.prefill_runs,
                    args.quantize,
                )  # fmt: skip
                run["x_local"] = run["per_token"]["median_ms"] / local["per_token"]["median_ms"]
                if run["prefill"] is not None:
                    prefill_ms = run["prefill"]["median_ms"]
                    run["prefill_x_local"] = prefill_ms / local["prefill"]["median_ms"]
                entry[f"{hops}_peers"] = run
                label = f"{dtype}+{args.quantize}" if args.quantize else dtype
                print(_row(name, label, hops, run, local), flush=True)
            results[name][dtype] = entry
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
