"""`ConnectionPool`: open connections keyed by peer id, and the dialer that makes them.

`get_or_dial(address)` returns a live connection to `address.peer_id`, reusing one if any
(inbound or outbound: a connection is keyed by who is at the other end, not by how it was
made). Otherwise it dials: TCP (or memory) connect, then the secure handshake with
`expected_peer=address.peer_id`, so the id in `HOST:PORT/PEER_ID` pins who we talk to.
Concurrent callers for the same peer share one attempt, which runs as its own task in the
host's nursery (a caller that gives up does not abort it for the others) and is bounded by
`connect_timeout`. A connection leaves the pool when it closes.

Two peers that dial each other at the same moment end up with two connections; both are
kept and both work (each side uses the first one it registered), and the one left unused
is closed by the idle timeout. Breaking the tie instead would need a negotiation that can
deadlock or fail both dials; two connections cost little.

A direct connection is preferred to one through a circuit relay: once a peer has one, its
relayed ones drain (each closes once no call runs on it, see `Connection.drain`). A
draining connection, ours or one the remote drains, is handed out for no new call but a
ping: a session open on it still runs there, and its peer must answer the liveness checks.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import trio

from security import PeerId, SecurityError

from ..address import PeerAddress
from ..errors import NotAMemberError, PeerUnreachableError, RoutingError
from .connection import Connection

__all__ = ["ConnectionPool"]

logger = logging.getLogger(__name__)

Dialer = Callable[[PeerAddress], Awaitable[Connection]]


class _Dial:
    __slots__ = ("connection", "done", "error")

    def __init__(self) -> None:
        self.done = trio.Event()
        self.connection: Connection | None = None
        self.error: BaseException | None = None


class ConnectionPool:
    """Connections by peer id, plus in-flight dials."""

    def __init__(self, dialer: Dialer, connect_timeout: float) -> None:
        self._dialer = dialer
        self._connect_timeout = connect_timeout
        self._connections: dict[PeerId, list[Connection]] = {}
        self._dials: dict[PeerId, _Dial] = {}
        self.nursery: trio.Nursery | None = None

    @property
    def dials(self) -> int:
        return len(self._dials)

    def all(self) -> list[Connection]:
        return [c for group in self._connections.values() for c in group]

    def add(self, connection: Connection) -> None:
        group = self._connections.setdefault(connection.peer_id, [])
        group.append(connection)
        if any(not other.relayed and other.takes_new_calls for other in group):
            for other in group:
                if other.relayed:
                    other.drain()

    def remove(self, connection: Connection) -> None:
        group = self._connections.get(connection.peer_id)
        if group is not None and connection in group:
            group.remove(connection)
            if not group:
                del self._connections[connection.peer_id]

    def get(self, peer_id: PeerId, *, draining: bool = False) -> Connection | None:
        """A connection to the peer that takes new calls, a direct one if there is one; with
        `draining`, one being drained will do if there is no such one."""
        relayed = drained = None
        for connection in self._connections.get(peer_id, ()):
            if connection.takes_new_calls:
                if not connection.relayed:
                    return connection
                relayed = relayed or connection
            elif draining and connection.is_open:
                drained = drained or connection
        return relayed or drained

    async def get_or_dial(self, address: PeerAddress, *, direct: bool = False) -> Connection:
        """A live connection to the peer (`direct`: not through a relay); PeerUnreachableError
        if one cannot be made."""
        connection = self.get(address.peer_id)
        if connection is not None and not (direct and connection.relayed):
            await trio.lowlevel.checkpoint()
            return connection
        dial = self._dials.get(address.peer_id)
        if dial is None:
            if self.nursery is None:
                raise RuntimeError("the RPC host is not running")
            dial = self._dials[address.peer_id] = _Dial()
            self.nursery.start_soon(self._dial, address, dial)
        await dial.done.wait()
        if dial.connection is not None and dial.connection.is_open:
            return dial.connection
        error = dial.error if dial.connection is None else dial.connection.close_reason
        if isinstance(error, NotAMemberError):  # refused at once: say why
            raise error
        raise PeerUnreachableError(f"cannot reach {address}: {error}") from error

    async def _dial(self, address: PeerAddress, dial: _Dial) -> None:
        try:
            with trio.fail_after(self._connect_timeout):
                dial.connection = await self._dialer(address)
        except trio.TooSlowError:
            dial.error = TimeoutError(f"no connection within {self._connect_timeout} s")
        except (OSError, SecurityError, RoutingError, trio.BrokenResourceError,
                trio.ClosedResourceError) as e:  # fmt: skip
            dial.error = e
        except Exception as e:  # a transport's surprise must not take the host down
            logger.warning("dial %s failed unexpectedly", address, exc_info=True)
            dial.error = e
        finally:
            if self._dials.get(address.peer_id) is dial:
                del self._dials[address.peer_id]
            dial.done.set()
        if dial.error is not None:
            logger.debug("dial %s failed: %r", address, dial.error)
