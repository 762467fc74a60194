"""Ctrl-C while generating: the remote sessions are closed by the client, nothing re-routes.

Ctrl-C is a real SIGINT sent to the main thread (`signal.pthread_kill`) while it waits for a
step that cannot finish (the peer is stalled by its fault relay), or a KeyboardInterrupt
raised between tokens. The peers' own count of sessions (`span.info`) must fall to zero
while the model object stays open (its connections alive), so it is the client that closed
them, not a dropped connection. The reference is the local transformers `generate()`.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from swarm import DistributedModelForCausalLM
from tests.support.processes import ROOT
from tests.support.thread_swarm import ThreadSwarm
from tests.support.tiny_model import write_tiny_model

PROMPT = torch.tensor([[1, 40, 41, 42, 43]])


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_model(tmp_path_factory.mktemp("interrupt") / "tiny-interrupt", seed=4)


@pytest.fixture
def swarm_and_model(tiny: Path) -> Iterator[tuple[ThreadSwarm, DistributedModelForCausalLM]]:
    with (
        ThreadSwarm(tiny, [(0, 2), (2, 4), (2, 4)]) as swarm,
        DistributedModelForCausalLM.from_pretrained(tiny, initial_peers=[swarm.bootstrap]) as m,
    ):
        yield swarm, m


def _local(checkpoint: Path, new_tokens: int) -> list[int]:
    model = AutoModelForCausalLM.from_pretrained(checkpoint)
    output = model.generate(
        PROMPT, attention_mask=torch.ones_like(PROMPT), max_new_tokens=new_tokens, do_sample=False
    )
    return [int(t) for t in output[0, PROMPT.shape[1] :]]


def _until(condition: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)  # polling with a deadline
    return condition()


def _ctrl_c_soon(delay: float) -> threading.Timer:
    """SIGINT to the main thread, as a terminal's Ctrl-C would deliver it."""
    main = threading.main_thread().ident
    assert main is not None
    timer = threading.Timer(delay, signal.pthread_kill, (main, signal.SIGINT))
    timer.start()
    return timer


def test_ctrl_c_during_a_step_closes_every_session(
    tiny: Path, swarm_and_model: tuple[ThreadSwarm, DistributedModelForCausalLM]
) -> None:
    swarm, model = swarm_and_model
    stalled = None
    with pytest.raises(KeyboardInterrupt), model.inference_session(max_length=64) as session:
        for index, _ in enumerate(session.stream(PROMPT, max_new_tokens=30)):
            in_use = {hop.peer for hop in session.route}
            assert all(swarm.sessions(p) == (p.peer in in_use) for p in swarm.peers)
            if index == 5:  # the next step hangs at the last hop until Ctrl-C comes
                stalled = swarm.peer(session.route[-1].peer)
                swarm.fault(stalled, "stall")
                timer = _ctrl_c_soon(0.3)
    timer.join()
    assert stalled is not None
    swarm.fault(stalled, "resume")
    assert session.failovers == []  # the interrupted step was not taken for a failure
    assert all(_until(lambda p=p: swarm.sessions(p) == 0) for p in swarm.peers)
    # the model is still usable, and right
    output = model.generate(PROMPT, max_new_tokens=12, do_sample=False)
    assert output[0, PROMPT.shape[1] :].tolist() == _local(tiny, 12)


def test_ctrl_c_during_generate_without_a_streamer_closes_every_session(
    tiny: Path, swarm_and_model: tuple[ThreadSwarm, DistributedModelForCausalLM]
) -> None:
    """`generate()` without a streamer runs its whole loop in the event loop's thread: a long
    generation whose last hop stalls part-way is interrupted there."""
    swarm, model = swarm_and_model
    last_hop = [p for p in swarm.peers if p.start == 2]

    def stall() -> None:
        for peer in last_hop:
            swarm.fault(peer, "stall")

    stalling = threading.Timer(0.3, stall)
    stalling.start()
    timer = _ctrl_c_soon(0.8)
    with pytest.raises(KeyboardInterrupt):
        model.generate(PROMPT, max_new_tokens=400, do_sample=False)
    stalling.join()
    timer.join()
    for peer in last_hop:
        swarm.fault(peer, "resume")
    assert all(_until(lambda p=p: swarm.sessions(p) == 0) for p in swarm.peers)
    output = model.generate(PROMPT, max_new_tokens=12, do_sample=False)
    assert output[0, PROMPT.shape[1] :].tolist() == _local(tiny, 12)


def test_ctrl_c_while_the_caller_holds_a_token_closes_every_session(
    swarm_and_model: tuple[ThreadSwarm, DistributedModelForCausalLM],
) -> None:
    swarm, model = swarm_and_model
    with pytest.raises(KeyboardInterrupt), model.inference_session(max_length=64) as session:
        for index, _ in enumerate(session.stream(PROMPT, max_new_tokens=30)):
            if index == 3:
                raise KeyboardInterrupt
    assert session.failovers == []
    assert all(_until(lambda p=p: swarm.sessions(p) == 0) for p in swarm.peers)


def test_ctrl_c_while_opening_the_chain_leaves_nothing_open(
    swarm_and_model: tuple[ThreadSwarm, DistributedModelForCausalLM],
) -> None:
    swarm, model = swarm_and_model
    last_hop = [p for p in swarm.peers if p.start == 2]
    for peer in last_hop:  # the first hop opens, the second cannot answer
        swarm.fault(peer, "stall")
    timer = _ctrl_c_soon(0.5)
    with pytest.raises(KeyboardInterrupt), model.inference_session(max_length=64):
        time.sleep(5)  # not reached: opening the session is what gets interrupted
    timer.join()
    for peer in last_hop:
        swarm.fault(peer, "resume")
    _until(lambda: all(swarm.sessions(p) == 0 for p in swarm.peers))
    assert [(p.start, swarm.sessions(p)) for p in swarm.peers] == [(0, 0), (2, 0), (2, 0)]


@pytest.mark.slow
def test_swarm_generate_stops_on_sigint_with_status_130(tiny: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny)
    with ThreadSwarm(tiny, [(0, 4)]) as swarm:
        peer = swarm.peers[0]
        command = [sys.executable, "-m", "swarm.cli", "generate", str(tiny), "Hello",
                   "--max-new-tokens", "200", "--initial-peers", swarm.bootstrap]  # fmt: skip
        child = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, text=True,
                                 stderr=subprocess.PIPE)  # fmt: skip
        try:
            assert _until(lambda: swarm.sessions(peer) == 1, timeout=60)
            swarm.fault(peer, "stall")  # the child waits for a step when Ctrl-C comes
            child.send_signal(signal.SIGINT)
            stdout, stderr = child.communicate(timeout=30)
        finally:
            child.kill()
        swarm.fault(peer, "resume")
        assert _until(lambda: swarm.sessions(peer) == 0)
    assert child.returncode == 130, stderr[-2000:]
    assert "Traceback" not in stderr
    # what it printed is the start of the local continuation (greedy, the same tokens)
    ids = torch.as_tensor(tokenizer("Hello", return_tensors="pt")["input_ids"])
    reference = AutoModelForCausalLM.from_pretrained(tiny).generate(
        ids, attention_mask=torch.ones_like(ids), max_new_tokens=200, do_sample=False
    )
    expected = tokenizer.decode(reference[0, ids.shape[1] :], skip_special_tokens=True)
    assert expected.startswith(stdout.rstrip("\n"))
