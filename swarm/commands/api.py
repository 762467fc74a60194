"""`swarm api MODEL --initial-peers ADDR`: serve OpenAI's completions API for the model.

The API (`swarm.api`) listens on `--host`/`--port` (127.0.0.1:8000 by default) and prints its
base URL, `http://HOST:PORT/v1` (https with `--tls-cert` and `--tls-key`), once it serves;
OpenAI's clients take that as `base_url`.
Requests name the model as `--served-model-name` (default: its name in the swarm). With an
API key (`$SWARM_API_KEY`, or the first line of `--api-key-file`), every request must carry
it as `Authorization: Bearer KEY`. SIGINT or SIGTERM stop it.
"""

from __future__ import annotations

import argparse
import logging
import os
from functools import partial
from pathlib import Path

from ..checkpoints import resolve_checkpoint, swarm_name
from ..errors import SwarmError
from .generate import open_model
from .keys import tls_from
from .lifecycle import run_service

logger = logging.getLogger(__name__)
LOOPBACK = ("127.0.0.1", "::1", "localhost")


def api_key(args: argparse.Namespace) -> str | None:
    """The key requests must carry, if any (a file keeps it out of the process list)."""
    if args.api_key_file is None:
        return os.environ.get("SWARM_API_KEY") or None
    try:
        key = Path(args.api_key_file).read_text().partition("\n")[0].strip()
    except OSError as error:
        raise SwarmError(f"cannot read the API key file: {error}") from None
    if not key:
        raise SwarmError(f"the API key file {args.api_key_file} is empty")
    return key


def run(args: argparse.Namespace) -> int:
    from transformers import AutoTokenizer

    from ..api.server import ApiConfig, ApiServer

    checkpoint = resolve_checkpoint(args.model)
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    config = ApiConfig(
        model_id=args.served_model_name or swarm_name(args.model, args.model_name),
        max_tokens=args.max_tokens,
        max_concurrent=args.max_concurrent,
        api_key=api_key(args),
        idle_sessions=args.idle_sessions,
        idle_seconds=args.idle_seconds,
        room_wait=args.room_wait,
        tls=tls_from(args),
    )
    if config.api_key is None and args.host not in LOOPBACK:
        logger.warning("serving on %s without an API key: anyone who reaches it can use it",
                       args.host)  # fmt: skip
    elif config.tls is None and args.host not in LOOPBACK:
        logger.warning("serving on %s over plain HTTP: the API key crosses the network in "
                       "clear (--tls-cert and --tls-key serve HTTPS)", args.host)  # fmt: skip
    with open_model(args, checkpoint) as model:
        return run_service(partial(ApiServer(model, tokenizer, config).run, args.host, args.port))
