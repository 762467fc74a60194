#!/usr/bin/env python3
"""Benchmark generation for a batch of prompts: tokens/s through the swarm, batched or not.

For each model (SmolLM2-135M-Instruct by default) and each batch size, `--tokens` new tokens
are generated greedily for that many prompts of `--prompt-length` random tokens (EOS off, so
every row makes all its tokens): by the local transformers model in one batched `generate()`
(the baseline, measured first in this process), then through a swarm of `swarm peer`
processes on 127.0.0.1 holding the blocks in `--hops` equal spans, once as one batched
`generate()` (one session per peer holds every row: one forward per step), once one
prompt after another, and once every prompt at once in a session of its own, each generated
in a thread of its own (as `swarm api` runs its answers; the peers merge the steps that meet).
Reported: tokens per second of each, the ratio of the batched swarm to the baseline and to
one prompt at a time, that of the sessions at once to one prompt at a time, and whether the
swarm's tokens equal the baseline's. Then beam search of the first prompt over `--beams`
beams, locally and through the swarm (the peers reorder their caches' rows every step):
milliseconds per step of the search, their ratio, and whether the outputs are equal.

    .venv/bin/python scripts/bench_batch_generation.py [--models smollm2 tiny]
        [--batches 1 4 8] [--tokens 32] [--prompt-length 16] [--hops 2] [--beams 4]
        [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForCausalLM

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from scripts._bench_models import bench_checkpoints, equal_spans  # noqa: E402
from swarm import DistributedModelForCausalLM  # noqa: E402
from swarm.local_swarm import LocalSwarm  # noqa: E402


def _seconds(call: Callable[[], torch.Tensor]) -> tuple[float, torch.Tensor]:
    began = time.perf_counter()
    output = call()
    return time.perf_counter() - began, output


def _at_once(
    model: DistributedModelForCausalLM, ids: torch.Tensor, options: dict[str, Any]
) -> torch.Tensor:
    """Each prompt of `ids` generated in a session of its own, all at once, one thread each."""
    outputs: list[torch.Tensor] = [ids[i : i + 1] for i in range(len(ids))]

    def generate(row: int) -> None:
        outputs[row] = model.generate(ids[row : row + 1], **options)

    threads = [threading.Thread(target=generate, args=(row,)) for row in range(len(ids))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return torch.cat(outputs)


def run_model(
    checkpoint: Path,
    batches: list[int],
    new_tokens: int,
    prompt_length: int,
    hops: int,
    beams: int,
) -> dict[str, Any]:
    config = AutoConfig.from_pretrained(checkpoint)
    generator = torch.Generator().manual_seed(0)
    prompts = torch.randint(
        5, min(1000, config.vocab_size), (max(batches), prompt_length), generator=generator
    )
    options = {"max_new_tokens": new_tokens, "do_sample": False}
    local = AutoModelForCausalLM.from_pretrained(checkpoint)
    local.generation_config.eos_token_id = None  # every row makes all its tokens
    results: dict[str, Any] = {}
    expected = {}
    for size in batches:
        ids = prompts[:size]
        local.generate(ids, attention_mask=torch.ones_like(ids), **options)  # warm-up
        seconds, expected[size] = _seconds(
            lambda ids=ids: local.generate(ids, attention_mask=torch.ones_like(ids), **options)
        )
        results[f"batch_{size}"] = {"local_tokens_per_s": size * new_tokens / seconds}
    first = prompts[:1]
    beam_options = options | {"num_beams": beams}
    local.generate(first, attention_mask=torch.ones_like(first), **beam_options)  # warm-up
    local_beams, expected_beams = _seconds(
        lambda: local.generate(first, attention_mask=torch.ones_like(first), **beam_options)
    )
    blocks = int(config.num_hidden_layers)
    with (
        LocalSwarm(checkpoint, equal_spans(blocks, hops), monitor=False) as swarm,
        DistributedModelForCausalLM.from_pretrained(
            checkpoint, initial_peers=[swarm.bootstrap]
        ) as model,
    ):
        model.generation_config.eos_token_id = None
        model.generate(prompts[:1], **options)  # warm-up: connections, peers' first steps
        for size in batches:
            ids = prompts[:size]
            batched, output = _seconds(lambda ids=ids: model.generate(ids, **options))
            one_by_one, _ = _seconds(
                lambda ids=ids: torch.cat([model.generate(row[None], **options) for row in ids])
            )
            at_once, parallel = _seconds(lambda ids=ids: _at_once(model, ids, options))
            entry = results[f"batch_{size}"]
            entry["swarm_batched_tokens_per_s"] = size * new_tokens / batched
            entry["swarm_one_by_one_tokens_per_s"] = size * new_tokens / one_by_one
            entry["batched_x_local"] = (
                entry["swarm_batched_tokens_per_s"] / entry["local_tokens_per_s"]
            )
            entry["batched_x_one_by_one"] = one_by_one / batched
            entry["swarm_at_once_tokens_per_s"] = size * new_tokens / at_once
            entry["at_once_x_one_by_one"] = one_by_one / at_once
            entry["same_tokens"] = bool(torch.equal(output, expected[size]))
            entry["at_once_same_tokens"] = bool(torch.equal(parallel, expected[size]))
            local_rate, rate = entry["local_tokens_per_s"], entry["swarm_batched_tokens_per_s"]
            print(
                f"  batch {size:2d}: local {local_rate:7.1f} tokens/s, swarm batched "
                f"{rate:7.1f} (x{entry['batched_x_local']:.2f} local, "
                f"x{entry['batched_x_one_by_one']:.2f} one by one), one by one "
                f"{entry['swarm_one_by_one_tokens_per_s']:7.1f}, sessions at once "
                f"{entry['swarm_at_once_tokens_per_s']:7.1f} "
                f"(x{entry['at_once_x_one_by_one']:.2f} one by one); same tokens: "
                f"{entry['same_tokens']}, at once {entry['at_once_same_tokens']}",
                flush=True,
            )
        swarm_beams, output = _seconds(lambda: model.generate(first, **beam_options))
    steps = new_tokens  # EOS off: the search runs to the last token
    results[f"beams_{beams}"] = entry = {
        "local_ms_per_step": 1000 * local_beams / steps,
        "swarm_ms_per_step": 1000 * swarm_beams / steps,
        "swarm_x_local": swarm_beams / local_beams,
        "same_tokens": bool(torch.equal(output, expected_beams)),
    }
    print(
        f"  {beams} beams: local {entry['local_ms_per_step']:.1f} ms per step, swarm "
        f"{entry['swarm_ms_per_step']:.1f} (x{entry['swarm_x_local']:.2f}); "
        f"same tokens: {entry['same_tokens']}",
        flush=True,
    )
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=["smollm2"])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--prompt-length", type=int, default=16)
    parser.add_argument("--hops", type=int, default=2)
    parser.add_argument("--beams", type=int, default=4)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    results: dict[str, Any] = {"tokens": args.tokens, "hops": args.hops}
    print(f"greedy generation of {args.tokens} tokens per prompt, {args.hops} peers, threads "
          f"{torch.get_num_threads()}, loopback")  # fmt: skip
    for name, checkpoint in bench_checkpoints(args.models).items():
        print(name, flush=True)
        results[name] = run_model(
            checkpoint, args.batches, args.tokens, args.prompt_length, args.hops, args.beams
        )
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
