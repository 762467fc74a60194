"""Tokens/s of single-token decoding steps for 1, 4 and 8 concurrent sessions, with and
without merging their steps into one forward.

Model: SmolLM2-135M-shaped (hidden 576, intermediate 1536, 9 heads, 3 KV heads), random
weights, `--layers` blocks (30 = the whole model). Sessions start from prompts of different
lengths (so merged caches are padded). Two levels:
- backend: `SpanBackend.step` per session vs one `step_many` over all sessions;
- scheduler: N trio tasks each stepping its own session through `InferenceScheduler` and the
  `ComputeWorker` thread, batching off vs on (what a serving peer does).
The baseline of each ratio (unbatched) is measured in the same run, the four modes taking
turns run by run. Each figure is the median of `--runs` runs, with min..max; each ratio is
the ratio of the medians.

    .venv/bin/python scripts/bench_peer_batching.py [--layers 30] [--steps 24] [--runs 3]
        [--device cpu] [--dtype float32] [--json PATH]
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
import trio
from transformers import LlamaConfig

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from peer.backend import BackendConfig, SpanBackend, StepRequest  # noqa: E402
from peer.scheduler import InferenceScheduler, SchedulerConfig  # noqa: E402
from peer.testing import write_random_checkpoint  # noqa: E402
from peer.worker import ComputeWorker  # noqa: E402
from scripts._bench_timing import median_range  # noqa: E402

SESSIONS = (1, 4, 8)
MODES = ("step", "step_many", "sched_off", "sched_on")


def checkpoint(directory: Path, layers: int) -> Path:
    path = directory / f"smollm2-shaped-{layers}"
    if not (path / "config.json").is_file():
        config = LlamaConfig(
            hidden_size=576,
            intermediate_size=1536,
            num_hidden_layers=layers,
            num_attention_heads=9,
            num_key_value_heads=3,
            vocab_size=49152,
            max_position_embeddings=8192,
            tie_word_embeddings=True,
            rope_theta=100000.0,
        )
        write_random_checkpoint(config, path, dtype=torch.bfloat16)
    return path


def _synchronize(backend: SpanBackend) -> None:
    if backend.span.device.type == "cuda":
        torch.cuda.synchronize()


def _open(backend: SpanBackend, count: int, steps: int) -> list[str]:
    ids = [f"s{i}" for i in range(count)]
    for i, session_id in enumerate(ids):
        prompt = 32 + 8 * i
        backend.open_session(session_id, max_length=prompt + steps + 2)
        backend.step(session_id, torch.randn(1, prompt, backend.hidden_size).to(backend.dtype))
    return ids


def _close(backend: SpanBackend) -> None:
    for session_id in backend.session_ids():
        backend.close_session(session_id)


def bench_backend(backend: SpanBackend, count: int, steps: int, merged: bool) -> float:
    ids = _open(backend, count, steps)
    token = torch.randn(1, 1, backend.hidden_size).to(backend.dtype)
    backend.step_many([StepRequest(s, token) for s in ids])  # warm-up
    _synchronize(backend)
    began = time.perf_counter()
    for _ in range(steps):
        if merged:
            backend.step_many([StepRequest(s, token) for s in ids])
        else:
            for session_id in ids:
                backend.step(session_id, token)
    _synchronize(backend)
    elapsed = time.perf_counter() - began
    _close(backend)
    return count * steps / elapsed


def bench_scheduler(backend: SpanBackend, count: int, steps: int, batching: bool) -> float:
    ids = _open(backend, count, steps)
    token = torch.randn(1, 1, backend.hidden_size).to(backend.dtype)
    elapsed = 0.0

    async def main() -> None:
        nonlocal elapsed
        worker = ComputeWorker()
        scheduler = InferenceScheduler(backend, worker, SchedulerConfig(batching=batching))

        async def client(session_id: str) -> None:
            for _ in range(steps):
                await scheduler.step(session_id, token)

        async with trio.open_nursery() as nursery:
            await nursery.start(worker.run)
            await nursery.start(scheduler.run)
            async with trio.open_nursery() as clients:  # warm-up
                for session_id in ids:
                    clients.start_soon(scheduler.step, session_id, token)
            began = time.perf_counter()
            async with trio.open_nursery() as clients:
                for session_id in ids:
                    clients.start_soon(client, session_id)
            await worker.submit(_synchronize, backend)
            elapsed = time.perf_counter() - began
            nursery.cancel_scope.cancel()

    trio.run(main)
    _close(backend)
    return count * steps / elapsed


def _spread(stats: dict[str, Any]) -> str:
    return f"{stats['min']:.1f}..{stats['max']:.1f}"


def bench_sessions(backend: SpanBackend, count: int, steps: int, runs: int) -> dict[str, Any]:
    """Tokens/s of each mode for `count` sessions, the modes taking turns run by run."""
    modes: dict[str, Callable[[], float]] = {
        "step": lambda: bench_backend(backend, count, steps, merged=False),
        "step_many": lambda: bench_backend(backend, count, steps, merged=True),
        "sched_off": lambda: bench_scheduler(backend, count, steps, batching=False),
        "sched_on": lambda: bench_scheduler(backend, count, steps, batching=True),
    }
    samples: dict[str, list[float]] = {mode: [] for mode in MODES}
    for _ in range(runs):
        for mode, bench in modes.items():
            samples[mode].append(bench())
    result: dict[str, Any] = {mode: median_range(samples[mode]) for mode in MODES}
    result["step_many_x_step"] = result["step_many"]["median"] / result["step"]["median"]
    result["sched_on_x_off"] = result["sched_on"]["median"] / result["sched_off"]["median"]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=30)
    parser.add_argument("--steps", type=int, default=24)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--dir", type=Path, default=Path("/tmp/peer-bench"))
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    path = checkpoint(args.dir, args.layers)
    config = BackendConfig(max_cache_tokens=1 << 20)
    backend = SpanBackend.load(
        path, 0, args.layers, dtype=args.dtype, device=args.device, config=config
    )
    results: dict[str, Any] = {
        "layers": args.layers,
        "steps": args.steps,
        "runs": args.runs,
        "dtype": args.dtype,
        "device": args.device,
        "threads": torch.get_num_threads(),
    }
    print(
        f"SmolLM2-135M-shaped, {args.layers} blocks, {args.dtype} on {args.device}, "
        f"torch threads {torch.get_num_threads()}, {args.steps} steps per session; "
        f"tokens/s: median (min..max) of {args.runs} runs; ratio: batched / unbatched"
    )
    print(f"{'sessions':>8} {'step':>23} {'step_many':>23} {'ratio':>6} "
          f"{'sched off':>23} {'sched on':>23} {'ratio':>6}")  # fmt: skip
    for count in SESSIONS:
        result = bench_sessions(backend, count, args.steps, args.runs)
        results[f"{count}_sessions"] = result
        cells = {mode: f"{result[mode]['median']:.1f} ({_spread(result[mode])})" for mode in MODES}
        print(f"{count:>8} {cells['step']:>23} {cells['step_many']:>23} "
              f"{result['step_many_x_step']:>6.2f} {cells['sched_off']:>23} "
              f"{cells['sched_on']:>23} {result['sched_on_x_off']:>6.2f}", flush=True)  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
