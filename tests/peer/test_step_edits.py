"""What a step may do to the session's cache before its tokens: keep only the first
`position` tokens (speculative decoding drops rejected drafts), put the rows in a new order
(`reorder`, beam search).

The reference is a session that was given the history so edited from the start."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from peer.backend import SpanBackend, StepRequest
from peer.errors import InvalidRequestError
from peer.span import Span

from .conftest import assert_rounding_close

ORDER = (2, 0, 0)  # rows may repeat (two beams from one) and vanish
# rotary, ALiBi, a compressed latent cache, a sliding window
CACHE_KINDS = ["llama", "bloom", "deepseek_v2", "gemma2"]


def _hidden(batch: int, length: int, seed: int) -> torch.Tensor:
    return torch.randn(batch, length, 64, generator=torch.Generator().manual_seed(seed))


def _session(backend: SpanBackend, session_id: str, history: torch.Tensor, **options: Any) -> None:
    backend.open_session(session_id, max_length=16, batch_size=history.shape[0], **options)
    backend.step(session_id, history)


@pytest.mark.parametrize("family", CACHE_KINDS)
def test_a_reordered_step_equals_the_history_in_that_order(
    family: str, checkpoints: dict[str, Path]
) -> None:
    backend = SpanBackend.load(checkpoints[family], 0, 4)
    history = _hidden(3, 5, seed=1)
    _session(backend, "beams", history)
    for step, reorder in enumerate([ORDER, (), (1, 2, 0)]):
        token = _hidden(3, 1, seed=10 + step)
        got = backend.step("beams", token, reorder=reorder)
        history = torch.cat([history[list(reorder)] if reorder else history, token], dim=1)
        backend.open_session(f"reference {step}", max_length=16, batch_size=3)
        expected = backend.step(f"reference {step}", history)[:, -1:]
        assert_rounding_close(got, expected)


def test_merged_steps_take_each_sessions_order(checkpoints: dict[str, Path]) -> None:
    backend = SpanBackend.load(checkpoints["llama"], 0, 4)
    single = SpanBackend.load(checkpoints["llama"], 0, 4)
    for each in (backend, single):
        _session(each, "a", _hidden(3, 4, seed=1))
        _session(each, "b", _hidden(2, 6, seed=2))
    requests = [
        StepRequest("a", _hidden(3, 1, seed=3), reorder=ORDER),
        StepRequest("b", _hidden(2, 1, seed=4), reorder=(1, 1)),
    ]
    merged = backend.step_many(requests)
    for got, request in zip(merged, requests, strict=True):
        expected = single.step(request.session_id, request.hidden_states, reorder=request.reorder)
        assert_rounding_close(got, expected)


@pytest.mark.parametrize(
    "reorder",
    [(0, 1), (0, 1, 2, 0), (0, 1, 3), (0, 0, 2), ("1", 1, 2)],
    ids=["short", "long", "out of range", "mixes padding", "not integers"],
)
def test_a_bad_reorder_is_refused_and_changes_nothing(
    reorder: tuple[Any, ...], checkpoints: dict[str, Path]
) -> None:
    backend = SpanBackend.load(checkpoints["llama"], 0, 4)
    history = _hidden(3, 5, seed=1)
    _session(backend, "s", history, padding=(0, 2, 2))
    _session(backend, "reference", history, padding=(0, 2, 2))
    token = _hidden(3, 1, seed=2)
    with pytest.raises(InvalidRequestError, match="reorder"):
        backend.step("s", token, reorder=reorder)
    assert backend.session_length("s") == 5
    assert_rounding_close(backend.step("s", token), backend.step("reference", token))


def test_a_step_that_fails_leaves_the_old_order(
    checkpoints: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The rows move only when the step commits: a step the blocks fail changes nothing."""
    backend = SpanBackend.load(checkpoints["llama"], 0, 4)
    history = _hidden(3, 5, seed=1)
    _session(backend, "s", history)
    _session(backend, "reference", history)
    run_layers = Span.run_layers

    def fail_after_running(*args: Any, **kwargs: Any) -> torch.Tensor:
        run_layers(*args, **kwargs)  # every layer wrote through the cache
        raise RuntimeError("out of memory")

    monkeypatch.setattr(Span, "run_layers", fail_after_running)
    with pytest.raises(RuntimeError, match="out of memory"):
        backend.step("s", _hidden(3, 1, seed=2), reorder=ORDER)
    monkeypatch.undo()
    token = _hidden(3, 1, seed=3)
    assert_rounding_close(backend.step("s", token), backend.step("reference", token))


@pytest.mark.parametrize("family", CACHE_KINDS)
def test_a_step_after_a_position_equals_the_history_cut_there(
    family: str, checkpoints: dict[str, Path]
) -> None:
    backend = SpanBackend.load(checkpoints[family], 0, 4)
    history = _hidden(2, 9, seed=1)
    _session(backend, "drafts", history)
    for step, position in enumerate([6, 7, 3]):  # back, not moving, back again
        tokens = _hidden(2, 2, seed=10 + step)
        got = backend.step("drafts", tokens, position=position)
        history = torch.cat([history[:, :position], tokens], dim=1)
        backend.open_session(f"reference {step}", max_length=16, batch_size=2)
        expected = backend.step(f"reference {step}", history)[:, -2:]
        assert_rounding_close(got, expected)
        assert backend.session_length("drafts") == position + 2


def test_merged_steps_take_each_sessions_position(checkpoints: dict[str, Path]) -> None:
    backend = SpanBackend.load(checkpoints["llama"], 0, 4)
    single = SpanBackend.load(checkpoints["llama"], 0, 4)
    for each in (backend, single):
        _session(each, "a", _hidden(1, 6, seed=1))
        _session(each, "b", _hidden(3, 4, seed=2))
    requests = [
        StepRequest("a", _hidden(1, 1, seed=3), position=2),
        StepRequest("b", _hidden(3, 1, seed=4), reorder=ORDER, position=3),
    ]
    merged = backend.step_many(requests)
    for got, request in zip(merged, requests, strict=True):
        expected = single.step(
            request.session_id,
            request.hidden_states,
            reorder=request.reorder,
            position=request.position,
        )
        assert_rounding_close(got, expected)


@pytest.mark.parametrize(("position", "tokens"), [(6, 1), (-1, 1), (5, 12)])
def test_a_bad_position_is_refused_and_changes_nothing(
    position: int, tokens: int, checkpoints: dict[str, Path]
) -> None:
    """Past the cached tokens, negative, or a step that would not fit the session."""
    backend = SpanBackend.load(checkpoints["llama"], 0, 4)
    _session(backend, "s", _hidden(1, 5, seed=1))
    with pytest.raises(InvalidRequestError, match=r"position|max_length"):
        backend.step("s", _hidden(1, tokens, seed=2), position=position)
    assert backend.session_length("s") == 5
