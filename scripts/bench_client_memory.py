#!/usr/bin/env python3
"""Benchmark the client's memory: the head a `DistributedModelForCausalLM` loads vs the full model.

Each side loads in a fresh subprocess; reported: resident memory after importing torch and
transformers (the baseline, subtracted) and after loading and one use (weights are
memory-mapped: only what is touched is resident), for the client's head (embeddings,
final norm, LM head) and for the whole model with transformers.

    .venv/bin/python scripts/bench_client_memory.py [--model PATH] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

MiB = 2**20
ROOT = Path(__file__).resolve().parents[1]

CHILD = """
import sys, resource, json
from pathlib import Path
def rss():
    return int(open("/proc/self/statm").read().split()[1]) * 4096
import torch, transformers
base = rss()
path = Path(sys.argv[2])
ids = torch.tensor([[1, 2, 3]])
with torch.inference_mode():  # one use touches every weight (files are memory-mapped)
    if sys.argv[1] == "head":
        from swarm.head import ClientHead
        keep = ClientHead.from_pretrained(path)
        keep.logits(keep.embed(ids))
    else:
        keep = transformers.AutoModelForCausalLM.from_pretrained(path)
        keep(ids)
print(json.dumps({"base": base, "loaded": rss()}))
"""


def measure(kind: str, model: Path) -> dict[str, int]:
    result = subprocess.run(
        [sys.executable, "-c", CHILD, kind, str(model)],
        cwd=ROOT, capture_output=True, text=True, check=True,
    )  # fmt: skip
    return dict(json.loads(result.stdout.strip().splitlines()[-1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    from swarm.default_model import prepare_default_model

    model = args.model or prepare_default_model()
    head, full = measure("head", model), measure("full", model)
    added = {name: (m["loaded"] - m["base"]) / MiB for name, m in (("head", head), ("full", full))}
    print(f"model: {model}")
    print(f"{'what':28} {'added RSS':>10}")
    print(f"{'client head (swarm)':28} {added['head']:7.0f} MiB")
    print(f"{'full model (transformers)':28} {added['full']:7.0f} MiB")
    print(f"{'ratio head / full':28} {added['head'] / added['full']:10.2f}")
    if args.json:
        args.json.write_text(json.dumps(added, indent=1))


if __name__ == "__main__":
    main()
