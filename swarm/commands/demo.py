"""`swarm demo`: a live swarm on this machine, a question through it, a peer killed mid-answer.

Steps, each shown as it happens: prepare the model (the default SmolLM2 is converted once),
start a DHT node, the peers (their last span served twice) and the monitor as processes on
loopback, stream a chat answer through the swarm, kill (SIGKILL) the peer serving the chain's
last span after a few tokens, and let the answer complete through its replica. Then a
summary. Ctrl-C at any point stops everything the demo started.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from routing.path_selection import Hop

from ..default_model import DEFAULT_MODEL_NAME, prepare_default_model
from ..generation import prompt_ids
from ..local_swarm import LocalSwarm, demo_spans
from .generate import decode_text, write_new_text

if TYPE_CHECKING:
    import torch

    from ..model import DistributedModelForCausalLM

logger = logging.getLogger(__name__)

KILL_AFTER_TOKENS = 2  # early: short answers still show the failover


def _say(text: str) -> None:
    print(text, flush=True)


def run(args: argparse.Namespace) -> int:
    from transformers import AutoConfig, AutoTokenizer

    from ..model import DistributedModelForCausalLM

    signal.signal(signal.SIGTERM, _interrupt)  # stop like Ctrl-C: clean up the swarm
    checkpoint = Path(args.model) if args.model else prepare_default_model()
    num_blocks = int(AutoConfig.from_pretrained(checkpoint).num_hidden_layers)
    spans = demo_spans(num_blocks, args.peers)
    _say(f"model: {checkpoint} ({num_blocks} blocks)")
    _say(f"starting a DHT node, {len(spans)} peers and the monitor on 127.0.0.1 ...")
    with LocalSwarm(checkpoint, spans) as swarm:
        for peer in swarm.peers:
            _say(f"  peer {peer.peer_id[:8]} serves blocks {peer.start}..{peer.end - 1}")
        _say(f"  monitor: {swarm.monitor_url}")
        tokenizer = AutoTokenizer.from_pretrained(checkpoint)
        with DistributedModelForCausalLM.from_pretrained(
            checkpoint, initial_peers=[swarm.bootstrap]
        ) as model:
            input_ids = prompt_ids(tokenizer, args.prompt, chat=True)
            _say(f"\n> {args.prompt}")
            summary = _answer(model, tokenizer, input_ids, swarm, args)
        _say("")
        for line in summary:
            _say(line)
        if args.keep_running:
            name = DEFAULT_MODEL_NAME if args.model is None else str(checkpoint)
            _say(
                "\nThe swarm keeps running on 127.0.0.1 (Ctrl-C stops it). Add a peer:\n"
                f"  swarm peer {name} --initial-peers {swarm.bootstrap} --num-blocks 10\n"
                "(other machines join a swarm started with `swarm dht --host 0.0.0.0`),\n"
                "serve OpenAI's API for it:\n"
                f"  swarm api {name} --initial-peers {swarm.bootstrap}\n"
                "or generate from Python:\n"
                "  from swarm import DistributedModelForCausalLM\n"
                "  model = DistributedModelForCausalLM.from_pretrained(\n"
                f"      {name!r}, initial_peers=[{swarm.bootstrap!r}])"
            )
            while True:
                signal.pause()  # until Ctrl-C (KeyboardInterrupt) or SIGTERM
    return 0


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _answer(
    model: DistributedModelForCausalLM,
    tokenizer: Any,
    input_ids: torch.Tensor,
    swarm: LocalSwarm,
    args: argparse.Namespace,
) -> list[str]:
    """Stream the answer, kill the last hop's peer after a few tokens; return the summary."""
    started = time.monotonic()
    killed = ""
    chain_before: list[Hop] = []
    tokens: list[int] = []
    printed = ""
    max_length = int(input_ids.shape[1]) + args.max_new_tokens
    with model.inference_session(max_length) as session:
        for token in session.stream(input_ids, max_new_tokens=args.max_new_tokens):
            tokens.append(token)
            printed = write_new_text(tokenizer, tokens, printed)
            if len(tokens) == KILL_AFTER_TOKENS and len(swarm.peers) > 1:
                chain_before = session.route
                victim = swarm.peer(chain_before[-1].peer)
                victim.process.process.send_signal(signal.SIGKILL)
                killed = victim.peer_id
                sys.stdout.write(f" [peer {killed[:8]} killed]")
                sys.stdout.flush()
        elapsed = time.monotonic() - started
        chain_after = session.route
        failovers = session.failovers
    sys.stdout.write(decode_text(tokenizer, tokens)[len(printed) :] + "\n")
    lines = ["summary:"]
    for peer in swarm.peers:
        mark = " (killed)" if peer.peer_id == killed else ""
        lines.append(f"  peer {peer.peer_id[:8]} blocks {peer.start}..{peer.end - 1}{mark}")
    if killed:
        lines.append(f"  chain before: {_chain(chain_before)}")
    lines.append(f"  chain after:  {_chain(chain_after)}")
    rate = len(tokens) / elapsed
    lines.append(f"  {len(tokens)} tokens in {elapsed:.1f} s ({rate:.1f} tokens/s)")
    for failover in failovers:
        lines.append(
            f"  failover: {failover.seconds * 1000:.0f} ms to replace {failover.peer[:8]} "
            f"(blocks {failover.start}..{failover.end - 1}, {failover.replayed_tokens} tokens "
            "replayed)"
        )
    lines.append(f"  monitor: {swarm.monitor_url}")
    return lines


def _chain(hops: list[Hop]) -> str:
    return " -> ".join(f"{hop.peer[:8]}[{hop.start}..{hop.end - 1}]" for hop in hops)
