"""`DHTNode`: a Kademlia node over `RPCHost`, storing signed dictionary records.

Theory of operation. The node registers four unary methods on the RPC host (see
`protocol.py`) and keeps three pure pieces: a `RoutingTable` (who we know), a
`RecordStorage` (what we hold for others) and a `RateLimiter` (how often each remote peer may
store). Lookups are pure `Lookup` state machines driven by `driver.drive`, which keeps up to
`alpha` queries in flight in a nursery and feeds their outcomes back in one place.

A node enters the routing table only when it proved its identity to us: it answered a call
we dialed to its peer id, or it called us and its `sender` address names the peer id the
channel authenticated. Nodes named in replies are lookup candidates only. A call that fails
(unreachable, timeout, malformed reply, records that do not verify) removes the node from
the table, and a full bucket pings its least-recently-seen node before a newcomer may take
its place. Background tasks, in `run`: refresh buckets nobody looked into lately, and
re-sign and republish our own records at half their lifetime.

Clocks: record expirations are wall-clock (`clock`, default `time.time`, injected so tests
can use trio's MockClock); bucket ages, rate limits and timers use `trio.current_time()`.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import trio

from security import PeerId, SecurityError

from ..address import PeerAddress
from ..errors import HandlerError, NotAMemberError, RemoteError, RoutingError
from ..records import DHTValue, RecordRejectedError, SignedRecord, VerifiedRecords, verify_record
from ..rpc import CallContext, Packet, RPCHost
from . import protocol
from .config import DHTConfig
from .driver import drive
from .errors import BootstrapError, MalformedReplyError
from .ids import id_to_bytes, key_id, node_id_of, random_id_in
from .lookup import Lookup
from .ratelimit import RateLimiter
from .storage import RecordStorage
from .table import RoutingTable

logger = logging.getLogger(__name__)

_Reply = Callable[[PeerAddress, Mapping[str, Any]], Sequence[PeerAddress]]


@dataclass(frozen=True)
class LookupResult:
    nodes: list[PeerAddress]  # the k nearest nodes that answered, nearest first
    hops: int  # length of the reply chain to the nearest of them
    queries: int  # calls made


@dataclass(frozen=True)
class ValueResult:
    values: dict[PeerId, DHTValue]  # freshest verified value per subkey
    hops: int
    queries: int


@dataclass
class _OwnRecord:
    value: bytes
    ttl: float
    due: float  # trio time of the next republish


class DHTNode:
    def __init__(
        self,
        rpc: RPCHost,
        config: DHTConfig | None = None,
        *,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ) -> None:
        self.rpc = rpc
        self.config = config = config or DHTConfig()
        self.peer_id = rpc.peer_id
        self.node_id = node_id_of(self.peer_id)
        self._clock = clock
        self._rng = rng or random.Random()
        self.table = RoutingTable(
            self.node_id, bucket_size=config.k, depth_modulo=config.depth_modulo
        )
        self.storage = RecordStorage(
            max_records=config.max_stored_records, max_subkeys_per_key=config.max_subkeys_per_key
        )
        self._limiter: RateLimiter[PeerId] = RateLimiter(
            rate=config.store_rate, burst=config.store_burst
        )
        self._verified = VerifiedRecords()
        self._own: dict[str, _OwnRecord] = {}
        self._own_changed = trio.Event()
        self._pinging: set[int] = set()
        self._nursery: trio.Nursery | None = None
        rpc.add_unary(protocol.PING, self._handle_ping)
        rpc.add_unary(protocol.FIND_NODE, self._handle_find_node)
        rpc.add_unary(protocol.FIND_VALUE, self._handle_find_value)
        rpc.add_unary(protocol.STORE, self._handle_store)

    @property
    def address(self) -> PeerAddress | None:
        """Where others reach us (None in client mode, or through a circuit, which only
        the peers it names reach)."""
        if self.config.client_mode or self.rpc.address.via is not None:
            return None
        return self.rpc.address

    # --- lifetime ----------------------------------------------------------------------

    async def run(
        self,
        *,
        initial_peers: Sequence[PeerAddress] = (),
        task_status: trio.TaskStatus[PeerAddress | None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Join the swarm (or start one, with no initial peers), then keep the table fresh.
        `BootstrapError` if no initial peer lets us in."""
        failure: BootstrapError | None = None  # raised bare, not in the nursery's group
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                for bucket in self.table.buckets:
                    bucket.last_refreshed = trio.current_time()
                try:
                    await self._bootstrap(initial_peers)
                except BootstrapError as error:
                    failure = error
                else:
                    nursery.start_soon(self._refresh_loop)
                    nursery.start_soon(self._republish_loop)
                    logger.info(
                        "DHT node %s up, knows %d nodes", self.peer_id.short(), len(self.table)
                    )
                    task_status.started(self.address)
        finally:
            self._nursery = None
        if failure is not None:
            raise failure

    async def _bootstrap(self, initial_peers: Sequence[PeerAddress]) -> None:
        peers = [peer for peer in initial_peers if peer.peer_id != self.peer_id]
        if not peers:
            return  # none, or we are the only one named: a new swarm starts here
        delay = 0.5
        refusals: dict[PeerAddress, NotAMemberError] = {}

        async def reach(peer: PeerAddress) -> None:
            try:
                await self._call(peer, protocol.PING, {})
            except NotAMemberError as refusal:
                refusals[peer] = refusal
            except (RoutingError, SecurityError):
                pass

        with trio.move_on_after(self.config.bootstrap_timeout):
            while True:
                async with trio.open_nursery() as nursery:
                    for peer in peers:
                        nursery.start_soon(reach, peer)
                if len(self.table):
                    await self.find_nodes(self.node_id)  # others learn of us, we of them
                    return
                if len(refusals) == len(peers):  # asking again will not change their minds
                    raise BootstrapError(f"every initial peer refused us: {refusals[peers[0]]}")
                logger.info("no initial peer answered, retrying in %.1f s", delay)
                await trio.sleep(delay)
                delay = min(delay * 2, 10.0)
        raise BootstrapError(f"none of the {len(peers)} initial peers answered")

    async def _refresh_loop(self) -> None:
        while True:
            await trio.sleep(self.config.maintenance_interval)
            now = trio.current_time()
            for bucket in self.table.stale_buckets(now, self.config.refresh_interval):
                target = random_id_in(bucket.lower, bucket.upper, self._rng)
                await self.find_nodes(target)

    async def _republish_loop(self) -> None:
        while True:
            due = min((own.due for own in self._own.values()), default=math.inf)
            changed = self._own_changed
            with trio.move_on_at(due):
                await changed.wait()
            if changed.is_set():
                self._own_changed = trio.Event()
                continue
            now = trio.current_time()
            async with trio.open_nursery() as nursery:
                for key, own in list(self._own.items()):
                    if own.due <= now:
                        own.due = now + own.ttl * self.config.republish_fraction
                        nursery.start_soon(self._publish_own, key, own.value, own.ttl)

    # --- public operations -------------------------------------------------------------

    async def ping(self, peer: PeerAddress) -> bool:
        """True if the peer answered (it is then in our table)."""
        try:
            await self._call(peer, protocol.PING, {})
        except (RoutingError, SecurityError):
            return False
        return True

    async def find_nodes(self, target: int) -> LookupResult:
        """The k nodes nearest to `target` that answered, found iteratively."""

        def on_reply(peer: PeerAddress, header: Mapping[str, Any]) -> Sequence[PeerAddress]:
            return protocol.reply_nodes(header, self.config.max_nodes_per_reply)

        lookup = await self._run_lookup(
            target, protocol.FIND_NODE, {"target": id_to_bytes(target)}, on_reply
        )
        self.table.mark_refreshed(target, trio.current_time())
        return LookupResult(lookup.closest(), lookup.hops, lookup.queries)

    async def store(self, key: str, subkey: PeerId, value: bytes, expiration: float) -> int:
        """Sign and store `value` under our own subkey; another subkey is refused (we could
        not sign it). Returns on how many nodes (ours included) it is stored."""
        if subkey != self.peer_id:
            raise RecordRejectedError("a node can store only under its own peer id")
        return await self.store_record(
            SignedRecord.create(self.rpc.identity, key, value, expiration)
        )

    async def store_own(self, key: str, value: bytes, ttl: float) -> int:
        """Announce `value` under our peer id for `ttl` seconds, republished until
        `forget_own(key)`. Returns on how many nodes it is stored now."""
        if not 0 < ttl <= self.config.records.max_ttl:
            raise RecordRejectedError(f"ttl must be in (0, {self.config.records.max_ttl}] s")
        now = trio.current_time()
        self._own[key] = _OwnRecord(value, ttl, now + ttl * self.config.republish_fraction)
        self._own_changed.set()
        return await self._publish_own(key, value, ttl)

    def forget_own(self, key: str) -> None:
        """Stop republishing a record (it expires on its own)."""
        self._own.pop(key, None)

    async def _publish_own(self, key: str, value: bytes, ttl: float) -> int:
        record = SignedRecord.create(self.rpc.identity, key, value, self._clock() + ttl)
        stored = await self.store_record(record)
        if stored == 0:
            logger.warning("record %r stored nowhere", key)
        return stored

    async def store_record(self, record: SignedRecord) -> int:
        """Store a signed record on the k nodes nearest its key (and here, if we are one)."""
        verify_record(record, now=self._clock(), policy=self.config.records)
        target = key_id(record.key)
        nearest = (await self.find_nodes(target)).nodes[: self.config.k]
        stored = 0
        k_th = node_id_of(nearest[-1].peer_id) ^ target if nearest else math.inf
        if len(nearest) < self.config.k or self.node_id ^ target < k_th:
            stored += self.storage.store(record, now=self._clock())
        request = {"key": record.key, "record": record.to_wire()}
        results: list[bool] = []

        async def store_on(peer: PeerAddress) -> None:
            try:
                results.append(
                    protocol.reply_stored(await self._call(peer, protocol.STORE, request))
                )
            except (RoutingError, SecurityError) as error:
                logger.debug("store on %s failed: %s", peer.peer_id.short(), error)

        async with trio.open_nursery() as nursery:
            for peer in nearest:
                nursery.start_soon(store_on, peer)
        return stored + sum(results)

    async def get(self, key: str) -> dict[PeerId, DHTValue]:
        """The freshest verified value of every subkey stored under `key`."""
        return (await self.get_with_stats(key)).values

    async def get_with_stats(self, key: str) -> ValueResult:
        found: dict[PeerId, SignedRecord] = dict(self.storage.get(key, now=self._clock()))
        holders = 0  # nodes that answered with records

        def on_reply(peer: PeerAddress, header: Mapping[str, Any]) -> Sequence[PeerAddress]:
            nodes = protocol.reply_nodes(header, self.config.max_nodes_per_reply)
            records = protocol.reply_records(
                key, header, self.config.records, self.config.max_records_per_reply
            )
            now = self._clock()
            for record in records:
                try:
                    verify_record(
                        record, now=now, policy=self.config.records, verified=self._verified
                    )
                except RecordRejectedError as error:
                    raise MalformedReplyError(f"record refused: {error.reason}") from None
            for record in records:
                old = found.get(record.subkey)
                if old is None or old.expiration < record.expiration:
                    found[record.subkey] = record
            nonlocal holders
            holders += bool(records)
            return nodes

        def enough() -> bool:
            return 0 < self.config.get_quorum <= holders

        lookup = await self._run_lookup(
            key_id(key), protocol.FIND_VALUE, {"key": key}, on_reply, enough
        )
        values = {subkey: record.to_value() for subkey, record in found.items()}
        return ValueResult(values, lookup.hops, lookup.queries)

    # --- lookups and calls ---------------------------------------------------------------

    async def _run_lookup(
        self,
        target: int,
        method: str,
        request: Mapping[str, Any],
        on_reply: _Reply,
        enough: Callable[[], bool] = lambda: False,
    ) -> Lookup:
        seeds = self.table.nearest(target, self.config.k)
        lookup = Lookup(
            target, seeds, own_id=self.node_id, k=self.config.k, alpha=self.config.alpha
        )

        async def ask(peer: PeerAddress) -> Sequence[PeerAddress] | None:
            try:
                return on_reply(peer, await self._call(peer, method, request))
            except MalformedReplyError as error:
                logger.info("malformed reply from %s: %s", peer.peer_id.short(), error)
                self._forget(peer)
            except (RoutingError, SecurityError) as error:
                logger.debug("%s to %s failed: %s", method, peer.peer_id.short(), error)
            return None

        return await drive(lookup, ask, enough)

    async def _call(
        self, peer: PeerAddress, method: str, header: Mapping[str, Any]
    ) -> Mapping[str, Any]:
        """One call; success puts the peer in our table, a dead peer leaves it."""
        request = Packet({**header, "sender": protocol.encode_sender(self.address)})
        try:
            reply = await self.rpc.call(peer, method, request, timeout=self.config.request_timeout)
        except RemoteError:
            self._saw(peer)  # it answered: alive, just unwilling
            raise
        except (RoutingError, SecurityError):
            self._forget(peer)
            raise
        self._saw(peer)
        return reply.header

    def _saw(self, peer: PeerAddress) -> None:
        to_ping = self.table.update(peer, trio.current_time())
        if to_ping is None or self._nursery is None:
            return
        old_id = node_id_of(to_ping.peer_id)
        if old_id not in self._pinging:
            self._pinging.add(old_id)
            self._nursery.start_soon(self._ping_least_recent, to_ping)

    def _forget(self, peer: PeerAddress) -> None:
        self.table.remove(node_id_of(peer.peer_id))

    async def _ping_least_recent(self, peer: PeerAddress) -> None:
        """A full bucket met a newcomer: `peer` stays if it answers, else the newcomer takes
        its place."""
        try:
            await self.ping(peer)  # success moves it to the tail, failure removes it
        finally:
            self._pinging.discard(node_id_of(peer.peer_id))

    # --- handlers --------------------------------------------------------------------------

    def _saw_caller(self, header: Mapping[str, Any], context: CallContext) -> None:
        sender = protocol.request_sender(header, context.peer_id)
        if sender is not None:
            self._saw(sender)

    async def _handle_ping(self, packet: Packet, context: CallContext) -> Packet:
        self._saw_caller(packet.header, context)
        return Packet({})

    async def _handle_find_node(self, packet: Packet, context: CallContext) -> Packet:
        self._saw_caller(packet.header, context)
        target = protocol.request_target(packet.header)
        nodes = self.table.nearest(target, self.config.k, exclude=node_id_of(context.peer_id))
        return Packet({"nodes": [protocol.encode_node(node) for node in nodes]})

    async def _handle_find_value(self, packet: Packet, context: CallContext) -> Packet:
        self._saw_caller(packet.header, context)
        key = protocol.request_key(packet.header, self.config.records)
        nodes = self.table.nearest(key_id(key), self.config.k, exclude=node_id_of(context.peer_id))
        records = sorted(
            self.storage.get(key, now=self._clock()).values(),
            key=lambda record: record.expiration,
            reverse=True,
        )[: self.config.max_records_per_reply]
        return Packet(
            {
                "nodes": [protocol.encode_node(node) for node in nodes],
                "records": [record.to_wire() for record in records],
            }
        )

    async def _handle_store(self, packet: Packet, context: CallContext) -> Packet:
        self._saw_caller(packet.header, context)
        if not self._limiter.allow(context.peer_id, trio.current_time()):
            raise HandlerError("rate_limited", "too many stores, slow down")
        record = protocol.request_record(packet.header, self.config.records)
        now = self._clock()
        try:
            verify_record(record, now=now, policy=self.config.records, verified=self._verified)
        except RecordRejectedError as error:
            raise HandlerError("record_rejected", error.reason) from None
        return Packet({"stored": self.storage.store(record, now=now)})
