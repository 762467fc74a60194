"""A swarm inside the test process: a DHT node and `serve_peer` peers in one trio loop in a
thread, on 127.0.0.1 TCP, so a `DistributedModelForCausalLM` can join it like a real one
(in milliseconds, without a process per peer). `stop_peer` stops one the clean way, and
returns once it is gone; `fault` delays, stalls or cuts its connections (each peer sits
behind a `FaultRelay`). `private_for`: a private swarm, whose `members` are its own nodes
and the identities given (clients)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from types import TracebackType
from typing import Any

import trio

from peer.activity import PeerStatus
from peer.daemon import PeerConfig, serve_peer
from peer.rebalancer import PeerControl
from routing import span_protocol
from routing.address import PeerAddress
from routing.dht import serve_dht_node
from routing.rpc import Packet, RPCConfig, RPCHost
from routing.transport import TcpTransport
from security import Identity
from swarm.trio_thread import TrioThread
from tests.support.fault_relay import FaultRelay


@dataclass
class ThreadPeer:
    address: PeerAddress
    start: int
    end: int
    scope: trio.CancelScope
    relay: FaultRelay  # every connection the peer accepts passes through it
    stopped: trio.Event  # set once it serves no more (after its goodbye)
    control: PeerControl  # what its operator can ask of it, its status included

    @property
    def peer(self) -> str:
        return str(self.address.peer_id)


class ThreadSwarm:
    def __init__(
        self,
        checkpoint: Path,
        spans: Sequence[tuple[int, int]],
        *,
        per_peer: Sequence[dict[str, Any]] = (),
        private_for: Sequence[Identity] | None = None,
        **config: Any,
    ) -> None:
        """`config`: PeerConfig fields for every peer; `per_peer[i]`: more for peer i."""
        self.checkpoint = checkpoint
        self.spans = list(spans)
        self.per_peer = list(per_peer) + [{}] * (len(self.spans) - len(per_peer))
        self.identities = [Identity.generate() for _ in range(len(self.spans) + 2)]
        self.members = None  # anyone
        if private_for is not None:
            own = [identity.peer_id for identity in [*self.identities, *private_for]]
            self.members = frozenset(own)
            config["rpc"] = RPCConfig(members=self.members)
        self.config = config
        self.loop = TrioThread("test-swarm")
        self.peers: list[ThreadPeer] = []
        self.bootstrap = ""
        self._probe: RPCHost | None = None

    def __enter__(self) -> ThreadSwarm:
        self.loop.start()
        try:
            rpc = RPCConfig(members=self.members)
            serve_dht = partial(serve_dht_node, rpc_config=rpc)
            dht_identity, probe_identity, *peer_identities = self.identities
            node = self.loop.start_service(serve_dht, dht_identity, TcpTransport(), "127.0.0.1", 0)
            self.bootstrap = str(node.address)
            for span, options, identity in zip(
                self.spans, self.per_peer, peer_identities, strict=True
            ):
                self.peers.append(self.loop.start_service(self._serve, *span, options, identity))
            self._probe = RPCHost(probe_identity, TcpTransport(), rpc)
            self.loop.start_service(self._probe.run, "127.0.0.1", 0)
        except BaseException:
            self.loop.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.loop.close()

    async def _serve(
        self,
        start: int,
        end: int,
        options: dict[str, Any],
        identity: Identity,
        *,
        task_status: trio.TaskStatus[ThreadPeer],
    ) -> None:
        config = PeerConfig(
            checkpoint=self.checkpoint,
            blocks=(start, end),
            initial_peers=(PeerAddress.parse(self.bootstrap),),
            **(self.config | options),
        )
        relay = FaultRelay(TcpTransport())
        stopped = trio.Event()
        control = PeerControl()
        serving = partial(serve_peer, config, identity, relay, control)
        try:
            with trio.CancelScope() as scope:
                async with trio.open_nursery() as nursery:
                    address = await nursery.start(serving)
                    thread_peer = ThreadPeer(address, start, end, scope, relay, stopped, control)
                    task_status.started(thread_peer)
        finally:
            stopped.set()

    def peer(self, peer_id: str) -> ThreadPeer:
        return next(p for p in self.peers if p.peer == peer_id)

    def fault(self, peer: ThreadPeer, command: str, *args: float) -> None:
        """Run a `FaultRelay` command (delay, stall, resume, cut) for `peer`, in its loop."""

        async def apply() -> None:
            getattr(peer.relay, command)(*args)

        self.loop.run(apply)

    def stop_peer(self, peer: ThreadPeer) -> None:
        """Stop `peer` as its daemon stops on Ctrl-C; return once it serves no more (a peer
        still serves while it announces `offline`)."""

        async def stop() -> None:
            peer.scope.cancel()
            await peer.stopped.wait()

        self.loop.run(stop)

    def info(self, peer: ThreadPeer) -> dict[str, Any]:
        """What the peer reports over `span.info` (its announcement's fields, and more)."""
        assert self._probe is not None
        probe = self._probe

        async def ask() -> dict[str, Any]:
            reply = await probe.call(peer.address, span_protocol.INFO, Packet({}), timeout=5)
            return dict(reply.header)

        return self.loop.run(ask)

    def status(self, peer: ThreadPeer) -> PeerStatus:
        """The peer's status as its metrics show it, taken in its loop."""

        async def take() -> PeerStatus:
            assert peer.control.status is not None  # set before the peer reports it serves
            return peer.control.status()

        return self.loop.run(take)

    def sessions(self, peer: ThreadPeer) -> int:
        return int(self.info(peer)["sessions"])
