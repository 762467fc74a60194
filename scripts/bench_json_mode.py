#!/usr/bin/env python3
"""Benchmark JSON mode: milliseconds per token through the swarm with and without it.

For SmolLM2-135M-Instruct (by default) in float32, a chat question that asks for a JSON
object is answered through a swarm of `swarm peer` processes on 127.0.0.1 holding the
blocks in `--hops` equal spans: greedy free text first (the baseline, EOS off so that it
makes all `--tokens`), then greedy in JSON mode, then JSON mode sampled at temperature 0.7
(seed 0), then greedy with a JSON schema of the cat, each at most `--tokens` tokens (JSON
mode ends where the object closes). Each is run `--runs` times in a session of its own.
Reported: the median milliseconds per token (a generation's time over its tokens), its
ratio to the free text's, the tokens made, and whether the answer is complete: a JSON object
(free text, JSON mode), or a value of the schema.

    .venv/bin/python scripts/bench_json_mode.py [--models smollm2 tiny] [--tokens 64]
        [--hops 2] [--runs 3] [--json PATH]
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
from transformers import AutoConfig, AutoTokenizer

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from scripts._bench_models import bench_checkpoints, equal_spans  # noqa: E402
from swarm import DistributedModelForCausalLM  # noqa: E402
from swarm.generation import prompt_ids  # noqa: E402
from swarm.json_prefix import JsonPrefix  # noqa: E402
from swarm.json_schema import compile_schema  # noqa: E402
from swarm.local_swarm import LocalSwarm  # noqa: E402

QUESTION = "Describe a cat as a JSON object with its name, its age and its colors."
CAT = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "age": {"type": "integer"},
        "colors": {"type": "array", "items": {"type": "string"}, "maxItems": 3},
    },
    "required": ["name", "age", "colors"],
    "additionalProperties": False,
}
MODES: dict[str, dict[str, Any]] = {
    "free text": {"do_sample": False, "eos_token_id": []},
    "JSON greedy": {"do_sample": False, "json_object": True},
    "JSON sampled": {
        "do_sample": True,
        "temperature": 0.7,
        "top_k": 0,
        "seed": 0,
        "json_object": True,
    },
    "schema greedy": {"do_sample": False, "json_schema": CAT},
}


def _complete(text: str, options: dict[str, Any]) -> bool:
    """A JSON object, or a value of the schema asked for."""
    state = JsonPrefix.start(compile_schema(options.get("json_schema", {"type": "object"})))
    after = state.feed(text)
    return after is not None and after.complete


def run_model(checkpoint: Path, tokens: int, hops: int, runs: int) -> dict[str, Any]:
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    ids = prompt_ids(tokenizer, QUESTION, chat=True)
    blocks = int(AutoConfig.from_pretrained(checkpoint).num_hidden_layers)
    results: dict[str, Any] = {}
    with (
        LocalSwarm(checkpoint, equal_spans(blocks, hops), monitor=False) as swarm,
        DistributedModelForCausalLM.from_pretrained(
            checkpoint, initial_peers=[swarm.bootstrap]
        ) as model,
    ):
        model.generate(ids, max_new_tokens=4)  # warm-up: connections, peers' first steps
        for name, options in MODES.items():
            times, made, text = [], 0, ""
            for _ in range(runs):
                with model.inference_session(ids.shape[1] + tokens) as session:
                    began = time.perf_counter()
                    output = session.generate(
                        ids, max_new_tokens=tokens, tokenizer=tokenizer, **options
                    )
                    seconds = time.perf_counter() - began
                made = int(output.shape[1] - ids.shape[1])
                times.append(1000 * seconds / made)
                text = tokenizer.decode(output[0, ids.shape[1] :], skip_special_tokens=True)
            entry = results[name] = {
                "ms_per_token": statistics.median(times),
                "runs_ms_per_token": times,
                "tokens": made,
                "complete": _complete(text, options),
            }
            entry["x_free_text"] = entry["ms_per_token"] / results["free text"]["ms_per_token"]
            print(
                f"  {name:12s}: {entry['ms_per_token']:6.1f} ms per token "
                f"(x{entry['x_free_text']:.3f} free text; runs "
                f"{', '.join(f'{t:.1f}' for t in times)}), {made} tokens, "
                f"complete: {entry['complete']}",
                flush=True,
            )
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=["smollm2"])
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--hops", type=int, default=2)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    results: dict[str, Any] = {"tokens": args.tokens, "hops": args.hops, "runs": args.runs}
    print(f"at most {args.tokens} tokens, {args.hops} peers, threads "
          f"{torch.get_num_threads()}, loopback")  # fmt: skip
    for name, checkpoint in bench_checkpoints(args.models).items():
        print(name, flush=True)
        results[name] = run_model(checkpoint, args.tokens, args.hops, args.runs)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
