"""The peer daemon: load a span, serve it over RPC, join the DHT and announce it.

`serve_peer` composes the pieces in one nursery: the compute worker (the one thread), the
backend loaded through it, the scheduler, the RPC host with the span server's methods, a DHT
node and the announcer. Its started value is the peer's address, once it serves and is
announced `online`.

Shutdown is ordered: when the caller cancels, the network keeps running (its scope is
shielded) just long enough to announce `offline` (bounded by the announcer's goodbye
timeout), then everything stops. Without that, the DHT connections would be cancelled in the
same instant as the goodbye that needs them.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

import torch
import trio

from routing.address import PeerAddress
from routing.announcement import PeerAnnouncement, PeerState, block_key
from routing.client import SwarmView, read_announcements, usable_announcements
from routing.dht import DHTConfig, DHTNode
from routing.relay_directory import list_relay
from routing.rpc import CircuitConfig, CircuitRelay, RPCConfig, RPCHost
from routing.transport import Transport
from security import Identity

from .activity import STEP_BUCKETS, Activity, ActivityReporter, Durations, Load, PeerStatus
from .adapters import load_adapter
from .announcer import Announcer, AnnouncerConfig
from .backend import BackendConfig, SpanBackend
from .block_choice import claim_span
from .checkpoint import open_checkpoint
from .errors import InvalidRequestError
from .model_name import model_name
from .reachability import Reachability
from .rebalancer import PeerControl, RebalanceConfig, Rebalancer
from .scheduler import InferenceScheduler, SchedulerConfig
from .server import SpanServer
from .thread_choice import ThreadChoice
from .throughput import get_throughput, measure_throughput
from .worker import ComputeWorker

logger = logging.getLogger(__name__)

VERSION = "0.1.0"
CLAIM_ROUNDS = 4  # looks at a claimed span before loading it anyway
CLAIM_PAUSE = (0.2, 0.6)  # seconds between them, drawn at random
CLAIM_READ_TIMEOUT = 5.0
CLAIMING_STATES = frozenset({PeerState.ONLINE, PeerState.JOINING})


@dataclass(frozen=True)
class PeerConfig:
    """What a peer serves and how. `blocks=None`: the whole model."""

    checkpoint: Path
    blocks: tuple[int, int] | None = None  # None: `num_blocks` where the swarm is weakest
    num_blocks: int | None = None  # how many blocks to serve without `blocks` (None: all)
    rebalance: RebalanceConfig | None = field(default_factory=RebalanceConfig)  # if not `blocks`
    model_name: str | None = None  # default: derived from the checkpoint (`model_name`)
    device: str = "cpu"
    dtype: str = "float32"
    host: str = "127.0.0.1"
    port: int = 0
    public_host: str | None = None  # what others dial (default: `host`, or found for 0.0.0.0)
    public_port: int | None = None  # likewise (default: the port it listens on)
    via: PeerAddress | None = None  # listen nowhere: serve through this circuit relay
    auto_circuit: bool = True  # if others cannot dial it: a circuit through a listed relay
    recheck_reach: float = 180.0  # seconds between reach checks after the first (0: none)
    host_share: float = 1.0  # of its cache and sessions one client host may hold (1: all)
    circuit_relay: CircuitConfig | None = None  # relay circuits for peers that cannot be
    # dialled (and list itself in the DHT for them); None: relay none
    initial_peers: tuple[PeerAddress, ...] = ()
    cache_dir: Path | None = None  # where measured throughput is kept (None: measure each time)
    backend: BackendConfig = field(default_factory=BackendConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    announcer: AnnouncerConfig = field(default_factory=AnnouncerConfig)
    dht: DHTConfig = field(default_factory=DHTConfig)
    rpc: RPCConfig = field(default_factory=RPCConfig)
    adapters: tuple[Path, ...] = ()  # PEFT LoRA directories, served on request by name
    quantization: str | None = None  # "int8": int8 weights (`peer.int8_weights`)
    report_every: float = 60.0  # seconds between activity reports in the log (0: none)

    @property
    def name(self) -> str:
        return self.model_name or model_name(self.checkpoint)


def parse_blocks(text: str) -> tuple[int, int]:
    """`"A:B"` -> (A, B), blocks A..B-1."""
    try:
        start, end = (int(part) for part in text.split(":"))
    except ValueError:
        raise InvalidRequestError(f"--blocks takes A:B (e.g. 0:12), not {text!r}") from None
    if not 0 <= start < end:
        raise InvalidRequestError(f"--blocks {text}: need 0 <= A < B")
    return start, end


class _Peer:
    """The running parts, and the announcement they make."""

    def __init__(
        self, config: PeerConfig, backend: SpanBackend, throughput: float, control: PeerControl
    ) -> None:
        self.config = config
        self.control = control  # whether it drains
        self.backend = backend
        self.throughput = throughput  # tokens/s through one block
        self.address: PeerAddress | None = None
        self.activity = Activity()  # the span server's, once it serves
        self.step_times = Durations(STEP_BUCKETS)  # likewise

    def use(self, backend: SpanBackend) -> None:
        """Serve `backend` from now on (the rebalancer moved the peer to other blocks); its
        steps choose their threads as the old one's learnt to (`ThreadChoice`)."""
        backend.step_threads = self.backend.step_threads
        backend.prompt_threads = self.backend.prompt_threads
        self.backend = backend

    def announcement(self, state: PeerState) -> PeerAnnouncement:
        """What the peer says of itself in `state` (`online` while it drains: `draining`)."""
        if self.address is None:
            raise RuntimeError("the peer announces itself only once it listens")
        if state is PeerState.ONLINE and self.control.draining:
            state = PeerState.DRAINING
        return PeerAnnouncement(
            address=self.address,
            model=self.config.name,
            start=self.backend.start,
            end=self.backend.end,
            state=state,
            throughput=self.throughput,
            cache_tokens_left=self.backend.cache_tokens_left,
            sessions=self.backend.active_sessions,
            dtype=self.config.dtype,
            version=VERSION,
            adapters=self.backend.adapters.names,
            quantization=self.config.quantization or "",
            max_session_length=self.backend.max_session_length,
            served_tokens=self.activity.tokens,
        )

    def info(self) -> dict[str, Any]:
        return self.announcement(PeerState.ONLINE).to_fields()

    def status(self) -> PeerStatus:
        backend = self.backend
        return PeerStatus(
            self.announcement(PeerState.ONLINE),
            replace(self.activity),
            self.step_times.copy(),
            backend.config.max_cache_tokens,
            kept_bytes=backend.kept.kept_bytes,
            kept_backwards=backend.kept.taken,
            kept_released=backend.kept.released,
            kept_too_large=backend.kept.too_large,
        )

    def load(self) -> Load:
        backend = self.backend  # the rebalancer may have moved it to other blocks
        return Load(
            backend.start,
            backend.end,
            backend.active_sessions,
            backend.cache_tokens_left,
            backend.config.max_cache_tokens,
        )


async def serve_peer(
    config: PeerConfig,
    identity: Identity,
    transport: Transport,
    control: PeerControl | None = None,
    *,
    task_status: trio.TaskStatus[PeerAddress] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve until cancelled; announce `offline` on the way out. `control`: see rebalancer."""
    stop = trio.Event()
    control = control or PeerControl()
    async with trio.open_nursery() as nursery:
        address = await nursery.start(_serve_shielded, config, identity, transport, control, stop)
        task_status.started(address)
        try:
            await trio.sleep_forever()
        finally:
            stop.set()  # `_serve_shielded` says goodbye, then stops everything


async def _serve_shielded(
    config: PeerConfig,
    identity: Identity,
    transport: Transport,
    control: PeerControl,
    stop: trio.Event,
    *,
    task_status: trio.TaskStatus[PeerAddress],
) -> None:
    with trio.CancelScope(shield=True):
        async with trio.open_nursery() as nursery:
            worker = ComputeWorker()
            await nursery.start(worker.run)
            checkpoint = await worker.submit(open_checkpoint, config.checkpoint)
            num_blocks = checkpoint.num_layers
            # The network first: the span is chosen, and claimed, in the swarm as it is now.
            rpc = RPCHost(identity, transport, config.rpc)
            circuits = None if config.circuit_relay is None else CircuitRelay(config.circuit_relay)
            if circuits is not None:
                circuits.register(rpc)
            dht = DHTNode(rpc, config.dht)  # on a circuit, a client of the DHT
            reachability = Reachability(config, rpc, dht)
            await nursery.start(reachability.listen)
            await nursery.start(partial(dht.run, initial_peers=config.initial_peers))
            address = await reachability.reached_at(nursery)
            if circuits is not None and address.via is None:  # a relay others can dial
                nursery.start_soon(list_relay, dht, address)
            blocks = await _choose_blocks(config, dht, address, num_blocks)
            peer = await _load(config, worker, blocks, control)
            peer.address = address
            scheduler = InferenceScheduler(peer.backend, worker, config.scheduler)
            await nursery.start(scheduler.run)
            server = SpanServer(
                rpc,
                scheduler,
                peer.info,
                idle_timeout=config.scheduler.idle_timeout,
                accepting=lambda: not control.draining,
                host_share=config.host_share,
            )
            server.register()
            peer.activity, peer.step_times = server.activity, server.step_times
            control.status = lambda: replace(
                peer.status(),
                reached=reachability.reached,
                relay=None if circuits is None else circuits.load(),
                connections=rpc.stats(),
            )
            if config.report_every > 0:
                reporter = ActivityReporter(server.activity, peer.load, config.report_every)
                await nursery.start(reporter.run)
            announcer = Announcer(dht, peer.announcement, num_blocks, config.announcer)
            announcing = trio.CancelScope()
            said_goodbye = trio.Event()

            async def announce(*, task_status: trio.TaskStatus[None]) -> None:
                try:
                    with announcing:
                        await announcer.run(task_status=task_status)
                finally:
                    said_goodbye.set()

            await nursery.start(announce)
            nursery.start_soon(reachability.keep_reachable, peer, announcer)
            nursery.start_soon(_announce_drains, control, announcer)
            if config.blocks is None and config.rebalance is not None:
                await nursery.start(
                    _rebalancer(config, peer, dht, scheduler, announcer, worker, control).run
                )
            logger.info("serving and announced at %s", peer.address)
            task_status.started(peer.address)
            await stop.wait()
            announcing.cancel()  # the announcer publishes `offline` on its way out
            await said_goodbye.wait()
            nursery.cancel_scope.cancel()


def _rebalancer(
    config: PeerConfig,
    peer: _Peer,
    dht: DHTNode,
    scheduler: InferenceScheduler,
    announcer: Announcer,
    worker: ComputeWorker,
    control: PeerControl,
) -> Rebalancer:
    assert peer.address is not None and config.rebalance is not None  # set before announcing
    total = int(peer.backend.span.config.num_hidden_layers)

    async def load(start: int, end: int) -> SpanBackend:
        return await worker.submit(partial(_load_span, config, start, end))

    def switch(backend: SpanBackend) -> None:
        peer.use(backend)
        scheduler.backend = backend

    view = SwarmView(dht.rpc, dht, config.name, total)
    own = str(peer.address.peer_id)
    return Rebalancer(
        view,
        announcer,
        lambda: peer.backend,
        load,
        switch,
        own,
        peer.throughput,
        config.rebalance,
        control,
    )


def _load_span(config: PeerConfig, start: int, end: int) -> SpanBackend:
    backend = SpanBackend.load(
        config.checkpoint, start, end, dtype=config.dtype, device=config.device,
        config=config.backend, quantization=config.quantization,
    )  # fmt: skip
    for adapter in config.adapters:
        load_adapter(adapter, backend.span, backend.adapters)
    return backend


async def _choose_blocks(
    config: PeerConfig, dht: DHTNode, address: PeerAddress, total: int
) -> tuple[int, int]:
    """`config.blocks`, or the weakest part of the swarm, claimed before loading.

    The claim is announced as `joining` and looked at again after a short random pause until
    it holds (see `block_choice.claim_span`), so that peers that start together part ways.
    """
    if config.blocks is not None:
        if config.blocks[1] > total:
            raise InvalidRequestError(f"the model has {total} blocks, not {config.blocks[1]}")
        return config.blocks
    length = min(config.num_blocks or total, total)
    if length == total or not config.initial_peers:
        return 0, length
    span = await _weakest(config, dht, address, total, length)
    previous = None
    for _ in range(CLAIM_ROUNDS):
        await _announce_claim(config, dht, address, span, total, previous)
        await trio.sleep(random.uniform(*CLAIM_PAUSE))
        again = await _weakest(config, dht, address, total, length)
        if again == span:
            break
        previous, span = span, again
    logger.info("the swarm is weakest at blocks %d..%d: serving them", span[0], span[1] - 1)
    return span


async def _weakest(
    config: PeerConfig, dht: DHTNode, address: PeerAddress, total: int, length: int
) -> tuple[int, int]:
    records = await read_announcements(dht, config.name, total, CLAIM_READ_TIMEOUT)
    serving_or_claimed = usable_announcements(records, config.name, total, CLAIMING_STATES)
    return claim_span(total, length, str(address.peer_id), serving_or_claimed)


async def _announce_claim(
    config: PeerConfig,
    dht: DHTNode,
    address: PeerAddress,
    span: tuple[int, int],
    total: int,
    previous: tuple[int, int] | None,
) -> None:
    """Announce `span` as `joining`; the keys of a previous claim are not republished."""

    def claim(state: PeerState) -> PeerAnnouncement:
        return PeerAnnouncement(
            address=address, model=config.name, start=span[0], end=span[1], state=state,
            throughput=0.0, cache_tokens_left=0, sessions=0, dtype=config.dtype, version=VERSION,
        )  # fmt: skip

    await Announcer(dht, claim, total, config.announcer).publish(PeerState.JOINING)
    if previous is not None:
        for block in set(range(*previous)) - set(range(*span)):
            dht.forget_own(block_key(config.name, block))


async def _announce_drains(control: PeerControl, announcer: Announcer) -> None:
    """Announce at once when the peer starts or stops draining, so that clients stop or
    start opening sessions with it then, not at the next refresh."""
    seen = control.drain_changes
    while True:
        await control.wait_drain_change(seen)
        seen = control.drain_changes
        await announcer.publish(PeerState.ONLINE)  # `draining` while it drains


async def _load(
    config: PeerConfig, worker: ComputeWorker, blocks: tuple[int, int], control: PeerControl
) -> _Peer:
    start, end = blocks
    logger.info("loading blocks %d..%d of %s", start, end - 1, config.checkpoint)
    backend = await worker.submit(partial(_load_span, config, start, end))
    logger.info("measuring throughput (cached per model, device and dtype)")
    if config.cache_dir is None:
        measured = await worker.submit(measure_throughput, backend)
    else:
        measured = await worker.submit(get_throughput, backend, config.cache_dir)
    per_block = measured.inference_tokens_per_s * measured.num_layers
    threads = measured.one_token_threads
    other = 1 if backend.span.device.type == "cpu" else None  # when other processes compute
    backend.step_threads = ThreadChoice(threads, other)
    backend.prompt_threads = ThreadChoice(await worker.submit(torch.get_num_threads), other)
    logger.info(
        "throughput: %.1f tokens/s through the span (one-token steps on %d torch thread%s%s)",
        measured.inference_tokens_per_s,
        threads,
        "" if threads == 1 else "s",
        ", or on 1 while that runs faster" if len(backend.step_threads.counts) > 1 else "",
    )
    return _Peer(config, backend, per_block, control)
