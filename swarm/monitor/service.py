"""The monitor as one service: an RPC host, a client-mode DHT node, the collector, the page.

`serve_monitor` is the `run`-style entry for `nursery.start` (the `swarm monitor` command and
the end-to-end test both use it); its started value is the page's URL. `read_swarm` takes
one picture and leaves (`swarm status`).
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Collection, Sequence
from functools import partial
from pathlib import Path

import trio

from routing.address import PeerAddress
from routing.client import ask_announcement
from routing.dht import DHTConfig, DHTNode
from routing.errors import ProtocolError, RemoteError, RoutingError
from routing.rpc import RPCConfig, RPCHost
from routing.transport import Transport
from security import Identity, PeerId, SecurityError

from ..http_server import HttpConfig, HttpServer
from .collector import Collector, CollectorConfig, Probe
from .http import load_page, monitor_handler
from .snapshot import PeerLoad, SwarmSnapshot

logger = logging.getLogger(__name__)


async def serve_monitor(
    identity: Identity,
    transport: Transport,
    initial_peers: Sequence[PeerAddress],
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    collector_config: CollectorConfig | None = None,
    http_config: HttpConfig | None = None,
    tls: ssl.SSLContext | None = None,
    members: Collection[PeerId] | Path | None = None,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Join the swarm through `initial_peers`, collect, serve the page on host:port, over
    HTTPS with `tls` (`members`: a private swarm's peers, the only ones it talks to, or
    their file). Reports the page's URL."""
    collector_config = collector_config or CollectorConfig()
    rpc = RPCHost(identity, transport, RPCConfig.for_members(members))
    # Client mode: the monitor reads the DHT but never offers to store records.
    dht = DHTNode(rpc, DHTConfig(client_mode=True))
    page = load_page()  # before any network work: a broken install fails at once
    async with trio.open_nursery() as nursery:
        await nursery.start(rpc.run_outbound)  # client-mode DHT and pings only dial out
        await nursery.start(partial(dht.run, initial_peers=initial_peers))
        collector = Collector(
            dht, RPCProber(rpc, timeout=collector_config.ping_timeout), collector_config
        )
        await nursery.start(collector.run)
        handler = monitor_handler(collector.latest, page)
        server = HttpServer(handler, http_config, "monitor", tls)
        bound = await nursery.start(server.run, host, port)
        task_status.started(f"{server.url(*bound)}/")


async def read_swarm(
    identity: Identity,
    transport: Transport,
    initial_peers: Sequence[PeerAddress],
    config: CollectorConfig | None = None,
    *,
    members: Collection[PeerId] | Path | None = None,
) -> SwarmSnapshot:
    """Join the swarm through `initial_peers` and take one picture of it, as the page shows
    it (one probe per peer: their rates of tokens served need two, so they are unknown)."""
    config = config or CollectorConfig()
    rpc = RPCHost(identity, transport, RPCConfig.for_members(members))
    dht = DHTNode(rpc, DHTConfig(client_mode=True))
    async with trio.open_nursery() as nursery:
        await nursery.start(rpc.run_outbound)
        await nursery.start(partial(dht.run, initial_peers=initial_peers))
        collector = Collector(dht, RPCProber(rpc, timeout=config.ping_timeout), config)
        snapshot = await collector.collect_once()
        nursery.cancel_scope.cancel()
    return snapshot


class RPCProber:
    """Asks a peer for its announcement now (`span.info`): the round trip, and the load it
    gives; a peer that answers with an error (no span server) gives the round trip alone.
    None if it did not answer."""

    def __init__(self, rpc: RPCHost, timeout: float) -> None:
        self.rpc = rpc
        self.timeout = timeout

    async def __call__(self, address: PeerAddress) -> Probe | None:
        began = trio.current_time()
        try:
            fresh = await ask_announcement(self.rpc, address, self.timeout)
        except (RemoteError, ProtocolError):  # it answered, but not with its numbers
            return Probe(trio.current_time() - began)
        except (RoutingError, SecurityError) as error:
            logger.debug("probing %s failed: %s", address.peer_id.short(), error)
            return None
        load = PeerLoad(fresh.sessions, fresh.cache_tokens_left, fresh.served_tokens)
        return Probe(trio.current_time() - began, load)
