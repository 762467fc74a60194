"""`--identity KEY` and `--members FILE`: who a command is in the swarm, and, in a private
swarm, the only peers it talks to (`security.members`; every command follows the file as
it changes); `--tls-cert PEM --tls-key PEM`: HTTPS for its HTTP server (`swarm.tls`);
`--circuit-relay [--circuit-rate MB]`: circuits it relays for peers that cannot be dialled
(`routing.rpc.circuit`)."""

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
    """The circuits to relay with `--circuit-relay` (at most `--circuit-rate` MB a second);
    None without it."""
    if not args.circuit_relay:
        return None
    if args.circuit_rate is None:
        return CircuitConfig()
    if not args.circuit_rate > 0:
        raise SwarmError(f"--circuit-rate must be more than 0 MB a second, not {args.circuit_rate}")
    return CircuitConfig(max_bytes_per_second=args.circuit_rate * 1e6)
