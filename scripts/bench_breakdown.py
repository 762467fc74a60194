#!/usr/bin/env python3
"""Where one token's time goes through a 2-peer chain (peers as processes on loopback).

The client generates `--tokens` tokens with relay off, so that it sends every hop its input
and each hop's round trip is its own; for every step of every hop it knows the whole round
trip, the time the peer says it spent (`server_ms` in the reply) and the part its compute
thread ran the blocks (`compute_ms`). Measured in this process, with the same threads: the
client's own compute (embeddings, final norm, LM head), each hop's block compute
(`SpanBackend.step` on the same span, for comparison with the peer's), the tensor codec and
the ChaCha20-Poly1305 cost of one message of that size. The table splits a token (medians):

  client compute        head + sampling, measured here
  client loop           the rest of the client's time (thread hop of the facade, chain code)
  per hop: serialisation + encryption   codec and cipher, 2 messages each way, measured here
           network      round trip minus the peer's time minus the two rows above
           peer queue   the peer's time minus its compute (scheduler, worker hand-off, codec)
           peer compute the blocks, as the peer measured them (and as measured here)

    .venv/bin/python scripts/bench_breakdown.py [--models smollm2 tiny] [--tokens 48]

(On a tiny random model the block compute measured here is not stable enough to split by.)
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from transformers import AutoConfig

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from peer.backend import SpanBackend  # noqa: E402
from routing.client import ClientConfig  # noqa: E402
from routing.tensor_codec import decode_tensor, encode_tensor  # noqa: E402
from scripts._bench_models import bench_checkpoints  # noqa: E402
from scripts._bench_timing import token_gaps  # noqa: E402
from swarm import DistributedModelForCausalLM  # noqa: E402
from swarm.head import ClientHead  # noqa: E402
from swarm.local_swarm import LocalSwarm  # noqa: E402


def _median_ms(fn: Callable[[], object], runs: int = 50) -> float:
    fn()
    samples = []
    for _ in range(runs):
        began = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - began)
    return statistics.median(samples) * 1000


def local_costs(checkpoint: Path, spans: list[tuple[int, int]]) -> dict[str, Any]:
    config = AutoConfig.from_pretrained(checkpoint)
    head = ClientHead.from_pretrained(checkpoint)
    token = torch.tensor([[5]])
    client = _median_ms(lambda: head.logits(head.embed(token)).argmax(-1))
    hidden = torch.randn(1, 1, config.hidden_size)
    header, body = encode_tensor(hidden)
    codec = _median_ms(lambda: decode_tensor(*encode_tensor(hidden)), 500)
    cipher, nonce = ChaCha20Poly1305(bytes(32)), bytes(12)
    sealed = cipher.encrypt(nonce, bytes(body), b"")
    crypto = _median_ms(lambda: cipher.decrypt(nonce, cipher.encrypt(nonce, bytes(body), b""), b""))
    del sealed, header
    compute = []
    for start, end in spans:
        backend = SpanBackend.load(checkpoint, start, end)
        backend.open_session("bench", 512)
        backend.step("bench", torch.randn(1, 4, config.hidden_size))
        compute.append(_median_ms(lambda b=backend: b.step("bench", hidden), 40))
    return {"client_ms": client, "codec_ms": codec, "crypto_ms": crypto, "compute_ms": compute}


def chain_timings(checkpoint: Path, spans: list[tuple[int, int]], tokens: int) -> dict[str, Any]:
    with (
        LocalSwarm(checkpoint, spans, monitor=False) as swarm,
        DistributedModelForCausalLM.from_pretrained(
            checkpoint, initial_peers=[swarm.bootstrap], config=ClientConfig(relay=False)
        ) as model,
        model.inference_session(max_length=8 + tokens) as session,
    ):
        ids = torch.tensor([[1, 2, 3, 4]])
        gaps = token_gaps(session.stream(ids, max_new_tokens=tokens, do_sample=False))
        hops = []
        for _, timings in session.timings:
            steps = timings[1:]  # the prompt's step aside
            hops.append(
                {
                    "round_trip_ms": statistics.median(t.seconds for t in steps) * 1000,
                    "server_ms": statistics.median((t.server_seconds or 0.0) for t in steps) * 1000,
                    "compute_ms": statistics.median((t.compute_seconds or 0.0) for t in steps)
                    * 1000,
                }
            )
    return {"token_ms": statistics.median(gaps) * 1000, "hops": hops}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=["smollm2"])
    parser.add_argument("--tokens", type=int, default=48)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    checkpoints = bench_checkpoints(args.models)
    results: dict[str, Any] = {}
    for name, checkpoint in checkpoints.items():
        blocks = int(AutoConfig.from_pretrained(checkpoint).num_hidden_layers)
        spans = [(0, blocks // 2), (blocks // 2, blocks)]
        local = local_costs(checkpoint, spans)
        chain = chain_timings(checkpoint, spans, args.tokens)
        results[name] = {"local": local, "chain": chain}
        rows: list[tuple[str, float]] = [("client compute", local["client_ms"])]
        hop_total = 0.0
        for index, hop in enumerate(chain["hops"]):
            wire = 2 * (local["codec_ms"] + 2 * local["crypto_ms"])  # request and reply
            network = hop["round_trip_ms"] - hop["server_ms"] - wire
            here = local["compute_ms"][index]
            rows += [
                (f"hop {index + 1}: serialisation + encryption", wire),
                (f"hop {index + 1}: network and both event loops", network),
                (f"hop {index + 1}: peer queue and hand-off", hop["server_ms"] - hop["compute_ms"]),
                (f"hop {index + 1}: peer compute ({here:.1f} ms here)", hop["compute_ms"]),
            ]
            hop_total += hop["round_trip_ms"]
        rows.insert(1, ("client loop", chain["token_ms"] - local["client_ms"] - hop_total))
        print(f"\n{name}: {chain['token_ms']:.2f} ms per token through 2 peers (medians)")
        for label, value in rows:
            share = 100 * value / chain["token_ms"]
            print(f"  {label:44} {value:8.3f} ms {share:5.1f} %")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
