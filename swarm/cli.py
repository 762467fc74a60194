"""The `swarm` command: argument parsing and dispatch.

Each subcommand lives in `swarm/commands/` and is imported only when it runs, so
`swarm --help` starts in a blink (no torch, no hivemind). Results go to stdout, logs and
progress to stderr. Long-running commands print their own address (`HOST:PORT/PEER_ID`) on a
line of its own once ready and stop cleanly on SIGINT/SIGTERM.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from pathlib import Path

from .logs import configure_logging


def _add_network_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=0, help="port to listen on (0: any free)")
    parser.add_argument(
        "--identity", type=Path, help="identity key file (created if missing; default: fresh)"
    )
    parser.add_argument(
        "--initial-peers",
        nargs="*",
        default=[],
        metavar="ADDR",
        help="peers to join through, as HOST:PORT/PEER_ID (none: start a new swarm)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="swarm", description="A peer-to-peer inference swarm for large language models."
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    identity = commands.add_parser("identity", help="create or show an identity key")
    identity_commands = identity.add_subparsers(dest="action", required=True, metavar="ACTION")
    new = identity_commands.add_parser("new", help="write a new Ed25519 identity key")
    new.add_argument("path", type=Path)
    new.add_argument("--force", action="store_true", help="overwrite an existing file")
    show = identity_commands.add_parser("show", help="print the peer id of an identity key")
    show.add_argument("path", type=Path)

    dht = commands.add_parser("dht", help="run a DHT-only node")
    _add_network_options(dht)

    monitor = commands.add_parser("monitor", help="serve the swarm monitor page")
    _add_network_options(monitor)
    monitor.add_argument(
        "--refresh",
        type=float,
        default=2.0,
        metavar="SECONDS",
        help="the page's refresh period (the DHT is read twice per period); ?refresh=N overrides",
    )

    demo = commands.add_parser("demo", help="a local swarm on the default model, end to end")
    demo.add_argument("--model", type=Path, help="a local checkpoint (default: SmolLM2)")
    demo.add_argument("--prompt", default="What is the capital of France?")
    demo.add_argument("--max-new-tokens", type=int, default=32)
    return parser


COMMAND_MODULES = {
    "identity": "swarm.commands.identity",
    "dht": "swarm.commands.dht",
    "monitor": "swarm.commands.monitor",
    "demo": "swarm.commands.demo",
}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(args.verbose)
    command = importlib.import_module(COMMAND_MODULES[args.command])
    try:
        return int(command.run(args))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
