"""`swarm peer MODEL`: serve a span of a model's blocks to the swarm until stopped."""

from __future__ import annotations

import argparse
from dataclasses import replace
from functools import partial

from peer.backend import BackendConfig
from peer.daemon import PeerConfig, parse_blocks, serve_peer
from routing import PeerAddress, TcpTransport

from ..checkpoints import resolve_checkpoint, swarm_name
from ..default_model import cache_dir
from .identity_file import identity_from
from .lifecycle import run_service


def peer_config(args: argparse.Namespace) -> PeerConfig:
    backend = BackendConfig()
    if args.cache_tokens is not None:
        backend = replace(backend, max_cache_tokens=args.cache_tokens)
    if args.max_sessions is not None:
        backend = replace(backend, max_sessions=args.max_sessions)
    return PeerConfig(
        checkpoint=resolve_checkpoint(args.model),
        blocks=parse_blocks(args.blocks) if args.blocks else None,
        num_blocks=args.num_blocks,
        model_name=swarm_name(args.model, args.model_name),
        device=args.device,
        dtype=args.dtype,
        host=args.host,
        port=args.port,
        initial_peers=tuple(PeerAddress.parse(text) for text in args.initial_peers),
        cache_dir=cache_dir(),
        backend=backend,
    )


def run(args: argparse.Namespace) -> int:
    config = peer_config(args)
    return run_service(partial(serve_peer, config, identity_from(args.identity), TcpTransport()))
