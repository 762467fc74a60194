"""`KeptForwards`: the autograd graphs of recent forwards, for the backwards that follow.

A client training through the swarm sends each peer a forward (`span.forward` with `keep`),
then, once it knows its loss, a backward over the same input (`span.backward`). Without the
forward's graph, the peer runs its blocks again in the backward, as gradient checkpointing
does, and a training step costs it a forward more. So a forward asked to keep runs with
gradients on, and the peer keeps its graph (the activations its backward needs) under a
token it returns with the output. The backward that names the token, from the same caller,
over the same blocks, input and mask, takes the graph and runs only the backward: the
gradient is the same, bit for bit.

Bounded: the activations of all graphs kept take at most `max_bytes` (the oldest go first;
one larger than that is not kept), and a graph no backward took goes after `ttl` seconds,
or as soon as its caller says that none will come (`drop`: a client whose own graph was
freed without a backward). A backward whose graph is gone computes the forward again:
nothing fails for want of one. A graph's bytes grow with its tokens times its blocks, so
the graphs measured foretell the next (`may_keep`): a forward whose graph, at the fewest
bytes per token and block seen so far, would be over `max_bytes` runs without gradients,
rather than building a graph only to drop it.
Only the compute thread uses it, so it takes no lock.
"""

from __future__ import annotations

import secrets
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

__all__ = ["ForwardKey", "KeptForwards", "SavedBytes"]

DEFAULT_MAX_BYTES = 1_000_000_000  # `swarm peer --kept-activations 1000` (MB)
DEFAULT_TTL = 120.0  # seconds


@dataclass(frozen=True)
class ForwardKey:
    """Who ran which forward: a backward must name the same to take its graph."""

    owner: str  # the caller's peer id
    start: int | None
    end: int | None
    adapter: str | None


@dataclass(frozen=True)
class _Graph:
    key: ForwardKey
    inputs: torch.Tensor  # the leaf the graph starts at
    output: torch.Tensor
    attention_mask: torch.Tensor | None
    nbytes: int
    expires: float


@dataclass
class SavedBytes:
    """The bytes of the tensors autograd saved while counting, the frozen ones left out."""

    frozen: set[int]  # storages not to count (the blocks' weights and buffers)
    total: int = 0
    _seen: set[int] = field(default_factory=set)

    def pack(self, tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        pointer = storage.data_ptr()
        if pointer not in self.frozen and pointer not in self._seen:
            self._seen.add(pointer)
            self.total += storage.nbytes()
        return tensor


class KeptForwards:
    """Graphs by token, oldest first, within `max_bytes` and `ttl` (see the module doc)."""

    def __init__(
        self,
        max_bytes: int = DEFAULT_MAX_BYTES,
        ttl: float = DEFAULT_TTL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_bytes = max_bytes
        self.ttl = ttl
        self._clock = clock
        self._graphs: OrderedDict[str, _Graph] = OrderedDict()
        self.kept_bytes = 0
        self.taken = 0  # backwards that found their graph (statistics)
        self.released = 0  # graphs their callers dropped (`drop`; statistics)
        self.too_large = 0  # forwards whose graph was, or would have been, over the bound
        self._bytes_per_unit: float | None = None  # the fewest per token and block measured

    def __len__(self) -> int:
        return len(self._graphs)

    @staticmethod
    @contextmanager
    def counting(frozen: Iterable[torch.Tensor]) -> Iterator[SavedBytes]:
        """Count what autograd saves in the block (for `keep`), `frozen` tensors left out."""
        saved = SavedBytes({tensor.untyped_storage().data_ptr() for tensor in frozen})
        with torch.autograd.graph.saved_tensors_hooks(saved.pack, lambda tensor: tensor):
            yield saved

    def may_keep(self, units: int) -> bool:
        """Whether to build the graph of a forward over `units` (its tokens times its
        blocks): not when nothing is kept, nor when the graphs measured before say that it
        would be over the bound (counted in `too_large`)."""
        rate = self._bytes_per_unit
        if self.max_bytes and rate is not None and units * rate > self.max_bytes:
            self.too_large += 1
            return False
        return self.max_bytes > 0

    def keep(
        self,
        key: ForwardKey,
        inputs: torch.Tensor,
        output: torch.Tensor,
        attention_mask: torch.Tensor | None,
        nbytes: int,
        units: int,
    ) -> str | None:
        """Keep a forward's graph (from leaf `inputs` to `output`, its activations `nbytes`,
        over `units` tokens times blocks); its token, or None if it alone is over the bound."""
        self._forget_expired()
        if units > 0:
            known, rate = self._bytes_per_unit, nbytes / units
            self._bytes_per_unit = rate if known is None else min(known, rate)
        if nbytes > self.max_bytes:
            self.too_large += 1
            return None
        while self._graphs and self.kept_bytes + nbytes > self.max_bytes:
            self._forget(next(iter(self._graphs)))
        token = secrets.token_hex(16)
        expires = self._clock() + self.ttl
        self._graphs[token] = _Graph(key, inputs, output, attention_mask, nbytes, expires)
        self.kept_bytes += nbytes
        return token

    def take(
        self,
        token: str,
        key: ForwardKey,
        inputs: torch.Tensor,
        attention_mask: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The (leaf, output) of the graph `token` names, if it is still kept and was the
        same forward: the same key, input and mask. A graph found is used up."""
        self._forget_expired()
        graph = self._graphs.get(token)
        if graph is None or graph.key != key:
            return None
        self._forget(token)  # whatever follows: a graph serves one backward
        if not (_same_mask(graph.attention_mask, attention_mask) and _same(graph.inputs, inputs)):
            return None
        self.taken += 1
        return graph.inputs, graph.output

    def drop(self, tokens: Iterable[str], owner: str) -> int:
        """Forget the graphs of `owner` that `tokens` name (no backward will come for them);
        how many there were."""
        dropped = 0
        for token in set(tokens):
            graph = self._graphs.get(token)
            if graph is not None and graph.key.owner == owner:
                self._forget(token)
                dropped += 1
        self.released += dropped
        return dropped

    def _forget_expired(self) -> None:
        now = self._clock()
        while self._graphs and next(iter(self._graphs.values())).expires <= now:
            self._forget(next(iter(self._graphs)))

    def _forget(self, token: str) -> None:
        self.kept_bytes -= self._graphs.pop(token).nbytes


def _same_mask(kept: torch.Tensor | None, mask: torch.Tensor | None) -> bool:
    if kept is None or mask is None:
        return kept is None and mask is None
    return torch.equal(kept, mask)


def _same(kept: torch.Tensor, inputs: torch.Tensor) -> bool:
    return torch.equal(kept.detach(), inputs.to(kept.device))  # False for another shape
