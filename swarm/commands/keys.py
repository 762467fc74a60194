"""`--identity KEY` and `--members FILE`: who a command is in the swarm, and, in a private
swarm, the only peers it talks to (`security.members`; every command follows the file as
it changes); `--tls-cert PEM --tls-key PEM`: HTTPS for its HTTP server (`swarm.tls`);
`--circuit-relay [--circuit-rate MB] [--circuit-peer-rate MB]`: circuits it relays for peers
that cannot be dialled (`routing.rpc.circuit`)."""

from __future__ import annotations

import argparse
import ssl
from pathlib import Path

from routing.rpc import CircuitConfig, RPCConfig
from security import Identity

from ..errors import SwarmError
from ..tls import TlsError, server_context


def identity_from(path: Path | None) -> Identity:
    """The key at `path` (created there if missing), or a fresh one kept in memory only."""
    return Identity.load_or_create(path) if path else Identity.generate()


def rpc_config(args: argparse.Namespace) -> RPCConfig:
    return RPCConfig.for_members(args.members)


def tls_from(args: argparse.Namespace) -> ssl.SSLContext | None:
    """HTTPS with `--tls-cert` and `--tls-key`, which go together; None without them."""
    if args.tls_cert is None and args.tls_key is None:
        return None
    if args.tls_cert is None or args.tls_key is None:
        raise TlsError("--tls-cert and --tls-key go together")
    return server_context(args.tls_cert, args.tls_key)


def circuit_relay(args: argparse.Namespace) -> CircuitConfig | None:
    """The circuits to relay with `--circuit-relay` (at most `--circuit-rate` MB a second,
    and `--circuit-peer-rate` for one peer's); None without it."""
    if not args.circuit_relay:
        return None
    rates = {"--circuit-rate": args.circuit_rate, "--circuit-peer-rate": args.circuit_peer_rate}
    for option, rate in rates.items():
        if rate is not None and not rate > 0:
            raise SwarmError(f"{option} must be more than 0 MB a second, not {rate}")
    total, per_peer = (None if rate is None else rate * 1e6 for rate in rates.values())
    return CircuitConfig(max_bytes_per_second=total, max_peer_bytes_per_second=per_peer)
