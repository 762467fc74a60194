"""The `swarm` command: argument parsing and dispatch.

Each subcommand lives in `swarm/commands/` and is imported only when it runs, so
`swarm --help` starts in a blink (no torch, no hivemind). Results go to stdout, logs and
progress to stderr. Long-running commands print their own address (`HOST:PORT/PEER_ID`) on a
line of its own once ready and stop cleanly on SIGINT/SIGTERM.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from peer.errors import PeerError
from routing.address import PeerAddress
from routing.errors import RoutingError
from security.errors import SecurityError

from .errors import SwarmError
from .logs import configure_logging

TYPED_ERRORS = (SwarmError, PeerError, RoutingError, SecurityError)
DTYPES = ["float32", "bfloat16", "float16"]  # peer.span.SUPPORTED_DTYPES, without torch


def _add_key_options(parser: argparse.ArgumentParser) -> None:
    """Who the command is in the swarm, and whom it talks to (`swarm/commands/keys.py`)."""
    parser.add_argument(
        "--identity", type=Path, help="identity key file (created if missing; default: fresh)"
    )
    parser.add_argument(
        "--members",
        type=Path,
        metavar="FILE",
        help="a private swarm's peer ids, one per line: talk to no one else",
    )


def _add_tls_options(parser: argparse.ArgumentParser, served: str) -> None:
    """HTTPS for a command's HTTP server (`swarm/tls.py`)."""
    parser.add_argument(
        "--tls-cert", type=Path, metavar="PEM", help=f"serve {served} over HTTPS: the certificate"
    )
    parser.add_argument("--tls-key", type=Path, metavar="PEM", help="and its private key")


def _add_public_options(parser: argparse.ArgumentParser) -> None:
    """Where others dial a node (`routing/public_address.py`), and circuits for those that
    cannot be dialled (`routing/rpc/circuit.py`)."""
    parser.add_argument(
        "--public-host",
        metavar="HOST",
        help="the address others dial, if not --host (behind NAT, or a DNS name; default for "
        "0.0.0.0: this machine's address toward the initial peers)",
    )
    parser.add_argument(
        "--public-port", type=int, metavar="PORT", help="the port others dial, if forwarded"
    )
    parser.add_argument(
        "--circuit-relay",
        action="store_true",
        help="relay circuits for peers that cannot be dialled (listed in the DHT for them)",
    )
    parser.add_argument(
        "--circuit-rate",
        type=float,
        metavar="MB",
        help="with --circuit-relay: relay at most this many MB a second, all circuits together",
    )
    parser.add_argument(
        "--circuit-peer-rate",
        type=float,
        metavar="MB",
        help="with --circuit-relay: relay at most this many MB a second for one peer",
    )


def _add_network_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=0, help="port to listen on (0: any free)")
    _add_key_options(parser)
    parser.add_argument(
        "--initial-peers",
        nargs="*",
        default=[],
        metavar="ADDR",
        help="peers to join through, as HOST:PORT/PEER_ID (none: start a new swarm)",
    )


def _add_model_options(parser: argparse.ArgumentParser) -> None:
    """What every client command takes: the model and the swarm."""
    parser.add_argument("model", help="the checkpoint the peers serve (its head runs here)")
    parser.add_argument(
        "--initial-peers", nargs="+", required=True, metavar="ADDR", help="HOST:PORT/PEER_ID"
    )
    _add_key_options(parser)
    parser.add_argument("--model-name", help="the model's name in the swarm (default: derived)")
    parser.add_argument("--adapter", help="run the peers' LoRA adapter of this name")
    parser.add_argument(
        "--exact-weights",
        action="store_true",
        help="only through peers with the checkpoint's own weights (no int8 peers)",
    )
    parser.add_argument("--device", default="cpu", help="where the head runs")
    parser.add_argument(
        "--dtype",
        default="float32",
        choices=DTYPES,
        help="of the head (use the peers' dtype)",
    )


def _add_client_options(parser: argparse.ArgumentParser) -> None:
    """What `generate` and `chat` share: the model, the swarm, and the sampling."""
    _add_model_options(parser)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--do-sample", action="store_true", help="sample instead of greedy")
    parser.add_argument("--temperature", type=float)
    parser.add_argument("--top-k", type=int)
    parser.add_argument("--top-p", type=float)
    parser.add_argument("--repetition-penalty", type=float)
    parser.add_argument("--no-repeat-ngram-size", type=int, help="n-grams may occur once")
    parser.add_argument("--min-p", type=float, help="sampling: drop tokens under P x the top")
    parser.add_argument("--seed", type=int, default=0, help="seed of the sampler")
    parser.add_argument(
        "--stop", action="append", metavar="TEXT", help="end once this is written (repeatable)"
    )
    parser.add_argument("--max-time", type=float, metavar="SECONDS", help="end after this long")
    parser.add_argument("--json", action="store_true", help="answer with one JSON object")
    parser.add_argument(
        "--json-schema", metavar="FILE", help="answer with a JSON value of the schema in FILE"
    )
    parser.add_argument(
        "--assistant", help="a small local checkpoint that drafts tokens (speculative decoding)"
    )
    parser.add_argument(
        "--prompt-lookup",
        type=int,
        metavar="N",
        help="draft up to N tokens a round copied from earlier in the text (for answers that "
        "repeat the prompt)",
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
    _add_public_options(dht)

    peer = commands.add_parser("peer", help="serve a span of a model's blocks to the swarm")
    peer.add_argument("model", help="a local Hugging Face checkpoint directory (or a hub id)")
    _add_network_options(peer)
    _add_public_options(peer)
    peer.add_argument(
        "--via",
        metavar="ADDR",
        help="behind NAT with no port forwarded: listen nowhere, serve through the circuit "
        "relay at ADDR (a node run with --circuit-relay; by default, a peer that others "
        "cannot dial takes the nearest relay listed in the DHT)",
    )
    peer.add_argument(
        "--no-auto-circuit",
        action="store_true",
        help="serve where it listens even if others cannot dial it there",
    )
    peer.add_argument(
        "--blocks", metavar="A:B", help="serve blocks A..B-1 (default: where the swarm is weakest)"
    )
    peer.add_argument(
        "--num-blocks", type=int, help="without --blocks: serve this many (default: all)"
    )
    peer.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    peer.add_argument("--dtype", default="float32", choices=DTYPES, help="weights")
    peer.add_argument(
        "--quantize",
        choices=["int8"],
        help="int8 weights (with --dtype bfloat16 or float16): half the memory, faster on CPU",
    )
    peer.add_argument("--cache-tokens", type=int, help="KV cache budget in tokens")
    peer.add_argument("--max-sessions", type=int, help="concurrent inference sessions")
    peer.add_argument(
        "--kept-activations",
        type=float,
        default=1000,
        metavar="MB",
        help="of activations kept between a training forward and its backward (default 1000; "
        "0: the backward runs the forward again)",
    )
    peer.add_argument(
        "--host-share",
        type=float,
        default=1.0,
        metavar="FRACTION",
        help="of the cache and sessions one client host may hold (default 1: no limit)",
    )
    peer.add_argument("--model-name", help="the model's name in the swarm (default: derived)")
    peer.add_argument(
        "--metrics-port",
        type=int,
        metavar="PORT",
        help="serve Prometheus metrics at http://HOST:PORT/metrics (0: any free port)",
    )
    peer.add_argument("--metrics-host", default="127.0.0.1", help="where the metrics listen (HOST)")
    _add_tls_options(peer, "the metrics")
    peer.add_argument(
        "--report-every",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="log what the peer served every so often (0: never)",
    )
    peer.add_argument(
        "--adapter",
        action="append",
        default=[],
        type=Path,
        metavar="DIR",
        help="a PEFT LoRA adapter directory to serve too, named as the directory (repeatable)",
    )

    generate = commands.add_parser("generate", help="generate text through the swarm")
    _add_client_options(generate)
    generate.add_argument("prompt", nargs="?", help="also last, after --initial-peers")
    generate.add_argument(
        "--num-beams",
        type=int,
        default=1,
        help="beam search over this many beams (prints at the end)",
    )
    generate.add_argument("--chat", action="store_true", help="apply the chat template")

    chat = commands.add_parser("chat", help="a conversation through the swarm, on stdin")
    _add_client_options(chat)
    chat.add_argument("--system", help="a system message to begin with")
    chat.add_argument(
        "--max-length", type=int, default=2048, help="tokens the conversation may reach"
    )

    api = commands.add_parser("api", help="serve OpenAI's completions API for a model")
    _add_model_options(api)
    api.add_argument("--host", default="127.0.0.1", help="address to listen on")
    api.add_argument("--port", type=int, default=8000)
    api.add_argument("--served-model-name", help='what requests name as "model" (default: '
                     "the model's name in the swarm)")  # fmt: skip
    api.add_argument("--max-tokens", type=int, default=1024, help="the most a request may ask")
    api.add_argument("--max-concurrent", type=int, default=8, help="generations at once")
    api.add_argument(
        "--idle-sessions", type=int, default=4, help="sessions kept for conversations' next turns"
    )
    api.add_argument("--idle-seconds", type=float, default=120.0, help="how long each is kept")
    api.add_argument(
        "--room-wait",
        type=float,
        default=60.0,
        help="seconds a request may wait for the answers in flight to free room on the peers",
    )
    api.add_argument(
        "--api-key-file",
        type=Path,
        help="require Authorization: Bearer KEY, KEY read from this file (or $SWARM_API_KEY)",
    )
    _add_tls_options(api, "the API")

    monitor = commands.add_parser("monitor", help="serve the swarm monitor page")
    _add_network_options(monitor)
    monitor.add_argument(
        "--refresh",
        type=float,
        default=2.0,
        metavar="SECONDS",
        help="the page's refresh period (the DHT is read twice per period); ?refresh=N overrides",
    )
    _add_tls_options(monitor, "the page")

    status = commands.add_parser("status", help="print one picture of the swarm and exit")
    status.add_argument(
        "--initial-peers", nargs="+", required=True, metavar="ADDR", help="HOST:PORT/PEER_ID"
    )
    _add_key_options(status)
    status.add_argument("--json", action="store_true", help="the monitor's JSON, not text")
    status.add_argument("--timeout", type=float, default=30.0, help="seconds, at most")

    demo = commands.add_parser("demo", help="a local swarm on the default model, end to end")
    demo.add_argument("--model", type=Path, help="a local checkpoint (default: SmolLM2)")
    demo.add_argument("--peers", type=int, default=3, help="peer processes (the last span twice)")
    demo.add_argument("--prompt", default="What is the capital of France?")
    demo.add_argument("--max-new-tokens", type=int, default=32)
    demo.add_argument(
        "--keep-running", action="store_true", help="leave the swarm up and show how to join it"
    )
    return parser


COMMAND_MODULES = {
    "identity": "swarm.commands.identity",
    "dht": "swarm.commands.dht",
    "peer": "swarm.commands.peer",
    "generate": "swarm.commands.generate",
    "chat": "swarm.commands.chat",
    "api": "swarm.commands.api",
    "monitor": "swarm.commands.monitor",
    "status": "swarm.commands.status",
    "demo": "swarm.commands.demo",
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "generate" and args.prompt is None:
        _prompt_after_peers(parser, args)
    configure_logging(args.verbose)
    _shorter_openmp_spin()
    command = importlib.import_module(COMMAND_MODULES[args.command])
    try:
        return int(command.run(args))
    except KeyboardInterrupt:
        return 130
    except BaseException as error:
        known = _typed_error(error)
        if known is None:
            raise
        logging.getLogger("swarm").error("%s: %s", type(known).__name__, known)
        return 1


def _prompt_after_peers(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """`swarm generate MODEL --initial-peers ADDR PROMPT`: `--initial-peers` takes one
    address or more, so argparse gives it the prompt too; the last is the prompt if it is
    not an address."""
    peers = args.initial_peers
    if len(peers) < 2 or _is_address(peers[-1]):
        parser.error("generate needs a prompt")
    args.prompt = peers.pop()


def _is_address(text: str) -> bool:
    try:
        PeerAddress.parse(text)
    except RoutingError:
        return False
    return True


def _shorter_openmp_spin() -> None:
    """Before torch loads: OpenMP threads spin a third as long after a forward.

    A peer's threads that still spin after its step hold the cores its event loop needs to
    send the result, and that the next peer on the same machine needs (2-peer SmolLM2 on 2
    cores: 1.28x -> 1.17x local). Waiting passively instead costs bfloat16 kernels far more.
    Either variable set by the user wins.
    """
    if "OMP_WAIT_POLICY" not in os.environ:
        os.environ.setdefault("GOMP_SPINCOUNT", "100000")  # libgomp's default: 300000


def _typed_error(error: BaseException) -> BaseException | None:
    """Our own typed error inside `error` (trio wraps errors in groups), or None."""
    while isinstance(error, BaseExceptionGroup) and len(error.exceptions) == 1:
        error = error.exceptions[0]
    return error if isinstance(error, TYPED_ERRORS) else None


if __name__ == "__main__":
    sys.exit(main())
