#!/usr/bin/env python3
"""Benchmark `swarm api`: what OpenAI's API costs on top of generating from Python.

For each model (SmolLM2-135M-Instruct and a tiny random Llama by default), a swarm of
`swarm peer` processes on 127.0.0.1 holds the blocks in `--hops` equal spans, and one client
generates `--tokens` greedy tokens of a prompt (EOS off: the model's generation config loses
it) `--runs` times in each of three ways, in turn: `session.generate()` in Python (the
baseline), and through `ApiServer` in this process, its HTTP on loopback, read by OpenAI's
own client, as one JSON answer and as a stream of server-sent events. Reported: milliseconds
per token (the median run's whole request over its tokens), the ratio to the baseline, and
for the stream the time to its first piece of text; and whether the texts equal the
baseline's. Then a conversation's second turn, after a first turn of ~400 prompt tokens:
the time to its first token when the first turn's session is kept and goes on (the server's
default) and when every request opens a new session (`idle_sessions=0`); and likewise
another conversation that shares the first's ~400 prompt tokens and parts after them, when
it forks the first's waiting session (the default) and when it opens a new one. Last,
`--answers` sampled answers to one streamed request for those ~400 tokens (`n`), when the
first answer's session computes the prompt and the others fork it between its tokens (the
default) and when each answer computes it in a session of its own (forks of running answers
off): the time until every answer has its first text, and to the end; and whether both give
the same texts.

    .venv/bin/python scripts/bench_api.py [--models smollm2 tiny] [--tokens 48] [--hops 2]
        [--runs 5] [--answers 4] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import openai
import torch
import trio
from transformers import AutoConfig, AutoTokenizer

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from scripts._bench_models import bench_checkpoints, equal_spans  # noqa: E402
from swarm import DistributedModelForCausalLM  # noqa: E402
from swarm.api.server import ApiConfig, ApiServer  # noqa: E402
from swarm.local_swarm import LocalSwarm  # noqa: E402

PROMPT = "The capital of France is"
MODEL_ID = "bench"
HISTORY_REPEATS = 40  # the first turn's prompt: the prompt that many times (~400 tokens)


def _python(model: DistributedModelForCausalLM, ids: torch.Tensor, tokens: int) -> list[int]:
    with model.inference_session(ids.shape[1] + tokens) as session:
        output = session.generate(ids, max_new_tokens=tokens, do_sample=False)
    return [int(t) for t in output[0, ids.shape[1] :]]


def _serve_while(server: ApiServer, requests: Callable[[str], None]) -> None:
    """Run `server` while `requests(base_url)` runs in a thread."""

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            base_url = await nursery.start(server.run)
            await trio.to_thread.run_sync(requests, base_url)
            nursery.cancel_scope.cancel()

    trio.run(main)


def _through_api(
    model: DistributedModelForCausalLM, tokenizer: Any, tokens: int, runs: int
) -> dict[str, list[Any]]:
    """Whole and streamed requests, `runs` each in turn: seconds, first-piece seconds, texts."""
    server = ApiServer(model, tokenizer, ApiConfig(MODEL_ID, max_tokens=tokens))
    found: dict[str, list[Any]] = {"whole": [], "stream": [], "first": [], "texts": []}

    def requests(base_url: str) -> None:
        client = openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0)
        options = {"model": MODEL_ID, "prompt": PROMPT, "max_tokens": tokens, "temperature": 0}
        for _ in range(runs):
            began = time.perf_counter()
            whole = client.completions.create(**options)
            found["whole"].append(time.perf_counter() - began)
            began, first, pieces = time.perf_counter(), None, []
            for chunk in client.completions.create(**options, stream=True):
                if chunk.choices and chunk.choices[0].text:
                    first = first or time.perf_counter() - began
                    pieces.append(chunk.choices[0].text)
            found["stream"].append(time.perf_counter() - began)
            found["first"].append(first)
            found["texts"] += [whole.choices[0].text, "".join(pieces)]

    _serve_while(server, requests)
    return found


def _first_token_after(
    model: DistributedModelForCausalLM,
    tokenizer: Any,
    first: list[int],
    first_tokens: int,
    second: list[int],
    runs: int,
    idle_sessions: int,
) -> list[float]:
    """Seconds to the first token of a request for `second` (one token) right after one for
    `first` (`first_tokens`), with sessions kept between requests or not (`idle_sessions`)."""
    config = ApiConfig(MODEL_ID, max_tokens=first_tokens, idle_sessions=idle_sessions)
    server = ApiServer(model, tokenizer, config)
    seconds: list[float] = []

    def requests(base_url: str) -> None:
        client = openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0)
        options = {"model": MODEL_ID, "temperature": 0}
        for _ in range(runs):
            client.completions.create(prompt=first, max_tokens=first_tokens, **options)
            began = time.perf_counter()
            client.completions.create(prompt=second, max_tokens=1, **options)
            seconds.append(time.perf_counter() - began)

    _serve_while(server, requests)
    return seconds


def _answers_of_one_prompt(
    model: DistributedModelForCausalLM,
    tokenizer: Any,
    prompt: list[int],
    answers: int,
    tokens: int,
    runs: int,
    forks: bool,
) -> tuple[list[float], list[float], list[str]]:
    """`runs` streamed requests for `answers` sampled answers to `prompt`, with forks of
    running answers' sessions or without: seconds until every answer's first text, and to
    the end; the last request's texts."""
    config = ApiConfig(MODEL_ID, max_tokens=tokens, idle_sessions=0)
    server = ApiServer(model, tokenizer, config)
    if not forks:

        async def no_fork(*_: Any) -> None:
            return None

        server._fork_running = no_fork  # type: ignore[method-assign,assignment]
    started: list[float] = []
    ended: list[float] = []
    texts: list[str] = []

    def requests(base_url: str) -> None:
        client = openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0)
        for _ in range(runs):
            began, pieces = time.perf_counter(), [""] * answers
            for chunk in client.completions.create(
                model=MODEL_ID, prompt=prompt, max_tokens=tokens, n=answers, temperature=0.7,
                seed=1, stream=True,
            ):  # fmt: skip
                for choice in chunk.choices:
                    pieces[choice.index] += choice.text
                if len(started) < len(ended) + 1 and all(pieces):
                    started.append(time.perf_counter() - began)
            ended.append(time.perf_counter() - began)
            texts[:] = pieces

    _serve_while(server, requests)
    return started, ended, texts


def run_model(checkpoint: Path, tokens: int, hops: int, runs: int, answers: int) -> dict[str, Any]:
    blocks = AutoConfig.from_pretrained(checkpoint).num_hidden_layers
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    ids = torch.as_tensor(tokenizer(PROMPT)["input_ids"])[None]
    with (
        LocalSwarm(checkpoint, equal_spans(blocks, hops), monitor=False) as s,
        DistributedModelForCausalLM.from_pretrained(checkpoint, initial_peers=[s.bootstrap]) as m,
    ):
        m.generation_config.eos_token_id = None  # EOS off: every run makes all its tokens
        _python(m, ids, tokens)  # warm-up
        python = []
        for _ in range(runs):
            began = time.perf_counter()
            expected = _python(m, ids, tokens)
            python.append(time.perf_counter() - began)
        api = _through_api(m, tokenizer, tokens, runs)
        long = tokenizer((PROMPT + " Paris. ") * HISTORY_REPEATS)["input_ids"]
        history = long + _python(m, torch.tensor([long]), tokens)
        next_turn = [*history, *tokenizer(" And then?")["input_ids"]]
        other = [*long, *tokenizer(" Where is Rome?")["input_ids"]]

        def ms_to_first_token(second: list[int], kept: int) -> float:
            after = _first_token_after(m, tokenizer, long, tokens, second, runs, kept)
            return statistics.median(after) * 1000

        # (next turn, other conversation), with sessions kept and without
        after = {kept: [ms_to_first_token(second, kept) for second in (next_turn, other)]
                 for kept in (4, 0)}  # fmt: skip
        several = {forks: _answers_of_one_prompt(m, tokenizer, long, answers, tokens, runs, forks)
                   for forks in (True, False)}  # fmt: skip
    text = tokenizer.decode(expected, skip_special_tokens=True)
    per_token = {way: statistics.median(api[way]) / tokens * 1000 for way in ("whole", "stream")}
    baseline = statistics.median(python) / tokens * 1000
    return {
        "tokens": tokens,
        "hops": hops,
        "python_ms_per_token": baseline,
        "api_ms_per_token": per_token["whole"],
        "api_x_python": per_token["whole"] / baseline,
        "stream_ms_per_token": per_token["stream"],
        "stream_x_python": per_token["stream"] / baseline,
        "stream_first_text_ms": statistics.median(api["first"]) * 1000,
        "same_text": all(t == text for t in api["texts"]),
        "history_tokens": len(history),
        "second_turn_ms_session_kept": after[4][0],
        "second_turn_ms_new_session": after[0][0],
        "other_conversation_tokens": len(other),
        "other_conversation_ms_forked": after[4][1],
        "other_conversation_ms_new_session": after[0][1],
        "answers": answers,
        "answers_first_text_ms_forked": statistics.median(several[True][0]) * 1000,
        "answers_first_text_ms_own_sessions": statistics.median(several[False][0]) * 1000,
        "answers_ms_forked": statistics.median(several[True][1]) * 1000,
        "answers_ms_own_sessions": statistics.median(several[False][1]) * 1000,
        "answers_same_text": several[True][2] == several[False][2],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["smollm2", "tiny"])
    parser.add_argument("--tokens", type=int, default=48)
    parser.add_argument("--hops", type=int, default=2)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--answers", type=int, default=4)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    results = {
        name: run_model(path, args.tokens, args.hops, args.runs, args.answers)
        for name, path in bench_checkpoints(args.models).items()
    }
    print(f"{'model':10} {'python':>9} {'api':>16} {'stream':>16} {'first text':>11} same")
    for name, r in results.items():
        print(
            f"{name:10} {r['python_ms_per_token']:7.2f}ms "
            f"{r['api_ms_per_token']:7.2f}ms x{r['api_x_python']:.2f} "
            f"{r['stream_ms_per_token']:7.2f}ms x{r['stream_x_python']:.2f} "
            f"{r['stream_first_text_ms']:9.1f}ms {r['same_text']}"
        )
    print("second turn's first token after a history of N tokens: session kept / new session")
    for name, r in results.items():
        print(
            f"{name:10} N={r['history_tokens']}: {r['second_turn_ms_session_kept']:.1f} ms / "
            f"{r['second_turn_ms_new_session']:.1f} ms"
        )
    print("another conversation of N tokens sharing the first's history: forked / new session")
    for name, r in results.items():
        print(
            f"{name:10} N={r['other_conversation_tokens']}: "
            f"{r['other_conversation_ms_forked']:.1f} ms / "
            f"{r['other_conversation_ms_new_session']:.1f} ms"
        )
    print("n answers to one request of the first's history: forked / each its own session")
    for name, r in results.items():
        print(
            f"{name:10} n={r['answers']}, {r['tokens']} tokens each: every first text "
            f"{r['answers_first_text_ms_forked']:.1f} ms / "
            f"{r['answers_first_text_ms_own_sessions']:.1f} ms, the end "
            f"{r['answers_ms_forked']:.1f} ms / {r['answers_ms_own_sessions']:.1f} ms, "
            f"same text {r['answers_same_text']}"
        )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
