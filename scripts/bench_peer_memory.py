"""Memory follows the span: resident memory of loading 4 of 22 blocks vs all 22.

Writes (once, reused afterwards) a random-weight checkpoint shaped like TinyLlama-1.1B
(hidden 2048, intermediate 5632, 22 blocks, 32 heads, 4 KV heads, vocab 32000) in bfloat16,
sharded (~2.2 GB), then loads each span in a fresh subprocess and reports its RSS after
importing torch/transformers/peer (baseline), after loading, and the peak (ru_maxrss).
Each span is loaded `--runs` times (the spans taking turns); figures are medians, with
min..max for the delta and the load time. The baseline for the ratio is the full model
(22/22) measured in the same run.

    .venv/bin/python scripts/bench_peer_memory.py [--dir /tmp/peer-bench/tinyllama-random]
        [--runs 3] [--dtype bfloat16] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

MiB = 2**20
SPANS = ((0, 4), (9, 13), (0, 22))
FIELDS = ("baseline", "loaded", "after", "peak", "params", "seconds")
logger = logging.getLogger("bench_peer_memory")


def _rss() -> int:
    import psutil

    return int(psutil.Process().memory_info().rss)


def child(directory: str, start: int, end: int, dtype: str) -> None:
    import torch  # imported before the baseline on purpose
    import transformers  # noqa: F401

    from peer.backend import SpanBackend
    from peer.span import load_span

    baseline = _rss()
    began = time.perf_counter()
    backend = SpanBackend(load_span(directory, start, end, dtype=dtype))
    seconds = time.perf_counter() - began
    loaded = _rss()
    # safetensors maps the files: pages count once touched, so run the blocks once
    backend.forward(torch.randn(1, 16, backend.hidden_size).to(backend.dtype))
    after = _rss()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    parameters = sum(p.numel() * p.element_size() for p in backend.span.layers.parameters())
    result = {"baseline": baseline, "loaded": loaded, "after": after, "peak": peak}
    print(json.dumps({**result, "params": parameters, "seconds": seconds}))


def ensure_checkpoint(directory: Path) -> None:
    if (directory / "model.safetensors.index.json").is_file():
        return
    import torch
    from transformers import LlamaConfig

    from peer.testing import write_random_checkpoint

    config = LlamaConfig(
        hidden_size=2048,
        intermediate_size=5632,
        num_hidden_layers=22,
        num_attention_heads=32,
        num_key_value_heads=4,
        vocab_size=32000,
        max_position_embeddings=2048,
        tie_word_embeddings=False,
    )
    logger.warning("writing a random TinyLlama-shaped checkpoint to %s ...", directory)
    began = time.perf_counter()
    write_random_checkpoint(config, directory, dtype=torch.bfloat16)
    size = sum(f.stat().st_size for f in directory.glob("*.safetensors"))
    logger.warning("  %.2f GiB in %.0f s", size / 2**30, time.perf_counter() - began)


def load_once(directory: Path, start: int, end: int, dtype: str) -> dict[str, float]:
    """One load of blocks start..end-1 in a fresh process: its `child` measurements."""
    command = [sys.executable, __file__, "--child", str(directory), str(start), str(end), dtype]
    output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return dict(json.loads(output.strip().splitlines()[-1]))


def summarize(samples: list[dict[str, float]]) -> dict[str, Any]:
    """Medians of every field; min..max of the delta (served - baseline) and the load time."""
    result: dict[str, Any] = {key: statistics.median(s[key] for s in samples) for key in FIELDS}
    deltas = [s["after"] - s["baseline"] for s in samples]
    seconds = [s["seconds"] for s in samples]
    result["delta"] = {"median": statistics.median(deltas), "min": min(deltas), "max": max(deltas)}
    result["load_s"] = {
        "median": statistics.median(seconds),
        "min": min(seconds),
        "max": max(seconds),
    }
    result["runs"] = samples
    return result


def _cell(stats: dict[str, float], digits: int) -> str:
    """`median (min..max)` with `digits` decimals."""
    return f"{stats['median']:.{digits}f} ({stats['min']:.{digits}f}..{stats['max']:.{digits}f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=Path("/tmp/peer-bench/tinyllama-random"))
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--generate", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--child", nargs=4, metavar=("DIR", "START", "END", "DTYPE"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    if args.child:
        directory, start, end, dtype = args.child
        child(directory, int(start), int(end), dtype)
        return
    if args.generate:
        ensure_checkpoint(args.dir)
        return
    # in a subprocess too: ru_maxrss survives fork+exec, a big parent would skew the peaks
    subprocess.run([sys.executable, __file__, "--generate", "--dir", str(args.dir)], check=True)
    samples: dict[tuple[int, int], list[dict[str, float]]] = {span: [] for span in SPANS}
    for _ in range(args.runs):
        for start, end in SPANS:
            samples[(start, end)].append(load_once(args.dir, start, end, args.dtype))
    rows = {span: summarize(runs) for span, runs in samples.items()}
    full = rows[SPANS[-1]]["delta"]["median"]
    results: dict[str, Any] = {"dtype": args.dtype, "runs": args.runs, "unit": "bytes"}
    print(f"\nspan load, {args.dtype}, RSS in MiB (each load in a fresh process); "
          f"median (min..max) of {args.runs} runs")  # fmt: skip
    print("baseline: after importing torch/transformers/peer; loaded: after load_span;")
    print("served: after one forward (mapped weight pages touched); delta = served - baseline")
    print(f"{'blocks':>8} {'weights':>8} {'baseline':>9} {'loaded':>7} {'served':>7} "
          f"{'delta':>18} {'peak':>7} {'load s':>15} {'delta/full':>10}")  # fmt: skip
    for (start, end), r in rows.items():
        delta, seconds = r["delta"], r["load_s"]
        r["delta_x_full"] = delta["median"] / full
        results[f"{start}..{end}"] = r
        delta_cell = _cell({k: v / MiB for k, v in delta.items()}, 0)
        seconds_cell = _cell(seconds, 1)
        print(f"{start:>3}..{end:<4} {r['params'] / MiB:>8.0f} {r['baseline'] / MiB:>9.0f} "
              f"{r['loaded'] / MiB:>7.0f} {r['after'] / MiB:>7.0f} {delta_cell:>18} "
              f"{r['peak'] / MiB:>7.0f} {seconds_cell:>15} {r['delta_x_full']:>10.2f}")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
