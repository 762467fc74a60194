"""Compute throughput of a span, measured once per shape/device/dtype and cached on disk.

The DHT announcement carries two numbers, both for the whole span (all its blocks):
- `inference_tokens_per_s`: single-token steps of one session (what a generating client gets);
- `forward_tokens_per_s`: tokens of a stateless forward of one `forward_length` sequence.

Throughput depends on the shapes, not the weights, so the cache key is the span's compute shape
(`Span.shape_key()`), the device (with its name on CUDA), the dtype, the number of blocks, the
torch version and the torch thread count. The cache is a JSON object in
`<cache_dir>/throughput.json`, written atomically; an unreadable file is re-measured.
Run it in the compute worker (`await worker.submit(get_throughput, backend, cache_dir)`).
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from .backend import SpanBackend

__all__ = ["Throughput", "get_throughput", "measure_throughput", "throughput_key"]

logger = logging.getLogger(__name__)

CACHE_FILE = "throughput.json"
_SESSION = "__throughput__"


@dataclass(frozen=True)
class Throughput:
    inference_tokens_per_s: float
    forward_tokens_per_s: float
    num_layers: int


def throughput_key(backend: SpanBackend) -> str:
    span = backend.span
    device = str(span.device)
    if span.device.type == "cuda":
        device += f"({torch.cuda.get_device_name(span.device)})"
    else:
        device += f"(threads={torch.get_num_threads()})"
    dtype = str(span.dtype).removeprefix("torch.")
    return f"{span.shape_key()}|{device}|{dtype}|blocks={span.num_layers}|torch={torch.__version__}"


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_throughput(
    backend: SpanBackend, *, steps: int = 16, forward_length: int = 128, warmup: int = 2
) -> Throughput:
    """Time `steps` single-token steps and a few forwards (needs `steps + warmup + 1` tokens)."""
    span = backend.span
    token = torch.randn(1, 1, span.hidden_size, dtype=span.dtype)
    backend.open_session(_SESSION, max_length=steps + warmup + 1)
    try:
        backend.step(_SESSION, token)  # a one-token prompt
        for _ in range(warmup):
            backend.step(_SESSION, token)
        _synchronize(span.device)
        began = time.perf_counter()
        for _ in range(steps):
            backend.step(_SESSION, token)
        _synchronize(span.device)
        inference = steps / (time.perf_counter() - began)
    finally:
        backend.close_session(_SESSION)
    length = max(1, min(forward_length, backend.config.max_forward_tokens))
    sequence = torch.randn(1, length, span.hidden_size, dtype=span.dtype)
    backend.forward(sequence)  # warm-up
    repeats = 3
    _synchronize(span.device)
    began = time.perf_counter()
    for _ in range(repeats):
        backend.forward(sequence)
    _synchronize(span.device)
    forward = repeats * length / (time.perf_counter() - began)
    return Throughput(inference, forward, span.num_layers)


def _load(path: Path) -> dict[str, dict[str, float]]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as error:
        logger.warning("ignoring unreadable throughput cache %s: %s", path, error)
        return {}
    return data if isinstance(data, dict) else {}


def get_throughput(
    backend: SpanBackend, cache_dir: str | Path, *, refresh: bool = False
) -> Throughput:
    """The cached throughput for this backend's key, measuring (and caching) it if absent."""
    path = Path(cache_dir) / CACHE_FILE
    key = throughput_key(backend)
    cache = _load(path)
    entry = cache.get(key)
    if not refresh and isinstance(entry, dict):
        try:
            return Throughput(
                float(entry["inference_tokens_per_s"]),
                float(entry["forward_tokens_per_s"]),
                int(entry["num_layers"]),
            )
        except (KeyError, TypeError, ValueError):
            logger.warning("re-measuring: bad throughput cache entry for %s", key)
    measured = measure_throughput(backend)
    logger.info("measured throughput for %s: %s", key, measured)
    cache[key] = {**asdict(measured), "measured_at": time.time()}
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, suffix=".tmp") as file:
        json.dump(cache, file, indent=1, sort_keys=True)
    os.replace(file.name, path)
    return measured
