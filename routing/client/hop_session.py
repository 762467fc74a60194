"""One hop of a client's chain: an inference session with one peer over blocks [start, end).

It keeps every input of every step it served (`inputs`), so that if the peer fails, a
replacement can be given the same history and rebuild the same cache. A step is `send` then
`receive`; with relay, the input may instead come from the previous peer, and only `receive`
is called (its input still joins the history; if the answer is late, the client sends its own
copy too, and the peer takes the first). `truncate` (speculative decoding: rejected drafts)
and `reorder` (beam search) change the history at once, and the peer's cache with the next
step.

A step that does not answer within its deadline is a failure like any other: the stream is
abandoned (the peer is told to cancel). While an answer is late, the peer must answer a ping
every `Liveness.every` seconds: one that does not (frozen, cut off) fails the step at once,
long before the deadline, while one that is only slow (a long prompt) is waited for.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AsyncExitStack, suppress
from dataclasses import dataclass

import torch
import trio

from security import SecurityError

from ..address import PeerAddress
from ..errors import CallTimeoutError, PeerUnresponsiveError, ProtocolError, RoutingError
from ..path_selection import Hop
from ..rpc import BidiStream, Packet, RPCHost
from ..span_protocol import (
    INFERENCE,
    RelayTarget,
    SessionFork,
    SessionOpened,
    SessionRequest,
    came_by_relay,
    parse_step,
    server_time,
    step_header,
    was_relayed,
)
from ..tensor_codec import decode_tensor, encode_tensor


@dataclass(frozen=True)
class StepTiming:
    """One step seen from the client: its whole time, and the part the peer says it spent."""

    seconds: float  # encode, send, wait, receive, decode (relayed: from the previous answer)
    server_seconds: float | None
    compute_seconds: float | None = None  # the peer's blocks alone, if it said
    relayed: bool = False  # the peer took the input from the previous peer, not the client


@dataclass(frozen=True)
class Liveness:
    """How a hop checks that a peer slow to answer is still there: `ping()` every `every` s."""

    every: float
    ping: Callable[[], Awaitable[bool]]


@dataclass(frozen=True)
class Resend:
    """For a step relayed to a hop: once its answer is `after` seconds late and the peer still
    answers pings, the client sends its own copy of the input, naming `relay` as the hops
    after; the peer takes whichever copy comes first."""

    relay: tuple[RelayTarget, ...]
    after: float = 0.0


LINK_ERRORS = (RoutingError, SecurityError)  # what a failing peer or link raises
CLOSE_TIMEOUT = 2.0  # seconds; closing a session never waits longer for its peer


class HopSession:
    """An open session on one peer; `step` sends hidden states and returns the span's output."""

    def __init__(
        self, hop: Hop, address: PeerAddress, dtype: torch.dtype, liveness: Liveness | None = None
    ) -> None:
        self.hop = hop
        self.address = address
        self.dtype = dtype  # what the peer computes in
        self._liveness = liveness
        self.inputs: list[torch.Tensor] = []  # sent so far, in order
        self._reorder: tuple[int, ...] = ()  # for the peer, with the next step
        self._position: int | None = None  # likewise: the cached tokens it is to keep
        self._stack = AsyncExitStack()
        self._stream: BidiStream | None = None
        self._opened: SessionOpened | None = None
        self._steps = 0
        self._began = 0.0  # when the step in flight was sent (or its input became known)
        self._in_flight = False  # a step awaits its answer
        self.timings: list[StepTiming] = []  # one per step, in order

    @property
    def tokens(self) -> int:
        return sum(int(x.shape[1]) for x in self.inputs)

    async def open(
        self,
        rpc: RPCHost,
        max_length: int,
        timeout: float,  # noqa: ASYNC109
        padding: Sequence[int] = (0,),
        *,
        adapter: str | None = None,
        fork: SessionFork | None = None,
    ) -> None:
        """Open the session: one row per entry of `padding`, its left padding; its steps run
        with the peer's LoRA `adapter` of that name, if given; with `fork`, the peer's cache
        begins as a copy of another session's (the history is the caller's to set)."""
        request = SessionRequest(
            self.hop.start, self.hop.end, max_length, len(padding), tuple(padding), adapter, fork
        )
        deadline = trio.current_time() + timeout
        try:
            with trio.fail_at(deadline):
                stream = await self._stack.enter_async_context(
                    rpc.open_stream(self.address, INFERENCE)
                )
                await stream.send(Packet(request.header()))
        except trio.TooSlowError:
            raise CallTimeoutError(f"{self.hop.peer[:8]} did not open a session") from None
        remaining = max(0.0, deadline - trio.current_time())
        reply = await self._next_reply(stream, remaining, awaited="the session request")
        opened = SessionOpened.parse(reply.header)
        if (opened.start, opened.end) != (self.hop.start, self.hop.end):
            raise ProtocolError(f"asked for blocks {self.hop.start}..{self.hop.end}, got {opened}")
        self._stream, self._opened = stream, opened

    @property
    def relay_target(self) -> RelayTarget | None:
        """Where another peer may send this hop its next step; None if the peer cannot."""
        opened = self._opened
        if opened is None or not opened.relay or self._stream is None:
            return None
        return RelayTarget(self.address, opened.session, opened.relay, self._steps, self._reorder)

    def fork(self, tokens: int) -> SessionFork | None:
        """What asks a new session on this peer to begin with this one's first `tokens`."""
        return None if self._opened is None else SessionFork(self._opened.session, tokens)

    def begin_as(self, source: HopSession, tokens: int) -> None:
        """This session was opened as `source.fork(tokens)`: it takes that history, and the
        row order due at `source`'s peer (its copy of the cache is in the old one)."""
        self.inputs = source.history(tokens)
        self._reorder = source._reorder

    def history(self, tokens: int) -> list[torch.Tensor]:
        """The first `tokens` of `inputs`, as one step."""
        return [torch.cat(self.inputs, dim=1)[:, :tokens]] if tokens else []

    def truncate(self, tokens: int) -> None:
        """Keep only the first `tokens` positions: in the history now, at the peer with the
        next step."""
        if tokens < self.tokens:
            self.inputs = self.history(tokens)
            self._position = tokens

    def reorder(self, order: Sequence[int]) -> None:
        """Row i becomes what row `order[i]` is: in the history now, at the peer with the
        next step."""
        if self.inputs:
            self.inputs = [torch.cat(self.inputs, dim=1)[list(order)]]
        pending = self._reorder
        self._reorder = tuple(pending[row] for row in order) if pending else tuple(order)

    async def step(self, hidden: torch.Tensor, timeout: float) -> torch.Tensor:  # noqa: ASYNC109
        """Run `hidden` through the span; on success it joins the history."""
        await self.send(hidden, timeout)
        output, _ = await self.receive(hidden, timeout)
        return output

    async def send(
        self,
        hidden: torch.Tensor,
        timeout: float,  # noqa: ASYNC109
        relay: tuple[RelayTarget, ...] = (),
    ) -> None:
        """Send the next step; `relay`: the hops after this one, for the peer to pass it on."""
        self.expect()
        await self._send_step(hidden, timeout, relay)

    def expect(self) -> None:
        """Start timing the next step: its input is on its way, sent or relayed."""
        self._began = time.perf_counter()
        self._in_flight = True

    async def receive(
        self,
        hidden: torch.Tensor,
        timeout: float,  # noqa: ASYNC109
        resend: Resend | None = None,
    ) -> tuple[torch.Tensor, bool]:
        """The answer to the step whose input is `hidden`, and whether the peer relayed its
        output to the next hop. On success `hidden` joins the history. With `resend` (a step
        relayed to this hop, whose relayed copy may be lost), the step's timing says which
        copy the peer took."""
        stream = self._stream
        if stream is None:
            raise ProtocolError("the session is not open")
        late = None
        if resend is not None:
            relay = resend.relay

            async def send_copy() -> None:
                await self._send_step(hidden, timeout, relay)

            late = (resend.after, send_copy)
        reply = await self._next_reply(stream, timeout, late)
        number, tensor = parse_step(reply.header)
        output = decode_tensor(tensor, reply.body)
        if number != self._steps or output.shape != hidden.shape:
            raise ProtocolError(f"step {self._steps}: a reply of shape {list(output.shape)}")
        self._steps += 1
        self._in_flight = False
        self._reorder, self._position = (), None
        self.inputs.append(hidden)
        self.timings.append(
            StepTiming(
                time.perf_counter() - self._began,
                server_time(reply.header),
                server_time(reply.header, "compute_ms"),
                came_by_relay(reply.header),
            )
        )
        return output.to(hidden.dtype), was_relayed(reply.header)

    async def _send_step(
        self,
        hidden: torch.Tensor,
        timeout: float,  # noqa: ASYNC109
        relay: tuple[RelayTarget, ...],
    ) -> None:
        if self._stream is None:
            raise ProtocolError("the session is not open")
        header, body = encode_tensor(hidden.to(self.dtype))
        fields = step_header(
            self._steps, header, relay=relay, reorder=self._reorder, position=self._position
        )
        packet = Packet(fields, body)
        try:
            with trio.fail_after(timeout):
                await self._stream.send(packet)
        except trio.TooSlowError:
            raise CallTimeoutError(f"{self.hop.peer[:8]} did not take a step in time") from None

    async def _next_reply(
        self,
        stream: BidiStream,
        timeout: float,  # noqa: ASYNC109
        late: tuple[float, Callable[[], Awaitable[None]]] | None = None,
        awaited: str = "the step",
    ) -> Packet:
        """The next reply within `timeout` s. Every `liveness.every` s without one, the peer
        must answer a ping; `late` = (seconds, action): the action runs once, after the first
        ping the peer answers that many seconds or more into the wait."""
        began = trio.current_time()
        deadline = began + timeout
        every = self._liveness.every if self._liveness else timeout
        while True:
            with trio.move_on_at(min(deadline, trio.current_time() + every)):
                return await stream.receive()
            if trio.current_time() >= deadline or self._liveness is None:
                raise CallTimeoutError(f"{self.hop.peer[:8]} did not answer in {timeout:.1f} s")
            if not await self._liveness.ping():
                raise PeerUnresponsiveError(
                    f"{self.hop.peer[:8]} answered neither {awaited} nor a ping"
                )
            if late is not None and trio.current_time() - began >= late[0]:
                await late[1]()
                late = None

    async def close(self, *, confirm: bool = False) -> None:
        """End the session (the peer frees its cache). `confirm`: unless a step is in flight
        (then the peer is told to cancel it), return once the peer has ended the session too,
        its cache freed; each part is bounded by `CLOSE_TIMEOUT`."""
        stream, self._stream = self._stream, None
        with trio.CancelScope(shield=True):
            if confirm and stream is not None and not self._in_flight:
                with trio.move_on_after(CLOSE_TIMEOUT), suppress(*LINK_ERRORS):
                    await stream.end()
                    await stream.receive()  # nothing comes but the peer's end
            with trio.move_on_after(CLOSE_TIMEOUT), suppress(*LINK_ERRORS):
                await self._stack.aclose()
