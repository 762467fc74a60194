"""`RelayLinks`: the `span.relay` streams one session sends its outputs on (see span_protocol).

When a client relays a step through its chain, this peer sends its output straight to the
next hop's session instead of leaving it to the client. One stream per target session is
opened at its first relayed step and reused for the next ones; at most `MAX_LINKS` stay open
(the oldest is closed first: a client names a new one only after a failover). If the stream
cannot be opened within `timeout` (a next peer this one cannot reach), or the send fails or
does not go out within `timeout` plus a second per `MIN_RATE` bytes (a next peer that stopped
reading), the stream is dropped and `send` returns False: the peer tells its client, which
then sends that hop its input itself. (If the failed send arrives after all, the next peer
ignores whichever copy comes second.)
"""

from __future__ import annotations

import logging
from contextlib import AsyncExitStack

import trio

from routing.errors import RoutingError
from routing.rpc import BidiStream, Packet, RPCHost
from routing.span_protocol import RELAY, RelayJoin, RelayTarget
from security import SecurityError

__all__ = ["MAX_LINKS", "MIN_RATE", "RelayLinks"]

logger = logging.getLogger(__name__)

MAX_LINKS = 4  # relay streams one session keeps open
MIN_RATE = 1_000_000  # bytes per second a relay send is allowed beyond `timeout`


class RelayLinks:
    """The open relay streams of one session, by target; `aclose()` when the session ends."""

    def __init__(self, rpc: RPCHost, timeout: float) -> None:
        self._rpc = rpc
        self._timeout = timeout
        self._streams: dict[tuple[str, str], tuple[AsyncExitStack, BidiStream]] = {}

    async def send(self, target: RelayTarget, packet: Packet) -> bool:
        """Send one step to `target`; False if it could not go out (the stream is dropped)."""
        bound = self._timeout + len(packet.body) / MIN_RATE
        try:
            stream = None
            with trio.move_on_after(self._timeout):
                stream = await self._stream(target)
            if stream is None:
                problem = f"no stream in {self._timeout:.1f} s"
            else:
                with trio.move_on_after(bound):
                    await stream.send(packet)  # once queued, a message goes out whole
                    return True
                problem = f"not sent in {bound:.1f} s"
        except (RoutingError, SecurityError, OSError) as error:
            problem = str(error)
        logger.info("cannot relay to %s: %s", target.address, problem)
        await self._drop(_key(target))
        return False

    async def aclose(self) -> None:
        for key in list(self._streams):
            await self._drop(key)

    async def _stream(self, target: RelayTarget) -> BidiStream:
        entry = self._streams.get(_key(target))
        if entry is not None:
            return entry[1]
        while len(self._streams) >= MAX_LINKS:
            await self._drop(next(iter(self._streams)))
        stack = AsyncExitStack()
        try:
            stream = await stack.enter_async_context(self._rpc.open_stream(target.address, RELAY))
            await stream.send(Packet(RelayJoin(target.session, target.token).header()))
        except BaseException:
            with trio.CancelScope(shield=True):
                await stack.aclose()
            raise
        self._streams[_key(target)] = (stack, stream)
        return stream

    async def _drop(self, key: tuple[str, str]) -> None:
        entry = self._streams.pop(key, None)
        if entry is not None:
            with trio.CancelScope(shield=True), trio.move_on_after(self._timeout):
                await entry[0].aclose()


def _key(target: RelayTarget) -> tuple[str, str]:
    """One stream per session of a peer (the step number changes with every step)."""
    return str(target.address), target.session
