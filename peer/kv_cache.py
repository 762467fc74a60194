"""Per-session attention caches, preallocated, and the view the blocks write through.

Why a preallocated ("static") cache rather than transformers' `DynamicCache`:
- the session reserves `max_length` tokens against the budget when it opens; allocating the
  same amount up front makes the budget the real memory bound (no growth mid-session, no
  surprise OOM on the accelerator). On CPU `torch.empty` pages are only touched as tokens are
  written, so resident memory still grows with the tokens actually used;
- appending a step writes in place: no `torch.cat` of the whole cache per step (DynamicCache's
  O(T) copy per token, O(T^2) per session);
- a step through one session returns views `[..., :length]` of the buffers, no copy at all.

`StepCache` is what the decoder layers receive as their cache: they call
`update(key, value, layer_idx)`, and Llama 4's `get_seq_length()` (checked for the supported
families). With several sessions in
one batch, each session's rows are written to its own buffers and the layer gets the caches
gathered into one right-padded tensor (see `peer.masks` for why padding needs no extra mask).

Beam search reorders a session's rows before a step (`order`: row i becomes what row
`order[i]` was). The step reads the cached tokens through that order, and the buffers take it
in `commit()`, so that a failed step still leaves the session as it was.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from .errors import MixedLengthsError

__all__ = ["CacheLayout", "SessionCache", "StepCache"]


@dataclass(frozen=True)
class CacheLayout:
    """What a block caches per token: keys of `key_heads x key_dim`, values of `value_heads x
    value_dim` (most families: the key-value heads and the head size for both; DeepSeek: its
    compressed latent and the shared rotary key part, one "head" each)."""

    key_heads: int
    key_dim: int
    value_heads: int
    value_dim: int


class SessionCache:
    """K/V buffers `[layers, batch, heads, max_length, dim]` (`CacheLayout`) and the filled
    length."""

    def __init__(
        self,
        *,
        num_layers: int,
        batch_size: int,
        max_length: int,
        layout: CacheLayout,
        dtype: torch.dtype,
        device: torch.device,
    ) -> None:
        shape = (num_layers, batch_size)
        keys = (layout.key_heads, max_length, layout.key_dim)
        values = (layout.value_heads, max_length, layout.value_dim)
        self.keys = torch.empty((*shape, *keys), dtype=dtype, device=device)
        self.values = torch.empty((*shape, *values), dtype=dtype, device=device)
        self.length = 0
        self.batch_size = batch_size
        self.max_length = max_length


@dataclass(frozen=True)
class _Entry:
    cache: SessionCache
    rows: slice  # the session's rows in the batch
    order: torch.Tensor | None  # its rows' new order before this step, if any


class StepCache:
    """The `past_key_values` of one step over one or more sessions (same new-token count).

    `layer_offset` turns the span-local `layer_idx` the blocks pass into the index of the
    session's buffers (a session may cover a sub-range of the span). Lengths advance only in
    `commit()`, after every block ran: a failed step leaves the sessions as they were.
    """

    def __init__(
        self,
        caches: Sequence[SessionCache],
        q_len: int,
        layer_offset: int,
        orders: Sequence[Sequence[int]] = (),
    ) -> None:
        """`orders`: per cache, the order of its rows before this step (() for none)."""
        entries, row = [], 0
        for cache, order in zip(caches, orders or [()] * len(caches), strict=True):
            rows = slice(row, row + cache.batch_size)
            index = torch.tensor(order, device=cache.keys.device) if order else None
            entries.append(_Entry(cache, rows, index))
            row += cache.batch_size
        self._entries = entries
        self._q_len = q_len
        self._offset = layer_offset
        self._lengths = [cache.length + q_len for cache in caches]

    @property
    def past_lengths(self) -> list[int]:
        """The cached length of every row before this step (for positions and masks)."""
        return [e.cache.length for e in self._entries for _ in range(e.cache.batch_size)]

    def get_seq_length(self, layer_idx: int = 0) -> int:
        """The cached length before this step, which some blocks read (Llama 4's attention
        temperature): one for all rows, or `MixedLengthsError`."""
        lengths = set(self.past_lengths)
        if len(lengths) != 1:
            raise MixedLengthsError(f"rows of {sorted(lengths)} cached tokens in one step")
        return lengths.pop()

    def update(
        self,
        key_states: torch.Tensor,
        value_states: torch.Tensor,
        layer_idx: int,
        *_: Any,
        **__: Any,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        index = layer_idx - self._offset
        for entry in self._entries:
            start = entry.cache.length
            stop = start + self._q_len
            entry.cache.keys[index, :, :, start:stop] = key_states[entry.rows]
            entry.cache.values[index, :, :, start:stop] = value_states[entry.rows]
        if len(self._entries) == 1:
            entry, length = self._entries[0], self._lengths[0]
            keys = _cached(entry, entry.cache.keys, index, length)
            return keys, _cached(entry, entry.cache.values, index, length)
        return self._gather(key_states, index, True), self._gather(value_states, index, False)

    def _gather(self, like: torch.Tensor, index: int, keys: bool) -> torch.Tensor:
        parts = [
            _cached(e, e.cache.keys if keys else e.cache.values, index, length)
            for e, length in zip(self._entries, self._lengths, strict=True)
        ]
        if len(set(self._lengths)) == 1:
            return torch.cat(parts)
        rows, heads, _, head_dim = like.shape
        # zeros, not empty: padded keys are masked out, but a NaN in padded values would
        # still turn into NaN through the 0-weight product in SDPA's math kernel
        out = like.new_zeros(rows, heads, max(self._lengths), head_dim)
        for entry, part in zip(self._entries, parts, strict=True):
            out[entry.rows, :, : part.shape[2]] = part
        return out

    def commit(self) -> None:
        for entry, length in zip(self._entries, self._lengths, strict=True):
            cache = entry.cache
            if entry.order is not None:  # the tokens before this step's, in their new order
                for buffers in (cache.keys, cache.values):
                    buffers[:, :, :, : cache.length] = buffers[:, entry.order, :, : cache.length]
            cache.length = length


def _cached(entry: _Entry, buffers: torch.Tensor, layer: int, length: int) -> torch.Tensor:
    """One layer's keys or values of `entry`'s rows, up to `length`, its new rows' too: a
    view of the buffers, or with a new order, the earlier tokens gathered in it."""
    cached = buffers[layer, :, :, :length]
    if entry.order is None:
        return cached
    past = entry.cache.length
    return torch.cat([cached[entry.order, :, :past], cached[:, :, past:]], dim=2)
