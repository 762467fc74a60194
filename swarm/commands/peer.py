"""`swarm peer MODEL`: serve a span of a model's blocks to the swarm until stopped; with
`--metrics-port`, its Prometheus metrics too (`swarm.peer_metrics`; HTTPS with `--tls-cert`
and `--tls-key`)."""

from __future__ import annotations

import argparse
import signal
from dataclasses import replace
from functools import partial

import trio

from peer.activity import PeerStatus
from peer.backend import BackendConfig
from peer.daemon import PeerConfig, parse_blocks, serve_peer
from peer.rebalancer import PeerControl
from routing import PeerAddress, TcpTransport

from ..checkpoints import resolve_checkpoint, swarm_name
from ..default_model import cache_dir
from ..errors import SwarmError
from ..http_server import HttpConfig, HttpServer
from ..peer_metrics import peer_metrics_handler
from ..tls import TlsError
from .keys import circuit_relay, identity_from, rpc_config, tls_from
from .lifecycle import run_service


def peer_config(args: argparse.Namespace) -> PeerConfig:
    backend = BackendConfig()
    if args.cache_tokens is not None:
        backend = replace(backend, max_cache_tokens=args.cache_tokens)
    if args.max_sessions is not None:
        backend = replace(backend, max_sessions=args.max_sessions)
    if args.kept_activations < 0:
        raise SwarmError(f"--kept-activations must be 0 or more, not {args.kept_activations}")
    backend = replace(backend, max_kept_bytes=int(args.kept_activations * 1e6))
    if not 0 < args.host_share <= 1:
        raise SwarmError(f"--host-share must be more than 0 and at most 1, not {args.host_share}")
    return PeerConfig(
        checkpoint=resolve_checkpoint(args.model),
        blocks=parse_blocks(args.blocks) if args.blocks else None,
        num_blocks=args.num_blocks,
        model_name=swarm_name(args.model, args.model_name),
        device=args.device,
        dtype=args.dtype,
        host=args.host,
        port=args.port,
        public_host=args.public_host,
        public_port=args.public_port,
        via=PeerAddress.parse(args.via) if args.via else None,
        circuit_relay=circuit_relay(args),
        auto_circuit=not args.no_auto_circuit,
        initial_peers=tuple(PeerAddress.parse(text) for text in args.initial_peers),
        cache_dir=cache_dir(),
        backend=backend,
        host_share=args.host_share,
        adapters=tuple(args.adapter),
        quantization=args.quantize,
        report_every=args.report_every,
        rpc=rpc_config(args),
    )


async def serve(args: argparse.Namespace, *, task_status: trio.TaskStatus[PeerAddress]) -> None:
    """The peer, with SIGUSR1 asking it to drain (take no new sessions, then move)."""
    control = PeerControl()
    tls = tls_from(args)
    if tls is not None and args.metrics_port is None:
        raise TlsError("--tls-cert and --tls-key serve the metrics: give --metrics-port too")
    serving = partial(
        serve_peer, peer_config(args), identity_from(args.identity), TcpTransport(), control
    )
    with trio.open_signal_receiver(signal.SIGUSR1) as drain_requests:
        async with trio.open_nursery() as nursery:
            if args.metrics_port is not None:

                def status() -> PeerStatus | None:
                    return None if control.status is None else control.status()

                handler = peer_metrics_handler(status)
                metrics = HttpServer(handler, HttpConfig(), "metrics", tls)
                await nursery.start(metrics.run, args.metrics_host, args.metrics_port)
            task_status.started(await nursery.start(serving))
            async for _ in drain_requests:
                control.request_drain()


def run(args: argparse.Namespace) -> int:
    return run_service(partial(serve, args))
