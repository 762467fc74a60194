"""`swarm generate MODEL PROMPT`: stream a continuation through the swarm to stdout.

Only the continuation goes to stdout, as it streams (the text printed so far is always the
decode of the tokens so far); logs and progress go to stderr. With `--num-beams`, the best
beam is printed once the search ends (until then no beam is sure to be the one). With
`--assistant`, a small local model drafts tokens that the swarm checks several at a time
(`swarm.speculative`): the same greedy text, or text drawn as sampling draws it, in fewer
trips; `--prompt-lookup N` drafts by copying from earlier in the text instead
(`swarm.prompt_lookup`).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..checkpoints import resolve_checkpoint, swarm_name
from ..generation import prompt_ids
from ..json_schema import Node, SchemaError, compile_schema
from .keys import identity_from

if TYPE_CHECKING:
    from ..model import DistributedModelForCausalLM, InferenceSession

logger = logging.getLogger(__name__)


def decode_text(tokenizer: Any, tokens: list[int]) -> str:
    return str(tokenizer.decode(tokens, skip_special_tokens=True))


def write_new_text(tokenizer: Any, tokens: list[int], printed: str) -> str:
    """Print what the new token adds; hold back a half-decoded character (U+FFFD)."""
    text = decode_text(tokenizer, tokens)
    if text.endswith("\ufffd") or not text.startswith(printed):
        return printed
    sys.stdout.write(text[len(printed) :])
    sys.stdout.flush()
    return text


def sampling_options(args: argparse.Namespace) -> dict[str, Any]:
    """`generate()`'s arguments from the command line's (None: the model's default)."""
    return {
        "max_new_tokens": args.max_new_tokens,
        "do_sample": True if args.do_sample else None,
        "temperature": args.temperature,
        "top_k": args.top_k,
        "top_p": args.top_p,
        "repetition_penalty": args.repetition_penalty,
        "no_repeat_ngram_size": args.no_repeat_ngram_size,
        "min_p": args.min_p,
        "seed": args.seed,
        "stop_strings": args.stop,
        "max_time": args.max_time,
        "json_object": True if args.json else None,
        "json_schema": read_schema(args.json_schema) if args.json_schema else None,
    }


def read_schema(path: str) -> Node:
    """The JSON schema in the file at `path`, compiled (`SchemaError` if it cannot be)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise SchemaError(f"cannot read the schema {path}: {error}") from None
    return compile_schema(text)


def drafting_options(args: argparse.Namespace) -> dict[str, Any]:
    """`assistant_model=` from `--assistant` (a local checkpoint) and
    `prompt_lookup_num_tokens=` from `--prompt-lookup`, as given (not both)."""
    options: dict[str, Any] = {}
    if args.prompt_lookup:
        options["prompt_lookup_num_tokens"] = args.prompt_lookup
    if args.assistant:
        from transformers import AutoModelForCausalLM

        checkpoint = resolve_checkpoint(args.assistant)
        options["assistant_model"] = AutoModelForCausalLM.from_pretrained(checkpoint)
    return options


def open_model(args: argparse.Namespace, checkpoint: Path) -> DistributedModelForCausalLM:
    """The client for `args.model`, joined to the swarm at `--initial-peers`."""
    from routing.client import ClientConfig

    from ..model import DistributedModelForCausalLM

    return DistributedModelForCausalLM.from_pretrained(
        checkpoint,
        initial_peers=args.initial_peers,
        model_name_in_swarm=swarm_name(args.model, args.model_name),
        device=args.device,
        dtype=args.dtype,
        config=ClientConfig(exact_weights=args.exact_weights),
        adapter=args.adapter,
        identity=identity_from(args.identity),
        members=args.members,
    )


def run(args: argparse.Namespace) -> int:
    from transformers import AutoTokenizer

    checkpoint = resolve_checkpoint(args.model)
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    input_ids = prompt_ids(tokenizer, args.prompt, chat=args.chat)
    options = sampling_options(args)
    with open_model(args, checkpoint) as model:
        if args.num_beams > 1:
            output = model.generate(
                input_ids, tokenizer=tokenizer, num_beams=args.num_beams, **options
            )
            text = decode_text(tokenizer, output[0, input_ids.shape[1] :].tolist())
            sys.stdout.write(text + "\n")
            return 0
        config = model.sampling_config(**options)
        with model.inference_session(int(input_ids.shape[1]) + config.max_new_tokens) as session:
            stream = session.stream(
                input_ids, tokenizer=tokenizer, **options, **drafting_options(args)
            )
            began = time.perf_counter()
            tokens = write_stream(tokenizer, stream)
            logger.info("%s", summary(session, len(tokens), time.perf_counter() - began))
    return 0


def summary(session: InferenceSession, tokens: int, seconds: float) -> str:
    """One line on a generation: its tokens and time, the chain, the failovers."""
    hops = ", ".join(f"{hop.peer[:8]} (blocks {hop.start}-{hop.end - 1})" for hop in session.route)
    failovers = ", ".join(f"{f.peer[:8]} after {f.seconds:.2f} s" for f in session.failovers)
    return (
        f"{tokens} new tokens in {seconds:.2f} s through {hops}; failovers: {failovers or 'none'}"
    )


def write_stream(tokenizer: Any, tokens: Iterable[int]) -> list[int]:
    """Print the text of `tokens` as they come, then a new line; the tokens."""
    seen: list[int] = []
    printed = ""
    for token in tokens:
        seen.append(token)
        printed = write_new_text(tokenizer, seen, printed)
    sys.stdout.write(decode_text(tokenizer, seen)[len(printed) :] + "\n")
    sys.stdout.flush()
    return seen
