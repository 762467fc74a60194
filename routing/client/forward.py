"""Batch forward and backward through the swarm: whole sequences through every block.

Stateless (`span.forward`: no session, no cache), so each call picks its chain for
throughput rather than latency: `SwarmView.spread` draws, at every block boundary, a replica
in proportion to its spare throughput, and concurrent calls spread over the swarm. A hop that
fails is banned like a failing hop of an inference chain, and the blocks it was to run are
drawn again from the peers left; nothing needs replaying. While a call is unanswered, the
peer must answer a ping every `liveness_after` seconds, as a hop of a chain must. A request
the peers refuse as such (`invalid_request`: too many tokens, too long) is raised at once,
not retried.

Backward (`span.backward`) goes back through the hops a forward recorded in its `trace`,
each given the input it took and the gradient of its output; a hop that fails then is
banned, and its blocks are run forward again from that input over other peers, and
backward through those. A forward that records a trace asks each peer to keep its graph
(`keep`), and the backward names the token the peer gave for it (`kept`): the peer then
need not compute the forward again (`peer.kept_forwards`). When no backward will come,
`release_kept` tells the peers to drop those graphs (`span.release`).
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass, replace

import torch
import trio

from ..address import PeerAddress
from ..announcement import PeerAnnouncement
from ..errors import PeerUnresponsiveError, ProtocolError, RemoteError
from ..path_selection import Hop, NoRouteError
from ..rpc import Packet
from ..span_protocol import (
    BACKWARD,
    FORWARD,
    MAX_RELEASE,
    RELEASE,
    ForwardRequest,
    kept_token,
    tensor_header,
)
from ..tensor_codec import decode_tensor, encode_tensor
from .chain import DTYPES, ChainFailedError
from .hop_session import LINK_ERRORS
from .swarm_view import SwarmView

__all__ = [
    "Trace",
    "TracedHop",
    "backward_through_swarm",
    "forward_through_swarm",
    "kept_graphs",
    "release_kept",
]

logger = logging.getLogger(__name__)

REFUSED_REQUESTS = frozenset({"invalid_request", "bad_request"})  # the same on every peer
RELEASE_TIMEOUT = 5.0  # seconds a peer has to answer `span.release`


@dataclass(frozen=True)
class TracedHop:
    """A hop of a forward, the input it took, and the token of the graph its peer kept."""

    hop: Hop
    inputs: torch.Tensor
    kept: str | None = None


Trace = list[TracedHop]  # a forward's hops, in order


async def forward_through_swarm(
    view: SwarmView,
    hidden: torch.Tensor,
    *,
    rng: random.Random,
    attention_mask: torch.Tensor | None = None,
    blocks: tuple[int, int] | None = None,
    trace: Trace | None = None,
) -> torch.Tensor:
    """`hidden` ([batch, length, hidden], positions 0..length-1) through `blocks` (all by
    default); `attention_mask` ([batch, length], 0 for padding) as transformers' model
    takes it. `trace`, if given, gets each hop and its input, for `backward_through_swarm`
    (and the peers keep the forward's graph for it)."""
    config = view.config
    mask = _wire_mask(attention_mask)
    boundary, end = blocks or (0, view.num_blocks)
    failures, refreshed = 0, False
    last_error: BaseException | None = None
    while boundary < end:
        peers = view.peers  # as drawn (a refresh may replace the view meanwhile)
        try:
            drawn = view.spread(boundary, rng)[0]
        except NoRouteError as error:
            if not refreshed:  # the swarm may have changed since the view was read
                await view.refresh()
                refreshed = True
                continue
            if last_error is not None:
                raise ChainFailedError(error.missing, last_error, error.condition) from last_error
            raise
        hop = Hop(drawn.peer, drawn.start, min(drawn.end, end))
        request = ForwardRequest(hop.start, hop.end, {}, mask, view.adapter, keep=trace is not None)
        try:
            output, kept = await _call_hop(view, FORWARD, peers[hop.peer], hidden, request)
        except LINK_ERRORS as error:
            if isinstance(error, RemoteError) and error.code in REFUSED_REQUESTS:
                raise
            failures += 1
            last_error = error
            _ban(view, hop, "forward", error)
            if failures > config.max_failovers:
                raise
            continue
        if trace is not None:
            trace.append(TracedHop(hop, hidden, kept))
        hidden = output
        boundary = hop.end
    return hidden


async def backward_through_swarm(
    view: SwarmView,
    trace: Trace,
    grad: torch.Tensor,
    *,
    rng: random.Random,
    attention_mask: torch.Tensor | None = None,
    failures: int = 0,
) -> torch.Tensor:
    """The gradient with respect to the first hop's input, given that of the last hop's
    output: back through the hops of `trace` (a forward's). `failures`: so far, of at most
    `max_failovers`."""
    mask = _wire_mask(attention_mask)
    for traced in reversed(trace):
        hop, inputs = traced.hop, traced.inputs
        announcement = view.peers.get(hop.peer)
        try:
            if announcement is None:
                raise NoRouteError(list(range(hop.start, hop.end)))
            pair = torch.stack([inputs, grad.to(inputs.dtype)])
            request = ForwardRequest(hop.start, hop.end, {}, mask, view.adapter, kept=traced.kept)
            grad, _ = await _call_hop(view, BACKWARD, announcement, pair, request)
        except (*LINK_ERRORS, NoRouteError) as error:
            if isinstance(error, RemoteError) and error.code in REFUSED_REQUESTS:
                raise
            _ban(view, hop, "backward", error)
            failures += 1
            if failures > view.config.max_failovers:
                raise
            again: Trace = []  # the same blocks over other peers, from the same input
            await forward_through_swarm(
                view,
                inputs,
                rng=rng,
                attention_mask=attention_mask,
                blocks=(hop.start, hop.end),
                trace=again,
            )
            grad = await backward_through_swarm(
                view, again, grad, rng=rng, attention_mask=attention_mask, failures=failures
            )
    return grad


def kept_graphs(trace: Trace) -> list[tuple[str, str]]:
    """The graphs the peers of a traced forward kept for its backward: (peer id, token)."""
    return [(traced.hop.peer, traced.kept) for traced in trace if traced.kept is not None]


async def release_kept(view: SwarmView, kept: list[tuple[str, str]]) -> None:
    """Tell the peers that kept graphs (`kept_graphs`) for a forward no backward will follow
    to drop them now (`span.release`). A peer that is gone or fails to answer drops them in
    time anyway: nothing is raised."""
    by_peer: dict[str, list[str]] = {}
    for peer, token in kept:
        by_peer.setdefault(peer, []).append(token)
    for peer, tokens in by_peer.items():
        announcement = view.peers.get(peer)
        if announcement is None:  # gone from the view
            continue
        for first in range(0, len(tokens), MAX_RELEASE):
            request = Packet({"release": tokens[first : first + MAX_RELEASE]})
            try:
                await view.rpc.call(announcement.address, RELEASE, request, timeout=RELEASE_TIMEOUT)
            except LINK_ERRORS as error:
                logger.debug("peer %s did not release kept graphs: %s", peer[:8], error)


def _wire_mask(attention_mask: torch.Tensor | None) -> list[list[int]] | None:
    """The attention mask as `span.forward` and `span.backward` take it, made once per call."""
    return None if attention_mask is None else attention_mask.int().tolist()


def _ban(view: SwarmView, hop: Hop, what: str, error: BaseException) -> None:
    seconds = view.bans.ban(hop.peer)
    logger.warning(
        "peer %s failed a %s over blocks %d..%d (%s); banned for %.0f s",
        hop.peer[:8], what, hop.start, hop.end - 1, error, seconds,
    )  # fmt: skip


async def _call_hop(
    view: SwarmView,
    method: str,
    announcement: PeerAnnouncement,
    tensor: torch.Tensor,
    request: ForwardRequest,
) -> tuple[torch.Tensor, str | None]:
    """One peer's blocks forward (over `[batch, length, hidden]`) or backward (over that
    and the output gradient, stacked), as `request` (its tensor left to fill) asks, in the
    dtype the peer computes in: the result in the dtype of `tensor`, and the token of the
    graph the peer kept, if it did."""
    header, body = encode_tensor(tensor.to(DTYPES.get(announcement.dtype, torch.float32)))
    packet = Packet(replace(request, tensor=header).header(), body)
    reply = await _call_while_alive(
        view, announcement.address, method, packet, view.config.deadline(tensor)
    )
    output = decode_tensor(tensor_header(reply.header), reply.body)
    if output.shape != tensor.shape[-3:]:
        raise ProtocolError(f"{method}: a reply of shape {list(output.shape)}")
    return output.to(tensor.dtype), kept_token(reply.header)


async def _call_while_alive(
    view: SwarmView,
    address: PeerAddress,
    method: str,
    request: Packet,
    timeout: float,  # noqa: ASYNC109
) -> Packet:
    """`method` on `address`, given up as soon as the peer misses a ping."""
    reply: Packet | None = None
    failure: BaseException | None = None
    async with trio.open_nursery() as nursery:

        async def call() -> None:
            nonlocal reply, failure
            try:
                reply = await view.rpc.call(address, method, request, timeout=timeout)
            except LINK_ERRORS as error:
                failure = error
            nursery.cancel_scope.cancel()

        nursery.start_soon(call)
        while await _sleep_then_ping(view, address):
            pass
        nursery.cancel_scope.cancel()
    if failure is not None:
        raise failure
    if reply is None:
        peer = address.peer_id.short()
        what = method.removeprefix("span.")
        raise PeerUnresponsiveError(f"{peer} answered neither the {what} nor a ping")
    return reply


async def _sleep_then_ping(view: SwarmView, address: PeerAddress) -> bool:
    await trio.sleep(view.config.liveness_after)
    return await view.ping(address)
