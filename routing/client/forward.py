"""Batch forward through the swarm: whole sequences' hidden states through every block.

Stateless (`span.forward`: no session, no cache), so each call picks its chain for
throughput rather than latency: `SwarmView.spread` draws, at every block boundary, a replica
in proportion to its spare throughput, and concurrent calls spread over the swarm. A hop that
fails is banned like a failing hop of an inference chain, and the blocks it was to run are
drawn again from the peers left; nothing needs replaying. While a call is unanswered, the
peer must answer a ping every `liveness_after` seconds, as a hop of a chain must. A request
the peers refuse as such (`invalid_request`: too many tokens, too long) is raised at once,
not retried.
"""

from __future__ import annotations

import logging
import random

import torch
import trio

from ..address import PeerAddress
from ..announcement import PeerAnnouncement
from ..errors import PeerUnresponsiveError, ProtocolError, RemoteError
from ..path_selection import Hop, NoRouteError
from ..rpc import Packet
from ..span_protocol import FORWARD, forward_header, tensor_header
from ..tensor_codec import decode_tensor, encode_tensor
from .chain import DTYPES, ChainFailedError
from .hop_session import LINK_ERRORS
from .swarm_view import SwarmView

__all__ = ["forward_through_swarm"]

logger = logging.getLogger(__name__)

REFUSED_REQUESTS = frozenset({"invalid_request", "bad_request"})  # the same on every peer


async def forward_through_swarm(
    view: SwarmView,
    hidden: torch.Tensor,
    *,
    rng: random.Random,
    attention_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """`hidden` ([batch, length, hidden], positions 0..length-1) through blocks 0..N-1;
    `attention_mask` ([batch, length], 0 for padding) as transformers' model takes it."""
    mask = None if attention_mask is None else attention_mask.int().tolist()
    config = view.config
    tokens = int(hidden.shape[0] * hidden.shape[1])
    timeout = config.step_timeout + config.step_timeout_per_token * tokens
    boundary, failures, refreshed = 0, 0, False
    last_error: BaseException | None = None
    while boundary < view.num_blocks:
        peers = view.peers  # as drawn (a refresh may replace the view meanwhile)
        try:
            hop = view.spread(boundary, rng)[0]
        except NoRouteError as error:
            if not refreshed:  # the swarm may have changed since the view was read
                await view.refresh()
                refreshed = True
                continue
            if last_error is not None:
                raise ChainFailedError(error.missing, last_error) from last_error
            raise
        try:
            hidden = await _forward_hop(view, hop, peers[hop.peer], hidden, mask, timeout)
        except LINK_ERRORS as error:
            if isinstance(error, RemoteError) and error.code in REFUSED_REQUESTS:
                raise
            failures += 1
            last_error = error
            seconds = view.bans.ban(hop.peer)
            logger.warning(
                "peer %s failed a forward over blocks %d..%d (%s); banned for %.0f s",
                hop.peer[:8], hop.start, hop.end - 1, error, seconds,
            )  # fmt: skip
            if failures > config.max_failovers:
                raise
            continue
        boundary = hop.end
    return hidden


async def _forward_hop(
    view: SwarmView,
    hop: Hop,
    announcement: PeerAnnouncement,
    hidden: torch.Tensor,
    mask: list[list[int]] | None,
    timeout: float,  # noqa: ASYNC109
) -> torch.Tensor:
    """One peer's blocks [hop.start, hop.end) over `hidden`, in the dtype it computes in."""
    header, body = encode_tensor(hidden.to(DTYPES.get(announcement.dtype, torch.float32)))
    request = Packet(forward_header(hop.start, hop.end, header, mask), body)
    reply = await _call_while_alive(view, announcement.address, request, timeout)
    output = decode_tensor(tensor_header(reply.header), reply.body)
    if output.shape != hidden.shape:
        raise ProtocolError(f"forward: a reply of shape {list(output.shape)}")
    return output.to(hidden.dtype)


async def _call_while_alive(
    view: SwarmView,
    address: PeerAddress,
    request: Packet,
    timeout: float,  # noqa: ASYNC109
) -> Packet:
    """`span.forward` on `address`, given up as soon as the peer misses a ping."""
    reply: Packet | None = None
    failure: BaseException | None = None
    async with trio.open_nursery() as nursery:

        async def call() -> None:
            nonlocal reply, failure
            try:
                reply = await view.rpc.call(address, FORWARD, request, timeout=timeout)
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
        raise PeerUnresponsiveError(f"{peer} answered neither the forward nor a ping")
    return reply


async def _sleep_then_ping(view: SwarmView, address: PeerAddress) -> bool:
    await trio.sleep(view.config.liveness_after)
    return await view.ping(address)
