"""`swarm generate MODEL PROMPT`: stream a continuation through the swarm to stdout.

Only the continuation goes to stdout, as it streams (the text printed so far is always the
decode of the tokens so far); logs and progress go to stderr. With `--num-beams`, the best
beam is printed once the search ends (until then no beam is sure to be the one). With
`--assistant`, a small local model drafts tokens that the swarm checks several at a time
(`swarm.speculative`): the same greedy text in fewer trips.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ..checkpoints import resolve_checkpoint, swarm_name
from ..generation import prompt_ids


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


def run(args: argparse.Namespace) -> int:
    from transformers import AutoTokenizer

    from ..model import DistributedModelForCausalLM

    checkpoint = resolve_checkpoint(args.model)
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    assistant = None
    if args.assistant:
        from transformers import AutoModelForCausalLM

        assistant = AutoModelForCausalLM.from_pretrained(resolve_checkpoint(args.assistant))
    input_ids = prompt_ids(tokenizer, args.prompt, chat=args.chat)
    options = {
        "max_new_tokens": args.max_new_tokens,
        "do_sample": True if args.do_sample else None,
        "temperature": args.temperature,
        "top_k": args.top_k,
        "top_p": args.top_p,
        "repetition_penalty": args.repetition_penalty,
        "no_repeat_ngram_size": args.no_repeat_ngram_size,
        "min_p": args.min_p,
        "seed": args.seed,
    }
    with DistributedModelForCausalLM.from_pretrained(
        checkpoint,
        initial_peers=args.initial_peers,
        model_name_in_swarm=swarm_name(args.model, args.model_name),
        device=args.device,
        dtype=args.dtype,
        adapter=args.adapter,
    ) as model:
        if args.num_beams > 1:
            output = model.generate(
                input_ids, tokenizer=tokenizer, num_beams=args.num_beams, **options
            )
            text = decode_text(tokenizer, output[0, input_ids.shape[1] :].tolist())
            sys.stdout.write(text + "\n")
            return 0
        config = model.sampling_config(**options)
        with model.inference_session(int(input_ids.shape[1]) + config.max_new_tokens) as session:
            tokens: list[int] = []
            printed = ""
            drafting = {"assistant_model": assistant} if assistant is not None else {}
            for token in session.stream(input_ids, tokenizer=tokenizer, **options, **drafting):
                tokens.append(token)
                printed = write_new_text(tokenizer, tokens, printed)
    sys.stdout.write(decode_text(tokenizer, tokens)[len(printed) :] + "\n")
    return 0
