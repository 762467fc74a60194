"""The commands people run, as processes on loopback: `swarm dht`, `swarm peer`, `swarm
generate`, `swarm demo`; peers killed by pid; the real default model (SmolLM2-135M-Instruct),
also in `swarm chat` and through `swarm api`.

References: the local transformers model's `generate()` on the same checkpoint.
"""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import suppress
from pathlib import Path

import psutil
import pytest
import torch
import trio
from transformers import AutoModelForCausalLM, AutoTokenizer

from swarm import DistributedModelForCausalLM
from swarm.cli import main
from swarm.default_model import DEFAULT_MODEL_NAME, prepare_default_model
from swarm.generation import prompt_ids
from swarm.local_swarm import LocalSwarm
from tests.support.processes import ROOT
from tests.support.thread_swarm import ThreadSwarm
from tests.support.tiny_model import write_tiny_model

from .test_api import api, call
from .test_generate_cli import _local_chat

pytestmark = pytest.mark.slow

QUESTION = "What is the capital of France?"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_model(tmp_path_factory.mktemp("e2e") / "tiny-e2e", seed=5)


@pytest.fixture(scope="module")
def smollm2() -> Path:
    return prepare_default_model()


def _local_greedy(checkpoint: Path, input_ids: torch.Tensor, new_tokens: int) -> list[int]:
    model = AutoModelForCausalLM.from_pretrained(checkpoint)
    output = model.generate(
        input_ids,
        attention_mask=torch.ones_like(input_ids),
        max_new_tokens=new_tokens,
        do_sample=False,
    )
    return [int(t) for t in output[0, input_ids.shape[1] :]]


def _swarm_command(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "swarm.cli", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_swarm_generate_streams_what_local_generate_gives(tiny: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny)
    input_ids = prompt_ids(tokenizer, QUESTION, chat=True)
    expected = _local_greedy(tiny, input_ids, 30)
    with LocalSwarm(tiny, [(0, 2), (2, 4)], monitor=False) as swarm:
        result = _swarm_command(
            "generate", str(tiny), QUESTION, "--chat", "--max-new-tokens", "30",
            "--initial-peers", swarm.bootstrap,
        )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout == tokenizer.decode(expected, skip_special_tokens=True) + "\n"


@pytest.fixture
def four_peers(tiny: Path) -> Iterator[LocalSwarm]:
    """Every block served at least twice, so that two peers can die one after the other."""
    with LocalSwarm(tiny, [(0, 4), (0, 4), (0, 2), (2, 4)], monitor=False) as swarm:
        yield swarm


def test_killing_the_peer_in_use_twice_changes_no_token(tiny: Path, four_peers: LocalSwarm) -> None:
    new_tokens = 128
    expected = _local_greedy(tiny, torch.tensor([[1, 30, 31, 32]]), new_tokens)
    killed: list[str] = []
    tokens: list[int] = []
    with (
        DistributedModelForCausalLM.from_pretrained(
            tiny, initial_peers=[four_peers.bootstrap]
        ) as model,
        model.inference_session(max_length=4 + new_tokens) as session,
    ):
        prompt = torch.tensor([[1, 30, 31, 32]])
        for token in session.stream(prompt, max_new_tokens=new_tokens, do_sample=False):
            tokens.append(token)
            if len(tokens) in (20, 60):  # the peer in use, then its replacement
                victim = four_peers.peer(session.route[-1].peer)
                os.kill(victim.process.pid, signal.SIGKILL)
                killed.append(victim.peer_id)
        failed = [failover.peer for failover in session.failovers]
    assert tokens == expected
    assert failed == killed and len(set(killed)) == 2


def test_default_model_through_the_swarm_equals_local(smollm2: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(smollm2)
    input_ids = prompt_ids(tokenizer, QUESTION, chat=True)
    expected = _local_greedy(smollm2, input_ids, 16)
    local = AutoModelForCausalLM.from_pretrained(smollm2)
    with torch.no_grad():
        local_loss = local(input_ids, labels=input_ids).loss
    texts = [QUESTION, "Name three colours.", "2 + 2 ="]  # a batch, padded on the left
    batch = dict(AutoTokenizer.from_pretrained(smollm2, padding_side="left")(
        texts, padding=True, return_tensors="pt"
    ))  # fmt: skip
    expected_batch = local.generate(**batch, max_new_tokens=12, do_sample=False)
    beams = {"max_new_tokens": 12, "do_sample": False, "num_beams": 3}
    expected_beams = local.generate(input_ids, attention_mask=torch.ones_like(input_ids), **beams)
    embeddings = local.get_input_embeddings()(input_ids).detach().requires_grad_(True)
    local.requires_grad_(False)(inputs_embeds=embeddings, labels=input_ids).loss.backward()
    with (
        ThreadSwarm(smollm2, [(0, 12), (12, 30)]) as swarm,
        DistributedModelForCausalLM.from_pretrained(  # by its name: no path, no hub
            DEFAULT_MODEL_NAME, initial_peers=[swarm.bootstrap]
        ) as model,
    ):
        output = model.generate(input_ids, max_new_tokens=16, do_sample=False)
        loss = model(input_ids, labels=input_ids).loss  # batch forward, stateless
        output_batch = model.generate(**batch, max_new_tokens=12, do_sample=False)
        output_beams = model.generate(input_ids, **beams)
        ours = model.get_input_embeddings()(input_ids).detach().requires_grad_(True)
        model(inputs_embeds=ours, labels=input_ids).loss.backward()  # back through the peers
    assert output[0, input_ids.shape[1] :].tolist() == expected
    torch.testing.assert_close(loss, local_loss, rtol=1e-5, atol=1e-5)
    assert "Paris" in tokenizer.decode(expected, skip_special_tokens=True)
    assert torch.equal(output_batch, expected_batch)
    assert torch.equal(output_beams, expected_beams)
    assert ours.grad is not None and embeddings.grad is not None
    torch.testing.assert_close(ours.grad, embeddings.grad, rtol=1e-4, atol=1e-7)


def test_a_chat_on_the_default_model_goes_on_in_one_session(
    smollm2: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Each turn sends only what the chat template adds: SmolLM2's answers encode back to
    the tokens it generated, so the session never starts again."""
    turns = ["What is the capital of France?", "And of Italy?", "Thanks!"]
    expected = _local_chat(smollm2, turns, new_tokens=16)
    monkeypatch.setattr(sys, "stdin", io.StringIO("\n".join(turns)))
    with ThreadSwarm(smollm2, [(0, 15), (15, 30)]) as swarm:
        status = main(["chat", str(smollm2), "--initial-peers", swarm.bootstrap,
                       "--max-new-tokens", "16"])  # fmt: skip
    assert status == 0
    out, err = capsys.readouterr()
    assert out == "".join(answer + "\n" for answer in expected)
    assert "Rome" in expected[1]
    assert "sending it all" not in err


@pytest.fixture
def smollm2_swarm(smollm2: Path) -> Iterator[tuple[ThreadSwarm, DistributedModelForCausalLM]]:
    """SmolLM2 through 2 in-process peers, and a client (started outside the test's loop)."""
    with (
        ThreadSwarm(smollm2, [(0, 15), (15, 30)]) as swarm,
        DistributedModelForCausalLM.from_pretrained(
            smollm2, initial_peers=[swarm.bootstrap]
        ) as model,
    ):
        yield swarm, model


async def test_openais_client_chats_with_the_default_model(
    smollm2: Path, smollm2_swarm: tuple[ThreadSwarm, DistributedModelForCausalLM]
) -> None:
    """`swarm api` on SmolLM2 through 2 peers: the answers transformers' greedy `generate()`
    gives on the chat template, whole (with log probabilities) and streamed; the second turn
    goes on in the session of the first (SmolLM2's answers render back to the tokens it
    generated); another conversation forks a waiting session (the template's system prompt
    and the question's first words are cached)."""
    swarm, model = smollm2_swarm
    turns = [QUESTION, "And of Italy?"]
    expected = _local_chat(smollm2, turns, new_tokens=16)
    spain = "What is the capital of Spain?"
    other = [{"role": "user", "content": spain}]
    options = {"model": "smol", "max_tokens": 16, "temperature": 0}
    first = [{"role": "user", "content": QUESTION}]
    async with api(smollm2, model, "smol") as client:
        whole = await call(client.chat.completions.create, messages=first, **options,
                           logprobs=True, top_logprobs=2)  # fmt: skip
        chunks = await trio.to_thread.run_sync(
            lambda: list(client.chat.completions.create(messages=first, **options, stream=True))
        )
        answer = whole.choices[0].message.content
        second = [*first, {"role": "assistant", "content": answer},
                  {"role": "user", "content": turns[1]}]  # fmt: skip
        again = await call(client.chat.completions.create, messages=second, **options)
        sessions = await trio.to_thread.run_sync(lambda: [swarm.sessions(p) for p in swarm.peers])
        forked = await call(client.chat.completions.create, messages=other, **options)
    assert answer == expected[0] and "Paris" in answer
    content = whole.choices[0].logprobs.content  # greedy: each token the likeliest there
    assert "".join(entry.token for entry in content) == answer
    assert all(entry.top_logprobs[0].token == entry.token for entry in content)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == expected[0]
    assert again.choices[0].message.content == expected[1] and "Rome" in expected[1]
    assert sessions == [2, 2]  # the first request's session went on; the streamed one waits
    assert forked.choices[0].message.content == _local_chat(smollm2, [spain], new_tokens=16)[0]
    assert forked.usage.prompt_tokens_details.cached_tokens >= 16


def test_the_demo_answers_on_the_default_model_through_a_failure() -> None:
    result = _swarm_command("demo", "--max-new-tokens", "24", timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    answer = result.stdout.split(f"> {QUESTION}", 1)[1].split("summary:", 1)[0]
    assert "Paris" in answer
    assert "killed" in answer and "failover:" in result.stdout


def test_the_demo_on_a_tiny_model_and_ctrl_c_stops_everything(tiny: Path) -> None:
    demo = subprocess.Popen(
        [sys.executable, "-m", "swarm.cli", "demo", "--model", str(tiny), "--keep-running"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert demo.stdout is not None
        deadline = time.monotonic() + 240
        printed = []
        for line in demo.stdout:  # the demo prints as it goes; it ends its part with this
            printed.append(line)
            if "keeps running" in line or time.monotonic() > deadline:
                break
        report = "".join(printed)
        for expected in ("killed]", "summary:", "chain before:", "chain after:", "failover:"):
            assert expected in report, report
        children = psutil.Process(demo.pid).children(recursive=True)
        assert len(children) >= 4  # the DHT node, the peers left, the monitor
    finally:
        demo.send_signal(signal.SIGINT)
        try:
            demo.wait(60)
        except subprocess.TimeoutExpired:  # leave no swarm running under the tests after
            stuck = psutil.Process(demo.pid)
            for process in [*stuck.children(recursive=True), stuck]:
                with suppress(psutil.NoSuchProcess):
                    process.kill()
            raise
    _, alive = psutil.wait_procs(children, timeout=30)
    assert alive == []
