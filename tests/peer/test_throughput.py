"""Throughput: measured once, cached per shape/device/dtype/span size, re-measured when asked."""

from __future__ import annotations

import fcntl
import json
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import trio

from peer import throughput
from peer.backend import BackendConfig, SpanBackend
from peer.daemon import PeerConfig, _load, _Peer
from peer.rebalancer import PeerControl
from peer.thread_choice import ThreadChoice
from peer.throughput import (
    Throughput,
    fewest_threads,
    get_throughput,
    measure_throughput,
    thread_counts,
    throughput_key,
)
from peer.worker import ComputeWorker

from .conftest import MakeCheckpoint


def test_measured_once_then_cached(
    checkpoints: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend = SpanBackend.load(checkpoints["llama"], 0, 2)
    measured = get_throughput(backend, tmp_path)
    assert measured.num_layers == 2
    assert measured.inference_tokens_per_s > 0 and measured.forward_tokens_per_s > 0
    assert backend.active_sessions == 0
    assert backend.cache_tokens_left == backend.config.max_cache_tokens
    stored = json.loads((tmp_path / "throughput.json").read_text())
    key = throughput_key(backend)
    assert list(stored) == [key] and "cpu" in key and "float32" in key and "blocks=2" in key

    def fail(*_: object, **__: object) -> Throughput:
        raise AssertionError("measured again")

    monkeypatch.setattr(throughput, "measure_throughput", fail)
    assert get_throughput(backend, tmp_path) == measured
    other = SpanBackend.load(checkpoints["llama"], 0, 3, dtype=torch.bfloat16)
    with pytest.raises(AssertionError, match="measured again"):  # another key
        get_throughput(other, tmp_path)
    monkeypatch.undo()
    (tmp_path / "throughput.json").write_text("{not json")
    assert get_throughput(backend, tmp_path).num_layers == 2
    assert list(json.loads((tmp_path / "throughput.json").read_text())) == [key]


def test_the_key_tells_mixtures_of_experts_apart(make_checkpoint: MakeCheckpoint) -> None:
    """Same dimensions, different experts: a different cost per token, so another key."""
    keys = {
        throughput_key(SpanBackend.load(make_checkpoint("mixtral", **experts), 0, 1))
        for experts in [
            {"num_local_experts": 4, "num_experts_per_tok": 2},
            {"num_local_experts": 8, "num_experts_per_tok": 2},
            {"num_local_experts": 4, "num_experts_per_tok": 1},
        ]
    }
    assert len(keys) == 3 and all("mixtral" in key for key in keys)


def test_thread_counts_tried() -> None:
    assert thread_counts(1) == [1]
    assert thread_counts(2) == [1, 2]
    assert thread_counts(6) == [1, 2, 4, 6]
    assert thread_counts(16) == [1, 2, 4, 8, 16]


@pytest.mark.parametrize(
    ("rates", "chosen"),
    [
        ({1: 96.0, 2: 100.0}, 1),  # within 5 %: fewer threads
        ({1: 90.0, 2: 100.0}, 2),
        ({1: 40.0, 2: 80.0, 4: 100.0, 8: 98.0}, 4),
        ({1: 100.0, 2: 60.0}, 1),
    ],
)
def test_the_fewest_threads_near_the_fastest_win(rates: dict[int, float], chosen: int) -> None:
    assert fewest_threads(rates) == chosen


def test_the_measurement_chooses_the_fewest_threads_near_the_fastest(
    checkpoints: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    backend = SpanBackend.load(checkpoints["llama"], 0, 2)
    fastest = {1: 1 / 30, 2: 1 / 55, 4: 1 / 56}  # seconds per step
    monkeypatch.setattr(throughput, "_fastest_steps", lambda *_: fastest)
    measured = measure_throughput(backend)
    assert measured.one_token_threads == 2 and measured.inference_tokens_per_s == pytest.approx(55)


@pytest.mark.parametrize(("session_length", "turns"), [(None, 3), (8, 1)])
def test_thread_counts_take_turns_step_by_step(
    checkpoints: dict[str, Path],
    session_length: int | None,
    turns: int,
    torch_threads: Callable[[int], None],
) -> None:
    """After the prompt and warm-up, each count runs one step in turn (as many turns as the
    session's length allows); the backend's own choice is left as it was."""
    torch_threads(4)
    config = BackendConfig(max_session_length=session_length)
    backend = SpanBackend.load(checkpoints["llama"], 0, 2, config=config)
    kept = backend.step_threads = ThreadChoice(1)
    seen: list[int] = []
    step = backend.step

    def recording(*args: Any) -> torch.Tensor:
        assert backend.step_threads is not None
        seen.append(backend.step_threads.threads())
        return step(*args)

    backend.step = recording  # type: ignore[method-assign]
    measured = measure_throughput(backend, steps=3, warmup=2)
    assert seen == [1, 1, 1] + [1, 2, 4] * turns
    assert measured.one_token_threads in (1, 2, 4) and measured.inference_tokens_per_s > 0
    assert backend.step_threads is kept and backend.active_sessions == 0


def test_peers_of_one_machine_measure_one_at_a_time(
    checkpoints: dict[str, Path], tmp_path: Path
) -> None:
    backend = SpanBackend.load(checkpoints["llama"], 0, 2)
    results: list[Throughput] = []
    with (tmp_path / "throughput.lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another peer is measuring
        other = threading.Thread(target=lambda: results.append(get_throughput(backend, tmp_path)))
        other.start()
        other.join(timeout=1.0)
        assert other.is_alive() and not results
        fcntl.flock(lock, fcntl.LOCK_UN)
    other.join(timeout=60)
    assert not other.is_alive() and results[0].num_layers == 2


def test_a_cache_entry_of_an_older_version_is_measured_again(
    checkpoints: dict[str, Path], tmp_path: Path
) -> None:
    backend = SpanBackend.load(checkpoints["llama"], 0, 2)
    old = {"inference_tokens_per_s": 1.0, "forward_tokens_per_s": 2.0, "num_layers": 2}
    (tmp_path / "throughput.json").write_text(json.dumps({throughput_key(backend): old}))
    measured = get_throughput(backend, tmp_path)
    assert measured.inference_tokens_per_s != 1.0
    stored = json.loads((tmp_path / "throughput.json").read_text())[throughput_key(backend)]
    assert stored["one_token_threads"] == measured.one_token_threads


async def test_a_loaded_peer_chooses_the_threads_of_its_steps_and_of_its_prompts(
    checkpoints: dict[str, Path], tmp_path: Path
) -> None:
    """One-token steps choose between the measured count and one thread; longer steps (prompts,
    drafts) between all the compute thread's threads and one."""
    config = PeerConfig(checkpoints["llama"], cache_dir=tmp_path)
    worker = ComputeWorker()
    async with trio.open_nursery() as nursery:
        await nursery.start(worker.run)
        peer = await _load(config, worker, (0, 2), PeerControl())
        threads = await worker.submit(torch.get_num_threads)
        nursery.cancel_scope.cancel()
    measured = get_throughput(peer.backend, tmp_path).one_token_threads  # cached by _load
    step, prompt = peer.backend.step_threads, peer.backend.prompt_threads
    assert step is not None and step.counts == ((1,) if measured == 1 else (measured, 1))
    assert prompt is not None and prompt.counts == ((1,) if threads == 1 else (threads, 1))


def test_a_peer_moved_to_other_blocks_keeps_its_thread_choices(
    checkpoints: dict[str, Path],
) -> None:
    """What the steps taught the thread choices holds for the blocks the rebalancer moves the
    peer to (a backend loaded for them has none of its own)."""
    config = PeerConfig(checkpoints["llama"])
    old, new = SpanBackend.load(config.checkpoint, 0, 2), SpanBackend.load(config.checkpoint, 2, 4)
    old.step_threads, old.prompt_threads = ThreadChoice(1, 2), ThreadChoice(2, 1)
    peer = _Peer(config, old, 100.0, PeerControl())
    peer.use(new)
    assert peer.backend is new
    assert (new.step_threads, new.prompt_threads) == (old.step_threads, old.prompt_threads)
