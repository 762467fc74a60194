#!/usr/bin/env python3
"""Benchmark int8 weights (`peer.int8_weights`): what they cost in quality and what they save.

On SmolLM2 (the default model), transformers' model in float32 is the reference; the same
model in bfloat16, and in bfloat16 with its blocks' linear layers made `Int8Linear` (what a
`swarm peer --quantize int8 --dtype bfloat16` runs), are compared with it over a fixed text:
how often their next-token choice agrees, and the mean KL divergence of their next-token
distributions per position. Then the blocks' one-token step (all 30, one session, KV cache
of the text) is timed for both in this process, the bytes of their weights are counted, and
a training pass over `--train-tokens` tokens (a forward that keeps its graph, then the
backward on it, as a peer runs them for a client's `backward()`) is timed, with the bytes of
the graph kept: int8 weights' graph holds activations only, never a dequantized weight.

    .venv/bin/python scripts/bench_int8.py [--steps 40] [--train-tokens 128] [--json PATH]
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
from transformers import AutoModelForCausalLM, AutoTokenizer

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from peer.backend import SpanBackend  # noqa: E402
from peer.int8_weights import quantize_linears  # noqa: E402
from swarm.default_model import prepare_default_model  # noqa: E402

TEXT = (
    "The history of the Roman Empire spans many centuries. It began when Augustus became the "
    "first emperor, and it lasted in the west until 476. The eastern half, known as the "
    "Byzantine Empire, survived until 1453, when Constantinople fell to the Ottomans."
)


def _quality(path: Path, ids: torch.Tensor) -> dict[str, dict[str, float]]:
    with torch.no_grad():
        reference = AutoModelForCausalLM.from_pretrained(path).eval()(ids).logits.log_softmax(-1)
        results = {}
        for label, int8 in [("bfloat16", False), ("bfloat16+int8", True)]:
            model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16).eval()
            if int8:
                quantize_linears(model.model.layers, torch.bfloat16)
            logits = model(ids).logits.float().log_softmax(-1)
            agree = (logits.argmax(-1) == reference.argmax(-1)).float().mean().item()
            kl = torch.nn.functional.kl_div(logits, reference, log_target=True, reduction="none")
            results[label] = {"top1_agreement": agree, "kl_per_token": kl.sum(-1).mean().item()}
    return results


def _step_ms(backend: SpanBackend, prompt: int, steps: int) -> float:
    hidden = torch.randn(1, prompt, backend.hidden_size, dtype=backend.dtype)
    token = torch.randn(1, 1, backend.hidden_size, dtype=backend.dtype)
    backend.open_session("bench", max_length=prompt + steps)
    backend.step("bench", hidden)
    times = []
    for _ in range(steps):
        began = time.perf_counter()
        backend.step("bench", token)
        times.append(time.perf_counter() - began)
    backend.close_session("bench")
    return statistics.median(times) * 1000


def _training(backend: SpanBackend, tokens: int, runs: int = 3) -> dict[str, float]:
    """Median time of a kept forward and its backward over `tokens` tokens, and the bytes of
    the graph kept."""
    inputs = torch.randn(1, tokens, backend.hidden_size, dtype=backend.dtype)
    times, kept = [], 0
    for _ in range(runs + 1):  # the first warms up
        began = time.perf_counter()
        _, token = backend.forward_kept(inputs, owner="bench")
        kept = backend.kept.kept_bytes
        backend.backward(inputs, torch.ones_like(inputs), kept=token, owner="bench")
        times.append(time.perf_counter() - began)
    return {"train_ms": statistics.median(times[1:]) * 1000, "kept_mib": kept / 2**20}


def _weight_bytes(backend: SpanBackend) -> int:
    layers = backend.span.layers
    return sum(t.numel() * t.element_size() for t in [*layers.parameters(), *layers.buffers()])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--train-tokens", type=int, default=128)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    path = prepare_default_model()
    ids = AutoTokenizer.from_pretrained(path)(TEXT, return_tensors="pt")["input_ids"]
    results: dict[str, Any] = {"tokens": int(ids.shape[1]), "threads": torch.get_num_threads()}
    results["quality"] = _quality(path, ids)
    num_blocks = int(AutoModelForCausalLM.from_pretrained(path).config.num_hidden_layers)
    speed = {}
    for label, quantization in [("bfloat16", None), ("bfloat16+int8", "int8")]:
        backend = SpanBackend.load(path, 0, num_blocks, dtype="bfloat16", quantization=quantization)
        _step_ms(backend, int(ids.shape[1]), 5)  # warm-up
        speed[label] = {
            "step_ms": _step_ms(backend, int(ids.shape[1]), args.steps),
            "weight_mib": _weight_bytes(backend) / 2**20,
            **_training(backend, args.train_tokens),
        }
    results["blocks"] = speed
    print(f"SmolLM2, {ids.shape[1]} tokens of text, against float32; {num_blocks} blocks, "
          f"one-token steps, {torch.get_num_threads()} threads")  # fmt: skip
    for label in speed:
        quality = results["quality"][label]
        print(f"{label:14} next token agrees {quality['top1_agreement']:6.1%}  "
              f"KL {quality['kl_per_token']:.4f}/token  step {speed[label]['step_ms']:6.2f} ms  "
              f"weights {speed[label]['weight_mib']:6.1f} MiB  "
              f"training pass {speed[label]['train_ms']:6.1f} ms, "
              f"graph kept {speed[label]['kept_mib']:5.1f} MiB")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
