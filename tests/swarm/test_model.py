"""`DistributedModelForCausalLM` through real peers equals the local transformers model.

Peers run `serve_peer` in a thread of the test process on loopback TCP (tests/support/
thread_swarm.py): the whole stack (Noise, RPC, DHT, span server, compute worker) but no
process start-up, so chains of 1, 2 and 3 peers on every family stay fast. The reference
is `generate()` of the same checkpoint loaded by transformers.
"""

from __future__ import annotations

import logging
import math
import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, cast

import pytest
import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    FineGrainedFP8Config,
    LogitsProcessor,
    LogitsProcessorList,
    Mxfp4Config,
    RepetitionPenaltyLogitsProcessor,
    StoppingCriteria,
    StoppingCriteriaList,
)
from transformers.generation.streamers import BaseStreamer

from peer.backend import BackendConfig
from routing.client import ClientConfig
from routing.path_selection import NoRouteError
from swarm import DistributedModelForCausalLM
from swarm.cli import main
from swarm.errors import GenerationError, SwarmError
from tests.support.quantized_checkpoint import BLOCK, dequantized_int8_model, to_fp8, to_mxfp4
from tests.support.thread_swarm import ThreadPeer, ThreadSwarm
from tests.support.tiny_model import FAMILIES, write_tiny_model, write_tiny_multimodal

CHAINS = {1: [(0, 4)], 2: [(0, 2), (2, 4)], 3: [(0, 1), (1, 3), (3, 4)]}
PROMPT = torch.tensor([[1, 40, 41, 42, 43, 44, 45]])
NEW_TOKENS = 24


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    return {f: write_tiny_model(root / f, f, seed=3) for f in FAMILIES}


def _local(checkpoint: Path, prompt: torch.Tensor, seed: int | None = None, **kw: Any) -> list[int]:
    model = AutoModelForCausalLM.from_pretrained(checkpoint)
    if seed is not None:
        torch.manual_seed(seed)
    output = model.generate(prompt, attention_mask=torch.ones_like(prompt), **kw)
    return [int(t) for t in output[0, prompt.shape[1] :]]


@contextmanager
def _swarm_and_model(
    checkpoint: Path, spans: list[tuple[int, int]]
) -> Iterator[tuple[ThreadSwarm, DistributedModelForCausalLM]]:
    with (
        ThreadSwarm(checkpoint, spans) as swarm,
        DistributedModelForCausalLM.from_pretrained(
            checkpoint, initial_peers=[swarm.bootstrap]
        ) as model,
    ):
        yield swarm, model


@pytest.fixture(scope="module")
def llama_model(checkpoints: dict[str, Path]) -> Iterator[DistributedModelForCausalLM]:
    with _swarm_and_model(checkpoints["llama"], CHAINS[2]) as (_, model):
        yield model


def _until(condition: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)  # polling with a deadline, not waiting for readiness
    return condition()


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("hops", [1, 2, 3])
def test_greedy_equals_local_generate(checkpoints: dict[str, Path], family: str, hops: int) -> None:
    checkpoint = checkpoints[family]
    expected = _local(checkpoint, PROMPT, max_new_tokens=NEW_TOKENS, do_sample=False)
    with _swarm_and_model(checkpoint, CHAINS[hops]) as (swarm, model):
        output = model.generate(PROMPT, max_new_tokens=NEW_TOKENS, do_sample=False)
        assert output[0, : PROMPT.shape[1]].tolist() == PROMPT[0].tolist()
        assert output[0, PROMPT.shape[1] :].tolist() == expected
        assert all(_until(lambda p=p: swarm.sessions(p) == 0) for p in swarm.peers)


def test_a_bfloat16_swarm_with_a_bfloat16_head_equals_local_bfloat16_generate(
    checkpoints: dict[str, Path],
) -> None:
    checkpoint = checkpoints["llama"]
    local = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.bfloat16)
    reference = local.generate(
        PROMPT, attention_mask=torch.ones_like(PROMPT), max_new_tokens=NEW_TOKENS, do_sample=False
    )
    expected = reference[0, PROMPT.shape[1] :].tolist()
    assert expected != _local(checkpoint, PROMPT, max_new_tokens=NEW_TOKENS, do_sample=False)
    with (
        ThreadSwarm(checkpoint, CHAINS[2], dtype="bfloat16") as swarm,
        DistributedModelForCausalLM.from_pretrained(
            checkpoint, initial_peers=[swarm.bootstrap], dtype="bfloat16"
        ) as model,
    ):
        assert model.head.dtype == torch.bfloat16
        output = model.generate(PROMPT, max_new_tokens=NEW_TOKENS, do_sample=False)
    assert output[0, PROMPT.shape[1] :].tolist() == expected


@pytest.mark.parametrize("family", ["deepseek_v3", "gpt_oss"])
def test_a_quantized_checkpoint_generates_what_transformers_dequantized_does(
    family: str, tmp_path: Path
) -> None:
    """As they ship: DeepSeek V3 with FP8 weights by blocks (and a compressed KV cache),
    gpt-oss with MXFP4 experts (and attention sinks)."""
    checkpoint = write_tiny_model(tmp_path / family, family, seed=3)
    quantization: Any
    if family == "gpt_oss":
        checkpoint, quantization = to_mxfp4(checkpoint), Mxfp4Config(dequantize=True)
    else:
        checkpoint = to_fp8(checkpoint)
        quantization = FineGrainedFP8Config(dequantize=True, weight_block_size=BLOCK)
    local = AutoModelForCausalLM.from_pretrained(checkpoint, quantization_config=quantization)
    reference = local.generate(
        PROMPT, attention_mask=torch.ones_like(PROMPT), max_new_tokens=NEW_TOKENS, do_sample=False
    )
    with _swarm_and_model(checkpoint, CHAINS[2]) as (_, model):
        output = model.generate(PROMPT, max_new_tokens=NEW_TOKENS, do_sample=False)
    assert output[0].tolist() == reference[0].tolist()


def test_int8_peers_generate_what_the_model_with_their_weights_does(
    checkpoints: dict[str, Path],
) -> None:
    """`swarm peer --quantize int8 --dtype float16`, against the local model whose block
    weights are the int8-rounded ones (float16 activations on both sides)."""
    checkpoint = checkpoints["llama"]
    local = dequantized_int8_model(checkpoint, torch.float16)
    reference = local.generate(
        PROMPT, attention_mask=torch.ones_like(PROMPT), max_new_tokens=NEW_TOKENS, do_sample=False
    )
    unquantized = (
        AutoModelForCausalLM.from_pretrained(checkpoint)
        .to(torch.float16)
        .generate(
            PROMPT,
            attention_mask=torch.ones_like(PROMPT),
            max_new_tokens=NEW_TOKENS,
            do_sample=False,
        )
    )
    assert reference.tolist() != unquantized.tolist()  # the rounding shows in the tokens
    with (
        ThreadSwarm(checkpoint, CHAINS[2], dtype="float16", quantization="int8") as swarm,
        DistributedModelForCausalLM.from_pretrained(
            checkpoint, initial_peers=[swarm.bootstrap], dtype="float16"
        ) as model,
    ):
        output = model.generate(PROMPT, max_new_tokens=NEW_TOKENS, do_sample=False)
        assert {swarm.info(peer)["quantization"] for peer in swarm.peers} == {"int8"}
    assert output[0].tolist() == reference[0].tolist()


def test_a_client_that_asks_for_exact_weights_avoids_int8_peers(
    checkpoints: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """`ClientConfig(exact_weights=True)` (`--exact-weights`): of an int8 replica and a float16
    one, only the float16 one (though 10 ms farther away), so the tokens are the float16
    model's; with int8 peers only, a clear error."""
    checkpoint = checkpoints["llama"]
    local = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float16)
    expected = local.generate(
        PROMPT, attention_mask=torch.ones_like(PROMPT), max_new_tokens=NEW_TOKENS, do_sample=False
    )
    int8 = {"quantization": "int8"}
    exact = ClientConfig(exact_weights=True)
    with ThreadSwarm(checkpoint, [(0, 4), (0, 4)], dtype="float16", per_peer=[int8]) as swarm:
        swarm.fault(swarm.peers[1], "delay", 0.01)  # measured by the client's pings
        with (
            DistributedModelForCausalLM.from_pretrained(
                checkpoint, initial_peers=[swarm.bootstrap], dtype="float16", config=exact
            ) as model,
            model.inference_session(max_length=64) as session,
        ):
            output = session.generate(PROMPT, max_new_tokens=NEW_TOKENS, do_sample=False)
            assert [hop.peer for hop in session.route] == [swarm.peers[1].peer]
    assert output.tolist() == expected.tolist()
    with ThreadSwarm(checkpoint, [(0, 4)], dtype="float16", quantization="int8") as swarm:
        status = main(["generate", str(checkpoint), "Hi", "--initial-peers", swarm.bootstrap,
                       "--dtype", "float16", "--exact-weights"])  # fmt: skip
    assert status == 1
    assert "0-3 with the checkpoint's own weights (no int8 peer)" in capsys.readouterr().err


@pytest.mark.parametrize("kind", ["gemma3", "llava"])
def test_a_multimodal_checkpoints_language_model_generates_like_transformers(
    kind: str, tmp_path: Path
) -> None:
    """Peers serve the language model inside an image-text checkpoint; the client's head
    is that model's: text in, text out, as transformers' image-text model gives it."""
    from transformers import AutoModelForImageTextToText

    checkpoint = write_tiny_multimodal(tmp_path / kind, kind, seed=3)
    local = AutoModelForImageTextToText.from_pretrained(checkpoint)
    reference = local.generate(
        PROMPT, attention_mask=torch.ones_like(PROMPT), max_new_tokens=NEW_TOKENS, do_sample=False
    )
    with _swarm_and_model(checkpoint, CHAINS[2]) as (_, model):
        output = model.generate(PROMPT, max_new_tokens=NEW_TOKENS, do_sample=False)
        assert model.config.to_dict() == local.config.text_config.to_dict()
    assert output[0].tolist() == reference[0].tolist()


def test_a_float32_and_a_bfloat16_peer_give_what_the_client_in_the_middle_gives(
    checkpoints: dict[str, Path],
) -> None:
    """Relay stops where the dtype changes: a bfloat16 peer refuses float32 inputs, so the
    client converts and sends that hop its inputs itself."""
    checkpoint = checkpoints["llama"]
    outputs, relayed = [], []
    with ThreadSwarm(checkpoint, CHAINS[2], per_peer=[{}, {"dtype": "bfloat16"}]) as swarm:
        for relay in (True, False):
            with (
                DistributedModelForCausalLM.from_pretrained(
                    checkpoint, initial_peers=[swarm.bootstrap], config=ClientConfig(relay=relay)
                ) as model,
                model.inference_session(max_length=32) as session,
            ):
                outputs.append(session.generate(PROMPT, max_new_tokens=8, do_sample=False))
                relayed += [t.relayed for _, steps in session.timings for t in steps]
                assert not session.failovers
    assert torch.equal(outputs[0], outputs[1])
    assert not any(relayed)


def test_every_step_reports_the_peers_time_and_its_compute_time(
    checkpoints: dict[str, Path],
) -> None:
    with (
        _swarm_and_model(checkpoints["llama"], CHAINS[2]) as (_, model),
        model.inference_session(max_length=32) as session,
    ):
        session.generate(PROMPT, max_new_tokens=6, do_sample=False)
        timings = [t for _, steps in session.timings for t in steps]
    assert len(timings) == 2 * 6
    for t in timings:
        assert t.server_seconds is not None and t.compute_seconds is not None
        assert 0 < t.compute_seconds <= t.server_seconds
        if not t.relayed:  # a relayed step's time is counted from the previous hop's answer
            assert t.server_seconds <= t.seconds
    # the second hop got every input from the first peer, none from the client
    assert [t.relayed for t in timings] == [False] * 6 + [True] * 6


def test_generate_takes_what_the_tokenizer_returns_like_transformers(
    checkpoints: dict[str, Path],
) -> None:
    checkpoint = checkpoints["llama"]
    encoded = AutoTokenizer.from_pretrained(checkpoint)("a b c d", return_tensors="pt")
    local = AutoModelForCausalLM.from_pretrained(checkpoint)
    expected = local.generate(**encoded, max_new_tokens=8, do_sample=False)
    with _swarm_and_model(checkpoint, CHAINS[2]) as (_, model):
        assert model.config.to_dict() == local.config.to_dict()
        assert torch.equal(model.generate(**encoded, max_new_tokens=8, do_sample=False), expected)
        length = encoded["input_ids"].shape[1] + 8  # transformers' max_length: prompt included
        assert torch.equal(model.generate(**encoded, max_length=length, do_sample=False), expected)
        with pytest.raises(SwarmError, match="guidance_scale"):
            model.generate(**encoded, max_new_tokens=8, guidance_scale=1.5)


def test_seeded_sampling_equals_local_generate(checkpoints: dict[str, Path]) -> None:
    checkpoint = checkpoints["llama"]
    options = {"do_sample": True, "temperature": 0.7, "top_k": 20, "top_p": 0.9}
    expected = _local(checkpoint, PROMPT, seed=11, max_new_tokens=NEW_TOKENS, **options)
    with _swarm_and_model(checkpoint, CHAINS[2]) as (_, model):
        output = model.generate(PROMPT, max_new_tokens=NEW_TOKENS, seed=11, **options)
    assert output[0, PROMPT.shape[1] :].tolist() == expected


def test_a_session_records_the_models_own_log_probabilities(checkpoints: dict[str, Path]) -> None:
    """Sampled at a low temperature, each token's log probability is still the model's own
    (transformers' logits over the whole sequence), with the 3 likeliest tokens there."""
    checkpoint = checkpoints["llama"]
    options = {"do_sample": True, "temperature": 0.3, "seed": 5}
    with (
        _swarm_and_model(checkpoint, CHAINS[2]) as (_, model),
        model.inference_session(max_length=64) as session,
    ):
        tokens = list(session.stream(PROMPT, max_new_tokens=8, logprobs=3, **options))
        records = session.logprobs
        session.generate(torch.tensor([[50]]), max_new_tokens=2)
        assert session.logprobs == []  # that turn did not ask
    local = AutoModelForCausalLM.from_pretrained(checkpoint)
    with torch.no_grad():
        logits = local(torch.cat([PROMPT, torch.tensor([tokens])], dim=1)).logits[0]
    expected = torch.log_softmax(logits[PROMPT.shape[1] - 1 : -1], dim=-1)
    assert [record.token for record in records] == tokens
    chosen = torch.tensor([record.logprob for record in records])
    torch.testing.assert_close(chosen, expected[torch.arange(8), tokens], atol=1e-4, rtol=0)
    top = expected.topk(3, dim=-1)
    assert [[token for token, _ in record.top] for record in records] == top.indices.tolist()


def test_a_prompts_log_probabilities_come_a_chunk_of_positions_at_a_time(
    checkpoints: dict[str, Path],
) -> None:
    """`token_logprobs` (what the API's `echo` scores a prompt with) equals transformers'
    log-softmax at every position, in chunks of 3 positions as in one."""
    checkpoint = checkpoints["llama"]
    with _swarm_and_model(checkpoint, CHAINS[2]) as (_, model):
        chunked = model.token_logprobs(PROMPT, top=2, chunk=3)
        whole = model.token_logprobs(PROMPT, top=2, chunk=1000)
    local = AutoModelForCausalLM.from_pretrained(checkpoint)
    with torch.no_grad():
        expected = torch.log_softmax(local(PROMPT).logits[0, :-1], dim=-1)
    tokens = PROMPT[0, 1:]
    assert [r.token for r in chunked] == tokens.tolist() and len(chunked) > 3
    got = torch.tensor([r.logprob for r in chunked])
    torch.testing.assert_close(got, expected[torch.arange(len(tokens)), tokens], atol=1e-4, rtol=0)
    assert [[t for t, _ in r.top] for r in chunked] == expected.topk(2).indices.tolist()
    torch.testing.assert_close(got, torch.tensor([r.logprob for r in whole]), atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    ("options", "without"),
    [
        ({"no_repeat_ngram_size": 2}, "no_repeat_ngram_size"),
        ({"min_new_tokens": 12, "eos_token_id": 61}, "min_new_tokens"),  # 61: the 3rd token
        ({"do_sample": True, "temperature": 0.2, "min_p": 0.5, "seed": 3}, "min_p"),
        ({"do_sample": True, "typical_p": 0.5, "seed": 3}, "typical_p"),
        ({"do_sample": True, "epsilon_cutoff": 0.02, "seed": 3}, "epsilon_cutoff"),
        ({"do_sample": True, "eta_cutoff": 0.9, "seed": 3}, "eta_cutoff"),
    ],
    ids=["no-repeat-ngram", "min-new-tokens", "min-p", "typical-p", "epsilon", "eta"],
)
def test_more_of_transformers_arguments_mean_the_same(
    checkpoints: dict[str, Path],
    llama_model: DistributedModelForCausalLM,
    options: dict[str, Any],
    without: str,
) -> None:
    """Each changes the tokens (checked first), and the swarm's are transformers'."""
    checkpoint = checkpoints["llama"]
    options = {"do_sample": False, "max_new_tokens": NEW_TOKENS} | options
    seed = options.pop("seed", None)
    expected = _local(checkpoint, PROMPT, seed, **options)
    plain = {name: value for name, value in options.items() if name != without}
    assert expected != _local(checkpoint, PROMPT, seed, **plain)
    output = llama_model.generate(PROMPT, seed=seed, **options)
    assert output[0, PROMPT.shape[1] :].tolist() == expected


class OddTokensBanned(LogitsProcessor):
    """A caller's own processor: odd token ids never come."""

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        scores = scores.clone()
        scores[:, 1::2] = -math.inf
        return cast(torch.FloatTensor, scores)


class StopAfter(StoppingCriteria):
    """A caller's own criterion: stop once `length` tokens are there, prompt included."""

    def __init__(self, length: int) -> None:
        self.length = length

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.BoolTensor:
        done = torch.full((input_ids.shape[0],), input_ids.shape[1] >= self.length)
        return cast(torch.BoolTensor, done)


def _steering(base: list[int]) -> dict[str, dict[str, Any]]:
    """Options that steer the tokens, made from those of plain greedy decoding (`base`)."""
    return {
        "sequence-bias": {"sequence_bias": {(base[2],): -20.0, (base[4], base[5]): -20.0}},
        "sequence-bias-as-list": {"sequence_bias": [[[base[0]], -20.0]]},
        "bad-words": {"bad_words_ids": [[base[1]], [base[5], base[6]]]},
        "suppress-tokens": {"suppress_tokens": [base[3], base[7]]},
        "begin-suppress-tokens": {"begin_suppress_tokens": [base[0]]},
        "own-processor": {"logits_processor": LogitsProcessorList([OddTokensBanned()])},
        # a processor of a kind generate() builds takes its place: 1.5, not 0.3
        "own-penalty": {
            "repetition_penalty": 0.3,
            "logits_processor": [RepetitionPenaltyLogitsProcessor(1.5)],
        },
        "own-stopping": {
            "stopping_criteria": StoppingCriteriaList([StopAfter(PROMPT.shape[1] + 5)])
        },
        "max-time": {"max_time": 1e-9},  # one token: the clock has run out at the first check
    }


@pytest.mark.parametrize("case", list(_steering(list(range(8)))))
@pytest.mark.parametrize("do_sample", [False, True], ids=["greedy", "sampled"])
def test_biases_bans_and_the_callers_own_processors_mean_what_they_do_in_transformers(
    checkpoints: dict[str, Path],
    llama_model: DistributedModelForCausalLM,
    case: str,
    do_sample: bool,
) -> None:
    """Each changes the tokens (checked first), and the swarm's are transformers'."""
    checkpoint = checkpoints["llama"]
    plain = {"do_sample": do_sample, "max_new_tokens": NEW_TOKENS, "top_k": 0}
    seed = 7 if do_sample else None
    base = _local(checkpoint, PROMPT, seed, **plain)
    options = plain | _steering(base)[case]
    expected = _local(checkpoint, PROMPT, seed, **options)
    assert expected != base
    output = llama_model.generate(PROMPT, seed=seed, **options)
    assert output[0, PROMPT.shape[1] :].tolist() == expected


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"suppress_tokens": [1, -2]}, "suppress_tokens must be a list of token ids"),
        ({"bad_words_ids": [[3], []]}, "bad_words_ids may not hold an empty list"),
        ({"sequence_bias": {(3,): "a"}}, "sequence_bias's biases must be numbers"),
        ({"sequence_bias": {(3,): math.inf}}, "sequence_bias must be finite"),
        ({"logits_processor": [3]}, "logits_processor must be a list of callables"),
        ({"max_time": 0}, "max_time must be > 0 seconds"),
    ],
)
def test_steering_arguments_of_the_wrong_shape_are_refused_by_name(
    llama_model: DistributedModelForCausalLM, options: dict[str, Any], message: str
) -> None:
    with pytest.raises(GenerationError, match=re.escape(message)):
        llama_model.generate(PROMPT, max_new_tokens=2, **options)


class StreamerRecorder(BaseStreamer):
    """A transformers streamer that notes every call it gets."""

    def __init__(self) -> None:
        self.calls: list[Any] = []

    def put(self, value: torch.Tensor) -> None:
        self.calls.append(value.tolist())

    def end(self) -> None:
        self.calls.append("end")


def test_streamers_hear_what_transformers_tells_them(checkpoints: dict[str, Path]) -> None:
    """transformers' kind (`TextStreamer`...): the prompt, each token, then `end()`; ours: a
    callable given each token id."""
    checkpoint = checkpoints["qwen2"]
    options = {"max_new_tokens": 8, "do_sample": False}
    local, ours, tokens = StreamerRecorder(), StreamerRecorder(), []
    AutoModelForCausalLM.from_pretrained(checkpoint).generate(
        PROMPT, attention_mask=torch.ones_like(PROMPT), streamer=local, **options
    )
    with _swarm_and_model(checkpoint, CHAINS[2]) as (_, model):
        model.generate(PROMPT, streamer=ours, **options)
        model.generate(PROMPT, streamer=tokens.append, **options)
    assert ours.calls == local.calls
    assert local.calls[0] == PROMPT.tolist() and local.calls[-1] == "end"
    assert [[token] for token in tokens] == local.calls[1:-1]


TEXTS = ["a b c d", "The quick brown fox", "Hello"]  # different lengths: left padding


def _batch_and_local(checkpoint: Path, **options: Any) -> tuple[dict[str, Any], torch.Tensor]:
    tokenizer = AutoTokenizer.from_pretrained(checkpoint, padding_side="left")
    batch = dict(tokenizer(TEXTS, padding=True, return_tensors="pt"))
    assert not bool(batch["attention_mask"].all())
    local = AutoModelForCausalLM.from_pretrained(checkpoint)
    seed = options.pop("seed", None)
    if seed is not None:
        torch.manual_seed(seed)
    return batch, local.generate(**batch, **options)


@pytest.mark.parametrize(
    "options",
    [
        {"do_sample": False},
        {"do_sample": True, "temperature": 0.7, "top_k": 20, "seed": 5},
        {"do_sample": False, "repetition_penalty": 1.3},
    ],
    ids=["greedy", "sampling", "penalty"],
)
def test_a_batch_of_prompts_equals_transformers_batched_generate(
    checkpoints: dict[str, Path], options: dict[str, Any]
) -> None:
    """Left-padded prompts, each row through its own sessions: transformers' whole output,
    padding included; seeded sampling draws from one generator for all rows, like it."""
    checkpoint = checkpoints["llama"]
    batch, expected = _batch_and_local(checkpoint, max_new_tokens=NEW_TOKENS, **options)
    with _swarm_and_model(checkpoint, CHAINS[2]) as (swarm, model):
        output = model.generate(**batch, max_new_tokens=NEW_TOKENS, **options)
        assert torch.equal(output, expected)
        assert all(_until(lambda p=p: swarm.sessions(p) == 0) for p in swarm.peers)


@pytest.mark.parametrize("family", ["gpt2", "gpt_bigcode", "opt"])
def test_learned_positions_count_from_each_rows_first_token(
    checkpoints: dict[str, Path], family: str
) -> None:
    """GPT-2's positions are added by the peer of block 0, as transformers' `generate()`
    numbers them for left-padded rows."""
    checkpoint = checkpoints[family]
    batch, expected = _batch_and_local(checkpoint, max_new_tokens=NEW_TOKENS, do_sample=False)
    with _swarm_and_model(checkpoint, CHAINS[2]) as (_, model):
        output = model.generate(**batch, max_new_tokens=NEW_TOKENS, do_sample=False)
    assert torch.equal(output, expected)


def test_falcon_rw_generates_what_transformers_does(tmp_path: Path) -> None:
    """ALiBi folded into the attention mask, over padded rows and a growing cache: a batch of
    left-padded prompts through 2 peers gives transformers' whole output."""
    settings = {"alibi": True, "new_decoder_architecture": False, "multi_query": False,
                "num_kv_heads": 4, "parallel_attn": False, "bias": True}  # fmt: skip
    checkpoint = write_tiny_model(tmp_path / "falcon-rw", "falcon", seed=3, **settings)
    batch, expected = _batch_and_local(checkpoint, max_new_tokens=NEW_TOKENS, do_sample=False)
    with _swarm_and_model(checkpoint, CHAINS[2]) as (_, model):
        output = model.generate(**batch, max_new_tokens=NEW_TOKENS, do_sample=False)
    assert torch.equal(output, expected)


@pytest.mark.parametrize("pad", [8, 74])  # tokens these rows make: penalised if counted
def test_the_repetition_penalty_skips_the_padding_as_transformers_does(
    checkpoints: dict[str, Path], pad: int
) -> None:
    checkpoint = checkpoints["llama"]
    tokenizer = AutoTokenizer.from_pretrained(checkpoint, padding_side="left")
    tokenizer.pad_token_id = pad
    batch = dict(tokenizer(TEXTS, padding=True, return_tensors="pt"))
    options = {"max_new_tokens": NEW_TOKENS, "do_sample": False, "repetition_penalty": 1.3,
               "pad_token_id": pad}  # fmt: skip
    expected = AutoModelForCausalLM.from_pretrained(checkpoint).generate(**batch, **options)
    with _swarm_and_model(checkpoint, CHAINS[1]) as (_, model):
        assert torch.equal(model.generate(**batch, **options), expected)


def test_a_row_that_ends_is_padded_like_transformers_pads_it(checkpoints: dict[str, Path]) -> None:
    checkpoint = checkpoints["qwen2"]
    _, free = _batch_and_local(checkpoint, max_new_tokens=NEW_TOKENS, do_sample=False)
    eos = int(free[0, -NEW_TOKENS + 3])  # a token the first row makes early on
    options = {"max_new_tokens": NEW_TOKENS, "do_sample": False, "eos_token_id": eos}
    batch, expected = _batch_and_local(checkpoint, pad_token_id=0, **options)
    assert (expected[0, -3:] == 0).all()  # the first row ended and was padded
    with _swarm_and_model(checkpoint, CHAINS[1]) as (_, model):
        assert torch.equal(model.generate(**batch, pad_token_id=0, **options), expected)
        with pytest.raises(SwarmError, match="pad on the left"):
            right = batch["attention_mask"].flip(-1)
            model.generate(batch["input_ids"], attention_mask=right, max_new_tokens=2)
        with pytest.raises(SwarmError, match="streamer"):
            model.generate(**batch, max_new_tokens=2, streamer=print)


def generate_while_cutting_a_replica(
    checkpoint: Path, **options: Any
) -> tuple[list[torch.Tensor], ThreadPeer]:
    """`generate(**options)` through a first peer and two replicas of the rest, slowed down
    so that the link of the replica in use is cut mid-generation: its output, and that peer."""
    result: list[torch.Tensor] = []
    with _swarm_and_model(checkpoint, [(0, 2), (2, 4), (2, 4)]) as (swarm, model):
        replicas = swarm.peers[1:]
        for replica in replicas:
            swarm.fault(replica, "delay", 0.05)
        worker = threading.Thread(target=lambda: result.append(model.generate(**options)))
        worker.start()
        assert _until(lambda: any(swarm.sessions(p) for p in replicas))
        victim = next(p for p in replicas if swarm.sessions(p))
        swarm.fault(victim, "cut")
        worker.join(timeout=60)
    return result, victim


def test_a_batch_goes_on_through_a_replica_when_its_peer_is_cut_off(
    checkpoints: dict[str, Path], caplog: pytest.LogCaptureFixture
) -> None:
    """The new peer gets the padded rows' history replayed into a session with the same
    padding: the output stays transformers'."""
    checkpoint = checkpoints["mistral"]
    batch, expected = _batch_and_local(checkpoint, max_new_tokens=NEW_TOKENS, do_sample=False)
    options = {"max_new_tokens": NEW_TOKENS, "do_sample": False}
    result, victim = generate_while_cutting_a_replica(checkpoint, **batch, **options)
    assert torch.equal(result[0], expected)
    assert f"peer {victim.peer[:8]} failed" in caplog.text


@pytest.mark.parametrize("family", ["qwen2", "gpt2"])  # GPT-2: positions go on from the past
def test_a_session_continues_a_conversation(checkpoints: dict[str, Path], family: str) -> None:
    checkpoint = checkpoints[family]
    second_turn = torch.tensor([[50, 51, 52]])
    with (
        _swarm_and_model(checkpoint, CHAINS[2]) as (_, model),
        model.inference_session(max_length=64) as session,
    ):
        first = session.generate(PROMPT, max_new_tokens=8, do_sample=False)
        second = session.generate(second_turn, max_new_tokens=8, do_sample=False)
        assert session.input_ids is not None
        history = session.input_ids
    # the second turn sent only its own tokens; the result is as if all were sent at once
    whole = torch.cat([first, second_turn], dim=-1)
    assert second[0, second_turn.shape[1] :].tolist() == _local(
        checkpoint, whole, max_new_tokens=8, do_sample=False
    )
    assert history.shape[1] == whole.shape[1] + 8


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_a_session_rewinds_to_where_the_next_turn_goes_on(
    checkpoints: dict[str, Path], family: str
) -> None:
    """Rewound into its answer, or to nothing, a session goes on as if it had only ever
    held what it kept: the peers drop the rest of their caches with the next step."""
    checkpoint = checkpoints[family]
    turn = torch.tensor([[60, 61]])
    with (
        _swarm_and_model(checkpoint, CHAINS[2]) as (_, model),
        model.inference_session(max_length=64) as session,
    ):
        first = session.generate(PROMPT, max_new_tokens=8, do_sample=False)
        kept = PROMPT.shape[1] + 3
        session.rewind(kept)
        second = session.generate(turn, max_new_tokens=6, do_sample=False)
        session.rewind(0)
        again = session.generate(turn, max_new_tokens=6, do_sample=False)
        for wrong in (-1, session.input_ids.shape[1] + 1, 2.0):
            with pytest.raises(GenerationError, match="cannot rewind"):
                session.rewind(wrong)  # type: ignore[arg-type]
    whole = torch.cat([first[:, :kept], turn], dim=-1)
    assert second[0, 2:].tolist() == _local(checkpoint, whole, max_new_tokens=6, do_sample=False)
    assert again[0, 2:].tolist() == _local(checkpoint, turn, max_new_tokens=6, do_sample=False)


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_a_fork_goes_on_from_the_beginning_it_shares_without_computing_it_again(
    checkpoints: dict[str, Path], family: str
) -> None:
    """A session forked within its answer: its peers copy the tokens it keeps, and both
    sessions then go on as transformers does from what each holds."""
    checkpoint = checkpoints[family]
    with (
        _swarm_and_model(checkpoint, CHAINS[2]) as (swarm, model),
        model.inference_session(max_length=64) as session,
    ):
        first = session.generate(PROMPT, max_new_tokens=8, do_sample=False)
        kept = PROMPT.shape[1] + 3
        with session.fork(kept, max_length=32) as fork:
            forked = fork.generate(torch.tensor([[60, 61]]), max_new_tokens=6, do_sample=False)
            assert fork.max_length == 32
        went_on = session.generate(torch.tensor([[70]]), max_new_tokens=6, do_sample=False)
        statuses = [swarm.status(peer).activity for peer in swarm.peers]
        for wrong in (-1, session.input_ids.shape[1] + 1, 2.0):
            with pytest.raises(GenerationError, match="cannot fork"):
                session.fork(wrong)  # type: ignore[arg-type]
    assert [(s.forked, s.forked_tokens) for s in statuses] == [(1, kept)] * 2
    whole = torch.cat([first[:, :kept], torch.tensor([[60, 61]])], dim=-1)
    assert forked[0, 2:].tolist() == _local(checkpoint, whole, max_new_tokens=6, do_sample=False)
    whole = torch.cat([first, torch.tensor([[70]])], dim=-1)
    assert went_on[0, 1:].tolist() == _local(checkpoint, whole, max_new_tokens=6, do_sample=False)


def test_a_fork_goes_on_when_its_peers_are_gone(
    checkpoints: dict[str, Path], caplog: pytest.LogCaptureFixture
) -> None:
    """A fork whose peer was stopped has those blocks computed again on the other replica;
    once forked, a peer that stops is replaced from the history the fork took: transformers'
    tokens all the same."""
    caplog.set_level(logging.INFO, logger="routing.client.chain")
    checkpoint = checkpoints["mistral"]
    with (
        _swarm_and_model(checkpoint, [(0, 2), (0, 2), (2, 4), (2, 4)]) as (swarm, model),
        model.inference_session(max_length=64) as session,
    ):
        first = session.generate(PROMPT, max_new_tokens=4, do_sample=False)
        gone = swarm.peer(session.route[-1].peer)
        swarm.stop_peer(gone)
        with session.fork() as fork:
            copier = swarm.peer(fork.route[0].peer)
            assert swarm.status(copier).activity.forked == 1
            swarm.stop_peer(copier)
            forked = fork.generate(torch.tensor([[60]]), max_new_tokens=6, do_sample=False)
            assert {hop.peer for hop in fork.route}.isdisjoint({gone.peer, copier.peer})
            assert [failover.peer for failover in fork.failovers] == [copier.peer]
        others = [peer for peer in swarm.peers if peer not in (gone, copier)]
        assert [swarm.status(peer).activity.forked for peer in others] == [0, 0]
    whole = torch.cat([first, torch.tensor([[60]])], dim=-1)
    assert forked[0, 1:].tolist() == _local(checkpoint, whole, max_new_tokens=6, do_sample=False)
    assert "did not fork a session" in caplog.text


def test_sessions_generating_at_once_step_together_with_transformers_tokens(
    checkpoints: dict[str, Path],
) -> None:
    """Three generations at once, each in a session of its own: the peers run their steps
    merged (`swarm_peer_merged_steps_total` counts them: about 90 of the 96 one-token steps
    here on a quiet machine, 22 to 34 without gathering; how many depends on the machine's
    load, so `test_scheduler.py` checks the gathering itself on trio's clock), and each
    gets transformers' tokens."""
    checkpoint = checkpoints["llama"]
    prompts = [torch.tensor([[1, 40 + i, 41, 42 + 2 * i]]) for i in range(3)]
    outputs: dict[int, list[int]] = {}
    with _swarm_and_model(checkpoint, CHAINS[2]) as (swarm, model):

        def generate(index: int) -> None:
            output = model.generate(prompts[index], max_new_tokens=32, do_sample=False)
            outputs[index] = output[0, prompts[index].shape[1] :].tolist()

        threads = [threading.Thread(target=generate, args=(i,)) for i in range(3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        merged = [swarm.status(peer).activity.merged for peer in swarm.peers]
    assert all(merged), merged
    for index, prompt in enumerate(prompts):
        expected = _local(checkpoint, prompt, max_new_tokens=32, do_sample=False)
        assert outputs[index] == expected


def _interrupt_a_generation(swarm: ThreadSwarm, model: DistributedModelForCausalLM) -> None:
    with model.inference_session(max_length=64) as session:
        for _ in session.stream(PROMPT, max_new_tokens=10, do_sample=False):
            assert all(swarm.sessions(p) == 1 for p in swarm.peers)
            raise RuntimeError("interrupted")


def test_sessions_are_closed_after_an_error(checkpoints: dict[str, Path]) -> None:
    checkpoint = checkpoints["llama"]
    with _swarm_and_model(checkpoint, CHAINS[2]) as (swarm, model):
        with pytest.raises(RuntimeError, match="interrupted"):
            _interrupt_a_generation(swarm, model)
        assert all(_until(lambda p=p: swarm.sessions(p) == 0) for p in swarm.peers)
        with (
            pytest.raises(SwarmError, match="max_length"),
            model.inference_session(max_length=8) as session,
        ):
            session.generate(PROMPT, max_new_tokens=10)


def test_a_peer_stopping_mid_generation_changes_no_token(checkpoints: dict[str, Path]) -> None:
    checkpoint = checkpoints["mistral"]
    expected = _local(checkpoint, PROMPT, max_new_tokens=40, do_sample=False)
    with _swarm_and_model(checkpoint, [(0, 2), (2, 4), (2, 4)]) as (swarm, model):
        tokens: list[int] = []
        with model.inference_session(max_length=64) as session:
            for token in session.stream(PROMPT, max_new_tokens=40, do_sample=False):
                tokens.append(token)
                if len(tokens) == 10:
                    victim = swarm.peer(session.route[-1].peer)
                    swarm.stop_peer(victim)
            assert session.route[-1].peer != victim.peer
            assert [f.peer for f in session.failovers] == [victim.peer]
            assert session.failovers[0].replayed_tokens >= PROMPT.shape[1] + 9
    assert tokens == expected


def test_a_session_no_peer_accepts_is_a_clear_error(checkpoints: dict[str, Path]) -> None:
    """Peers announce the longest session they open: the client asks none of them for more
    (and bans none for refusing it)."""
    with (
        _swarm_and_model(checkpoints["llama"], CHAINS[1]) as (_, model),
        pytest.raises(NoRouteError, match="0-3 for sessions of 10000 tokens"),
        model.inference_session(max_length=10_000),
    ):
        pass


def test_a_long_session_goes_to_the_peer_that_takes_it(
    checkpoints: dict[str, Path], caplog: pytest.LogCaptureFixture
) -> None:
    """Of two replicas, the one whose sessions are at most 64 tokens is left out of a chain
    for 100; a short session may use either."""
    short = {"backend": BackendConfig(max_session_length=64)}
    with (
        ThreadSwarm(checkpoints["llama"], [(0, 4), (0, 4)], per_peer=[short]) as swarm,
        DistributedModelForCausalLM.from_pretrained(
            checkpoints["llama"], initial_peers=[swarm.bootstrap]
        ) as model,
    ):
        for _ in range(4):
            with model.inference_session(max_length=100) as session:
                session.generate(PROMPT, max_new_tokens=2)
                assert [hop.peer for hop in session.route] == [swarm.peers[1].peer]
    assert "failed" not in caplog.text
