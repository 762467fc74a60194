"""Kept forwards: a backward runs on the graph its forward kept, with the gradient it would
have had computing the forward again; the graphs stay within their bytes and time, and a
backward that finds none (another caller's, another input, gone) computes as before."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from peer.backend import BackendConfig, SpanBackend
from peer.kept_forwards import ForwardKey, KeptForwards

MASK = [[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]]


@pytest.fixture
def backend(checkpoints: dict[str, Path]) -> SpanBackend:
    return SpanBackend.load(checkpoints["llama"], 1, 3)


def _tensor(length: int = 6, seed: int = 0) -> torch.Tensor:
    return torch.randn(2, length, 64, generator=torch.Generator().manual_seed(seed))


def test_a_backward_runs_on_the_kept_graph_with_the_same_gradient(backend: SpanBackend) -> None:
    inputs, grads = _tensor(seed=1), _tensor(seed=2)
    expected = backend.backward(inputs, grads, 1, 3, MASK)  # the forward computed again
    output, token = backend.forward_kept(inputs, 1, 3, MASK, owner="alice")
    assert torch.equal(output, backend.forward(inputs, 1, 3, MASK)) and not output.requires_grad
    assert token is not None and len(backend.kept) == 1 and backend.kept.kept_bytes > 0
    got = backend.backward(inputs, grads, 1, 3, MASK, kept=token, owner="alice")
    assert torch.equal(got, expected) and not got.requires_grad
    assert backend.kept.taken == 1 and len(backend.kept) == 0 and backend.kept.kept_bytes == 0
    again = backend.backward(inputs, grads, 1, 3, MASK, kept=token, owner="alice")  # used up
    assert torch.equal(again, expected) and backend.kept.taken == 1


@pytest.mark.parametrize(
    ("change", "left"),
    [("owner", 1), ("blocks", 1), ("input", 0), ("length", 0), ("mask", 0)],
)
def test_a_backward_of_another_forward_computes_it_again(
    backend: SpanBackend, change: str, left: int
) -> None:
    """Another caller, or other blocks, leave the graph to its own backward; the same
    caller naming it with another input or mask has it dropped. Each gets its own gradient."""
    inputs, grads, mask = _tensor(seed=1), _tensor(seed=2), MASK
    _, token = backend.forward_kept(inputs, 1, 3, mask, owner="alice")
    owner, start = "alice", 1
    if change == "owner":
        owner = "mallory"
    elif change == "blocks":
        start = 2
    elif change == "input":
        inputs = inputs + 1e-3
    elif change == "length":
        inputs, grads, mask = inputs[:, :5], grads[:, :5], [row[:5] for row in mask]
    elif change == "mask":
        mask = [[1] * 6, [1] * 6]
    expected = backend.backward(inputs, grads, start, 3, mask)
    got = backend.backward(inputs, grads, start, 3, mask, kept=token, owner=owner)
    assert torch.equal(got, expected)
    assert backend.kept.taken == 0 and len(backend.kept) == left


def test_what_is_kept_is_the_activations_not_the_weights(backend: SpanBackend) -> None:
    weights = sum(p.numel() * p.element_size() for p in backend.span.layers.parameters())
    sizes = []
    for length in (8, 16, 32):
        backend.forward_kept(_tensor(length), 1, 3, owner="alice")
        sizes.append(backend.kept.kept_bytes - sum(sizes))
    assert sizes[0] < weights  # 2x8 tokens of two tiny blocks: less than their weights
    assert 1.6 < sizes[1] / sizes[0] < 2.5 and 1.6 < sizes[2] / sizes[1] < 2.5  # per token


def test_the_graphs_kept_stay_within_their_bytes(checkpoints: dict[str, Path]) -> None:
    probe = SpanBackend.load(checkpoints["llama"], 1, 3)
    probe.forward_kept(_tensor(), 1, 3, owner="alice")
    one = probe.kept.kept_bytes
    config = BackendConfig(max_kept_bytes=2 * one + one // 2)  # room for two
    backend = SpanBackend.load(checkpoints["llama"], 1, 3, config=config)
    tokens = [backend.forward_kept(_tensor(seed=n), 1, 3, owner="alice")[1] for n in range(3)]
    assert len(backend.kept) == 2 and backend.kept.kept_bytes == 2 * one  # the first went
    grads = _tensor(seed=9)
    for n, token in enumerate(tokens):
        backend.backward(_tensor(seed=n), grads, 1, 3, kept=token, owner="alice")
    assert backend.kept.taken == 2  # the two newest
    off = SpanBackend.load(checkpoints["llama"], 1, 3, config=BackendConfig(max_kept_bytes=0))
    output, token = off.forward_kept(_tensor(), 1, 3, owner="alice")
    assert token is None and len(off.kept) == 0 and off.kept.too_large == 0
    assert torch.equal(output, off.forward(_tensor(), 1, 3))


def test_a_forward_foreseen_too_large_builds_no_graph(checkpoints: dict[str, Path]) -> None:
    """Once a graph over the bound was measured, a forward as large (tokens times blocks) or
    larger runs its blocks without gradients; smaller ones still build and keep theirs."""
    probe = SpanBackend.load(checkpoints["llama"], 1, 3)
    probe.forward_kept(_tensor(), 1, 3, owner="alice")
    one = probe.kept.kept_bytes  # 2x6 tokens through 2 blocks
    config = BackendConfig(max_kept_bytes=2 * one + one // 2)
    backend = SpanBackend.load(checkpoints["llama"], 1, 3, config=config)
    with_gradients: list[bool] = []
    backend.span.layers[-1].register_forward_pre_hook(
        lambda *_: with_gradients.append(torch.is_grad_enabled())
    )

    def forward(inputs: torch.Tensor, start: int = 1) -> tuple[bool, bool]:
        """Whether its graph was kept, and whether its blocks ran with gradients on."""
        with_gradients.clear()
        _, token = backend.forward_kept(inputs, start, 3, owner="alice")
        return token is not None, with_gradients == [True]

    assert forward(_tensor(18)) == (False, True)  # built, then measured over the bound
    assert forward(_tensor(24, seed=1)) == (False, False)  # foreseen: none built
    assert backend.kept.too_large == 2
    assert forward(_tensor()) == (True, True) and forward(_tensor(12)) == (True, True)
    assert forward(_tensor(18), start=2) == (True, True)  # one block: half the bytes
    assert backend.kept.too_large == 2


def test_int8_weights_keep_activations_not_their_weights_dequantized(
    checkpoints: dict[str, Path],
) -> None:
    """The int8 product's backward dequantizes the weight again: the graph an int8 span
    keeps is no larger than a bfloat16 span's, whose frozen weights are not counted."""
    int8, plain = (
        SpanBackend.load(checkpoints["llama"], 1, 3, dtype=torch.bfloat16, quantization=q)
        for q in ("int8", None)
    )
    inputs, grads = _tensor().bfloat16(), _tensor(seed=2).bfloat16()
    expected = int8.backward(inputs, grads, 1, 3, MASK)
    output, token = int8.forward_kept(inputs, 1, 3, MASK, owner="alice")
    assert token is not None and torch.equal(output, int8.forward(inputs, 1, 3, MASK))
    plain.forward_kept(inputs, 1, 3, MASK, owner="alice")
    assert 0 < int8.kept.kept_bytes <= plain.kept.kept_bytes
    got = int8.backward(inputs, grads, 1, 3, MASK, kept=token, owner="alice")
    assert torch.equal(got, expected) and int8.kept.taken == 1


def test_a_caller_drops_its_own_graphs_only(backend: SpanBackend) -> None:
    tokens = [backend.forward_kept(_tensor(seed=n), 1, 3, owner="alice")[1] for n in range(3)]
    _, bobs = backend.forward_kept(_tensor(), 1, 3, owner="bob")
    alices = [token for token in tokens if token is not None]
    assert len(alices) == 3 and bobs is not None
    one = backend.kept.kept_bytes // 4
    assert backend.kept.drop([alices[0], bobs, "unknown"], "alice") == 1
    assert backend.kept.drop([alices[1], alices[1]], "alice") == 1 and len(backend.kept) == 2
    assert backend.kept.kept_bytes == 2 * one
    grads = _tensor(seed=9)
    backend.backward(_tensor(seed=2), grads, 1, 3, kept=alices[2], owner="alice")
    backend.backward(_tensor(), grads, 1, 3, kept=bobs, owner="bob")
    assert backend.kept.taken == 2 and backend.kept.kept_bytes == 0 and backend.kept.released == 2


def test_a_graph_no_backward_takes_goes_after_its_time() -> None:
    now = [0.0]
    kept = KeptForwards(max_bytes=1000, ttl=60.0, clock=lambda: now[0])
    key = ForwardKey("alice", 1, 3, None)
    leaf = torch.ones(1, 2, 4, requires_grad=True)
    old = kept.keep(key, leaf, leaf * 2, None, 100, 4)
    now[0] = 30.0
    new = kept.keep(key, leaf, leaf * 3, None, 100, 4)
    now[0] = 61.0
    assert old is not None and kept.take(old, key, leaf.detach(), None) is None
    assert new is not None and kept.kept_bytes == 100
    taken = kept.take(new, key, leaf.detach(), None)
    assert taken is not None and taken[0] is leaf and kept.kept_bytes == 0
    now[0] = 200.0
    assert kept.keep(key, leaf, leaf, None, 1001, 4) is None  # alone over the bound
