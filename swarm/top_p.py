"""`SortedTopP`: transformers' top-p (nucleus) cutoff, the same cut, its sort done by numpy.

`TopPLogitsWarper` sorts the scores with `torch.sort`, which takes about 4 ms over SmolLM2's
49,152 scores on one CPU core, a tenth of a token's time; numpy sorts them in about 1.3 ms.
The values sorted are the same whatever sorts them, and so are their softmax, its running sum
and the sorted places it removes (a prefix: the sum only grows). Only which of several equal
scores sit on either side of the cut depends on the sort: where a tie straddles it, or
where a score is NaN or +inf, `SortedTopP` leaves the whole cut to transformers. Otherwise
the tokens removed are those below the first score kept, exactly as transformers removes
them (`tests/swarm/test_top_p.py`). Scores of -inf (all but 50 after top-k, which sampling
runs first by default) need no sorting: only the others are sorted.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from transformers import TopPLogitsWarper

__all__ = ["SortedTopP"]

_NUMPY_DTYPES = (torch.float32, torch.float64)


class SortedTopP(TopPLogitsWarper):
    """`TopPLogitsWarper` (same arguments, same result), sorting the values with numpy."""

    def __call__(self, input_ids: torch.LongTensor, scores: torch.Tensor) -> torch.Tensor:
        cut = self.cut(scores)
        return cut if cut is not None else super().__call__(input_ids, scores)

    def cut(self, scores: torch.Tensor) -> torch.Tensor | None:
        """The scores cut as transformers cuts them, or None where the sort's order of equal
        scores would decide (see the module doc)."""
        if scores.device.type != "cpu" or scores.dtype not in _NUMPY_DTYPES or scores.ndim != 2:
            return None
        values = _sorted(scores)
        if values is None:
            return None
        removed = values.softmax(dim=-1).cumsum(dim=-1) <= (1 - self.top_p)
        removed[:, -self.min_tokens_to_keep :] = False
        count = removed.sum(dim=-1, keepdim=True)  # the places removed: the first `count`
        first_kept = values.gather(1, count)
        last_removed = values.gather(1, (count - 1).clamp(min=0))
        if bool(((count > 0) & (last_removed == first_kept)).any()):  # a tie across the cut
            return None
        return scores.masked_fill(scores < first_kept, self.filter_value)


def _sorted(scores: torch.Tensor) -> torch.Tensor | None:
    """Each row's values in ascending order, as `torch.sort` gives them; None if one is NaN
    or +inf (or if all are -inf). Only the finite ones are sorted: after top-k, nearly all
    are -inf."""
    if not bool(torch.isfinite(scores.amax(dim=-1)).all()):  # the max is NaN if one is
        return None
    finite = torch.isfinite(scores)
    values = torch.full_like(scores, -math.inf)
    for row, (row_scores, row_finite) in enumerate(zip(scores, finite, strict=True)):
        ordered = np.sort(row_scores[row_finite].numpy())
        values[row, values.shape[1] - ordered.size :] = torch.from_numpy(ordered)
    return values
