"""SpanBackend: caps and validation (typed errors, others keep being served) and merged steps."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from peer.backend import BackendConfig, SpanBackend, StepRequest
from peer.errors import (
    CacheBudgetError,
    InvalidRequestError,
    PeerError,
    SessionExistsError,
    SessionLimitError,
    SessionNotFoundError,
)
from peer.kv_cache import CacheLayout
from peer.span import Span
from peer.thread_choice import ThreadChoice

from .conftest import Reference, assert_rounding_close


@pytest.fixture
def backend(checkpoints: dict[str, Path]) -> SpanBackend:
    config = BackendConfig(max_cache_tokens=100, max_sessions=3, max_session_length=64)
    return SpanBackend.load(checkpoints["llama"], 1, 3, config=config)


def _hidden(batch: int = 1, length: int = 1, width: int = 64, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, length, width, generator=torch.Generator().manual_seed(seed))


def test_budget_and_session_limits(backend: SpanBackend) -> None:
    backend.open_session("a", max_length=40)
    backend.open_session("b", max_length=30, batch_size=2)
    assert backend.cache_tokens_left == 0 and backend.active_sessions == 2
    with pytest.raises(CacheBudgetError, match="needs 1 cache tokens, 0 left"):
        backend.open_session("c", max_length=1)
    backend.close_session("b")
    assert backend.cache_tokens_left == 60
    backend.open_session("c", max_length=10)
    backend.open_session("d", max_length=10)
    with pytest.raises(SessionLimitError):
        backend.open_session("e", max_length=1)
    with pytest.raises(SessionExistsError):
        backend.open_session("a", max_length=1)
    assert backend.session_ids() == ["a", "c", "d"]
    for session_id in ("a", "c", "d"):  # the others are still served
        assert backend.step(session_id, _hidden(length=3)).shape == (1, 3, 64)


@pytest.mark.parametrize(
    ("hidden", "match"),
    [
        (_hidden().double(), "dtype"),
        (_hidden().half(), "dtype"),
        (_hidden(width=32), "hidden size 32"),
        (_hidden()[0], "must be \\[batch"),
        (_hidden(batch=2), "batch 2 differs"),
        (_hidden(length=11), "exceed its max_length 10"),
        (torch.zeros(1, 0, 64), "empty"),
        ([[0.0] * 64], "must be a tensor"),
    ],
)
def test_bad_steps_raise_and_others_continue(
    backend: SpanBackend, hidden: torch.Tensor, match: str
) -> None:
    backend.open_session("bad", max_length=10)
    backend.open_session("good", max_length=10)
    before = backend.step("good", _hidden(length=2))
    with pytest.raises(InvalidRequestError, match=match):
        backend.step("bad", hidden)
    assert backend.session_length("bad") == 0  # nothing happened to it
    assert backend.step("bad", _hidden(length=10)).shape == (1, 10, 64)
    assert backend.step("good", _hidden(length=1)).shape == (1, 1, 64)
    assert before.shape == (1, 2, 64)


def test_other_bad_requests(backend: SpanBackend) -> None:
    with pytest.raises(SessionNotFoundError):
        backend.step("missing", _hidden())
    with pytest.raises(SessionNotFoundError):
        backend.close_session("missing")
    for start, end in [(0, 3), (1, 4), (2, 2), (3, 1)]:
        with pytest.raises(InvalidRequestError, match="not inside this span"):
            backend.forward(_hidden(), start, end)
    with pytest.raises(InvalidRequestError, match="max_length"):
        backend.open_session("x", max_length=65)
    with pytest.raises(InvalidRequestError, match="max_length"):
        backend.open_session("x", max_length=0)
    with pytest.raises(InvalidRequestError, match="batch_size"):
        backend.open_session("x", max_length=4, batch_size=0)
    with pytest.raises(InvalidRequestError, match="context length"):
        backend.forward(_hidden(length=65))
    with pytest.raises(InvalidRequestError, match="dtype"):
        backend.forward(_hidden().to(torch.bfloat16))
    backend.open_session("sub", max_length=4, start=2, end=3)
    with pytest.raises(InvalidRequestError, match=r"opened for blocks 2\.\.3"):
        backend.step("sub", _hidden(), 1, 3)
    assert backend.step("sub", _hidden(), 2, 3).shape == (1, 1, 64)
    assert issubclass(InvalidRequestError, PeerError)


def test_a_fork_begins_with_the_first_tokens_of_its_source(backend: SpanBackend) -> None:
    """Bitwise: the fork holds the same keys and values, so its steps are the source's own;
    the source goes on untouched, and a fork it does not match is refused, reserving
    nothing."""
    backend.open_session("a", max_length=20, batch_size=2, padding=(1, 0))
    prompt = _hidden(batch=2, length=6)
    backend.step("a", prompt)
    backend.open_session("fork", max_length=10, batch_size=2, padding=(1, 0),
                         fork_of="a", fork_tokens=4)  # fmt: skip
    assert backend.session_length("fork") == 4 and backend.session_length("a") == 6
    assert backend.cache_tokens_left == 100 - 40 - 20
    onward = _hidden(batch=2, length=2, seed=1)
    forked = backend.step("fork", onward)
    assert torch.equal(backend.step("a", onward, position=4), forked)
    refusals = {
        "other blocks": {"start": 2},
        "another batch": {"batch_size": 1, "padding": ()},
        "other padding": {"padding": (0, 0)},
        "more than it holds": {"fork_tokens": 7},
        "more than the fork's max_length": {"max_length": 3, "fork_tokens": 4},
        "no such source": {"fork_of": "missing"},
    }
    for name, change in refusals.items():
        asked = {"max_length": 10, "batch_size": 2, "padding": (1, 0), "fork_of": "a",
                 "fork_tokens": 4} | change  # fmt: skip
        with pytest.raises((InvalidRequestError, SessionNotFoundError)):
            backend.open_session("refused", **asked)
        assert backend.session_ids() == ["a", "fork"], name
    assert backend.cache_tokens_left == 40


@pytest.mark.parametrize(
    ("family", "expected"),
    [
        ("llama", CacheLayout(2, 16, 2, 16)),  # grouped heads: 2 key-value heads of 64 / 4
        ("qwen3", CacheLayout(2, 16, 2, 16)),  # its head size is set, not derived
        ("deepseek_v3", CacheLayout(1, 16, 1, 8)),  # kv_lora_rank, then qk_rope_head_dim
    ],
)
def test_the_cache_holds_what_the_blocks_write(
    family: str, expected: CacheLayout, checkpoints: dict[str, Path]
) -> None:
    backend = SpanBackend.load(checkpoints[family], 1, 3)
    assert backend.span.cache_layout == expected
    backend.open_session("s", max_length=10, batch_size=2)  # buffers of that layout
    for length in (4, 1, 1):
        assert backend.step("s", _hidden(batch=2, length=length)).shape == (2, length, 64)


def test_forward_caps(checkpoints: dict[str, Path]) -> None:
    config = BackendConfig(max_forward_tokens=20, max_batch_size=4)
    backend = SpanBackend.load(checkpoints["llama"], 0, 1, config=config)
    with pytest.raises(InvalidRequestError, match="exceed the limit 20"):
        backend.forward(_hidden(batch=3, length=7))
    with pytest.raises(InvalidRequestError, match="over the limit 4"):
        backend.forward(_hidden(batch=5, length=1))
    assert backend.forward(_hidden(batch=4, length=5)).shape == (4, 5, 64)


def _prefill(backend: SpanBackend, lengths: dict[str, tuple[int, int]], seed: int = 5) -> None:
    for index, (session_id, (batch, length)) in enumerate(lengths.items()):
        backend.open_session(session_id, max_length=20, batch_size=batch)
        backend.step(session_id, _hidden(batch, length, seed=seed + index))


MIXED = {"a": (1, 3), "b": (2, 7), "c": (1, 7), "d": (1, 1), "e": (3, 5)}  # (batch, prompt)
EQUAL = {"a": (1, 4), "b": (2, 4), "c": (1, 4)}


@pytest.mark.parametrize(
    ("family", "rows", "lengths"),
    [
        ("llama", 64, MIXED),
        ("llama", 3, MIXED),
        ("qwen3", 64, MIXED),
        ("llama", 64, EQUAL),
        ("mixtral", 64, MIXED),  # experts: each token routed on its own, merged or not
        ("qwen2_moe", 64, MIXED),
        ("gemma2", 64, MIXED),  # eager attention: additive masks over right-padded rows
        ("deepseek_v3", 64, MIXED),  # caches a latent and a rotary part, one "head" each
        ("llama4_text", 64, MIXED),  # needs one length per step: the sessions run apart
        ("llama4_text", 64, EQUAL),  # one length: merged
        ("falcon", 64, MIXED),
        ("bloom", 64, MIXED),  # ALiBi: positions over right-padded rows
    ],
)
def test_step_many_equals_single_steps(
    family: str, rows: int, lengths: dict[str, tuple[int, int]], checkpoints: dict[str, Path]
) -> None:
    """Sessions of different lengths and batch sizes, merged, equal their unbatched steps."""
    config = BackendConfig(max_merged_rows=rows)
    merged_backend = SpanBackend.load(checkpoints[family], 0, 4, config=config)
    single_backend = SpanBackend.load(checkpoints[family], 0, 4)
    _prefill(merged_backend, lengths)
    _prefill(single_backend, lengths)
    for step in range(4):
        requests = [
            StepRequest(sid, _hidden(batch, 1, seed=100 * step + i))
            for i, (sid, (batch, _)) in enumerate(lengths.items())
        ]
        merged = merged_backend.step_many(requests)
        single = [single_backend.step(r.session_id, r.hidden_states) for r in requests]
        for got, expected in zip(merged, single, strict=True):
            assert got.shape == expected.shape
            assert_rounding_close(got, expected)
    assert merged_backend.session_length("b") == lengths["b"][1] + 4


def test_a_padded_session_merges_with_others(checkpoints: dict[str, Path]) -> None:
    """Rows padded on the left keep their own mask and positions in a merged step."""
    merged_backend = SpanBackend.load(checkpoints["llama"], 0, 4)
    single_backend = SpanBackend.load(checkpoints["llama"], 0, 4)
    for backend in (merged_backend, single_backend):
        backend.open_session("padded", max_length=20, batch_size=2, padding=(3, 0))
        backend.open_session("plain", max_length=20)
        backend.step("padded", _hidden(2, 6, seed=1))
        backend.step("plain", _hidden(1, 4, seed=2))
    for step in range(3):
        requests = [
            StepRequest("padded", _hidden(2, 1, seed=10 + step)),
            StepRequest("plain", _hidden(1, 1, seed=20 + step)),
        ]
        merged = merged_backend.step_many(requests)
        for got, request in zip(merged, requests, strict=True):
            assert_rounding_close(
                got, single_backend.step(request.session_id, request.hidden_states)
            )


@pytest.mark.parametrize(
    "padding", [(1,), (1, 2, 3), (0, 20), (-1, 0), (1.5, 0)], ids=lambda p: str(p)
)
def test_bad_padding_is_refused(padding: tuple[Any, ...], checkpoints: dict[str, Path]) -> None:
    backend = SpanBackend.load(checkpoints["llama"], 0, 1)
    with pytest.raises(InvalidRequestError, match="padding"):
        backend.open_session("s", max_length=20, batch_size=2, padding=padding)
    assert backend.cache_tokens_left == backend.config.max_cache_tokens


def test_step_many_matches_transformers(
    checkpoints: dict[str, Path], references: dict[str, Reference]
) -> None:
    """Merged steps of two sessions at different positions equal the full-sequence reference."""
    reference = references["mistral"]
    backend = SpanBackend.load(checkpoints["mistral"], 0, 4)
    ids = torch.randint(0, 128, (2, 12), generator=torch.Generator().manual_seed(3))
    hidden = reference.embed(ids)
    backend.open_session("x", 12)
    backend.open_session("y", 12)
    outputs = {"x": [backend.step("x", hidden[:1, :4])], "y": [backend.step("y", hidden[1:, :7])]}
    for offset in range(5):
        got = backend.step_many(
            [
                StepRequest("x", hidden[:1, 4 + offset : 5 + offset]),
                StepRequest("y", hidden[1:, 7 + offset : 8 + offset]),
            ]
        )
        outputs["x"].append(got[0])
        outputs["y"].append(got[1])
    expected = reference.blocks(hidden, 0, 4)
    x, y = torch.cat(outputs["x"], 1), torch.cat(outputs["y"], 1)
    torch.testing.assert_close(x, expected[:1, :9], rtol=0, atol=1e-5)
    torch.testing.assert_close(y, expected[1:, :12], rtol=0, atol=1e-5)


def test_step_many_groups_ranges_and_rejects_atomically(checkpoints: dict[str, Path]) -> None:
    backend = SpanBackend.load(checkpoints["llama"], 0, 4, config=BackendConfig(max_merged_rows=2))
    backend.open_session("full", 8)
    backend.open_session("part", 8, start=1, end=3)
    backend.open_session("more", 8)
    backend.open_session("long", 8)
    requests = [
        StepRequest("full", _hidden(seed=1)),
        StepRequest("part", _hidden(seed=2)),
        StepRequest("more", _hidden(seed=3)),
        StepRequest("long", _hidden(length=3, seed=4)),
    ]
    outputs = backend.step_many(requests)
    assert [o.shape[1] for o in outputs] == [1, 1, 1, 3]
    with pytest.raises(InvalidRequestError, match="twice"):
        backend.step_many([StepRequest("full", _hidden()), StepRequest("full", _hidden())])
    with pytest.raises(InvalidRequestError, match="hidden size"):
        backend.step_many([StepRequest("more", _hidden()), StepRequest("full", _hidden(width=8))])
    assert [backend.session_length(s) for s in ("full", "part", "more", "long")] == [1, 1, 1, 3]


def test_steps_of_one_token_a_row_run_on_the_threads_chosen(
    backend: SpanBackend,
    monkeypatch: pytest.MonkeyPatch,
    torch_threads: Callable[[int], None],
) -> None:
    """Only steps of one token a row (merged or of several rows too) switch, and the thread
    gets its count back after each, also when the blocks fail."""
    torch_threads(2)
    seen: list[int] = []
    run_layers = Span.run_layers

    def recording(span: Span, *args: Any, **kwargs: Any) -> torch.Tensor:
        seen.append(torch.get_num_threads())
        if len(seen) == 6:
            raise RuntimeError("blocks failed")
        return run_layers(span, *args, **kwargs)

    monkeypatch.setattr(Span, "run_layers", recording)
    backend.open_session("a", max_length=8)
    backend.open_session("b", max_length=8, batch_size=2)
    backend.step("a", _hidden(length=3))  # feature off: the thread's own count
    backend.step_threads = ThreadChoice(1)
    backend.step("a", _hidden())
    backend.step("b", _hidden(batch=2))  # one token a row
    backend.step("b", _hidden(batch=2, length=2))  # two a row: the thread's own count
    backend.step_many([StepRequest("a", _hidden())])
    with pytest.raises(RuntimeError, match="blocks failed"):
        backend.step("a", _hidden())
    assert seen == [2, 1, 1, 2, 1, 1] and torch.get_num_threads() == 2


def test_longer_steps_run_on_the_threads_of_their_own_choice(
    backend: SpanBackend,
    monkeypatch: pytest.MonkeyPatch,
    torch_threads: Callable[[int], None],
) -> None:
    """Steps of several tokens a row (prompts, drafts) ask `prompt_threads`, by their size in
    tokens (rows times tokens a row); steps of one token a row still ask `step_threads`."""
    torch_threads(2)
    asked: list[tuple[str, int]] = []
    seen: list[int] = []
    run_layers = Span.run_layers

    def recording(span: Span, *args: Any, **kwargs: Any) -> torch.Tensor:
        seen.append(torch.get_num_threads())
        return run_layers(span, *args, **kwargs)

    class Spy(ThreadChoice):
        def __init__(self, name: str, threads: int) -> None:
            super().__init__(threads)
            self.name = name

        def threads(self, size: int = 1, crowded: bool = False) -> int:
            asked.append((self.name, size))
            return super().threads(size, crowded)

    monkeypatch.setattr(Span, "run_layers", recording)
    backend.step_threads, backend.prompt_threads = Spy("step", 2), Spy("prompt", 1)
    backend.open_session("a", max_length=8)
    backend.open_session("b", max_length=8, batch_size=2)
    backend.step("a", _hidden(length=3))
    backend.step("b", _hidden(batch=2, length=2))
    backend.step("a", _hidden())
    assert asked == [("prompt", 3), ("prompt", 4), ("step", 1)]
    assert seen == [1, 1, 2] and torch.get_num_threads() == 2


def test_a_step_is_crowded_while_other_sessions_stepped_among_the_last_eight(
    backend: SpanBackend,
) -> None:
    """The backend tells its choice whether another session is among those of the last 8
    steps (a merged step counts each of its sessions), and still open."""
    told: list[bool] = []

    class Spy(ThreadChoice):
        def threads(self, size: int = 1, crowded: bool = False) -> int:
            told.append(crowded)
            return super().threads(size, crowded)

    backend.step_threads = Spy(1)
    for session in ("a", "b"):
        backend.open_session(session, max_length=16)
    for _ in range(3):
        backend.step("a", _hidden())
    backend.step_many([StepRequest("a", _hidden()), StepRequest("b", _hidden())])
    for _ in range(10):
        backend.step("a", _hidden())
    backend.step_many([StepRequest("a", _hidden()), StepRequest("b", _hidden())])
    backend.close_session("b")
    backend.step("a", _hidden())
    assert told == [False] * 3 + [True] * 9 + [False] * 2 + [True, False]


def test_steps_move_to_one_thread_while_their_own_count_runs_slow(
    backend: SpanBackend,
    monkeypatch: pytest.MonkeyPatch,
    torch_threads: Callable[[int], None],
) -> None:
    """The backend times each step for its choice (here on a clock that the blocks move: 1 ms
    a step on 2 threads, 5 ms while they wait for cores, 2 ms on 1 thread). A peer that
    prefers 2 threads, alone, tries 1 once 2 % of its time went by (100 slow steps) and stays
    there while 2 run slow; once 2 are fast again it finds them within 300 steps, and then
    runs on 1 only to try it."""
    torch_threads(2)
    clock, slow, seen = [0.0], [True], []
    run_layers = Span.run_layers

    def timed(span: Span, *args: Any, **kwargs: Any) -> torch.Tensor:
        seen.append(torch.get_num_threads())
        clock[0] += (0.005 if slow[0] else 0.001) if seen[-1] == 2 else 0.002
        return run_layers(span, *args, **kwargs)

    monkeypatch.setattr(Span, "run_layers", timed)
    monkeypatch.setattr("peer.backend.time", SimpleNamespace(perf_counter=lambda: clock[0]))
    backend.step_threads = ThreadChoice(2, 1)
    backend.open_session("a", max_length=4)
    backend.step("a", _hidden())
    for _ in range(200):
        backend.step("a", _hidden(), position=1)  # (the cache keeps one token)
    assert seen[:100] == [2] * 100 and seen[-50:] == [1] * 50
    slow[0], seen[:] = False, []
    for _ in range(600):
        backend.step("a", _hidden(), position=1)
    assert seen[:150] == [1] * 150 and seen[-100:].count(2) >= 95
