"""`RPCHost`: a peer's RPC endpoint: server, client and connection pool in one.

`run(host, port)` listens (through the `Transport`) and holds every connection, inbound and
outbound, in its nursery; `call` and `open_stream` reuse the pool's connection to the target
peer or dial one. Every connection is a `SecureStream` (Noise, both directions): an inbound
one must finish its handshake within `handshake_timeout`, and at most
`max_unauthenticated` may be in their handshake at once (more are closed at once, so a
flood of silent connections costs a bounded amount); then its `Connection` serves calls
until it closes. In a private swarm (`RPCConfig.members`), a connection from a peer not
among the members is refused right after the handshake, before any call is read (the
dialer's calls fail with `NotAMemberError`), and such a peer is never dialed. With
`members_file`, the host reads the list again whenever the file changes: the connections
of peers taken off it close at once (a file that no longer reads keeps the list). Built-in
methods: "ping" (empty reply, answered by the reader) and "info" (our peer id and address,
plus what `set_info` adds; `add_unary("info", ...)` replaces it).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager, suppress
from pathlib import Path
from typing import Any

import trio

from security import Identity, MembersFileError, PeerId, SecureStream, SecurityError, read_members

from ..address import PeerAddress
from ..errors import CallTimeoutError, NotAMemberError, RoutingError
from ..public_address import PublicAddress
from ..transport import Transport
from ..wire import Kind, encode
from .circuit import CONNECT, FailedDialBacks, PacketStream, dial_back_address, open_circuit
from .circuit import dial_back as circuit_dial_back
from .config import RPCConfig, RPCStats
from .connection import Connection
from .packet import CallContext, Packet, StreamHandler, UnaryHandler
from .pool import ConnectionPool
from .reach import REACH, reach_handler
from .stream import BidiStream

__all__ = ["RPCHost"]

logger = logging.getLogger(__name__)

_RESERVED = {"ping"}
_REPLACEABLE = {"info"}
REFUSAL_LINGER = 1.0  # seconds a refused connection is read (and dropped) before it closes


def _stamp(path: Path) -> tuple[int, int] | None:
    """What tells that a file changed: its modification time and size (None if missing)."""
    try:
        status = path.stat()
    except OSError:
        return None
    return status.st_mtime_ns, status.st_size


def _circuit_host(stream: trio.abc.Stream) -> str:
    """Where a circuit's dialer is, as its relay says ("" for any other stream)."""
    host = getattr(stream, "circuit_host", "")
    return host if isinstance(host, str) else ""


def _remote_host(stream: trio.abc.Stream) -> str:
    host = getattr(stream, "remote_host", None)
    if isinstance(host, str):
        return host
    try:
        return str(stream.socket.getpeername()[0])  # type: ignore[attr-defined]
    except (AttributeError, OSError, IndexError, TypeError):
        return ""


class RPCHost:
    """One per peer: serves our handlers and calls remote ones over pooled connections."""

    def __init__(
        self, identity: Identity, transport: Transport, config: RPCConfig | None = None
    ) -> None:
        self._identity = identity
        self._transport = transport
        self.config = config or RPCConfig()
        self._unary: dict[str, UnaryHandler] = {
            "info": self._info,
            REACH: reach_handler(self.probe),
        }
        self._stream: dict[str, StreamHandler] = {}
        self._info_hook: Callable[[], Mapping[str, Any]] | None = None
        self._pool = ConnectionPool(self._dial, self.config.connect_timeout)
        self._address: PeerAddress | None = None
        self._unauthenticated = 0
        self._failed_dial_backs = FailedDialBacks()
        self._members = self.config.members
        self._members_read: tuple[int, int] | None = None  # the file's (mtime, size) as read
        if self.config.members_file is not None:
            self._members_read = _stamp(self.config.members_file)
            self._members = read_members(self.config.members_file)
        if not self._admits(self.peer_id):
            raise NotAMemberError(f"our own peer id {self.peer_id} is not among the members")

    # -- identity and registration -----------------------------------------------------------

    @property
    def identity(self) -> Identity:
        return self._identity

    @property
    def peer_id(self) -> PeerId:
        return self._identity.peer_id

    @property
    def address(self) -> PeerAddress:
        """Our listening address (after `run` has started), or our circuit's."""
        if self._address is None:
            raise RuntimeError("the RPC host is not running")
        return self._address

    def set_address(self, address: PeerAddress) -> None:
        """Where others reach us without our listening: a circuit (`circuit.serve_via`)."""
        self._address = address

    @property
    def direct_address(self) -> PeerAddress | None:
        """Where others dial us directly, if we listen and serve there (not a circuit)."""
        address = self._address
        return address if address is not None and address.relay is None else None

    async def connect_directly(self, address: PeerAddress) -> None:
        """Open a direct connection to `address`'s peer, unless one is open (one through a
        relay does not count: it then drains). PeerUnreachableError if none can be made."""
        await self._pool.get_or_dial(address, direct=True)

    def _check_new(self, method: str) -> None:
        if not method or method in _RESERVED:
            raise ValueError(f"method name {method!r} is reserved or empty")
        if (method in self._unary and method not in _REPLACEABLE) or method in self._stream:
            raise ValueError(f"a handler for {method!r} is already registered")

    def add_unary(self, method: str, handler: UnaryHandler) -> None:
        self._check_new(method)
        self._unary[method] = handler

    def add_stream(self, method: str, handler: StreamHandler) -> None:
        self._check_new(method)
        if method in self._unary:
            raise ValueError(f"a handler for {method!r} is already registered")
        self._stream[method] = handler

    def set_info(self, hook: Callable[[], Mapping[str, Any]]) -> None:
        """Extra fields for the built-in "info" reply (msgpack-able)."""
        self._info_hook = hook

    async def _info(self, request: Packet, context: CallContext) -> Packet:
        header: dict[str, Any] = dict(self._info_hook()) if self._info_hook else {}
        header["peer_id"] = str(self.peer_id)
        if self._address is not None:
            header["address"] = str(self._address)
        return Packet(header)

    # -- running -----------------------------------------------------------------------------

    async def run(
        self,
        host: str,
        port: int,
        public: PublicAddress | None = None,
        *,
        task_status: trio.TaskStatus[PeerAddress],
    ) -> None:
        """Listen on host:port (0: any free port) until cancelled. Started value: our address,
        as others dial it (`public`: found for a wildcard host, or given)."""
        try:
            async with trio.open_nursery() as nursery:
                self._pool.nursery = nursery
                self._start_following_members(nursery)
                bound = await nursery.start(self._transport.serve, host, port, self.serve_inbound)
                self._address = PeerAddress(*(public or PublicAddress()).of(*bound), self.peer_id)
                logger.info("RPC host %s listening on %s:%d, reached at %s",
                            self.peer_id.short(), *bound, self._address)  # fmt: skip
                task_status.started(self._address)
        finally:
            self._pool.nursery = None

    async def run_outbound(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Dial out only, until cancelled: no listener, so nobody can connect to us (a client).
        Calls and streams work as with `run`; `address` stays unset."""
        try:
            async with trio.open_nursery() as nursery:
                self._pool.nursery = nursery
                self._start_following_members(nursery)
                task_status.started()
                await trio.sleep_forever()
        finally:
            self._pool.nursery = None

    async def serve_inbound(
        self,
        stream: trio.abc.Stream,
        *,
        drain_when: trio.Event | None = None,
        dial_back: object = None,
    ) -> None:
        """Serve a connection someone opened to us (over TCP, or a circuit), until it ends;
        once `drain_when` is set, until no call runs on it. Over a circuit, `dial_back` is
        where its dialer says it may be dialled back (`circuit.dial_back`)."""
        if self._unauthenticated >= self.config.max_unauthenticated:
            logger.info("refusing a connection: too many in their handshake")
            return
        self._unauthenticated += 1
        try:
            secure = SecureStream(
                stream,
                self._identity,
                initiator=False,
                handshake_timeout=self.config.handshake_timeout,
            )
            try:
                await secure.do_handshake()
                if not self._admits(secure.remote_peer_id):
                    await self._refuse(secure)
                    return
            except (SecurityError, trio.BrokenResourceError, trio.ClosedResourceError) as error:
                logger.debug("inbound handshake failed: %r", error)
                return
        finally:
            self._unauthenticated -= 1
        circuit_host = _circuit_host(stream)
        connection = self._connection(
            secure,
            _remote_host(stream),
            initiator=False,
            circuit_host=circuit_host,
            relayed=isinstance(stream, PacketStream),
            drain_when=drain_when,
        )
        self._pool.add(connection)
        back = dial_back_address(dial_back, connection.peer_id)
        if back is not None and circuit_host and self._pool.nursery is not None:
            failed = self._failed_dial_backs
            self._pool.nursery.start_soon(circuit_dial_back, self, back, circuit_host, failed)
        try:
            await connection.run()
        finally:
            self._pool.remove(connection)

    def _admits(self, peer_id: PeerId) -> bool:
        return self._members is None or peer_id in self._members

    def set_members(self, members: frozenset[PeerId] | None) -> None:
        """From now on, talk only to `members` (None: anyone); the connections of peers not
        among them close now."""
        self._members = members
        if not self._admits(self.peer_id):
            logger.warning("our own peer id is not among the members any more")
        for connection in self._pool.all():
            if not self._admits(connection.peer_id):
                logger.info("closing the connection of %s: no longer a member", connection.peer_id)
                connection.close(NotAMemberError(f"{connection.peer_id} is no longer a member"))

    def _start_following_members(self, nursery: trio.Nursery) -> None:
        if self.config.members_file is not None:
            nursery.start_soon(self._follow_members, self.config.members_file)

    async def _follow_members(self, path: Path) -> None:
        """Read the members file again whenever it changes."""
        while True:
            await trio.sleep(self.config.members_check)
            stamp = _stamp(path)
            if stamp == self._members_read:
                continue
            self._members_read = stamp
            try:
                members = read_members(path)
            except MembersFileError as error:
                logger.warning("keeping the members list as it was: %s", error)
                continue
            logger.info("members list read again: %d peers", len(members))
            self.set_members(members)

    def _check_member(self, target: PeerAddress) -> None:
        if not self._admits(target.peer_id):
            raise NotAMemberError(f"{target} is not among this swarm's members")

    async def _refuse(self, secure: SecureStream) -> None:
        """Tell a peer outside the members why; the transport closes the connection once
        this returns, after reading what it sent meanwhile for a moment (so that the
        refusal is not lost to a reset)."""
        logger.info("refusing %s: not among the members", secure.remote_peer_id)
        refusal = ["not_a_member", "this swarm is private and you are not among its members"]
        with trio.move_on_after(REFUSAL_LINGER):
            await secure.send_all(b"".join(encode(Kind.ERROR, 0, refusal)))
            while await secure.receive_some():
                pass

    def _connection(
        self,
        secure: SecureStream,
        remote_host: str,
        *,
        initiator: bool,
        circuit_host: str = "",
        relayed: bool = False,
        drain_when: trio.Event | None = None,
    ) -> Connection:
        return Connection(
            secure,
            secure.remote_peer_id,
            remote_host,
            initiator=initiator,
            config=self.config,
            unary_handlers=self._unary,
            stream_handlers=self._stream,
            circuit_host=circuit_host,
            relayed=relayed,
            drain_when=drain_when,
        )

    async def _dial(self, address: PeerAddress) -> Connection:
        if address.relay is not None:
            nursery = self._pool.nursery
            if nursery is None:
                raise trio.ClosedResourceError("the RPC host stopped")
            connection: Connection = await nursery.start(
                self._serve_circuit, address, address.relay
            )
            return connection
        stream = await self._transport.connect(address.host, address.port)
        secure = await self._handshake(stream, address)
        connection = self._connection(secure, address.host, initiator=True)
        nursery = self._pool.nursery
        if nursery is None:
            await trio.aclose_forcefully(secure)
            raise trio.ClosedResourceError("the RPC host stopped")
        self._pool.add(connection)
        try:
            await nursery.start(self._serve_outbound, connection)
        except BaseException:
            self._pool.remove(connection)
            raise
        return connection

    async def _handshake(self, stream: trio.abc.Stream, address: PeerAddress) -> SecureStream:
        """Our side of the handshake with the peer `address` names, which it must prove."""
        try:
            secure = SecureStream(
                stream,
                self._identity,
                initiator=True,
                expected_peer=address.peer_id,
                handshake_timeout=self.config.handshake_timeout,
            )
            await secure.do_handshake()
        except BaseException:
            await trio.aclose_forcefully(stream)
            raise
        return secure

    async def probe(self, address: PeerAddress) -> None:
        """Open a new connection to `address` (not pooled), complete the handshake that
        proves its peer answers there, and close it."""
        stream = await self._transport.connect(address.host, address.port)
        await trio.aclose_forcefully(await self._handshake(stream, address))

    async def _serve_circuit(
        self, address: PeerAddress, relay: PeerAddress, *, task_status: trio.TaskStatus[Connection]
    ) -> None:
        """A connection to a peer through its relay (`circuit.py`), which lives as long as
        the circuit's stream."""
        async with self.open_stream(relay, CONNECT) as circuit:
            secure = await self._handshake(await open_circuit(self, address, circuit), address)
            connection = self._connection(secure, address.host, initiator=True, relayed=True)
            self._pool.add(connection)
            try:
                async with trio.open_nursery() as nursery:
                    await nursery.start(connection.run)
                    task_status.started(connection)
            finally:
                self._pool.remove(connection)

    async def _serve_outbound(
        self, connection: Connection, *, task_status: trio.TaskStatus[None]
    ) -> None:
        try:
            await connection.run(task_status=task_status)
        finally:
            self._pool.remove(connection)

    # -- calling -----------------------------------------------------------------------------

    async def call(  # the contract's API takes `timeout`, like trio's own helpers
        self,
        target: PeerAddress,
        method: str,
        request: Packet,
        *,
        timeout: float,  # noqa: ASYNC109
    ) -> Packet:
        """Call `method` on `target`. Raises RemoteError (the handler failed),
        CallTimeoutError, PeerUnreachableError, ConnectionLostError or ProtocolError."""
        deadline = trio.current_time() + timeout
        connection = self._pool.get(target.peer_id)  # the hot path: no dial, no checkpoint
        if connection is None:
            self._check_member(target)
            with trio.move_on_at(deadline):
                connection = await self._pool.get_or_dial(target)
            if connection is None:
                raise CallTimeoutError(f"{method} to {target}: no connection within {timeout} s")
        return await connection.call(method, request, deadline)

    async def ping(self, target: PeerAddress, *, timeout: float) -> float:  # noqa: ASYNC109
        """Round-trip time of the built-in "ping", in seconds. With no other connection to
        the peer, it goes over one being drained: a session may still run there (the peer
        left the relay that `target` names, say), and its liveness is what is asked."""
        start = trio.current_time()
        connection = self._pool.get(target.peer_id, draining=True)
        if connection is None:
            await self.call(target, "ping", Packet(), timeout=timeout)
        else:
            await connection.call("ping", Packet(), start + timeout)
        return trio.current_time() - start

    @asynccontextmanager
    async def open_stream(
        self, target: PeerAddress, method: str, *, connect_timeout: float | None = None
    ) -> AsyncIterator[BidiStream]:
        """A stream to `method` on `target`. Leaving the block normally ends our side (and
        cancels the remote handler if it has not finished); leaving on an error cancels it."""
        timeout = self.config.connect_timeout if connect_timeout is None else connect_timeout
        connection: Connection | None = None
        self._check_member(target)
        with trio.move_on_after(timeout):
            connection = await self._pool.get_or_dial(target)
        if connection is None:
            raise CallTimeoutError(f"stream {method} to {target}: no connection in {timeout} s")
        stream = connection.open_stream(method)
        try:
            yield stream
        except BaseException:
            stream.close()
            raise
        if not stream.finished and not stream.local_ended:
            with suppress(RoutingError):  # the connection is gone
                await stream.end()
        stream.close()

    # -- introspection -----------------------------------------------------------------------

    def stats(self) -> RPCStats:
        connections = [c for c in self._pool.all() if c.is_open]
        outbound = sum(1 for c in connections if c.initiator)
        return RPCStats(
            connections=len(connections),
            inbound=len(connections) - outbound,
            outbound=outbound,
            relayed=sum(1 for c in connections if c.relayed),
            unauthenticated=self._unauthenticated,
            dials=self._pool.dials,
            calls=sum(c.active_calls for c in connections),
            handlers=sum(c.active_handlers for c in connections),
        )

    def connection_to(self, peer_id: PeerId) -> Connection | None:
        """The connection a new call to a peer would take, if any (tests, diagnostics)."""
        return self._pool.get(peer_id)
