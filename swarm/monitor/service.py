"""The monitor as one service: an RPC host, a client-mode DHT node, the collector, the page.

`serve_monitor` is the `run`-style entry for `nursery.start` (the `swarm monitor` command and
the end-to-end test both use it); its started value is the page's URL. `read_swarm` takes
one picture and leaves (`swarm status`).
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TypeVar

import trio

from routing.address import PeerAddress
from routing.client import ask_announcement
from routing.dht import DHTConfig, DHTNode
from routing.errors import ProtocolError, RemoteError, RoutingError
from routing.rpc import RPCConfig, RPCHost, ask_relay_load
from routing.transport import Transport
from security import Identity, PeerId, SecurityError

from ..http_server import HttpConfig, HttpServer
from .collector import Collector, CollectorConfig, Probe, RelayProbe
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
        collector = _collector(rpc, dht, collector_config)
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
        snapshot = await _collector(rpc, dht, config).collect_once()
        nursery.cancel_scope.cancel()
    return snapshot


def _collector(rpc: RPCHost, dht: DHTNode, config: CollectorConfig) -> Collector:
    """A collector that reads `dht` and probes peers and relays through `rpc`."""
    probe_relay = RPCRelayProber(rpc, config.ping_timeout)
    return Collector(dht, RPCProber(rpc, config.ping_timeout), config, probe_relay=probe_relay)


@dataclass(frozen=True)
class RPCProber:
    """Asks a peer for its announcement now (`span.info`): the round trip, and the load it
    gives; a peer that answers with an error (no span server) gives the round trip alone.
    None if it did not answer."""

    rpc: RPCHost
    timeout: float

    async def __call__(self, address: PeerAddress) -> Probe | None:
        answer = await _timed(ask_announcement, self.rpc, address, self.timeout)
        if answer is None:
            return None
        rtt, fresh = answer
        load = None if fresh is None else PeerLoad(fresh.sessions, fresh.cache_tokens_left,
                                                   fresh.served_tokens)  # fmt: skip
        return Probe(rtt, load)


@dataclass(frozen=True)
class RPCRelayProber:
    """Asks a relay how loaded it is (`circuit.load`): the round trip, and its load; a node
    that answers with an error gives the round trip alone. None if it did not answer."""

    rpc: RPCHost
    timeout: float

    async def __call__(self, address: PeerAddress) -> RelayProbe | None:
        answer = await _timed(ask_relay_load, self.rpc, address, self.timeout)
        return None if answer is None else RelayProbe(*answer)


T = TypeVar("T")


async def _timed(
    ask: Callable[[RPCHost, PeerAddress, float], Awaitable[T]],
    rpc: RPCHost,
    address: PeerAddress,
    timeout: float,  # noqa: ASYNC109
) -> tuple[float, T | None] | None:
    """The round trip of `ask`, and its answer (None: it answered with an error, or not with
    its numbers); None if it did not answer."""
    began = trio.current_time()
    try:
        answer: T | None = await ask(rpc, address, timeout)
    except (RemoteError, ProtocolError):
        answer = None
    except (RoutingError, SecurityError) as error:
        logger.debug("probing %s failed: %s", address.peer_id.short(), error)
        return None
    return trio.current_time() - began, answer
