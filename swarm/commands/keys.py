"""`--identity KEY` and `--members FILE`: who a command is in the swarm, and, in a private
swarm, the only peers it talks to (`security.members`; every command follows the file as
it changes); `--tls-cert PEM --tls-key PEM`: HTTPS for its HTTP server (`swarm.tls`)."""

from __future__ import annotations

import argparse
import ssl
from pathlib import Path

from routing.rpc import RPCConfig
from security import Identity

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
