"""The span server: `span.info`, `span.forward`, `span.inference` and `span.relay` over RPC.

Thin handlers: parse the request (`routing.span_protocol`), decode tensors
(`routing.tensor_codec`), run them through the `InferenceScheduler` (which checks every bound
and shape), encode the answer. A `PeerError` or a malformed message becomes a
`HandlerError` with a code: the caller gets a typed `RemoteError`, and the peer goes on
serving everyone else. An inference stream owns one session: it is closed when the client
ends the stream, cancels it, disconnects, or stays silent (no step from it or relayed to it)
longer than the idle timeout.

Relay: a step may also arrive on a `span.relay` stream from the previous peer of the client's
chain, with the session's token. It runs like one from the client, under the same lock, and
is answered on the client's stream; if it fails, the session's stream fails with that error,
so the client hears of it. A step that names further hops is sent on to the first of them
(`RelayLinks`) before the client is answered.
"""

from __future__ import annotations

import hmac
import logging
import secrets
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import trio

from routing.errors import HandlerError, ProtocolError, StreamClosedError
from routing.rpc import BidiStream, CallContext, Packet, RPCHost
from routing.span_protocol import (
    BACKWARD,
    FORWARD,
    INFERENCE,
    INFO,
    RELAY,
    RELEASE,
    ForwardRequest,
    RelayJoin,
    SessionOpened,
    SessionRequest,
    parse_position,
    parse_relay,
    parse_reorder,
    parse_step,
    released_tokens,
    step_header,
)
from routing.tensor_codec import decode_tensor, encode_tensor

from .activity import STEP_BUCKETS, Activity, Durations
from .errors import HostShareError, PeerError, SessionNotFoundError
from .host_share import HostShares, client_host
from .relay_links import RelayLinks
from .scheduler import InferenceScheduler

logger = logging.getLogger(__name__)


@contextmanager
def _as_handler_errors() -> Iterator[None]:
    """Turn our typed failures into coded remote errors."""
    try:
        yield
    except PeerError as error:
        raise HandlerError(error.code, str(error)) from None
    except ProtocolError as error:
        raise HandlerError("bad_request", str(error)) from None


@dataclass(eq=False)
class _Session:
    """A session being served: its client's stream, its relay token and links, its lock."""

    id: str
    token: str
    owner: str  # the client's peer id: only it may fork the session
    client: BidiStream
    links: RelayLinks
    lock: trio.Lock = field(default_factory=trio.Lock)  # one step at a time
    steps: int = 0  # steps done: the next one must carry this number
    waiting: trio.CancelScope | None = None  # the wait for the client's next message
    failure: HandlerError | None = None  # a relayed step's, for the client's stream

    def fail(self, error: HandlerError) -> None:
        if self.failure is None:
            self.failure = error
        if self.waiting is not None:
            self.waiting.cancel()


class SpanServer:
    """Serves one backend's span on `rpc` once `register()`ed; `describe()` gives the
    `span.info` fields."""

    def __init__(
        self,
        rpc: RPCHost,
        scheduler: InferenceScheduler,
        describe: Callable[[], Mapping[str, Any]],
        *,
        idle_timeout: float = 300.0,
        relay_timeout: float = 2.0,
        accepting: Callable[[], bool] = lambda: True,
        host_share: float = 1.0,
    ) -> None:
        self.scheduler = scheduler
        self.describe = describe
        self.idle_timeout = idle_timeout
        self.relay_timeout = relay_timeout  # to open a relay stream and send one step on it
        self.accepting = accepting  # False while draining: new sessions are refused
        self.rpc = rpc  # serves the handlers, and dials the next peers for relay
        self.activity = Activity()  # what it served, for the operator's reports
        self.step_times = Durations(STEP_BUCKETS)  # and how long its steps took, for the metrics
        self._sessions: dict[str, _Session] = {}
        config = scheduler.backend.config
        self.hosts = HostShares(host_share, config.max_cache_tokens, config.max_sessions)

    def register(self) -> None:
        self.rpc.add_unary(INFO, self.info)
        self.rpc.add_unary(FORWARD, self.forward)
        self.rpc.add_unary(BACKWARD, self.backward)
        self.rpc.add_unary(RELEASE, self.release)
        self.rpc.add_stream(INFERENCE, self.inference)
        self.rpc.add_stream(RELAY, self.relay)

    async def info(self, request: Packet, context: CallContext) -> Packet:
        return Packet(dict(self.describe()))

    async def forward(self, request: Packet, context: CallContext) -> Packet:
        with _as_handler_errors():
            forward = ForwardRequest.parse(request.header)
            hidden = decode_tensor(forward.tensor, request.body)
            output, kept = await self.scheduler.forward(
                hidden, forward.start, forward.end, forward.attention_mask,
                adapter=forward.adapter, keep_for=str(context.peer_id) if forward.keep else None,
            )  # fmt: skip
        self.activity.forwards += 1
        header, body = encode_tensor(output)
        reply = {"tensor": header} if kept is None else {"tensor": header, "kept": kept}
        return Packet(reply, body)

    async def release(self, request: Packet, context: CallContext) -> Packet:
        with _as_handler_errors():
            tokens = released_tokens(request.header)
        return Packet({"released": await self.scheduler.release(tokens, str(context.peer_id))})

    async def backward(self, request: Packet, context: CallContext) -> Packet:
        with _as_handler_errors():
            backward = ForwardRequest.parse(request.header)
            pair = decode_tensor(backward.tensor, request.body)
            if pair.dim() != 4 or pair.shape[0] != 2:
                raise HandlerError("bad_request", "backward takes [2, batch, length, hidden]")
            output = await self.scheduler.backward(
                pair[0], pair[1], backward.start, backward.end, backward.attention_mask,
                adapter=backward.adapter, kept=backward.kept, owner=str(context.peer_id),
            )  # fmt: skip
        self.activity.forwards += 1
        header, body = encode_tensor(output)
        return Packet({"tensor": header}, body)

    async def inference(self, stream: BidiStream, context: CallContext) -> None:
        with _as_handler_errors():
            request = SessionRequest.parse((await self._receive(stream)).header)
            if not self.accepting():
                self.activity.refused += 1
                raise HandlerError("draining", "this peer takes no new sessions now")
            fork = request.fork
            if fork is not None:
                source = self._sessions.get(fork.session)
                if source is None or source.owner != str(context.peer_id):
                    raise SessionNotFoundError(f"no session {fork.session!r} of yours to fork")
            host = client_host(context)
            tokens = request.batch_size * request.max_length
            try:
                self.hosts.take(host, tokens)
            except HostShareError:
                self.activity.refused += 1
                raise
            session_id = f"{context.peer_id.short()}-{secrets.token_hex(6)}"
            session = _Session(
                session_id,
                secrets.token_hex(16),
                str(context.peer_id),
                stream,
                RelayLinks(self.rpc, self.relay_timeout),
            )
            try:  # opened inside: a cancel that lands as the session opens still closes it
                try:
                    info = await self.scheduler.open_session(
                        session_id,
                        request.max_length,
                        request.batch_size,
                        request.start,
                        request.end,
                        request.padding,
                        adapter=request.adapter,
                        fork_of=None if fork is None else fork.session,
                        fork_tokens=0 if fork is None else fork.tokens,
                    )
                except PeerError:
                    self.activity.refused += 1
                    raise
                self.activity.sessions += 1
                if fork is not None:
                    self.activity.forked += 1
                    self.activity.forked_tokens += fork.tokens * request.batch_size
                self._sessions[session_id] = session
                opened = SessionOpened(
                    session_id, info.start, info.end, info.max_length, session.token
                )
                await stream.send(Packet(opened.header()))
                while (packet := await self._next_from_client(session)) is not None:
                    await self._step(session, packet)
            finally:
                self._sessions.pop(session_id, None)
                self.hosts.give_back(host, tokens)
                with trio.CancelScope(shield=True):
                    await session.links.aclose()
                    await self.scheduler.close_session(session_id)

    async def relay(self, stream: BidiStream, context: CallContext) -> None:
        """Steps of one session, pushed by the peer before this one in the client's chain."""
        with _as_handler_errors():
            join = RelayJoin.parse((await self._receive(stream)).header)
            session = self._sessions.get(join.session)
            if session is None or not hmac.compare_digest(session.token, join.token):
                raise HandlerError("bad_relay", "no such session here, or a wrong token")
            while True:
                try:
                    packet = await self._receive(stream)
                except StreamClosedError:  # the previous peer is done
                    return
                if self._sessions.get(join.session) is not session:
                    raise HandlerError("session_closed", "the session has ended")
                try:
                    with _as_handler_errors():
                        await self._step(session, packet, from_relay=True)
                except HandlerError as error:  # the client must hear of it too
                    session.fail(error)
                    raise
                if session.waiting is not None:  # the session is not idle
                    session.waiting.deadline = trio.current_time() + self.idle_timeout

    async def _step(self, session: _Session, packet: Packet, *, from_relay: bool = False) -> None:
        """Run one step, send the output on if the step says so, answer the client."""
        async with session.lock:
            began = time.perf_counter()
            step, tensor = parse_step(packet.header)
            if step < session.steps:  # the other copy of a step both relayed and sent came first
                return
            if step > session.steps:
                raise HandlerError("step_order", f"step {step} where {session.steps} was due")
            relay = parse_relay(packet.header)
            position = parse_position(packet.header)
            hidden = decode_tensor(tensor, packet.body)
            done = await self.scheduler.step_timed(
                session.id, hidden, reorder=parse_reorder(packet.header), position=position
            )
            output, compute = done.output, done.compute_seconds
            session.steps += 1
            self.activity.steps += 1
            self.activity.merged += done.merged
            self.activity.tokens += int(hidden.shape[0]) * int(hidden.shape[1])
            header, body = encode_tensor(output)
            relayed = None
            if relay:
                following = step_header(
                    relay[0].step,
                    header,
                    relay=relay[1:],
                    reorder=relay[0].reorder,
                    position=position,
                )
                onward = Packet(following, body)
                relayed = await session.links.send(relay[0], onward)
            spent_ms = (time.perf_counter() - began) * 1000
            self.step_times.observe(spent_ms / 1000)
            self.activity.compute_seconds += compute
            reply = step_header(
                step, header, spent_ms, compute * 1000, relayed=relayed, from_relay=from_relay
            )
            await session.client.send(Packet(reply, body))

    async def _next_from_client(self, session: _Session) -> Packet | None:
        """The client's next message; None once it ended the session. Raises the failure of
        a relayed step, or `session_idle` after `idle_timeout` without any step."""
        if session.failure is not None:
            raise session.failure
        with trio.CancelScope(deadline=trio.current_time() + self.idle_timeout) as waiting:
            session.waiting = waiting
            try:
                return await session.client.receive()
            except StreamClosedError:
                return None
            finally:
                session.waiting = None
        if session.failure is not None:
            raise session.failure
        raise HandlerError("session_idle", f"no step for {self.idle_timeout} s")

    async def _receive(self, stream: BidiStream) -> Packet:
        with trio.move_on_after(self.idle_timeout):
            return await stream.receive()
        raise HandlerError("session_idle", f"no message for {self.idle_timeout} s")
