#!/usr/bin/env python3
"""Benchmark batch forward and training steps through 1 and 2 peers vs local transformers.

For each model (SmolLM2-135M-Instruct by default), a local baseline is measured first in
this process: transformers' model, one forward over a batch of `--batch` sequences of
`--length` tokens, to the logits; and one training step: forward from `inputs_embeds` that
require grad, the loss, and its backward to them (the blocks frozen). Then a swarm of
`swarm peer` processes on 127.0.0.1 serves the blocks as one span, or split into two, and
the client runs the same through it (`span.forward`, `span.backward`; its embeddings and LM
head here). With `--recompute`, the training step runs again through peers that keep no
forward's graph (`--kept-activations 0`, or the `--kept-activations` given: one below a
step's graph has them foresee that it would not fit): their backward computes the forward
again, as gradient checkpointing does. Reported: the median and min..max of `--runs` calls
(after one warm-up), tokens per second, and the ratio to the local baseline of the same
run; the swarm's logits and gradients are checked against the local ones.

    .venv/bin/python scripts/bench_forward.py [--models smollm2 tiny] [--batch 4]
        [--length 128] [--hops 1 2] [--runs 5] [--recompute [--kept-activations MB]]
        [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForCausalLM

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from scripts._bench_models import bench_checkpoints, equal_spans  # noqa: E402
from scripts._bench_timing import median_range  # noqa: E402
from swarm import DistributedModelForCausalLM  # noqa: E402
from swarm.local_swarm import LocalSwarm  # noqa: E402


def _timed(call: Callable[[], torch.Tensor], runs: int) -> tuple[list[float], torch.Tensor]:
    logits = call()  # warm-up
    seconds = []
    for _ in range(runs):
        began = time.perf_counter()
        logits = call()
        seconds.append(time.perf_counter() - began)
    return seconds, logits


def _train_step(model: Any, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Forward from `embeddings`, the loss, its backward; the gradient of the embeddings."""
    leaf = embeddings.detach().requires_grad_(True)
    model(inputs_embeds=leaf, labels=labels).loss.backward()
    assert leaf.grad is not None
    return leaf.grad


def _report(name: str, seconds: list[float], tokens: int, base: float | None) -> dict[str, Any]:
    entry = median_range(seconds, "_ms", 1000)
    median, spread = entry["median_ms"], f"{entry['min_ms']:.0f}..{entry['max_ms']:.0f} ms"
    ratio = ""
    if base is not None:
        entry["x_local"] = median / base
        ratio = f"  x{entry['x_local']:.2f} local"
    print(f"  {name:18} {median:9.1f} ms {tokens / median * 1000:9.0f} tokens/s{ratio}  "
          f"({spread})", flush=True)  # fmt: skip
    return entry


def run_model(
    checkpoint: Path, shape: tuple[int, int], hops: list[int], runs: int, recompute: int | None
) -> dict[str, Any]:
    """The model's results; `recompute`: also through peers keeping this many MB of graphs."""
    config = AutoConfig.from_pretrained(checkpoint)
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(5, min(1000, config.vocab_size), shape, generator=generator)
    tokens = ids.numel()
    local = AutoModelForCausalLM.from_pretrained(checkpoint).requires_grad_(False)
    embeddings = local.get_input_embeddings()(ids).detach()
    with torch.inference_mode():
        seconds, expected = _timed(lambda: local(ids).logits, runs)
    results: dict[str, Any] = {"local": _report("local forward", seconds, tokens, None)}
    seconds, expected_grad = _timed(lambda: _train_step(local, embeddings, ids), runs)
    results["local_train"] = _report("local train step", seconds, tokens, None)
    blocks = int(config.num_hidden_layers)
    for count in hops:
        with (
            LocalSwarm(checkpoint, equal_spans(blocks, count), monitor=False) as swarm,
            DistributedModelForCausalLM.from_pretrained(
                checkpoint, initial_peers=[swarm.bootstrap]
            ) as model,
        ):
            seconds, logits = _timed(lambda: model(ids).logits, runs)
            entry = _report(
                f"{count} peers forward", seconds, tokens, results["local"]["median_ms"]
            )
            entry["max_abs_logit_error"] = float((logits - expected).abs().max())
            results[f"{count}_peers"] = entry
            seconds, grad = _timed(lambda: _train_step(model, embeddings, ids), runs)
            base = results["local_train"]["median_ms"]
            entry = _report(f"{count} peers train step", seconds, tokens, base)
            entry["max_abs_grad_error"] = float((grad - expected_grad).abs().max())
            results[f"{count}_peers_train"] = entry
        print(
            f"  logits within {results[f'{count}_peers']['max_abs_logit_error']:.1e}, "
            f"gradients within {entry['max_abs_grad_error']:.1e}",
            flush=True,
        )
        if recompute is not None:
            with (
                LocalSwarm(checkpoint, equal_spans(blocks, count), monitor=False,
                           peer_options=["--kept-activations", str(recompute)]) as swarm,
                DistributedModelForCausalLM.from_pretrained(
                    checkpoint, initial_peers=[swarm.bootstrap]
                ) as model,
            ):  # fmt: skip
                seconds, grad = _timed(lambda: _train_step(model, embeddings, ids), runs)
            entry = _report(f"{count} peers recomputing", seconds, tokens, base)
            entry["max_abs_grad_error"] = float((grad - expected_grad).abs().max())
            results[f"{count}_peers_train_recomputed"] = entry
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=["smollm2"])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--hops", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument(
        "--recompute", action="store_true", help="also train through peers that keep no graph"
    )
    parser.add_argument(
        "--kept-activations", type=int, default=0, help="MB the recomputing peers keep"
    )
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    recompute = args.kept_activations if args.recompute else None
    logging.basicConfig(level=logging.WARNING)
    results: dict[str, Any] = {"batch": args.batch, "length": args.length, "runs": args.runs}
    print(f"batch forward of {args.batch}x{args.length} tokens to the logits, and a training "
          f"step (forward, loss, backward to the embeddings), threads "
          f"{torch.get_num_threads()}, loopback; median (min..max) of {args.runs}")  # fmt: skip
    for name, checkpoint in bench_checkpoints(args.models).items():
        print(name, flush=True)
        shape = (args.batch, args.length)
        results[name] = run_model(checkpoint, shape, args.hops, args.runs, recompute)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
