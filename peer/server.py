"""The span server: `span.info`, `span.forward` and `span.inference` over an RPC host.

Thin handlers: parse the request (`routing.span_protocol`), decode tensors
(`routing.tensor_codec`), run them through the `InferenceScheduler` (which checks every bound
and shape), encode the answer. A `PeerError` or a malformed message becomes a
`HandlerError` with a code: the caller gets a typed `RemoteError`, and the peer goes on
serving everyone else. An inference stream owns one session: it is closed when the client
ends the stream, cancels it, disconnects, or stays silent longer than the idle timeout.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import trio

from routing.errors import HandlerError, ProtocolError, StreamClosedError
from routing.rpc import BidiStream, CallContext, Packet, RPCHost
from routing.span_protocol import (
    FORWARD,
    INFERENCE,
    INFO,
    SessionOpened,
    SessionRequest,
    parse_forward,
    parse_step,
    step_header,
)
from routing.tensor_codec import decode_tensor, encode_tensor

from .errors import PeerError
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


class SpanServer:
    """Serves one backend's span; `describe()` gives the `span.info` fields."""

    def __init__(
        self,
        scheduler: InferenceScheduler,
        describe: Callable[[], Mapping[str, Any]],
        *,
        idle_timeout: float = 300.0,
        accepting: Callable[[], bool] = lambda: True,
    ) -> None:
        self.scheduler = scheduler
        self.describe = describe
        self.idle_timeout = idle_timeout
        self.accepting = accepting  # False while draining: new sessions are refused

    def register(self, rpc: RPCHost) -> None:
        rpc.add_unary(INFO, self.info)
        rpc.add_unary(FORWARD, self.forward)
        rpc.add_stream(INFERENCE, self.inference)

    async def info(self, request: Packet, context: CallContext) -> Packet:
        return Packet(dict(self.describe()))

    async def forward(self, request: Packet, context: CallContext) -> Packet:
        with _as_handler_errors():
            start, end, tensor = parse_forward(request.header)
            hidden = decode_tensor(tensor, request.body)
            output = await self.scheduler.forward(hidden, start, end)
        header, body = encode_tensor(output)
        return Packet({"tensor": header}, body)

    async def inference(self, stream: BidiStream, context: CallContext) -> None:
        with _as_handler_errors():
            request = SessionRequest.parse((await self._receive(stream)).header)
            if not self.accepting():
                raise HandlerError("draining", "this peer takes no new sessions now")
            session_id = f"{context.peer_id.short()}-{secrets.token_hex(6)}"
            try:  # opened inside: a cancel that lands as the session opens still closes it
                info = await self.scheduler.open_session(
                    session_id, request.max_length, request.batch_size, request.start, request.end
                )
                opened = SessionOpened(session_id, info.start, info.end, info.max_length)
                await stream.send(Packet(opened.header()))
                while True:
                    try:
                        packet = await self._receive(stream)
                    except StreamClosedError:  # the client ended the session
                        return
                    began = time.perf_counter()
                    step, tensor = parse_step(packet.header)
                    output, compute = await self.scheduler.step_timed(
                        session_id, decode_tensor(tensor, packet.body)
                    )
                    header, body = encode_tensor(output)
                    spent_ms = (time.perf_counter() - began) * 1000
                    reply = step_header(step, header, spent_ms, compute * 1000)
                    await stream.send(Packet(reply, body))
            finally:
                with trio.CancelScope(shield=True):
                    await self.scheduler.close_session(session_id)

    async def _receive(self, stream: BidiStream) -> Packet:
        with trio.move_on_after(self.idle_timeout):
            return await stream.receive()
        raise HandlerError("session_idle", f"no message for {self.idle_timeout} s")
