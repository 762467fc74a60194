"""Attention masks: causal, with a sliding window or chunks per block, over padded rows.

Layout: row `r` of a batch has `past[r]` cached tokens at key positions `0..past[r]-1` and its
`q_len` new tokens right after them, so its queries sit at positions `past[r] + i`. Keys past
`past[r] + q_len - 1` are padding (another row is longer): the causal rule already hides them,
so padding needs no extra term. A key is visible when `key <= query` and, with a window `w`,
`key > query - w` (transformers' `sliding_window_overlay`); with chunks of `c` (Llama 4's
chunked attention), when `key // c == query // c`, both counted from the row's first token
after its left padding (`chunked_overlay`). `keys` hides padding as
transformers' padding mask does: row `r` sees key `k` only where `keys[r, k]` (a batch of
prompts padded on the left, or a batch forward's `attention_mask`); a padding token's own
query may then see nothing, as there.

`None` means "let SDPA do it" exactly when transformers' own mask code skips the mask
(`_ignore_causal_mask_sdpa`): every row has the same past, no window comes into play, and
either one query token (attend to everything) or no past (`is_causal=True`). Using the same
skip keeps the stateless forward bit-identical to the transformers model.

Eager attention (Gemma 2's capped scores and gpt-oss's sinks, which SDPA cannot do) adds its
mask to the scores instead: `additive=dtype` gives 0 where a key is visible and the dtype's
lowest value where not, always a tensor, as transformers builds it for eager.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import torch

__all__ = ["FULL", "Locality", "causal_mask", "masks_for_blocks"]


@dataclass(frozen=True)
class Locality:
    """What a block attends to besides the past: everything (the default), its last `window`
    tokens, or the tokens of its own `chunk`."""

    window: int | None = None
    chunk: int | None = None


FULL = Locality()


def causal_mask(
    past: Sequence[int],
    q_len: int,
    locality: Locality,
    device: torch.device,
    *,
    additive: torch.dtype | None = None,
    keys: torch.Tensor | None = None,
) -> torch.Tensor | None:
    """Mask of shape `[rows or 1, 1, q_len, max(past) + q_len]` (True = attend), or None;
    with `additive`, scores to add (0 or the lowest value of that dtype), never None.
    `keys`: `[rows, max(past) + q_len]`, False for padding (none if None)."""
    kv_len = max(past) + q_len
    window, chunk = locality.window, locality.chunk
    local = min((size for size in (window, chunk) if size is not None), default=None)
    uniform = len(set(past)) == 1 and keys is None
    trivial = uniform and (local is None or kv_len < local) and (q_len == 1 or past[0] == 0)
    if trivial and additive is None:
        return None
    rows = past[:1] if uniform else past
    offsets = torch.tensor(list(rows), dtype=torch.long, device=device)
    queries = offsets[:, None] + torch.arange(q_len, device=device)[None, :]  # [R, q]
    indices = torch.arange(kv_len, device=device)[None, None, :]  # [1, 1, kv]
    visible = indices <= queries[:, :, None]
    if window is not None:
        visible &= indices > queries[:, :, None] - window
    if chunk is not None:  # counted from each row's first token after its left padding
        start = torch.zeros(len(rows), 1, 1, dtype=torch.long, device=device)
        if keys is not None:
            start = (keys.long().cumsum(-1) == 0).sum(-1)[:, None, None]
        visible = visible & ((indices - start) // chunk == (queries[:, :, None] - start) // chunk)
    if keys is not None:
        visible = visible & keys[:, None, :]
    if additive is not None:
        lowest = torch.full(visible.shape, torch.finfo(additive).min, dtype=additive, device=device)
        return lowest.masked_fill(visible, 0.0)[:, None, :, :]
    return visible[:, None, :, :]


def masks_for_blocks(
    localities: Iterable[Locality],
    past: Sequence[int],
    q_len: int,
    device: torch.device,
    *,
    additive: torch.dtype | None = None,
    keys: torch.Tensor | None = None,
) -> Mapping[Locality, torch.Tensor | None]:
    """One mask per distinct locality among the blocks that will run."""
    return {
        locality: causal_mask(past, q_len, locality, device, additive=additive, keys=keys)
        for locality in set(localities)
    }
