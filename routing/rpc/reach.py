"""Can others dial us? A node asks a peer it knows to dial it back (the built-in "reach").

A node that announces an address nobody can dial (behind NAT with no port forwarded, a
firewall, a wrong `--public-host`) would be listed but never used, and would never know.
So once it serves, it asks one of its initial peers to open a new connection to the address
it announces and complete the handshake there. The answer says whether that worked, and
where the caller was seen from (behind NAT: its public address).

The peer asked dials only the caller itself: the address must carry the caller's own peer
id (the handshake proves it is the caller who answers), and its host must resolve to the
host the caller's connection comes from, so that nobody can make it dial a third party;
a few checks run at once at most. `reach_handler` is that handler, `check_reach` the
asking side, `ask_reach` asks peers in turn until one reached us or two could not, and
`log_reach` is what a node runs once it has joined: `ask_reach` of its initial peers, and
the outcome logged (a warning, with what to do, if unreached). A peer asks again now and
then (`peer.reachability`), where it listens even while it serves through a relay.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import trio

from security import SecurityError

from ..address import PeerAddress
from ..errors import AddressError, HandlerError, ProtocolError, RoutingError
from .packet import CallContext, Packet, UnaryHandler

if TYPE_CHECKING:
    from .host import RPCHost

__all__ = [
    "REACH",
    "Reach",
    "ask_reach",
    "check_reach",
    "log_reach",
    "not_the_caller",
    "reach_handler",
]

logger = logging.getLogger(__name__)

REACH = "reach"
DIAL_TIMEOUT = 5.0  # seconds for the dial and the handshake
CALL_SLACK = 3.0  # seconds more for the call that asks for it
OPINIONS = 2  # peers that must fail to reach us before we believe it (if there are so many)
CONCURRENT_CHECKS = 4  # more at once are refused


@dataclass(frozen=True)
class Reach:
    """What the peer asked found: whether it reached us, and the host it saw us call from."""

    reached: bool
    seen_from: str
    reason: str = ""  # why not


Probe = Callable[[PeerAddress], Awaitable[None]]  # a new connection and handshake there


def reach_handler(probe: Probe) -> UnaryHandler:
    """The handler of "reach", where `probe(address)` opens a new connection to `address`
    and completes a handshake there (`RPCHost.probe`)."""
    checks = trio.CapacityLimiter(CONCURRENT_CHECKS)

    async def handle(request: Packet, context: CallContext) -> Packet:
        try:
            address = PeerAddress.parse(str(request.header.get("address")))
        except AddressError as error:
            raise HandlerError("bad_request", f"address: {error}") from None
        if address.peer_id != context.peer_id:
            raise HandlerError("bad_request", "a peer may only ask to be dialled itself")
        if not context.remote_host:  # it called through a circuit: where from is unknown
            raise HandlerError("unknown_host", "called through a circuit, it cannot say")
        try:
            checks.acquire_on_behalf_of_nowait(context)
        except trio.WouldBlock:
            raise HandlerError("busy", "too many reach checks at once") from None
        try:
            reason = await _dial_back(probe, address, context)
        finally:
            checks.release_on_behalf_of(context)
        return Packet({"reached": not reason, "seen_from": context.remote_host, "reason": reason})

    return handle


async def not_the_caller(address: PeerAddress, host: str) -> str:
    """Why `address` is not at `host`, where a call came from ("" if its host resolves to
    it): a peer dials only those who call it, at their own host."""
    try:
        found = await trio.socket.getaddrinfo(address.host, address.port)
    except OSError as error:
        return f"{address.host} does not resolve: {error}"
    if host not in {str(info[4][0]) for info in found}:
        return f"{address.host} is not {host}, where the call came from"
    return ""


async def _dial_back(probe: Probe, address: PeerAddress, context: CallContext) -> str:
    """Why `address` could not be reached as the caller ("" if it was)."""
    if reason := await not_the_caller(address, context.remote_host):
        return reason
    try:
        with trio.fail_after(DIAL_TIMEOUT):
            await probe(address)
    except trio.TooSlowError:
        return f"no answer at {address.host}:{address.port} within {DIAL_TIMEOUT:g} s"
    except (OSError, SecurityError, RoutingError, trio.BrokenResourceError) as error:
        return f"{address.host}:{address.port}: {error}"
    return ""


async def check_reach(rpc: RPCHost, via: PeerAddress, address: PeerAddress | None = None) -> Reach:
    """Ask `via` to dial us back at `address` (by default, ours). Raises RoutingError if it
    cannot answer."""
    request = Packet({"address": str(address or rpc.address)})
    reply = await rpc.call(via, REACH, request, timeout=DIAL_TIMEOUT + CALL_SLACK)
    reached, seen_from, reason = (
        reply.header.get(key) for key in ("reached", "seen_from", "reason")
    )
    if not (isinstance(reached, bool) and isinstance(seen_from, str) and isinstance(reason, str)):
        raise ProtocolError(f"a malformed reach reply from {via}")
    return Reach(reached, seen_from[:256], reason[:512])


async def ask_reach(
    rpc: RPCHost, toward: Sequence[PeerAddress], address: PeerAddress | None = None
) -> Reach | None:
    """Ask the peers `toward` in turn whether they can dial us at `address` (by default,
    ours), until one did or `OPINIONS` of them could not (one busy peer is not the last
    word). None: none answered, or none to ask."""
    unreached: Reach | None = None
    opinions = 0
    for via in toward:
        if via.peer_id == rpc.peer_id:
            continue
        try:
            reach = await check_reach(rpc, via, address)
        except RoutingError as error:
            logger.debug("%s could not check our address: %s", via, error)
            continue
        if reach.reached:
            logger.debug("%s reached us at %s", via.peer_id.short(), address or rpc.address)
            return reach
        logger.info("%s could not reach us: %s", via.peer_id.short(), reach.reason)
        unreached, opinions = reach, opinions + 1
        if opinions == OPINIONS:
            break
    return unreached


async def log_reach(rpc: RPCHost, toward: Sequence[PeerAddress]) -> Reach | None:
    """`ask_reach` of the peers `toward`, and what they found logged (a warning, with what to
    do, if they could not reach us)."""
    last = await ask_reach(rpc, toward)
    if last is None:
        return None
    if last.reached:
        logger.info("others reach us at %s", rpc.address)
        return last
    logger.warning(
        "others cannot reach us at %s: %s (we called from %s). Behind NAT, forward the port "
        "and give --public-host and --public-port; else open the firewall",
        rpc.address, last.reason, last.seen_from,
    )  # fmt: skip
    return last
