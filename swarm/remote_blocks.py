"""The swarm's blocks as one step of torch's autograd, so that a client can train through them.

`through_swarm(hidden, call)` runs every block over `hidden` through the peers' stateless
`span.forward`; when `hidden` needs a gradient, it records each hop and the input it took,
and the peers keep their forward's graph a while. Its backward sends the gradient back
through those hops (`span.backward`: each peer runs the backward of the graph it kept, or
its blocks again with gradients on, and returns the gradient of its input); a forward whose
graph is freed without a backward has the peers drop what they kept for it at once
(`span.release`, sent from the client's loop by a finalizer). The blocks stay
frozen, as on every peer: what trains is on the client, such as a soft prompt in front of
the embeddings, or adapters around the head. `call` carries the client's event loop and
view into the function.
"""

from __future__ import annotations

import random
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch

from routing.client import SwarmView
from routing.client.forward import (
    Trace,
    backward_through_swarm,
    forward_through_swarm,
    kept_graphs,
    release_kept,
)

__all__ = ["RemoteBlocks", "SwarmCall", "through_swarm"]


@dataclass(frozen=True)
class SwarmCall:
    """What a forward or backward through the swarm needs from the client."""

    run: Callable[[Callable[[], Awaitable[torch.Tensor]]], torch.Tensor]  # in the client's loop
    view: SwarmView
    rng: random.Random
    attention_mask: torch.Tensor | None = None
    spawn: Callable[..., None] | None = None  # starts a task in the client's loop, not waiting


def through_swarm(hidden: torch.Tensor, call: SwarmCall) -> torch.Tensor:
    """Every block over `hidden` (`[batch, length, hidden]`), differentiable in `hidden`."""
    output: torch.Tensor = RemoteBlocks.apply(hidden, call)  # type: ignore[no-untyped-call]
    return output


class RemoteBlocks(torch.autograd.Function):
    """`[batch, length, hidden]` in, the last block's output out; differentiable in `hidden`."""

    @staticmethod
    def forward(ctx: Any, hidden: torch.Tensor, call: SwarmCall) -> torch.Tensor:
        trace: Trace | None = [] if ctx.needs_input_grad[0] else None  # a backward may come
        through = partial(
            forward_through_swarm,
            call.view,
            hidden.detach(),
            rng=call.rng,
            attention_mask=call.attention_mask,
            trace=trace,
        )
        ctx.trace, ctx.call = trace, call
        output = call.run(through)
        kept = kept_graphs(trace or [])
        if kept and call.spawn is not None:  # freed without a backward: the peers drop them
            ctx.alive = _Alive()
            ctx.release = weakref.finalize(ctx.alive, call.spawn, release_kept, call.view, kept)
            ctx.release.atexit = False
        return output

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        call: SwarmCall = ctx.call
        back = partial(
            backward_through_swarm,
            call.view,
            ctx.trace,
            grad.contiguous(),
            rng=call.rng,
            attention_mask=call.attention_mask,
        )
        gradient = call.run(back)
        if hasattr(ctx, "release"):  # the backward took the graphs (if it failed, the
            ctx.release.detach()  # finalizer releases those it did not reach)
        return gradient, None


class _Alive:
    """Lives as long as a forward's autograd context: its finalizer releases the graphs the
    peers kept, unless a backward took them."""
