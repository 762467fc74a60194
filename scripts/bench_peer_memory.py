"""Memory follows the span: resident memory of loading 4 of 22 blocks vs all 22.

Writes (once, reused afterwards) a random-weight checkpoint shaped like TinyLlama-1.1B
(hidden 2048, intermediate 5632, 22 blocks, 32 heads, 4 KV heads, vocab 32000) in bfloat16,
sharded (~2.2 GB), then loads each span in a fresh subprocess and reports its RSS after
importing torch/transformers/peer (baseline), after loading, and the peak (ru_maxrss).
The baseline for the ratio is the full model (22/22) measured in the same run.

    .venv/bin/python scripts/bench_peer_memory.py [--dir /tmp/peer-bench/tinyllama-random]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

MiB = 2**20


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
    print(f"writing a random TinyLlama-shaped checkpoint to {directory} ...", flush=True)
    began = time.perf_counter()
    write_random_checkpoint(config, directory, dtype=torch.bfloat16)
    size = sum(f.stat().st_size for f in directory.glob("*.safetensors"))
    print(f"  {size / 2**30:.2f} GiB in {time.perf_counter() - began:.0f} s", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=Path("/tmp/peer-bench/tinyllama-random"))
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--generate", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--child", nargs=4, metavar=("DIR", "START", "END", "DTYPE"))
    args = parser.parse_args()
    if args.child:
        directory, start, end, dtype = args.child
        child(directory, int(start), int(end), dtype)
        return
    if args.generate:
        ensure_checkpoint(args.dir)
        return
    # in a subprocess too: ru_maxrss survives fork+exec, a big parent would skew the peaks
    subprocess.run([sys.executable, __file__, "--generate", "--dir", str(args.dir)], check=True)
    rows = []
    for start, end in [(0, 4), (9, 13), (0, 22)]:
        command = [sys.executable, __file__, "--child", str(args.dir), str(start), str(end)]
        output = subprocess.run(
            [*command, args.dtype], check=True, capture_output=True, text=True
        ).stdout
        rows.append((start, end, json.loads(output.strip().splitlines()[-1])))
    full = rows[-1][2]
    print(f"\nspan load, {args.dtype}, RSS in MiB (each load in a fresh process)")
    print("baseline: after importing torch/transformers/peer; loaded: after load_span;")
    print("served: after one forward (mapped weight pages touched); delta = served - baseline")
    header = ("blocks", "weights", "baseline", "loaded", "served", "delta", "peak", "load s")
    print("{:>8} {:>8} {:>9} {:>7} {:>7} {:>7} {:>7} {:>7} {:>10}".format(*header, "delta/full"))
    for start, end, r in rows:
        delta = r["after"] - r["baseline"]
        ratio = delta / (full["after"] - full["baseline"])
        print(
            f"{start:>3}..{end:<4} {r['params'] / MiB:>8.0f} {r['baseline'] / MiB:>9.0f} "
            f"{r['loaded'] / MiB:>7.0f} {r['after'] / MiB:>7.0f} {delta / MiB:>7.0f} "
            f"{r['peak'] / MiB:>7.0f} {r['seconds']:>7.1f} {ratio:>10.2f}"
        )


if __name__ == "__main__":
    main()
