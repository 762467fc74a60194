"""`swarm generate` in this process against a thread swarm: stdout holds only the continuation,
written as it streams, equal to `tokenizer.decode(new_tokens, skip_special_tokens=True)` of
the local transformers model's `generate()` (greedy, seeded sampling, the chat template)."""

from __future__ import annotations

import io
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from swarm.cli import main
from swarm.commands.chat import shared_tokens
from swarm.generation import prompt_ids
from tests.support.thread_swarm import ThreadSwarm
from tests.support.tiny_model import write_tiny_model

PROMPT = "The capital of France is"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_model(tmp_path_factory.mktemp("cli") / "tiny-cli", "qwen2", seed=7)


@pytest.fixture(scope="module")
def swarm(tiny: Path) -> Iterator[ThreadSwarm]:
    with ThreadSwarm(tiny, [(0, 2), (2, 4)]) as swarm:
        yield swarm


class Recorder:
    """Stands in for sys.stdout: keeps every write, to see the text arrive piece by piece."""

    def __init__(self) -> None:
        self.writes: list[str] = []

    def write(self, text: str) -> int:
        self.writes.append(text)
        return len(text)

    def flush(self) -> None:
        pass


def _expected(tiny: Path, *, chat: bool, new_tokens: int, seed: int | None, **kw: Any) -> str:
    tokenizer = AutoTokenizer.from_pretrained(tiny)
    ids = prompt_ids(tokenizer, PROMPT, chat=chat)
    model = AutoModelForCausalLM.from_pretrained(tiny)
    if seed is not None:
        torch.manual_seed(seed)
    output = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                            tokenizer=tokenizer, **kw)  # fmt: skip
    return str(tokenizer.decode(output[0, ids.shape[1] :], skip_special_tokens=True))


def _generate(
    monkeypatch: pytest.MonkeyPatch, tiny: Path, swarm: ThreadSwarm, *flags: str
) -> Recorder:
    """`swarm generate` of PROMPT with `flags`, in this process: what it wrote to stdout."""
    stdout = Recorder()
    monkeypatch.setattr(sys, "stdout", stdout)
    assert main(["generate", str(tiny), PROMPT, "--initial-peers", swarm.bootstrap, *flags]) == 0
    return stdout


@pytest.mark.parametrize(
    ("flags", "reference"),
    [
        ([], {"do_sample": False}),
        (["--chat"], {"do_sample": False}),
        (["--repetition-penalty", "1.3"], {"do_sample": False, "repetition_penalty": 1.3}),
        (
            ["--do-sample", "--temperature", "0.8", "--top-k", "30", "--top-p", "0.9",
             "--seed", "5"],
            {"do_sample": True, "temperature": 0.8, "top_k": 30, "top_p": 0.9, "seed": 5},
        ),
        (["--no-repeat-ngram-size", "2"], {"do_sample": False, "no_repeat_ngram_size": 2}),
        (["--do-sample", "--temperature", "0.2", "--min-p", "0.5", "--seed", "3"],
         {"do_sample": True, "temperature": 0.2, "min_p": 0.5, "seed": 3}),
    ],
    ids=["greedy", "chat", "repetition-penalty", "sampling", "no-repeat-ngram", "min-p"],
)  # fmt: skip
def test_stdout_is_the_continuation_as_it_streams(
    tiny: Path,
    swarm: ThreadSwarm,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    flags: list[str],
    reference: dict[str, Any],
) -> None:
    options = dict(reference)
    expected = _expected(tiny, chat="--chat" in flags, new_tokens=24,
                         seed=options.pop("seed", None), **options)  # fmt: skip
    stdout = _generate(monkeypatch, tiny, swarm, "--max-new-tokens", "24", *flags)
    assert "".join(stdout.writes) == expected + "\n"
    assert len([w for w in stdout.writes if w]) > 2  # streamed, not printed at the end
    err = capsys.readouterr().err
    assert expected not in err  # logs only on stderr, and a summary at the end:
    assert re.search(
        r"\d+ new tokens in [\d.]+ s through \w+ \(blocks 0-1\), \w+ \(blocks 2-3\);", err
    )
    assert "failovers: none" in err


def test_stop_and_max_time_end_the_text_where_transformers_ends_it(
    tiny: Path, swarm: ThreadSwarm, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`--stop` (twice: either ends it) and `--max-time` (so short that the first token is
    the last) against `generate()`'s `stop_strings` and `max_time`."""
    whole = _expected(tiny, chat=False, new_tokens=24, seed=None, do_sample=False)
    stops = [whole[12:15], "never written"]
    cases = [
        (["--stop", stops[1], "--stop", stops[0]], {"stop_strings": stops}),
        (["--max-time", "1e-9"], {"max_time": 1e-9}),
    ]
    for flags, reference in cases:
        expected = _expected(tiny, chat=False, new_tokens=24, seed=None, do_sample=False,
                             **reference)  # fmt: skip
        assert len(expected) < len(whole)
        stdout = _generate(monkeypatch, tiny, swarm, "--max-new-tokens", "24", *flags)
        assert "".join(stdout.writes) == expected + "\n"


def test_beam_search_prints_the_best_beam(
    tiny: Path, swarm: ThreadSwarm, monkeypatch: pytest.MonkeyPatch
) -> None:
    expected = _expected(tiny, chat=False, new_tokens=16, seed=None, num_beams=3, do_sample=False)
    stdout = _generate(monkeypatch, tiny, swarm, "--max-new-tokens", "16", "--num-beams", "3")
    assert "".join(stdout.writes) == expected + "\n"


@pytest.mark.parametrize("drafting", ["--assistant", "--prompt-lookup"])
def test_drafts_leave_the_greedy_text(
    tiny: Path, swarm: ThreadSwarm, monkeypatch: pytest.MonkeyPatch, drafting: str
) -> None:
    """An assistant (the model itself) or prompt lookup drafts; the text is the greedy one."""
    expected = _expected(tiny, chat=False, new_tokens=16, seed=None, do_sample=False)
    value = str(tiny) if drafting == "--assistant" else "5"
    stdout = _generate(monkeypatch, tiny, swarm, "--max-new-tokens", "16", drafting, value)
    assert "".join(stdout.writes) == expected + "\n"


def test_the_prompt_may_come_last_after_the_peers(
    tiny: Path, swarm: ThreadSwarm, capsys: pytest.CaptureFixture[str]
) -> None:
    expected = _expected(tiny, chat=False, new_tokens=8, seed=None, do_sample=False)
    command = ["generate", str(tiny), "--max-new-tokens", "8", "--initial-peers", swarm.bootstrap]
    assert main([*command, PROMPT]) == 0
    assert capsys.readouterr().out == expected + "\n"
    with pytest.raises(SystemExit):
        main(command)  # no prompt at all
    assert "generate needs a prompt" in capsys.readouterr().err


def test_a_bad_peer_address_is_a_clean_error(
    tiny: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status = main(["generate", str(tiny), PROMPT, "--initial-peers", "not-an-address"])
    assert status != 0
    assert capsys.readouterr().out == ""


def test_the_command_offers_the_dtypes_peers_support() -> None:
    from peer.span import SUPPORTED_DTYPES
    from swarm.cli import DTYPES

    assert list(SUPPORTED_DTYPES) == DTYPES


def _local_chat(tiny: Path, turns: list[str], new_tokens: int) -> list[str]:
    """Each answer of transformers' greedy `generate()` to the whole conversation so far."""
    tokenizer = AutoTokenizer.from_pretrained(tiny)
    model = AutoModelForCausalLM.from_pretrained(tiny)
    messages: list[dict[str, str]] = []
    answers = []
    for turn in turns:
        messages.append({"role": "user", "content": turn})
        ids = tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
        )["input_ids"]
        output = model.generate(ids, attention_mask=torch.ones_like(ids),
                                max_new_tokens=new_tokens, do_sample=False)  # fmt: skip
        answer = str(tokenizer.decode(output[0, ids.shape[1] :], skip_special_tokens=True))
        answers.append(answer)
        messages.append({"role": "assistant", "content": answer})
    return answers


def test_chat_answers_each_turn_as_transformers_would(
    tiny: Path,
    swarm: ThreadSwarm,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Random weights answer with tokens whose text rarely encodes back to them, so here the
    session mostly rewinds into the last answer and goes on from there (SmolLM2's goes on
    from all of it: see tests/swarm/test_end_to_end.py): the answers are transformers' either
    way, all in one session."""
    turns = ["Hello there", "And after that?", "Thanks"]
    expected = _local_chat(tiny, turns, new_tokens=12)
    stdout = Recorder()
    monkeypatch.setattr(sys, "stdout", stdout)
    monkeypatch.setattr(sys, "stdin", io.StringIO("\n".join([*turns, "/exit", "ignored"])))
    opened = [swarm.status(peer).activity.sessions for peer in swarm.peers]
    status = main(["chat", str(tiny), "--initial-peers", swarm.bootstrap,
                   "--max-new-tokens", "12", "--max-length", "256"])  # fmt: skip
    assert status == 0
    assert "".join(stdout.writes) == "".join(answer + "\n" for answer in expected)
    assert [swarm.status(peer).activity.sessions for peer in swarm.peers] == [
        count + 1 for count in opened
    ]
    assert "> " in capsys.readouterr().err  # the prompt marker is not in stdout


def test_a_turn_goes_on_from_what_the_session_and_the_template_share() -> None:
    held = torch.tensor([[1, 2, 3]])
    assert shared_tokens(None, held) == 0
    assert shared_tokens(held, torch.tensor([[1, 2, 3, 4, 5]])) == 3  # extends them
    assert shared_tokens(held, torch.tensor([[1, 2, 9, 4, 5]])) == 2  # rendered otherwise
    assert shared_tokens(held, torch.tensor([[1, 2, 3]])) == 2  # its last token goes through
    assert shared_tokens(held, torch.tensor([[7, 2, 3, 4]])) == 0


def test_chat_resets_and_refuses_a_conversation_over_its_length(
    tiny: Path,
    swarm: ThreadSwarm,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    expected = _local_chat(tiny, ["Hello there"], new_tokens=8)
    stdout = Recorder()
    monkeypatch.setattr(sys, "stdout", stdout)
    lines = ["Something first", "/reset", "Hello there", "word " * 80]
    monkeypatch.setattr(sys, "stdin", io.StringIO("\n".join(lines)))
    before = [swarm.status(peer).activity.sessions for peer in swarm.peers]
    status = main(["chat", str(tiny), "--initial-peers", swarm.bootstrap,
                   "--max-new-tokens", "8", "--max-length", "64"])  # fmt: skip
    assert status == 0
    after = [swarm.status(peer).activity.sessions for peer in swarm.peers]
    assert [a - b for a, b in zip(after, before, strict=True)] == [1] * len(swarm.peers)
    assert "".join(stdout.writes).endswith(expected[0] + "\n")  # as if the first was not said
    assert "would pass --max-length 64" in capsys.readouterr().err
