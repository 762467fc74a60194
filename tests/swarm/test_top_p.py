"""`SortedTopP` cuts the scores exactly as transformers' `TopPLogitsWarper` does, by its own
way where no tie straddles the cut, by transformers' where one does."""

from __future__ import annotations

import pytest
import torch
from transformers import TopKLogitsWarper, TopPLogitsWarper

from swarm.top_p import SortedTopP

IDS = torch.zeros(1, 3, dtype=torch.long)  # neither warper looks at them


def _both(scores: torch.Tensor, top_p: float, keep: int = 1) -> tuple[torch.Tensor, ...]:
    ours = SortedTopP(top_p, min_tokens_to_keep=keep)
    theirs = TopPLogitsWarper(top_p, min_tokens_to_keep=keep)
    return ours(IDS, scores.clone()), theirs(IDS, scores.clone())


@pytest.mark.parametrize("vocab", [7, 1000, 49_152])
@pytest.mark.parametrize("spread", [0.3, 3.0, 12.0])  # flat to peaked
@pytest.mark.parametrize("keep", [1, 2])
def test_it_cuts_random_scores_as_transformers_does_its_own_way(
    vocab: int, spread: float, keep: int
) -> None:
    generator = torch.Generator().manual_seed(vocab + int(spread * 10) + keep)
    for top_p in (0.05, 0.5, 0.9, 0.95, 0.999):
        scores = torch.randn(3, vocab, generator=generator) * spread
        ours, theirs = _both(scores, top_p, keep)
        assert torch.equal(ours, theirs), (top_p, spread)
        assert SortedTopP(top_p, min_tokens_to_keep=keep).cut(scores) is not None
        kept = torch.isfinite(ours).sum(-1)
        assert bool((kept >= keep).all())


def test_it_cuts_what_top_k_left_as_transformers_does() -> None:
    """Sorting only the 50 scores top-k left, the others -inf."""
    generator = torch.Generator().manual_seed(1)
    scores = TopKLogitsWarper(50)(IDS, torch.randn(2, 49_152, generator=generator) * 4)
    for top_p in (0.3, 0.8, 0.99):
        ours, theirs = _both(scores, top_p)
        assert torch.equal(ours, theirs) and SortedTopP(top_p).cut(scores) is not None
        assert 0 < int(torch.isfinite(ours).sum()) <= 100


@pytest.mark.parametrize(
    "case", ["all equal", "a tie across the cut", "NaN", "+inf", "bfloat16", "keep -inf"]
)
def test_where_the_sort_order_decides_transformers_cuts(case: str) -> None:
    """Which of equal scores go depends on `torch.sort`'s order: transformers decides."""
    scores = torch.randn(1, 64, generator=torch.Generator().manual_seed(2))
    keep = 1
    if case == "all equal":
        scores = torch.zeros(1, 64)
    elif case == "a tie across the cut":  # 8 equal top scores hold nearly all the mass
        scores[0, :8] = 20.0
    elif case == "NaN":
        scores[0, 5] = float("nan")
    elif case == "+inf":
        scores[0, 5] = float("inf")
    elif case == "bfloat16":
        scores = scores.bfloat16()
    elif case == "keep -inf":  # more to keep than finite scores
        scores[0, 3:] = -float("inf")
        keep = 5
    warper = SortedTopP(0.5, min_tokens_to_keep=keep)
    assert warper.cut(scores) is None
    ours, theirs = _both(scores, 0.5, keep)
    assert torch.equal(ours.isnan(), theirs.isnan())
    assert torch.equal(ours.nan_to_num(), theirs.nan_to_num())
