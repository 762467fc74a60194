"""`swarm api`: OpenAI's own Python client against the server, generating through real peers
(in-process, on loopback), compared with the local transformers model's `generate()`."""

from __future__ import annotations

import http.client
import json
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager, suppress
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import openai
import pytest
import torch
import trio
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import AutoModelForCausalLM, AutoTokenizer

from peer.backend import BackendConfig
from swarm import DistributedModelForCausalLM
from swarm.api.completion_text import CompletionText
from swarm.api.logprobs import scored_tokens
from swarm.api.requests import ApiError, read_request
from swarm.api.server import ApiConfig, ApiServer
from swarm.api.session_pool import MIN_FORK_TOKENS, SessionPool
from swarm.cli import build_parser
from swarm.commands.api import api_key
from swarm.errors import SwarmError
from swarm.generation import TokenLogprob
from swarm.processes import SwarmProcess
from swarm.tls import server_context
from tests.support.prometheus import Samples, parsed
from tests.support.thread_swarm import ThreadSwarm
from tests.support.tiny_model import write_tiny_model
from tests.support.tls import trusting, write_certificate

from .test_model import _until

MODEL = "tiny-api"
PROMPT = "The quick brown fox"
TIMEOUT = 60  # seconds: every request is bounded


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_model(tmp_path_factory.mktemp("api") / MODEL, seed=3)


@pytest.fixture(scope="module")
def swarm(tiny: Path) -> Iterator[tuple[ThreadSwarm, DistributedModelForCausalLM]]:
    with (
        ThreadSwarm(tiny, [(0, 2), (2, 4)]) as peers,
        DistributedModelForCausalLM.from_pretrained(tiny, initial_peers=[peers.bootstrap]) as model,
    ):
        yield peers, model


@contextmanager
def one_peer(
    tiny: Path, cache_tokens: int
) -> Iterator[tuple[ThreadSwarm, DistributedModelForCausalLM]]:
    """One peer of all the blocks, whose cache holds `cache_tokens`, and a model on it."""
    small = {"backend": BackendConfig(max_cache_tokens=cache_tokens)}
    with (
        ThreadSwarm(tiny, [(0, 4)], **small) as peers,
        DistributedModelForCausalLM.from_pretrained(tiny, initial_peers=[peers.bootstrap]) as model,
    ):
        yield peers, model


@pytest.fixture(scope="module")
def one_session_swarm(tiny: Path) -> Iterator[tuple[ThreadSwarm, DistributedModelForCausalLM]]:
    """Room for one session of the API's length here (below 2 x 64)."""
    with one_peer(tiny, 100) as swarm:
        yield swarm


@pytest.fixture(scope="module")
def two_session_swarm(tiny: Path) -> Iterator[tuple[ThreadSwarm, DistributedModelForCausalLM]]:
    """Room for two sessions of the API's length here (76 + 76 of 160)."""
    with one_peer(tiny, 160) as swarm:
        yield swarm


@asynccontextmanager
async def api(
    checkpoint: Path,
    model: DistributedModelForCausalLM,
    model_id: str = MODEL,
    http_client: openai.DefaultHttpxClient | None = None,
    **config: Any,
) -> AsyncIterator[openai.OpenAI]:
    """The server in this test's loop, and an OpenAI client of it (no retries)."""
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    server = ApiServer(model, tokenizer, ApiConfig(model_id, **config))
    async with trio.open_nursery() as nursery:
        base_url = await nursery.start(server.run)
        key = config.get("api_key") or "unused"
        yield openai.OpenAI(base_url=base_url, api_key=key, max_retries=0, timeout=TIMEOUT,
                            http_client=http_client)  # fmt: skip
        nursery.cancel_scope.cancel()


def call(function: Callable[..., Any], **kwargs: Any) -> Any:
    """A blocking client call, run in a thread so that the server can answer it."""
    return trio.to_thread.run_sync(lambda: function(**kwargs))


def local(tiny: Path, input_ids: torch.Tensor, seed: int | None = None, **options: Any) -> str:
    """The new text of transformers' `generate()` on the same checkpoint."""
    model = AutoModelForCausalLM.from_pretrained(tiny)
    if seed is not None:
        torch.manual_seed(seed)
    output = model.generate(input_ids, attention_mask=torch.ones_like(input_ids), **options)
    tokenizer = AutoTokenizer.from_pretrained(tiny)
    return str(tokenizer.decode(output[0, input_ids.shape[1] :], skip_special_tokens=True))


def prompt_ids(tiny: Path) -> torch.Tensor:
    return torch.as_tensor(AutoTokenizer.from_pretrained(tiny)(PROMPT)["input_ids"])[None]


def chat_ids(tiny: Path, messages: list[dict[str, str]]) -> torch.Tensor:
    tokenizer = AutoTokenizer.from_pretrained(tiny)
    encoded = tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    return torch.as_tensor(encoded["input_ids"])


def peer_forks(peers: ThreadSwarm) -> list[tuple[int, int]]:
    """Each peer's sessions forked so far, and the tokens they copied."""
    return [(a.forked, a.forked_tokens) for a in (peers.status(p).activity for p in peers.peers)]


def raw(base_url: str, method: str, path: str, body: bytes | int = b"") -> http.client.HTTPResponse:
    """One request on a new connection, its response left to read; a body given as a number
    is announced (Content-Length), not sent."""
    url = urlsplit(base_url)
    connection = http.client.HTTPConnection(url.hostname or "", url.port, timeout=TIMEOUT)
    connection.putrequest(method, url.path.rstrip("/") + path)
    connection.putheader("Content-Length", str(body if isinstance(body, int) else len(body)))
    connection.endheaders(b"" if isinstance(body, int) else body)
    return connection.getresponse()


async def test_a_completion_equals_transformers_greedy_text(tiny: Path, swarm: Any) -> None:
    expected = local(tiny, prompt_ids(tiny), max_new_tokens=12, do_sample=False)
    async with api(tiny, swarm[1]) as client:
        result = await call(
            client.completions.create, model=MODEL, prompt=PROMPT, max_tokens=12, temperature=0
        )
    assert result.choices[0].text == expected
    assert result.choices[0].finish_reason == "length"
    assert result.model == MODEL and result.object == "text_completion"
    assert result.usage is not None
    assert (result.usage.prompt_tokens, result.usage.completion_tokens) == (
        prompt_ids(tiny).shape[1],
        12,
    )
    assert all(_until(lambda p=p: swarm[0].sessions(p) == 0) for p in swarm[0].peers)


async def test_https_serves_the_same_text(tiny: Path, swarm: Any, tmp_path: Path) -> None:
    """With a certificate, the API is HTTPS, whole answers and streams alike."""
    expected = local(tiny, prompt_ids(tiny), max_new_tokens=8, do_sample=False)
    certificate, key = write_certificate(tmp_path)
    trusted = openai.DefaultHttpxClient(verify=trusting(certificate))
    async with api(
        tiny, swarm[1], http_client=trusted, tls=server_context(certificate, key)
    ) as client:
        assert str(client.base_url).startswith("https://127.0.0.1:")
        request = {"model": MODEL, "prompt": PROMPT, "max_tokens": 8, "temperature": 0}
        result = await call(client.completions.create, **request)
        chunks = await trio.to_thread.run_sync(
            lambda: list(client.completions.create(**request, stream=True))
        )
    assert result.choices[0].text == "".join(c.choices[0].text for c in chunks) == expected


async def test_a_streamed_completion_adds_up_to_the_same_text(tiny: Path, swarm: Any) -> None:
    expected = local(tiny, prompt_ids(tiny), max_new_tokens=12, do_sample=False)
    async with api(tiny, swarm[1]) as client:

        def stream(echo: bool = False) -> list[Any]:
            return list(
                client.completions.create(
                    model=MODEL,
                    prompt=PROMPT,
                    max_tokens=12,
                    temperature=0,
                    stream=True,
                    stream_options={"include_usage": True},
                    echo=echo,
                )
            )

        chunks = await trio.to_thread.run_sync(stream)
        echoed = await trio.to_thread.run_sync(stream, True)
    pieces = [chunk.choices[0].text for chunk in chunks if chunk.choices]
    assert "".join(pieces) == expected and len([p for p in pieces if p]) > 1
    assert "".join(c.choices[0].text for c in echoed if c.choices) == PROMPT + expected
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 12


async def test_a_chat_completion_equals_transformers_on_the_chat_template(
    tiny: Path, swarm: Any
) -> None:
    messages = [
        {"role": "system", "content": "You are brief."},
        {"role": "user", "content": "What is the capital of France?"},
    ]
    expected = local(tiny, chat_ids(tiny, messages), max_new_tokens=10, do_sample=False)
    async with api(tiny, swarm[1]) as client:
        options = {"model": MODEL, "messages": messages, "max_tokens": 10, "temperature": 0}
        whole = await call(client.chat.completions.create, **options)
        chunks = await trio.to_thread.run_sync(
            lambda: list(client.chat.completions.create(**options, stream=True))
        )
    assert whole.choices[0].message.role == "assistant"
    assert whole.choices[0].message.content == expected
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == expected
    assert chunks[-1].choices[0].finish_reason == whole.choices[0].finish_reason


async def test_a_prediction_of_the_answer_saves_trips_and_changes_no_text(
    tiny: Path, swarm: Any
) -> None:
    """OpenAI's predicted outputs: drafts copied from the prediction (prompt lookup) are
    checked by the model, so the text is the same; right, they save most steps (counted by
    the first peer). A prediction in JSON mode, or of another shape, is a 400."""
    messages = [{"role": "user", "content": "Say it again."}]
    expected = local(tiny, chat_ids(tiny, messages), max_new_tokens=24, do_sample=False)
    first = swarm[0].peers[0]
    options = {"model": MODEL, "messages": messages, "max_tokens": 24, "temperature": 0}
    trips = []
    async with api(tiny, swarm[1]) as client:
        for extra in ({}, {"prediction": {"type": "content", "content": expected}}):
            before = swarm[0].status(first).activity.steps
            answer = await call(client.chat.completions.create, **options, **extra)
            trips.append(swarm[0].status(first).activity.steps - before)
            assert answer.choices[0].message.content == expected
        assert answer.usage.completion_tokens_details.accepted_prediction_tokens == 24 - trips[1]
        assert answer.usage.completion_tokens_details.rejected_prediction_tokens >= 0
        with pytest.raises(openai.BadRequestError, match="not JSON mode"):
            await call(client.chat.completions.create, **options,
                       response_format={"type": "json_object"},
                       prediction={"type": "content", "content": "{}"})  # fmt: skip
        with pytest.raises(openai.BadRequestError, match="prediction must be"):
            await call(client.chat.completions.create, **options, prediction={"content": "x"})
        with pytest.raises(openai.BadRequestError, match="exceed the model's context of 512"):
            await call(client.chat.completions.create, **options,
                       prediction={"type": "content", "content": "a b " * 600})  # fmt: skip
    assert trips[0] == 24 and trips[1] < 24  # (this tiny tokenizer splits the text anew)


async def test_seeded_sampling_draws_what_transformers_draws(tiny: Path, swarm: Any) -> None:
    """temperature and top_p as OpenAI means them: no top-k."""
    options = {"do_sample": True, "temperature": 0.8, "top_p": 0.9, "top_k": 0}
    expected = local(tiny, prompt_ids(tiny), seed=7, max_new_tokens=12, **options)
    assert expected != local(tiny, prompt_ids(tiny), max_new_tokens=12, do_sample=False)
    async with api(tiny, swarm[1]) as client:
        result = await call(
            client.completions.create,
            model=MODEL,
            prompt=PROMPT,
            max_tokens=12,
            temperature=0.8,
            top_p=0.9,
            seed=7,
        )
    assert result.choices[0].text == expected


async def test_several_choices_are_sampled_side_by_side_with_their_own_seeds(
    tiny: Path, swarm: Any
) -> None:
    """n answers: answer i is transformers' sampling with seed + i, whole or streamed (its
    pieces, by index, add up to it); usage counts them all."""
    options = {"do_sample": True, "temperature": 0.8, "top_p": 0.9, "top_k": 0}
    expected = [
        local(tiny, prompt_ids(tiny), seed=7 + i, max_new_tokens=10, **options) for i in range(3)
    ]
    assert len(set(expected)) == 3
    request = {"model": MODEL, "prompt": PROMPT, "max_tokens": 10, "temperature": 0.8,
               "top_p": 0.9, "seed": 7, "n": 3}  # fmt: skip
    async with api(tiny, swarm[1]) as client:
        whole = await call(client.completions.create, **request)
        chunks = await trio.to_thread.run_sync(
            lambda: list(client.completions.create(**request, stream=True))
        )
    assert [choice.text for choice in sorted(whole.choices, key=lambda c: c.index)] == expected
    assert whole.usage is not None and whole.usage.completion_tokens == 30
    streamed = ["", "", ""]
    for chunk in chunks:
        for choice in chunk.choices:
            streamed[choice.index] += choice.text
    assert streamed == expected
    finished = [c.choices[0].index for c in chunks if c.choices and c.choices[0].finish_reason]
    assert sorted(finished) == [0, 1, 2]


async def test_best_of_returns_the_likeliest_answers_first(tiny: Path, swarm: Any) -> None:
    """best_of 4, n 2: of transformers' samplings with seed + i (i < 4), the two whose tokens
    have the highest mean log probability under the model, best first (here the last two,
    the best last); usage counts all 4."""
    options = {"do_sample": True, "temperature": 1.5, "top_p": 1.0, "top_k": 0}
    model = AutoModelForCausalLM.from_pretrained(tiny)
    tokenizer = AutoTokenizer.from_pretrained(tiny)
    prompt = prompt_ids(tiny)
    scored = []
    for i in range(4):
        torch.manual_seed(4 + i)
        output = model.generate(prompt, attention_mask=torch.ones_like(prompt),
                                max_new_tokens=8, **options)  # fmt: skip
        new = output[0, prompt.shape[1] :]
        score = local_logprobs(tiny, output[0].tolist())[-len(new) :].mean()
        scored.append((float(score), tokenizer.decode(new, skip_special_tokens=True)))
    ranked = [text for _, text in sorted(scored, reverse=True)]
    assert ranked[:2] != [text for _, text in scored[:2]]  # the choice is not the first two
    request = {"model": MODEL, "prompt": PROMPT, "max_tokens": 8, "temperature": 1.5,
               "seed": 4, "n": 2, "best_of": 4}  # fmt: skip
    async with api(tiny, swarm[1]) as client:
        whole = await call(client.completions.create, **request)
    assert [choice.index for choice in whole.choices] == [0, 1]
    assert [choice.text for choice in whole.choices] == ranked[:2]
    assert whole.choices[0].logprobs is None  # not asked for
    assert whole.usage is not None and whole.usage.completion_tokens == 32


async def test_several_prompts_get_their_answers_numbered_prompt_after_prompt(
    tiny: Path, swarm: Any
) -> None:
    """A text and token ids, 2 answers each, echoed: answer 2p + i is transformers' sampling
    of prompt p with seed + i, whole or streamed; usage counts every prompt's tokens once."""
    ids = [7, 8, 9, 10]
    options = {"do_sample": True, "temperature": 0.8, "top_p": 0.9, "top_k": 0}
    prompts = [prompt_ids(tiny), torch.tensor([ids])]
    expected = [
        local(tiny, prompt, seed=7 + i, max_new_tokens=6, **options)
        for prompt in prompts
        for i in range(2)
    ]
    tokenizer = AutoTokenizer.from_pretrained(tiny)
    echoes = [PROMPT, tokenizer.decode(ids, skip_special_tokens=True)]
    expected = [echoes[index // 2] + text for index, text in enumerate(expected)]
    request = {"model": MODEL, "prompt": [PROMPT, ids], "max_tokens": 6, "temperature": 0.8,
               "top_p": 0.9, "seed": 7, "n": 2, "echo": True}  # fmt: skip
    async with api(tiny, swarm[1]) as client:
        whole = await call(client.completions.create, **request)
        chunks = await trio.to_thread.run_sync(
            lambda: list(client.completions.create(**request, stream=True))
        )
    assert [choice.text for choice in sorted(whole.choices, key=lambda c: c.index)] == expected
    assert whole.usage is not None
    assert whole.usage.prompt_tokens == prompt_ids(tiny).shape[1] + len(ids)
    streamed = [""] * 4
    for chunk in chunks:
        for choice in chunk.choices:
            streamed[choice.index] += choice.text
    assert streamed == expected


async def test_a_stop_sequence_ends_the_text_before_it(tiny: Path, swarm: Any) -> None:
    full = local(tiny, prompt_ids(tiny), max_new_tokens=16, do_sample=False)
    stop = full[6:9]  # three characters from the middle of the greedy text
    expected = full[: full.index(stop)]
    async with api(tiny, swarm[1]) as client:
        options = {"model": MODEL, "prompt": PROMPT, "max_tokens": 16, "temperature": 0}
        whole = await call(client.completions.create, **options, stop=[stop, "never seen"])
        chunks = await trio.to_thread.run_sync(
            lambda: list(client.completions.create(**options, stop=stop, stream=True))
        )
    assert whole.choices[0].text == expected and whole.choices[0].finish_reason == "stop"
    assert whole.usage is not None and whole.usage.completion_tokens < 16  # it stopped there
    assert "".join(c.choices[0].text for c in chunks) == expected
    assert chunks[-1].choices[0].finish_reason == "stop"


async def test_bad_requests_get_openai_errors_and_the_server_serves_on(
    tiny: Path, swarm: Any
) -> None:
    async with api(tiny, swarm[1]) as client:
        with pytest.raises(openai.NotFoundError, match="does not exist"):
            await call(client.completions.create, model="other", prompt=PROMPT)
        with pytest.raises(openai.BadRequestError, match="best_of must be within n"):
            await call(client.completions.create, model=MODEL, prompt=PROMPT, n=2, best_of=1)
        with pytest.raises(openai.BadRequestError, match="max_tokens may be at most"):
            await call(client.completions.create, model=MODEL, prompt=PROMPT, max_tokens=5000)
        with pytest.raises(openai.BadRequestError, match="context of 512 tokens"):
            await call(client.completions.create, model=MODEL, prompt=PROMPT, max_tokens=1000)
        with pytest.raises(openai.BadRequestError, match="500 prompt tokens"):  # the longest's
            await call(client.completions.create, model=MODEL, prompt=[[5], [5] * 500],
                       max_tokens=20)  # fmt: skip
        requests: list[tuple[str, str, bytes | int]] = [
            ("POST", "/completions", b"{not json"),
            ("POST", "/completions", json.dumps({"model": MODEL, "prompt": "x", "x": 1}).encode()),
            ("GET", "/completions", b""),
            ("POST", "/elsewhere", b"{}"),
            ("POST", "/chat/completions", 2 << 20),  # over the cap of a body
        ]
        statuses = []
        for method, path, body in requests:
            reply = await trio.to_thread.run_sync(raw, str(client.base_url), method, path, body)
            statuses.append(reply.status)
            if reply.status != 413:
                assert json.loads(reply.read())["error"]["message"]
        assert statuses == [400, 400, 405, 404, 413]
        models = await call(client.models.list)
        assert [m.id for m in models.data] == [MODEL]
        result = await call(
            client.completions.create, model=MODEL, prompt=PROMPT, max_tokens=3, temperature=0
        )
        assert result.usage is not None and result.usage.completion_tokens == 3


def scrape(base_url: str, key: str | None) -> tuple[int, Samples]:
    """GET /metrics (beside /v1): its status, and its samples (`parsed`)."""
    url = urlsplit(base_url)
    connection = http.client.HTTPConnection(url.hostname or "", url.port, timeout=TIMEOUT)
    connection.request("GET", "/metrics", headers={"Authorization": f"Bearer {key}"} if key else {})
    reply = connection.getresponse()
    body = reply.read().decode()
    return reply.status, parsed(body)[1] if reply.status == 200 else {}


async def test_metrics_count_requests_and_tokens_behind_the_key(tiny: Path, swarm: Any) -> None:
    async with api(tiny, swarm[1], api_key="s3cret") as client:
        await call(client.completions.create, model=MODEL, prompt=PROMPT, max_tokens=5,
                   temperature=0)  # fmt: skip
        stream = await call(client.completions.create, model=MODEL, prompt=PROMPT,
                            max_tokens=3, temperature=0, stream=True)  # fmt: skip
        await trio.to_thread.run_sync(list, stream)
        with pytest.raises(openai.NotFoundError):
            await call(client.completions.create, model="other", prompt=PROMPT)
        base = str(client.base_url)
        assert (await trio.to_thread.run_sync(scrape, base, None))[0] == 401
        status, samples = await trio.to_thread.run_sync(scrape, base, "s3cret")
    model = (("model", MODEL),)
    requests = "swarm_api_requests_total"
    assert status == 200
    assert samples[requests][(*model, ("route", "completion"), ("status", "200"))] == 2
    assert samples[requests][(*model, ("route", "completion"), ("status", "404"))] == 1
    assert samples[requests][(*model, ("route", "metrics"), ("status", "401"))] == 1
    assert samples["swarm_api_prompt_tokens_total"][model] == 2 * prompt_ids(tiny).shape[1]
    assert samples["swarm_api_completion_tokens_total"][model] == 5 + 3
    assert samples["swarm_api_generations"][model] == 0
    assert samples["swarm_api_idle_sessions"][model] == 2  # the answers', for a next turn
    completion = (*model, ("route", "completion"))
    assert samples["swarm_api_request_seconds_count"][completion] == 3
    assert samples["swarm_api_request_seconds_count"][(*model, ("route", "metrics"))] == 1
    assert samples["swarm_api_first_token_seconds_count"][model] == 2  # an answer each
    assert samples["swarm_api_token_gap_seconds_count"][model] == 4 + 2
    infinite = (("le", "+Inf"), *completion)  # sorted
    assert samples["swarm_api_request_seconds_bucket"][infinite] == 3
    # each answer's tokens came within its request, the stream's included
    first, gaps = (
        samples[f"swarm_api_{name}_seconds_sum"][model] for name in ("first_token", "token_gap")
    )
    assert samples["swarm_api_request_seconds_sum"][completion] >= first + gaps > 0


async def test_with_a_key_only_requests_that_carry_it_are_served(tiny: Path, swarm: Any) -> None:
    async with api(tiny, swarm[1], api_key="s3cret") as client:
        wrong = client.with_options(api_key="guess")
        with pytest.raises(openai.AuthenticationError):
            await call(wrong.models.list)
        assert [m.id for m in (await call(client.models.list)).data] == [MODEL]


async def test_presence_and_frequency_penalties_are_openais(tiny: Path, swarm: Any) -> None:
    """Greedy tokens with OpenAI's penalties, against a loop of transformers' forwards that
    takes each penalty off the logits of the tokens generated so far, written here anew."""
    prompt = prompt_ids(tiny)[0].tolist()
    model = AutoModelForCausalLM.from_pretrained(tiny)
    expected: list[int] = []
    with torch.no_grad():
        for _ in range(8):
            logits = model(torch.tensor([prompt + expected])).logits[0, -1]
            for token in set(expected):
                logits[token] -= 0.8 + 1.5 * expected.count(token)
            expected.append(int(logits.argmax()))
    plain = greedy_tokens(tiny, prompt, 8)
    assert expected != plain  # the penalties change the text
    async with api(tiny, swarm[1]) as client:
        answer = await call(client.completions.create, model=MODEL, prompt=prompt, max_tokens=8,
                            temperature=0, presence_penalty=0.8, frequency_penalty=1.5)  # fmt: skip
    tokenizer = AutoTokenizer.from_pretrained(tiny)
    assert answer.choices[0].text == tokenizer.decode(expected, skip_special_tokens=True)


async def test_logit_bias_is_added_to_the_logits_as_openai_says(tiny: Path, swarm: Any) -> None:
    """Greedy tokens with a bias on two tokens, against a loop of transformers' forwards that
    adds each bias to its token's logit; a bias on a token beyond the vocabulary is a 400."""
    prompt = prompt_ids(tiny)[0].tolist()
    plain = greedy_tokens(tiny, prompt, 8)
    bias = {plain[1]: -100.0, plain[0] + 1: 4.5}
    model = AutoModelForCausalLM.from_pretrained(tiny)
    expected: list[int] = []
    with torch.no_grad():
        for _ in range(8):
            logits = model(torch.tensor([prompt + expected])).logits[0, -1]
            for token, value in bias.items():
                logits[token] += value
            expected.append(int(logits.argmax()))
    assert expected != plain and plain[1] not in expected
    wire = {str(token): value for token, value in bias.items()}
    async with api(tiny, swarm[1]) as client:
        answer = await call(client.completions.create, model=MODEL, prompt=prompt, max_tokens=8,
                            temperature=0, logit_bias=wire)  # fmt: skip
        with pytest.raises(openai.BadRequestError, match="logit_bias token ids must be below"):
            await call(client.completions.create, model=MODEL, prompt=prompt, max_tokens=8,
                       logit_bias={"100000": 1})  # fmt: skip
    tokenizer = AutoTokenizer.from_pretrained(tiny)
    assert answer.choices[0].text == tokenizer.decode(expected, skip_special_tokens=True)


def local_logprobs(tiny: Path, tokens: list[int]) -> torch.Tensor:
    """transformers' log probability of each token after the first, given those before."""
    model = AutoModelForCausalLM.from_pretrained(tiny)
    with torch.no_grad():
        logits = model(torch.tensor([tokens])).logits[0, :-1]
    return torch.log_softmax(logits.float(), dim=-1)[torch.arange(len(tokens) - 1), tokens[1:]]


def greedy_tokens(tiny: Path, prompt: list[int], count: int) -> list[int]:
    model = AutoModelForCausalLM.from_pretrained(tiny)
    ids = torch.tensor([prompt])
    output = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=count,
                            do_sample=False)  # fmt: skip
    return list(output[0, len(prompt) :].tolist())


async def test_completion_logprobs_are_the_models_own(tiny: Path, swarm: Any) -> None:
    """Greedy tokens with their log probabilities and the 2 likeliest at each place (the
    first is the token chosen); with `echo`, the prompt's too, the first token's none."""
    prompt = prompt_ids(tiny)[0].tolist()
    new = greedy_tokens(tiny, prompt, 6)
    async with api(tiny, swarm[1]) as client:
        options = {"model": MODEL, "prompt": prompt, "temperature": 0, "logprobs": 2}
        answer = await call(client.completions.create, max_tokens=6, **options)
        scored = await call(client.completions.create, max_tokens=0, echo=True, **options)
    logprobs = answer.choices[0].logprobs
    assert logprobs is not None and "".join(logprobs.tokens) == answer.choices[0].text
    expected = local_logprobs(tiny, prompt + new)[len(prompt) - 1 :]
    torch.testing.assert_close(torch.tensor(logprobs.token_logprobs), expected, atol=1e-4, rtol=0)
    assert all(len(top) == 2 for top in logprobs.top_logprobs)
    tokenizer = AutoTokenizer.from_pretrained(tiny)
    best = [max(top, key=top.get) for top in logprobs.top_logprobs]
    assert best == [tokenizer.decode([token]) for token in new]  # greedy: the likeliest
    assert logprobs.text_offset == [len("".join(logprobs.tokens[:i])) for i in range(len(new))]
    echoed = scored.choices[0].logprobs
    assert scored.choices[0].text == tokenizer.decode(prompt, skip_special_tokens=True)
    assert echoed is not None and echoed.token_logprobs[0] is None
    assert scored.usage is not None and scored.usage.completion_tokens == 0
    torch.testing.assert_close(
        torch.tensor(echoed.token_logprobs[1:]), local_logprobs(tiny, prompt), atol=1e-4, rtol=0
    )


async def test_chat_logprobs_follow_the_answer(tiny: Path, swarm: Any) -> None:
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    prompt = chat_ids(tiny, messages)[0].tolist()
    new = greedy_tokens(tiny, prompt, 6)
    async with api(tiny, swarm[1]) as client:
        answer = await call(client.chat.completions.create, model=MODEL, messages=messages,
                            max_tokens=6, temperature=0, logprobs=True, top_logprobs=3)  # fmt: skip
    content = answer.choices[0].logprobs.content
    assert "".join(entry.token for entry in content) == answer.choices[0].message.content
    assert all(bytes(entry.bytes) == entry.token.encode() for entry in content)
    assert all(len(entry.top_logprobs) == 3 for entry in content)
    expected = local_logprobs(tiny, prompt + new)[len(prompt) - 1 :]
    got = torch.tensor([entry.logprob for entry in content])
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)


async def test_streamed_logprobs_are_the_whole_answers_piece_by_piece(
    tiny: Path, swarm: Any
) -> None:
    """Sampled, echoed and cut by a stop sequence: the chunks' entries put together are the
    whole answer's, offsets included, and a chunk only scores tokens its text has sent."""
    async with api(tiny, swarm[1]) as client:
        options = {"model": MODEL, "prompt": PROMPT, "max_tokens": 16, "seed": 3, "logprobs": 2}
        text = (await call(client.completions.create, **options)).choices[0].text
        options |= {"stop": [text[len(text) // 2 : len(text) // 2 + 3]], "echo": True}
        whole = await call(client.completions.create, **options)
        chunks = await trio.to_thread.run_sync(
            lambda: list(client.completions.create(**options, stream=True))
        )
    expected = whole.choices[0].logprobs
    assert len(whole.choices[0].text) < len(PROMPT + text)  # the stop cut it
    streamed: dict[str, list[Any]] = {name: [] for name in vars(expected)}
    sent = ""
    for chunk in chunks:
        sent += chunk.choices[0].text
        if chunk.choices[0].logprobs is not None:
            for name, values in vars(chunk.choices[0].logprobs).items():
                streamed[name] += values
        assert sent.startswith("".join(streamed["tokens"]))
    assert sent == whole.choices[0].text
    assert streamed == vars(expected) and len(expected.tokens) > len(prompt_ids(tiny)[0])


async def test_streamed_chat_logprobs_are_the_whole_answers(tiny: Path, swarm: Any) -> None:
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    async with api(tiny, swarm[1]) as client:
        options = {"model": MODEL, "messages": messages, "max_tokens": 12, "seed": 4,
                   "logprobs": True, "top_logprobs": 2}  # fmt: skip
        whole = await call(client.chat.completions.create, **options)
        chunks = await trio.to_thread.run_sync(
            lambda: list(client.chat.completions.create(**options, stream=True))
        )
    pieces = [c.choices[0].logprobs.content for c in chunks if c.choices[0].logprobs]
    content = [entry for piece in pieces for entry in piece]
    assert len(pieces) > 1 and content == whole.choices[0].logprobs.content


async def test_a_client_gone_mid_stream_frees_its_sessions(tiny: Path, swarm: Any) -> None:
    """Its generation stops at once: with 50 ms more per step, its 400 tokens would hold
    the sessions for 20 s."""
    peers, model = swarm
    async with api(tiny, model) as client:
        body = {"model": MODEL, "prompt": PROMPT, "max_tokens": 400, "stream": True}

        def read_a_little() -> list[bytes]:
            reply = raw(str(client.base_url), "POST", "/completions", json.dumps(body).encode())
            lines = [reply.readline() for _ in range(4)]  # two events, each and its blank line
            reply.close()  # and the connection with it, mid-stream
            return lines

        peers.fault(peers.peers[0], "delay", 0.05)
        try:
            first = await trio.to_thread.run_sync(read_a_little)
            gone = await trio.to_thread.run_sync(
                lambda: all(_until(lambda p=p: peers.sessions(p) == 0) for p in peers.peers)
            )
        finally:
            peers.fault(peers.peers[0], "delay", 0.0)
        assert all(b'"finish_reason": null' in line for line in first[::2]) and gone
        result = await call(
            client.completions.create, model=MODEL, prompt=PROMPT, max_tokens=2, temperature=0
        )
        assert result.choices[0].finish_reason == "length"


async def test_a_conversations_next_turn_goes_on_in_its_session(tiny: Path, swarm: Any) -> None:
    """Prompts as token ids: the second begins with all the first session holds (its prompt
    and answer), so it takes that session and sends only the rest; an unrelated prompt opens
    another. Each answer is transformers' greedy one on its whole prompt."""
    peers, model = swarm
    first = prompt_ids(tiny)[0].tolist()
    reference = AutoModelForCausalLM.from_pretrained(tiny)
    ids = torch.tensor([first])
    answer = reference.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=6,
                            do_sample=False)[0].tolist()  # fmt: skip
    second = [*answer, 50, 51, 52]
    async with api(tiny, model) as client:
        options = {"model": MODEL, "max_tokens": 6, "temperature": 0}
        one = await call(client.completions.create, prompt=first, **options)
        sessions = await trio.to_thread.run_sync(lambda: [peers.sessions(p) for p in peers.peers])
        two = await call(client.completions.create, prompt=second, **options)
        after = await trio.to_thread.run_sync(lambda: [peers.sessions(p) for p in peers.peers])
        await call(client.completions.create, prompt=[7, 8, 9], **options)
        other = await trio.to_thread.run_sync(lambda: [peers.sessions(p) for p in peers.peers])
    tokenizer = AutoTokenizer.from_pretrained(tiny)
    assert one.choices[0].text == tokenizer.decode(answer[len(first) :], skip_special_tokens=True)
    assert two.choices[0].text == local(tiny, torch.tensor([second]), max_new_tokens=6,
                                        do_sample=False)  # fmt: skip
    assert sessions == after == [1, 1] and other == [2, 2]


async def test_a_session_goes_on_from_where_the_next_prompt_parts_from_it(
    tiny: Path, swarm: Any
) -> None:
    """A stop sequence cuts the first answer, and its session waits all the same; a prompt
    that parts from it within the answer takes it, rewound to where they part, while the
    same prompt asked again opens its own. Each answer is transformers' greedy one."""
    peers, model = swarm
    first = prompt_ids(tiny)[0].tolist()
    ids = torch.tensor([first])
    reference = AutoModelForCausalLM.from_pretrained(tiny)
    answer = reference.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=8,
                                do_sample=False)[0, len(first) :].tolist()  # fmt: skip
    text = AutoTokenizer.from_pretrained(tiny).decode(answer, skip_special_tokens=True)
    cut = next(at for at in range(len(text) // 2, len(text)) if text.find(text[at : at + 3]) == at)
    second = [*first, *answer[:2], 50, 51, 52]  # parts from the first answer after 2 tokens
    expected = local(tiny, torch.tensor([second]), max_new_tokens=6, do_sample=False)
    options = {"model": MODEL, "temperature": 0}
    async with api(tiny, model) as client:
        one = await call(  # (its generation runs on past the cut, up to 40 tokens)
            client.completions.create,
            prompt=first,
            max_tokens=40,
            stop=[text[cut : cut + 3]],
            **options,
        )
        sessions = [await trio.to_thread.run_sync(lambda: [peers.sessions(p) for p in peers.peers])]
        answers = []
        for _ in range(2):
            answer = await call(client.completions.create, prompt=second, max_tokens=6, **options)
            answers.append(answer.choices[0].text)
            sessions.append(await trio.to_thread.run_sync(
                lambda: [peers.sessions(p) for p in peers.peers]
            ))  # fmt: skip
    assert one.choices[0].text == text[:cut] and one.choices[0].finish_reason == "stop"
    assert answers == [expected, expected]
    assert sessions == [[1, 1], [1, 1], [2, 2]]


async def test_a_conversation_sharing_a_waiting_ones_beginning_forks_its_session(
    tiny: Path, swarm: Any
) -> None:
    """Two prompts that share 20 tokens (a system prompt) and part after: the second forks
    the first's waiting session, whose peers copy those tokens' caches; usage and the
    metrics say so, and both sessions wait on. Asked again, it forks the first again (its
    own session holds all of it). Each answer is transformers' greedy one."""
    peers, model = swarm
    shared = [1, *range(40, 59)]
    first, second = [*shared, 70, 71], [*shared, 80, 81, 82]
    options = {"model": MODEL, "max_tokens": 5, "temperature": 0}

    async with api(tiny, model) as client:
        await call(client.completions.create, prompt=first, **options)
        before = await trio.to_thread.run_sync(peer_forks, peers)
        answers = [await call(client.completions.create, prompt=second, **options)
                   for _ in range(2)]  # fmt: skip
        after = await trio.to_thread.run_sync(peer_forks, peers)
        sessions = await trio.to_thread.run_sync(lambda: [peers.sessions(p) for p in peers.peers])
        samples = (await trio.to_thread.run_sync(scrape, str(client.base_url), None))[1]
    expected = local(tiny, torch.tensor([second]), max_new_tokens=5, do_sample=False)
    assert [answer.choices[0].text for answer in answers] == [expected, expected]
    cached = [answer.usage.prompt_tokens_details.cached_tokens for answer in answers]
    assert cached == [len(shared)] * 2
    assert samples["swarm_api_cached_prompt_tokens_total"][(("model", MODEL),)] == 2 * len(shared)
    assert [(f - b, t - u) for (f, t), (b, u) in zip(after, before, strict=True)] == [
        (2, 2 * len(shared))
    ] * 2
    assert sessions == [3, 3]


async def test_the_answers_of_one_prompt_compute_it_once(tiny: Path, swarm: Any) -> None:
    """n = 3 answers to a 24-token prompt, sampled, whole then streamed: the first to start
    computes the prompt, the other two fork its session between its tokens (23 tokens
    copied each time, the last one computed). Answer i is transformers' sampling with
    seed + i all the same; the metrics count the copied tokens as cached."""
    peers, model = swarm
    ids = [1, *range(40, 63)]
    options = {"do_sample": True, "temperature": 0.8, "top_p": 0.9, "top_k": 0}
    expected = [
        local(tiny, torch.tensor([ids]), seed=7 + i, max_new_tokens=8, **options) for i in range(3)
    ]
    request = {"model": MODEL, "prompt": ids, "max_tokens": 8, "temperature": 0.8,
               "top_p": 0.9, "seed": 7, "n": 3}  # fmt: skip
    async with api(tiny, model) as client:
        before = await trio.to_thread.run_sync(peer_forks, peers)
        whole = await call(client.completions.create, **request)
        between = await trio.to_thread.run_sync(peer_forks, peers)
        chunks = await trio.to_thread.run_sync(
            lambda: list(client.completions.create(**request, stream=True))
        )
        after = await trio.to_thread.run_sync(peer_forks, peers)
        samples = (await trio.to_thread.run_sync(scrape, str(client.base_url), None))[1]
    assert [choice.text for choice in sorted(whole.choices, key=lambda c: c.index)] == expected
    streamed = ["", "", ""]
    for chunk in chunks:
        for choice in chunk.choices:
            streamed[choice.index] += choice.text
    assert streamed == expected
    forked = [(2, 2 * (len(ids) - 1))] * 2
    assert [(f - b, t - u) for (f, t), (b, u) in zip(between, before, strict=True)] == forked
    assert [(f - b, t - u) for (f, t), (b, u) in zip(after, between, strict=True)] == forked
    cached = samples["swarm_api_cached_prompt_tokens_total"][(("model", MODEL),)]
    assert cached == 4 * (len(ids) - 1)


async def test_a_conversation_forks_one_that_is_still_answering(tiny: Path, swarm: Any) -> None:
    """Two conversations share a 20-token system prompt: the second asks while the first is
    still generating (each step 30 ms slower), and forks its session between two of its
    tokens instead of computing those 20 again. Both answers are transformers'."""
    peers, model = swarm
    shared = [1, *range(40, 59)]
    first, second = [*shared, 70, 71], [*shared, 80, 81, 82]
    options = {"model": MODEL, "temperature": 0}
    answering = trio.Event()
    texts: list[str] = []

    def read_first(client: openai.OpenAI, token: trio.lowlevel.TrioToken) -> None:
        for chunk in client.completions.create(prompt=first, max_tokens=16, stream=True,
                                               **options):  # fmt: skip
            if chunk.choices and chunk.choices[0].text:
                trio.from_thread.run_sync(answering.set, trio_token=token)
            texts.extend(choice.text for choice in chunk.choices)

    peers.fault(peers.peers[0], "delay", 0.03)
    try:
        async with api(tiny, model) as client, trio.open_nursery() as nursery:
            before = await trio.to_thread.run_sync(peer_forks, peers)
            token = trio.lowlevel.current_trio_token()
            nursery.start_soon(trio.to_thread.run_sync, read_first, client, token)
            await answering.wait()
            other = await call(client.completions.create, prompt=second, max_tokens=5, **options)
            after = await trio.to_thread.run_sync(peer_forks, peers)
    finally:
        peers.fault(peers.peers[0], "delay", 0.0)
    assert "".join(texts) == local(tiny, torch.tensor([first]), max_new_tokens=16, do_sample=False)
    assert other.choices[0].text == local(tiny, torch.tensor([second]), max_new_tokens=5,
                                          do_sample=False)  # fmt: skip
    assert other.usage.prompt_tokens_details.cached_tokens == len(shared)
    assert [(f - b, t - u) for (f, t), (b, u) in zip(after, before, strict=True)] == [
        (1, len(shared))
    ] * 2


async def test_an_answer_the_peers_have_no_room_to_fork_for_opens_its_own_session(
    tiny: Path, one_session_swarm: Any
) -> None:
    """n = 2 on a peer with room for one session: the second answer cannot fork the first's
    session, so it waits for room as any new session, and both are transformers'."""
    peers, model = one_session_swarm
    ids = [1, *range(40, 59)]
    options = {"do_sample": True, "temperature": 0.8, "top_k": 0}
    expected = [
        local(tiny, torch.tensor([ids]), seed=7 + i, max_new_tokens=4, **options) for i in range(2)
    ]
    async with api(tiny, model, headroom=50) as client:  # sessions of 20 + 4 + 50 tokens
        before = await trio.to_thread.run_sync(peer_forks, peers)
        answer = await call(client.completions.create, model=MODEL, prompt=ids, max_tokens=4,
                            temperature=0.8, seed=7, n=2)  # fmt: skip
        after = await trio.to_thread.run_sync(peer_forks, peers)
    assert [choice.text for choice in sorted(answer.choices, key=lambda c: c.index)] == expected
    assert after == before


async def test_an_answer_stopped_before_it_began_leaves_no_session_open(
    tiny: Path, swarm: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One generation at a time: a conversation's next turn takes its waiting session, then
    waits for its turn behind a slow answer, and the server stops before it begins. That
    session closes all the same: the peers end with no session open. (The test holds the
    sessions taken, so that closing them ends them, not their collection.)"""
    peers, model = swarm
    held: list[Any] = []
    take = SessionPool.take

    def take_and_hold(pool: SessionPool, *args: Any) -> Any:
        found = take(pool, *args)
        held.append(found)
        return found

    monkeypatch.setattr(SessionPool, "take", take_and_hold)
    options = {"model": MODEL, "temperature": 0, "max_tokens": 3}

    def gauge(client: openai.OpenAI, name: str) -> float:
        return scrape(str(client.base_url), None)[1][name][(("model", MODEL),)]

    def ask(client: openai.OpenAI, prompt: list[int], max_tokens: int) -> None:
        with suppress(openai.APIError):  # the server stops under it
            client.completions.create(prompt=prompt, **options | {"max_tokens": max_tokens})

    peers.fault(peers.peers[0], "delay", 0.03)
    try:
        # the threads' nursery outside the server's: they end once it stops
        async with trio.open_nursery() as nursery, api(tiny, model, max_concurrent=1) as client:
            await call(client.completions.create, prompt=[1, 2, 3], **options)
            nursery.start_soon(trio.to_thread.run_sync, ask, client, [9, 9, 9], 60)
            slow = await trio.to_thread.run_sync(
                lambda: _until(lambda: gauge(client, "swarm_api_generations") == 1)
            )
            nursery.start_soon(trio.to_thread.run_sync, ask, client, [1, 2, 3, 4], 3)
            taken = await trio.to_thread.run_sync(
                lambda: _until(lambda: gauge(client, "swarm_api_idle_sessions") == 0)
            )
            waiting = await trio.to_thread.run_sync(gauge, client, "swarm_api_generations")
    finally:
        peers.fault(peers.peers[0], "delay", 0.0)
    closed = await trio.to_thread.run_sync(
        lambda: all(_until(lambda p=p: peers.sessions(p) == 0) for p in peers.peers)
    )
    assert slow and taken and waiting == 1 and closed


async def test_a_waiting_session_makes_room_for_a_new_conversation(
    tiny: Path, one_session_swarm: Any
) -> None:
    """The peer has room for one session, which waits for its conversation's next turn: an
    unrelated request closes it rather than fail, and gets transformers' answer."""
    peers, model = one_session_swarm
    options = {"model": MODEL, "max_tokens": 4, "temperature": 0}
    async with api(tiny, model, headroom=50) as client:  # sessions of 3 + 4 + 50 tokens
        await call(client.completions.create, prompt=[1, 2, 3], **options)
        waiting = await trio.to_thread.run_sync(peers.sessions, peers.peers[0])
        other = await call(client.completions.create, prompt=[7, 8, 9], **options)
        after = await trio.to_thread.run_sync(peers.sessions, peers.peers[0])
    expected = local(tiny, torch.tensor([[7, 8, 9]]), max_new_tokens=4, do_sample=False)
    assert other.choices[0].text == expected
    assert waiting == after == 1


async def test_a_fork_the_peers_have_no_room_for_makes_room_as_a_new_session_does(
    tiny: Path, one_session_swarm: Any
) -> None:
    """The peer has room for one session: a conversation that shares 20 tokens with the
    waiting one cannot fork it, so that one closes, and the request gets transformers'
    answer in a new session."""
    peers, model = one_session_swarm
    shared = [1, *range(40, 59)]
    options = {"model": MODEL, "max_tokens": 4, "temperature": 0}
    async with api(tiny, model, headroom=50) as client:  # sessions of 22 + 4 + 50 tokens
        await call(client.completions.create, prompt=[*shared, 70, 71], **options)
        other = await call(client.completions.create, prompt=[*shared, 80, 81], **options)
        after = await trio.to_thread.run_sync(peers.sessions, peers.peers[0])
    expected = local(tiny, torch.tensor([[*shared, 80, 81]]), max_new_tokens=4, do_sample=False)
    assert other.choices[0].text == expected
    assert other.usage.prompt_tokens_details.cached_tokens == 0
    assert after == 1


async def test_a_fork_makes_room_by_closing_another_waiting_session(
    tiny: Path, two_session_swarm: Any
) -> None:
    """The peer has room for two sessions, both waiting: a conversation that shares 20 tokens
    with the newer one closes the older, not the one it forks, and gets transformers' answer
    with the 20 tokens cached."""
    peers, model = two_session_swarm
    shared = [1, *range(40, 59)]
    options = {"model": MODEL, "max_tokens": 4, "temperature": 0}
    async with api(tiny, model, headroom=50) as client:  # sessions of up to 26 + 50 tokens
        await call(client.completions.create, prompt=[7, 8, 9], **options)
        await call(client.completions.create, prompt=[*shared, 70, 71], **options)
        other = await call(client.completions.create, prompt=[*shared, 80, 81], **options)
        after = await trio.to_thread.run_sync(peers.sessions, peers.peers[0])
    expected = local(tiny, torch.tensor([[*shared, 80, 81]]), max_new_tokens=4, do_sample=False)
    assert other.choices[0].text == expected
    assert other.usage.prompt_tokens_details.cached_tokens == len(shared)
    assert after == 2


async def test_a_request_waits_for_room_an_answer_in_flight_frees(
    tiny: Path, one_session_swarm: Any
) -> None:
    """Two requests at once, on a peer with room for one session (and none kept waiting):
    the second waits for the first to end instead of failing; both get transformers' answer.
    Each step takes 20 ms more, so that the first is still running when the second asks."""
    peers, model = one_session_swarm
    options = {"model": MODEL, "max_tokens": 12, "temperature": 0}
    answers: dict[int, str] = {}
    peers.fault(peers.peers[0], "delay", 0.02)
    try:
        async with api(tiny, model, headroom=50, idle_sessions=0) as client:  # 65 tokens each

            async def ask(first: int) -> None:
                answer = await call(client.completions.create, prompt=[first, 8, 9], **options)
                answers[first] = answer.choices[0].text

            async with trio.open_nursery() as nursery:
                for first in (4, 7):
                    nursery.start_soon(ask, first)
    finally:
        peers.fault(peers.peers[0], "delay", 0.0)
    for first, text in answers.items():
        ids = torch.tensor([[first, 8, 9]])
        assert text == local(tiny, ids, max_new_tokens=12, do_sample=False)
    assert sorted(answers) == [4, 7]


async def test_waiting_sessions_close_after_a_while(tiny: Path, swarm: Any) -> None:
    peers, model = swarm
    async with api(tiny, model, idle_seconds=0.3) as client:
        await call(client.completions.create, model=MODEL, prompt=PROMPT, max_tokens=2)
        closed = await trio.to_thread.run_sync(
            lambda: all(_until(lambda p=p: peers.sessions(p) == 0) for p in peers.peers)
        )
    assert closed


def test_the_pool_hands_out_the_history_a_prompt_shares_most_of() -> None:
    """A session fits a prompt that agrees with all of the session's own prompt and goes on
    after it, and is handed out with the tokens they share: the session rewinds to them.
    The longest share wins."""
    now = [0.0]
    pool = SessionPool(max_idle=3, idle_seconds=10.0, clock=lambda: now[0])
    pool.put("short", [1, 7], max_length=100, asked=1)
    pool.put("long", [1, 2, 3, 4, 5, 6], max_length=12, asked=3)  # prompt 1 2 3, answer 4 5 6
    for tokens, needed, expected in [
        ([1, 2, 3, 4, 5, 6, 7], 12, ("long", 6)),  # the next turn: all of it, and more
        ([1, 2, 3, 4, 9, 9], 12, ("long", 4)),  # the answer rendered otherwise, or cut
        ([1, 2, 3, 9], 12, ("long", 3)),  # its prompt, and more
        ([1, 2, 3], 12, ("short", 1)),  # "long"'s prompt again: not "long"
        ([1, 7, 3, 4], 12, ("short", 2)),
        ([1, 2, 3, 4, 5, 6, 7], 13, ("short", 1)),  # "long" has no room for 13 tokens
        ([1, 2, 9, 9], 12, ("short", 1)),  # parts from "long" within its prompt
        ([1, 7, 5], 12, ("short", 2)),
        ([9, 1, 2], 3, None),  # no history it goes on from
    ]:
        taken = pool.take(tokens, needed)
        got = None if taken is None else (taken.session, len(taken.tokens))
        assert got == expected, tokens
        if taken is not None:
            assert list(taken.tokens) == tokens[: len(taken.tokens)]
            full = [1, 7] if taken.session == "short" else [1, 2, 3, 4, 5, 6]
            pool.put(taken.session, full, taken.max_length, taken.asked)
    assert len(pool) == 2
    now[0] = 5.0
    assert pool.put("a", [5], max_length=10, asked=1) == []
    assert [idle.session for idle in pool.put("b", [6], 10, 1)] == ["long"]  # the oldest
    now[0] = 12.0
    assert [idle.session for idle in pool.expired()] == ["short"]
    now[0] = 15.0
    assert [idle.session for idle in pool.expired()] == ["a", "b"] and len(pool) == 0
    pool.put("c", [7], 10, 1)
    assert [idle.session for idle in pool.drain()] == ["c"] and len(pool) == 0


def test_the_pool_lends_the_session_a_prompt_shares_most_of_to_fork() -> None:
    """At least `MIN_FORK_TOKENS` shared, and never by a session holding all of the prompt;
    the lent session waits no more until put again."""
    pool = SessionPool(max_idle=3, idle_seconds=10.0, clock=lambda: 0.0)
    system = list(range(100, 100 + MIN_FORK_TOKENS))
    pool.put("a", [*system, 1, 2, 3], max_length=100, asked=len(system) + 2)
    pool.put("b", [*system, 1, 5], max_length=100, asked=len(system) + 1)
    for tokens, expected in [
        ([*system, 1, 2, 9], ("a", len(system) + 2)),  # the longest share
        ([*system, 1, 5, 6], ("b", len(system) + 2)),  # all "b" holds, and more
        ([*system, 1, 5], ("a", len(system) + 1)),  # "b" holds all of it: computed afresh
        ([*system[:-1], 7, 8], None),  # too little shared
        ([*system], None),  # all of it in both: afresh
    ]:
        lent = pool.lend(tokens)
        got = None if lent is None else (lent[0].session, lent[1])
        assert got == expected, tokens
        if lent is not None:
            assert len(pool) == 1
            pool.put(lent[0].session, lent[0].tokens, lent[0].max_length, lent[0].asked)
    assert len(pool) == 2


def test_the_text_holds_back_what_may_start_a_stop_sequence(tiny: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny)
    tokens = tokenizer("The capital of France is Paris.")["input_ids"]
    text = CompletionText(tokenizer, ("Paris!", "of Fr"))
    pieces = [text.add(token) for token in tokens]
    assert text.stopped and text.text == "The capital "
    assert "".join(pieces) + text.finish() == "The capital "
    assert text.add(tokens[0]) == ""  # nothing after a stop
    plain = CompletionText(tokenizer, ("Paris!",))
    pieces = [plain.add(token) for token in tokens]
    assert not plain.stopped and plain.finish() == ""
    assert pieces[-2:] == ["", "Paris."]  # "Paris" waits: "Paris!" would stop the text
    assert "".join(pieces) == "The capital of France is Paris."


def test_the_tokens_texts_add_up_to_the_text(tiny: Path) -> None:
    """Characters split over several tokens show whole in the token that completes them; a
    stop sequence's cut leaves out the tokens after it; special tokens have no entry."""
    tokenizer = AutoTokenizer.from_pretrained(tiny)
    text = "Café ☕ naïve 日本語, then   spaces."
    tokens = [*tokenizer(text, add_special_tokens=False)["input_ids"], tokenizer.eos_token_id]
    records = [TokenLogprob(token, -1.0) for token in tokens]
    scored = scored_tokens(tokenizer, tokens, records)
    assert "".join(token.text for token in scored) == text
    assert len(scored) == len(tokens) - 1 and any(token.text == "" for token in scored)
    cut = scored_tokens(tokenizer, tokens, records, length=len("Café ☕"))
    assert "".join(token.text for token in cut).startswith("Café ☕")
    assert len("".join(token.text for token in cut[:-1])) < len("Café ☕")


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"prompt": "x"}, "model is required"),
        ({"model": "", "prompt": "x"}, "model is required"),
        ({"model": "m", "prompt": "x", "seed": 2**64}, "seed must be a 64-bit integer"),
        ({"model": "m"}, "prompt must be"),
        ({"model": "m", "prompt": ["a", 5]}, "prompt must be"),
        ({"model": "m", "prompt": ["a", ""]}, "prompt must be"),
        ({"model": "m", "prompt": [[1], []]}, "prompt must be"),
        ({"model": "m", "prompt": []}, "prompt must be"),
        ({"model": "m", "prompt": ["a"] * 33}, "at most 32 prompts"),
        ({"model": "m", "prompt": ["a"] * 5, "n": 8}, "n or best_of times the prompts may"),
        ({"model": "m", "prompt": "x", "temperature": 3}, "temperature must be within"),
        ({"model": "m", "prompt": "x", "top_p": 0}, "top_p must be above 0"),
        ({"model": "m", "prompt": "x", "max_tokens": 0}, "max_tokens must be at least 1"),
        ({"model": "m", "prompt": "x", "echo": True, "max_tokens": -1}, "at least 0"),
        ({"model": "m", "prompt": "x", "max_tokens": True}, "max_tokens must be int"),
        ({"model": "m", "prompt": "x", "stop": ["a"] * 5}, "stop must be"),
        ({"model": "m", "prompt": "x", "logprobs": 6}, "logprobs must be within 0..5"),
        ({"model": "m", "prompt": "x", "top_logprobs": 1}, "unrecognized request argument"),
        ({"model": "m", "prompt": "x", "presence_penalty": 2.5}, "presence_penalty must be within"),
        ({"model": "m", "prompt": "x", "best_of": 9}, "best_of must be within n..8"),
        ({"model": "m", "prompt": "x", "n": 3, "best_of": 2}, "best_of must be within n..8"),
        ({"model": "m", "prompt": "x", "best_of": 2, "stream": True}, "cannot be streamed"),
        ({"model": "m", "prompt": ["a"] * 5, "best_of": 8}, "n or best_of times the prompts"),
        ({"model": "m", "prompt": "x", "suffix": "y"}, "suffix='y' is not supported"),
        ({"model": "m", "prompt": "x", "logit_bias": {"a1": 1}}, "keys must be token ids"),
        ({"model": "m", "prompt": "x", "logit_bias": {"-1": 1}}, "keys must be token ids"),
        ({"model": "m", "prompt": "x", "logit_bias": {"1": 101}}, "within -100..100"),
        ({"model": "m", "prompt": "x", "logit_bias": {"1": None}}, "within -100..100"),
        ({"model": "m", "prompt": "x", "logit_bias": [1]}, "logit_bias must be dict"),
        (
            {"model": "m", "prompt": "x", "logit_bias": {str(i): 1 for i in range(301)}},
            "at most 300",
        ),
        ({"model": "m", "prompt": "x", "n": 9}, "n must be within 1..8"),
        ({"model": "m", "prompt": "x", "n": 0}, "n must be within 1..8"),
        ({"model": "m", "messages": []}, "unrecognized request argument: messages"),
    ],
)
def test_what_a_completion_request_may_not_say(body: dict[str, Any], message: str) -> None:
    with pytest.raises(ApiError, match=message) as info:
        read_request("completion", json.dumps(body).encode())
    assert info.value.status == 400 and info.value.to_json()["error"]["message"]


@pytest.mark.parametrize(
    ("messages", "message"),
    [
        ([], "messages must be a non-empty list"),
        ([{"role": "robot", "content": "x"}], "must have a role"),
        ([{"role": "user", "content": [{"type": "image_url"}]}], "must be text"),
    ],
)
def test_what_a_chat_request_may_not_say(messages: Any, message: str) -> None:
    body = {"model": "m", "messages": messages}
    with pytest.raises(ApiError, match=message):
        read_request("chat", json.dumps(body).encode())
    chat = {"model": "m", "messages": [{"role": "user", "content": "x"}]}
    for extra, refusal in [
        ({"top_logprobs": 2}, "top_logprobs needs logprobs: true"),
        ({"logprobs": True, "top_logprobs": 21}, "top_logprobs must be within 0..20"),
        ({"logprobs": 1}, "logprobs must be bool"),
        ({"echo": True}, "unrecognized request argument: echo"),
    ]:
        with pytest.raises(ApiError, match=refusal):
            read_request("chat", json.dumps(chat | extra).encode())
    parts = {"model": "m", "messages": [{"role": "user", "content": [{"type": "text",
             "text": "a"}, {"type": "text", "text": "b"}]}]}  # fmt: skip
    assert read_request("chat", json.dumps(parts).encode()).messages[0].content == "ab"


def test_the_swarm_api_command_serves_with_a_key_and_stops_on_sigterm(
    tiny: Path, swarm: Any, tmp_path: Path
) -> None:
    """`swarm api` as a process, joined to the swarm: it prints its base URL, answers as the
    in-process server does, and stops cleanly."""
    (tmp_path / "key").write_text("s3cret\n")
    args = ["api", str(tiny), "--initial-peers", swarm[0].bootstrap, "--port", "0",
            "--served-model-name", "served", "--api-key-file", str(tmp_path / "key")]  # fmt: skip
    process = SwarmProcess(args)
    try:
        base_url = process.wait_ready(timeout=120)
        client = openai.OpenAI(base_url=base_url, api_key="s3cret", max_retries=0, timeout=TIMEOUT)
        result = client.completions.create(
            model="served", prompt=PROMPT, max_tokens=12, temperature=0
        )
        expected = local(tiny, prompt_ids(tiny), max_new_tokens=12, do_sample=False)
        assert result.choices[0].text == expected
        with pytest.raises(openai.AuthenticationError):
            client.with_options(api_key="guess").models.list()
    finally:
        code = process.stop()
    assert code == 0, process.stderr()


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=12,
)
FIELD_NAMES = st.sampled_from(
    ["model", "prompt", "messages", "max_tokens", "temperature", "top_p", "seed", "stop",
     "stream", "stream_options", "n", "best_of", "logprobs", "role", "content"]
)  # fmt: skip


@settings(max_examples=400, deadline=None)
@given(
    kind=st.sampled_from(["completion", "chat"]),
    body=st.dictionaries(FIELD_NAMES, JSON, max_size=6) | JSON,
    raw=st.binary(max_size=64),
)
def test_any_body_is_a_request_or_an_api_error(kind: str, body: Any, raw: bytes) -> None:
    """Remote input: whatever JSON (or bytes) comes, the answer is a request or a 400."""
    for data in (json.dumps(body).encode(), raw):
        try:
            request = read_request(kind, data)
        except ApiError as error:
            assert error.status == 400 and error.message
        else:
            assert request.kind == kind and request.model
            assert request.generate_options(request.max_tokens or 1)["max_new_tokens"] >= 1


def test_the_command_reads_its_key_from_a_file_or_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    base = ["api", "m", "--initial-peers", "127.0.0.1:1/x"]
    monkeypatch.setenv("SWARM_API_KEY", "from-env")
    assert api_key(build_parser().parse_args(base)) == "from-env"
    (tmp_path / "key").write_text("from-file\n")
    args = build_parser().parse_args([*base, "--api-key-file", str(tmp_path / "key")])
    assert api_key(args) == "from-file"
    (tmp_path / "key").write_text("\n")
    with pytest.raises(SwarmError, match="empty"):
        api_key(args)
    with pytest.raises(SwarmError, match="at least 1"):
        ApiConfig("m", max_concurrent=0)
