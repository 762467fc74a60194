"""Compute throughput of a span, measured once per shape/device/dtype and cached on disk.

The DHT announcement carries two numbers, both for the whole span (all its blocks):
- `inference_tokens_per_s`: single-token steps of one session (what a generating client gets);
- `forward_tokens_per_s`: tokens of a stateless forward of one `forward_length` sequence.

On a CPU the measurement also chooses `one_token_threads`, the torch threads of one-token
steps: 1, 2, 4, ... up to all of them take turns, step by step, and the fewest whose fastest
step comes within `TOLERANCE` of the fastest of all win. Such a step mostly reads weights, so
it often runs no faster on more cores (SmolLM2 in float32 on 2 cores: equal), and threads
that do not help only take the cores from the other processes of the machine: the client,
the next peer of the chain.

Throughput depends on the shapes, not the weights, so the cache key is the span's compute shape
(`Span.shape_key()`), the device (with its name on CUDA), the dtype, the number of blocks, the
torch version and the torch thread count. The cache is a JSON object in
`<cache_dir>/throughput.json`, written atomically; an unreadable file is re-measured. Peers of
one machine measure one at a time (a lock file beside it), since peers measuring together
would time each other.
Run it in the compute worker (`await worker.submit(get_throughput, backend, cache_dir)`).
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from .backend import SpanBackend
from .thread_choice import ThreadChoice

__all__ = [
    "Throughput",
    "fewest_threads",
    "get_throughput",
    "measure_throughput",
    "thread_counts",
    "throughput_key",
]

logger = logging.getLogger(__name__)

CACHE_FILE = "throughput.json"
TOLERANCE = 0.05  # fewer threads for one-token steps when at most this much slower
_SESSION = "__throughput__"


@dataclass(frozen=True)
class Throughput:
    inference_tokens_per_s: float
    forward_tokens_per_s: float
    num_layers: int
    one_token_threads: int  # torch threads of one-token steps (all of them on a GPU)


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


def thread_counts(most: int) -> list[int]:
    """The thread counts tried for one-token steps: the powers of two below `most`, and `most`."""
    return [1 << power for power in range(most.bit_length()) if 1 << power < most] + [most]


def fewest_threads(rates: Mapping[int, float], tolerance: float = TOLERANCE) -> int:
    """The fewest threads whose rate (steps per second) is within `tolerance` of the best."""
    best = max(rates.values())
    return min(threads for threads, rate in rates.items() if rate >= best * (1 - tolerance))


def measure_throughput(
    backend: SpanBackend, *, steps: int = 24, forward_length: int = 128, warmup: int = 2
) -> Throughput:
    """Time one-token steps (`steps` on each thread count, taken in turns; the fastest of each
    count counts), then a few forwards of `forward_length` tokens on all threads."""
    span = backend.span
    most = torch.get_num_threads()
    counts = thread_counts(most) if span.device.type == "cpu" else [most]
    rates = {
        threads: 1 / seconds
        for threads, seconds in _fastest_steps(backend, counts, steps, warmup).items()
    }
    threads = fewest_threads(rates)
    length = min(forward_length, backend.config.max_forward_tokens, backend.max_session_length)
    length = max(1, length)
    sequence = torch.randn(1, length, span.hidden_size, dtype=span.dtype)
    backend.forward(sequence)  # warm-up
    repeats = 3
    _synchronize(span.device)
    began = time.perf_counter()
    for _ in range(repeats):
        backend.forward(sequence)
    _synchronize(span.device)
    forward = repeats * length / (time.perf_counter() - began)
    return Throughput(rates[threads], forward, span.num_layers, threads)


def _fastest_steps(
    backend: SpanBackend, counts: list[int], steps: int, warmup: int
) -> dict[int, float]:
    """The fastest one-token step of one session, in seconds, on each of `counts` threads."""
    span = backend.span
    token = torch.randn(1, 1, span.hidden_size, dtype=span.dtype)
    turns = max(1, min(steps, (backend.max_session_length - 1 - warmup) // len(counts)))
    fastest = dict.fromkeys(counts, float("inf"))
    kept = backend.step_threads
    backend.open_session(_SESSION, max_length=1 + warmup + turns * len(counts))
    try:
        for _ in range(1 + warmup):  # a one-token prompt, then warm-up steps
            backend.step(_SESSION, token)
        for _ in range(turns):
            for threads in counts:
                backend.step_threads = ThreadChoice(threads)
                _synchronize(span.device)
                began = time.perf_counter()
                backend.step(_SESSION, token)
                _synchronize(span.device)
                fastest[threads] = min(fastest[threads], time.perf_counter() - began)
    finally:
        backend.close_session(_SESSION)
        backend.step_threads = kept
    return fastest


@contextmanager
def _exclusive(lock: Path) -> Iterator[None]:
    """Hold `lock` against the other processes of this machine (peers measure one at a time)."""
    lock.parent.mkdir(parents=True, exist_ok=True)
    with lock.open("a") as file:
        fcntl.flock(file, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(file, fcntl.LOCK_UN)


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
    with _exclusive(path.with_suffix(".lock")):  # so that peers starting together measure apart
        cache = _load(path)
        entry = cache.get(key)
        if not refresh and isinstance(entry, dict):
            try:
                return Throughput(
                    float(entry["inference_tokens_per_s"]),
                    float(entry["forward_tokens_per_s"]),
                    int(entry["num_layers"]),
                    int(entry["one_token_threads"]),
                )
            except (KeyError, TypeError, ValueError):
                logger.info("re-measuring: incomplete throughput cache entry for %s", key)
        measured = measure_throughput(backend)
        logger.info("measured throughput for %s: %s", key, measured)
        cache[key] = {**asdict(measured), "measured_at": time.time()}
        with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, suffix=".tmp") as file:
            json.dump(cache, file, indent=1, sort_keys=True)
        os.replace(file.name, path)
    return measured
