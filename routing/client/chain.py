"""A generation's inference sessions along a chain of peers, surviving peers that fail.

`step(hidden)` pushes hidden states through every hop in order. With relay (the default,
where the peers offer it), the client sends a step to the first hop only, naming the hops
after it: each peer passes its output straight to the next one and also answers the client,
so the client is out of the path between peers but still holds every hop's input. A peer that
could not pass its output on says so, and the client sends that hop its input itself (and
stops asking that peer to relay). A relayed hop that is late but answers a ping is sent the
client's own copy of its input as well; it takes whichever comes first, and if that was the
client's, the previous peer is no longer asked to relay.

When a hop fails (an error from the peer, a broken connection, a step past its deadline, no
answer to a ping while a step is late), the chain:
1. bans that peer (exponential backoff) and drops its session;
2. routes only the blocks it served, [start, end), over the peers left (re-reading the DHT if
   nobody is left);
3. replays the inputs that hop had received into the new hops, in one step each, so their
   caches hold exactly what the lost peer's did;
4. retries the current step from that hop on.
Hops after a failed one that a relayed step may or may not have reached are rebuilt the same
way, on the same peers if the route still picks them, without a ban.
A peer that refuses to open a session is not banned when it only lacks room (it is seen as
full, and the peers' numbers are asked afresh before the client gives up for want of room:
`NoRoomError`) or takes no such request (it is left out of this opening only). A recovery
that finds every replica full waits for room (`ClientConfig.room_wait`), asking the peers
again every few seconds; a new chain is told at once.
The computation is the same, so the generated tokens do not change (a hop's history takes a
beam search's `reorder` and a speculative decoding's `truncate` as its peer's cache does).
`fork(n)` opens a chain whose every hop's peer copies the first n tokens of this chain's
session there (a history shared by several generations is computed once); a hop whose peer
cannot is routed anew and replayed, as in a recovery.
`failovers` records each recovery (for the demo and the benchmark).
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial

import torch
import trio

from ..announcement import PeerAnnouncement
from ..errors import RemoteError
from ..path_selection import Hop, NoRoomError, NoRouteError
from ..rpc import RPCHost
from ..span_protocol import NO_ROOM, REFUSED_REQUEST, RelayTarget, SessionFork
from .hop_session import LINK_ERRORS, HopSession, Liveness, Resend, StepTiming
from .swarm_view import SwarmView

logger = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
FIRST_ROOM_CHECK = 0.5  # seconds before full peers are asked again, doubling up to the last
LAST_ROOM_CHECK = 4.0


@dataclass(frozen=True)
class Failover:
    """One recovery: which peer failed, over which blocks, and what it cost."""

    peer: str
    start: int
    end: int
    error: str
    seconds: float  # from the failure to the replacement's rebuilt cache
    replayed_tokens: int


class ChainFailedError(NoRouteError):
    """No peer left for some blocks after the ones that could serve them failed (under a
    `condition`, such as room for the session, if only that is missing)."""

    def __init__(
        self, missing: Sequence[int], last_error: BaseException, condition: str = ""
    ) -> None:
        super().__init__(missing, condition=condition)
        self.args = (f"{self.args[0]} any more; the last failure: {last_error}",)


class InferenceChain:
    """Use as `async with InferenceChain(view, rpc, max_length) as chain: await chain.step(h)`.

    `padding`: one entry per row of the batch, how many of its first tokens are left padding
    (prompts of different lengths); one row without padding by default."""

    def __init__(
        self, view: SwarmView, rpc: RPCHost, max_length: int, padding: Sequence[int] = (0,)
    ) -> None:
        self.view = view
        self.rpc = rpc
        self.max_length = max_length
        self.padding = tuple(padding)
        self.hops: list[HopSession] = []
        self.failovers: list[Failover] = []
        self._closed = False
        self._not_relaying: set[str] = set()  # peers that could not pass an output on

    @property
    def route(self) -> list[Hop]:
        return [hop.hop for hop in self.hops]

    @property
    def timings(self) -> list[tuple[Hop, list[StepTiming]]]:
        """Per hop of the current route, the timing of every step it served."""
        return [(hop.hop, hop.timings) for hop in self.hops]

    async def __aenter__(self) -> InferenceChain:
        if not self.view.peers:
            await self.view.refresh()
        self.hops = await self._open_range(0, self.view.num_blocks, [])
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Close every session (shielded, bounded), and return once the peers have freed
        their caches; a step still in flight fails, unrouted."""
        self._closed = True
        hops, self.hops = self.hops, []
        async with trio.open_nursery() as nursery:
            for hop in hops:
                nursery.start_soon(partial(hop.close, confirm=True))

    async def fork(self, tokens: int, max_length: int) -> InferenceChain:
        """A new chain, open, of sessions of `max_length` whose caches hold this chain's first
        `tokens`: each hop's peer copies them from this chain's session there, so nothing is
        computed again. Where that fails (the peer is gone, or has no room), those blocks are
        routed anew and the history replayed, as after a failure."""
        chain = InferenceChain(self.view, self.rpc, max_length, self.padding)
        try:
            for source in self.hops:
                chain.hops += await chain._fork_hop(source, tokens)
        except BaseException:
            await chain.close()
            raise
        return chain

    async def _fork_hop(self, source: HopSession, tokens: int) -> list[HopSession]:
        announcement = self.view.peers.get(source.hop.peer)
        fork = source.fork(tokens)
        if announcement is not None and fork is not None:
            try:
                session = await self._open(source.hop, announcement, fork)
            except LINK_ERRORS as error:
                logger.info("peer %s did not fork a session (%s); computing its blocks again",
                            source.hop.peer[:8], error)  # fmt: skip
            else:
                session.begin_as(source, tokens)
                return [session]
        return await self._open_range(source.hop.start, source.hop.end, source.history(tokens))

    def truncate(self, tokens: int) -> None:
        """Before the next step, every hop's session keeps only its first `tokens` positions
        (speculative decoding drops the drafts the model did not take)."""
        for hop in self.hops:
            hop.truncate(tokens)

    def reorder(self, order: Sequence[int]) -> None:
        """Before the next step, row i of every hop's session becomes what row `order[i]` is
        (beam search keeps the best continuations); rows of different padding do not mix."""
        if list(order) == list(range(len(order))):
            return
        for hop in self.hops:
            hop.reorder(order)

    async def step(self, hidden: torch.Tensor) -> torch.Tensor:
        """Hidden states of new positions in, the last block's output out."""
        index = 0
        failures = 0
        while index < len(self.hops):
            onward = self._relay_targets(index)
            at, sent = index, False
            try:
                await self.hops[index].send(hidden, self.view.config.deadline(hidden), onward)
                sent = True
                for at in range(index, index + len(onward) + 1):
                    hop = self.hops[at]
                    resend = None
                    if at > index:  # relayed: if it is late, the client sends a copy too
                        hop.expect()
                        resend = Resend(onward[at - index :], self._copy_after(at))
                    output, relayed = await hop.receive(
                        hidden, self.view.config.deadline(hidden), resend
                    )
                    self.view.bans.succeeded(hop.hop.peer)
                    if at > index and not hop.timings[-1].relayed:  # the copy was first
                        self._not_relaying.add(self.hops[at - 1].hop.peer)
                    hidden = output
                    if at < index + len(onward) and not relayed:
                        self._not_relaying.add(hop.hop.peer)
                        break
                index = at + 1
            except LINK_ERRORS as error:
                failures += 1
                if self._closed or failures > self.view.config.max_failovers:
                    raise
                if sent:  # the hops after it that this step may have reached
                    await self._rebuild(at + 1, index + len(onward) + 1)
                self.hops[at : at + 1] = await self._replace(self.hops[at], error)
                index = at
        return hidden

    def _copy_after(self, at: int) -> float:
        """How late relayed hop `at` may be before the client sends its own copy of the input:
        twice what the previous hop's blocks took on this step, scaled to this hop's blocks
        (a long prompt is slow at every hop; a lost relay is not)."""
        previous, this = self.hops[at - 1].hop, self.hops[at].hop
        compute = self.hops[at - 1].timings[-1].compute_seconds or 0.0
        return 2 * compute * (this.end - this.start) / (previous.end - previous.start)

    def _relay_targets(self, index: int) -> tuple[RelayTarget, ...]:
        """The hops after `index` that a step sent to it can be relayed to, in order: up to
        one that cannot take it, or one in another dtype (the client converts for it)."""
        targets: list[RelayTarget] = []
        if not self.view.config.relay:
            return ()
        for previous, hop in itertools.pairwise(self.hops[index:]):
            target = hop.relay_target
            if (
                target is None
                or previous.hop.peer in self._not_relaying
                or previous.dtype != hop.dtype
            ):
                break
            targets.append(target)
        return tuple(targets)

    async def _rebuild(self, start: int, stop: int) -> None:
        """New sessions for hops[start:stop], which a relayed step may or may not have
        reached: their caches are rebuilt from their inputs (no ban, no failover)."""
        for index in reversed(range(start, min(stop, len(self.hops)))):
            stale = self.hops[index]
            await stale.close()
            self.hops[index : index + 1] = await self._open_range(
                stale.hop.start, stale.hop.end, stale.inputs, room_wait=self.view.config.room_wait
            )

    async def _replace(self, lost: HopSession, error: BaseException) -> list[HopSession]:
        began = time.monotonic()
        seconds = self.view.bans.ban(lost.hop.peer)
        logger.warning(
            "peer %s failed on blocks %d..%d (%s); banned for %.0f s, re-routing",
            lost.hop.peer[:8], lost.hop.start, lost.hop.end - 1, error, seconds,
        )  # fmt: skip
        await lost.close()
        replacement = await self._open_range(
            lost.hop.start, lost.hop.end, lost.inputs, error, self.view.config.room_wait
        )
        self.failovers.append(
            Failover(
                peer=lost.hop.peer,
                start=lost.hop.start,
                end=lost.hop.end,
                error=str(error),
                seconds=time.monotonic() - began,
                replayed_tokens=lost.tokens,
            )
        )
        return replacement

    async def _open_range(
        self,
        start: int,
        end: int,
        history: list[torch.Tensor],
        cause: BaseException | None = None,
        room_wait: float = 0.0,
    ) -> list[HopSession]:
        """Sessions over [start, end) whose caches hold `history` (the inputs at `start`).

        `cause`: the failure that lost these blocks, named if no peer is left for them.
        `room_wait`: seconds to wait for room where only room is missing (a recovery waits;
        a new chain is told at once).
        """
        refused: set[str] = set()  # peers that take no such request (not banned: not broken)
        last_error: BaseException | None = cause
        tokens = self.max_length * len(self.padding)  # the cache the sessions reserve
        refreshed = rechecked = False
        deadline = trio.current_time() + room_wait
        pause = FIRST_ROOM_CHECK
        tries = 0
        while tries < self.view.config.max_failovers:
            peers = self.view.peers  # as routed (a refresh may replace the view meanwhile)
            try:
                route = self.view.route(start, end, tokens, self.max_length, frozenset(refused))
            except NoRouteError as error:
                room_only = isinstance(error, NoRoomError)
                if room_only and not rechecked:  # the room the records show is a minute old
                    await self.view.recheck(start, end)
                    rechecked = True
                    continue
                if not refreshed:  # the swarm may have changed since the view was read
                    await self.view.refresh()
                    refreshed = True
                    continue
                if room_only and trio.current_time() < deadline:
                    await self._wait_for_room(start, end, pause, deadline)
                    pause = min(2 * pause, LAST_ROOM_CHECK)
                    continue
                if last_error is not None:
                    raise ChainFailedError(
                        error.missing, last_error, error.condition
                    ) from last_error
                raise
            tries += 1
            opened: list[HopSession] = []
            current = route[0]
            try:
                replay = torch.cat(history, dim=1) if history else None
                for current in route:
                    session = await self._open(current, peers[current.peer])
                    opened.append(session)
                    if replay is not None:
                        replay = await session.step(replay, self.view.config.deadline(replay))
                return opened
            except LINK_ERRORS as error:
                for session in opened:
                    await session.close()
                code = error.code if isinstance(error, RemoteError) else ""
                if code in NO_ROOM:
                    logger.info("peer %s has no room for the session now", current.peer[:8])
                    self.view.mark_full(current.peer)
                    continue
                last_error = error
                if code in REFUSED_REQUEST:
                    logger.warning("peer %s refused the session: %s", current.peer[:8], error)
                    refused.add(current.peer)
                else:
                    logger.warning("peer %s failed joining the chain: %s", current.peer[:8], error)
                    self.view.bans.ban(current.peer)
            except BaseException:  # cancelled (Ctrl-C in the facade): leave nothing open
                for session in opened:
                    await session.close()
                raise
        raise ChainFailedError(list(range(start, end)), last_error or RuntimeError("no route"))

    async def _wait_for_room(self, start: int, end: int, pause: float, deadline: float) -> None:
        """Every peer for blocks [start, end) is full: wait `pause` (to `deadline` at most),
        then ask them for their numbers again."""
        if pause == FIRST_ROOM_CHECK:
            left = deadline - trio.current_time()
            logger.warning("every peer for blocks %d..%d is full; waiting for room (%.0f s at "
                           "most)", start, end - 1, left)  # fmt: skip
        await trio.sleep(min(pause, max(deadline - trio.current_time(), 0.0)))
        await self.view.recheck(start, end)

    async def _open(
        self, hop: Hop, announcement: PeerAnnouncement, fork: SessionFork | None = None
    ) -> HopSession:
        dtype = DTYPES.get(announcement.dtype, torch.float32)
        ping = partial(self.view.ping, announcement.address)
        liveness = Liveness(self.view.config.liveness_after, ping)
        session = HopSession(hop, announcement.address, dtype, liveness)
        try:
            await session.open(
                self.rpc,
                self.max_length,
                self.view.config.open_timeout,
                self.padding,
                adapter=self.view.adapter,
                fork=fork,
            )
        except BaseException:
            await session.close()
            raise
        return session
