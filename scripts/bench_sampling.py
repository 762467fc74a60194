#!/usr/bin/env python3
"""Benchmark sampling's top-p cut: transformers' `TopPLogitsWarper` against `SortedTopP`.

On SmolLM2-135M-Instruct in float32, the local transformers model answers a chat question
greedily (`--tokens` tokens, EOS off) and keeps each step's logits: real next-token scores
over its 49,152 tokens. Over each of them, at temperature 0.7, both top-p warpers cut at
`--top-p`, alone and after top-k 50 (sampling's default, which leaves 50 scores finite):
their median time per call, their ratio, how often `SortedTopP` left the cut to
transformers (a tie across it), and whether every cut was the same.
Then the same question is answered by sampling (temperature 0.7, top-k 50, `--top-p`, seed
0) by the local model's `generate()` and through a swarm of 2 `swarm peer` processes on
127.0.0.1: milliseconds per token, the ratio, and whether the tokens are the same.

    .venv/bin/python scripts/bench_sampling.py [--tokens 48] [--top-p 0.9] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from scripts._bench_models import equal_spans  # noqa: E402
from swarm import DistributedModelForCausalLM  # noqa: E402
from swarm.default_model import prepare_default_model  # noqa: E402
from swarm.generation import prompt_ids  # noqa: E402
from swarm.local_swarm import LocalSwarm  # noqa: E402
from swarm.top_p import SortedTopP  # noqa: E402

QUESTION = "What is the capital of France, and what is it known for?"
TEMPERATURE = 0.7


def _median_ms(warper: Any, scores: list[torch.Tensor], ids: torch.Tensor) -> float:
    times = []
    for score in scores:
        began = time.perf_counter()
        warper(ids, score)
        times.append(time.perf_counter() - began)
    return statistics.median(times) * 1000


def warpers(model: Any, ids: torch.Tensor, tokens: int, top_p: float) -> dict[str, Any]:
    """Both top-p warpers over the scores of a greedy answer's steps, alone and after top-k."""
    output = model.generate(
        ids, attention_mask=torch.ones_like(ids), max_new_tokens=tokens, do_sample=False,
        output_logits=True, return_dict_in_generate=True,
    )  # fmt: skip
    tempered = [TemperatureLogitsWarper(TEMPERATURE)(ids, logits) for logits in output.logits]
    theirs, ours = TopPLogitsWarper(top_p), SortedTopP(top_p)
    results = {}
    for case, top_k in [("alone", None), ("after_top_k", TopKLogitsWarper(50))]:
        scores = [s if top_k is None else top_k(ids, s) for s in tempered]
        same = all(torch.equal(theirs(ids, s), ours(ids, s)) for s in scores)
        _median_ms(theirs, scores, ids), _median_ms(ours, scores, ids)  # warm-up
        entry = results[case] = {
            "transformers_ms": _median_ms(theirs, scores, ids),
            "sorted_top_p_ms": _median_ms(ours, scores, ids),
            "left_to_transformers": sum(ours.cut(s) is None for s in scores),
            "steps": len(scores),
            "same_cuts": same,
        }
        entry["ratio"] = entry["sorted_top_p_ms"] / entry["transformers_ms"]
    return results


def generation(
    checkpoint: Path, model: Any, ids: torch.Tensor, tokens: int, top_p: float
) -> dict[str, Any]:
    """Sampled generation, local `generate()` against a 2-peer swarm, ms per token."""
    options: dict[str, Any] = {
        "max_new_tokens": tokens, "do_sample": True, "temperature": TEMPERATURE,
        "top_p": top_p, "top_k": 50, "eos_token_id": None,
    }  # fmt: skip
    model.generation_config.eos_token_id = None  # EOS off (None as an argument means default)
    model.generate(ids, attention_mask=torch.ones_like(ids), **options)  # warm-up
    torch.manual_seed(0)
    began = time.perf_counter()
    expected = model.generate(ids, attention_mask=torch.ones_like(ids), **options)
    local_ms = 1000 * (time.perf_counter() - began) / tokens
    spans = equal_spans(model.config.num_hidden_layers, 2)
    with (
        LocalSwarm(checkpoint, spans, monitor=False) as swarm,
        DistributedModelForCausalLM.from_pretrained(
            checkpoint, initial_peers=[swarm.bootstrap]
        ) as remote,
    ):
        remote.generation_config.eos_token_id = None
        remote.generate(ids, **options)  # warm-up: connections, peers' first steps
        began = time.perf_counter()
        output = remote.generate(ids, seed=0, **options)
        swarm_ms = 1000 * (time.perf_counter() - began) / tokens
    return {
        "local_ms_per_token": local_ms,
        "swarm_ms_per_token": swarm_ms,
        "x_local": swarm_ms / local_ms,
        "same_tokens": bool(torch.equal(output, expected)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tokens", type=int, default=48)
    parser.add_argument("--top-p", type=float, default=0.9)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    checkpoint = prepare_default_model()
    ids = prompt_ids(AutoTokenizer.from_pretrained(checkpoint), QUESTION, chat=True)
    model = AutoModelForCausalLM.from_pretrained(checkpoint)
    cuts = warpers(model, ids, args.tokens, args.top_p)
    for case, cut in cuts.items():
        print(f"top-p {args.top_p} {case.replace('_', ' ')}, {cut['steps']} steps of SmolLM2's "
              f"scores, {torch.get_num_threads()} threads: transformers "
              f"{cut['transformers_ms']:.2f} ms, SortedTopP {cut['sorted_top_p_ms']:.2f} ms "
              f"(x{cut['ratio']:.2f}); {cut['left_to_transformers']} left to transformers; "
              f"same cuts: {cut['same_cuts']}", flush=True)  # fmt: skip
    sampled = generation(checkpoint, model, ids, args.tokens, args.top_p)
    print(f"sampled generation, {args.tokens} tokens: local {sampled['local_ms_per_token']:.1f} "
          f"ms per token, 2 peers {sampled['swarm_ms_per_token']:.1f} "
          f"(x{sampled['x_local']:.2f}); same tokens: {sampled['same_tokens']}")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps({"top_p_cut": cuts, "sampled": sampled}, indent=1))


if __name__ == "__main__":
    main()
