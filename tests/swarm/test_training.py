"""Training through the swarm: gradients back through the peers' frozen blocks, against the
local transformers model's own autograd."""

from __future__ import annotations

import gc
import random
import time
from functools import partial
from pathlib import Path

import pytest
import torch
import trio
from transformers import AutoModelForCausalLM

from peer.backend import BackendConfig
from peer.model_name import model_name
from routing.address import PeerAddress
from routing.client import ClientConfig, SwarmView
from routing.client.forward import Trace, backward_through_swarm, forward_through_swarm
from routing.dht import DHTConfig, DHTNode
from routing.rpc import RPCHost
from routing.transport import TcpTransport
from security import Identity
from swarm import DistributedModelForCausalLM
from tests.support.thread_swarm import ThreadSwarm
from tests.support.tiny_model import write_tiny_model

PROMPT_TOKENS = 3


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_model(tmp_path_factory.mktemp("training") / "tiny-training", seed=7)


def _batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    ids = torch.randint(5, 200, (2, 10), generator=torch.Generator().manual_seed(2))
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0  # a shorter row, padded on the right
    return ids, mask, ids.masked_fill(mask == 0, -100)


@pytest.mark.parametrize("family", ["llama", "bloom", "gpt2"])
def test_the_gradient_of_the_inputs_equals_the_local_models(
    family: str, tiny: Path, tmp_path: Path
) -> None:
    """BLOOM norms the embeddings in the client's head: the gradient goes back through it.
    GPT-2's first peer adds the positions to the embeddings: the gradient goes through."""
    if family != "llama":
        tiny = write_tiny_model(tmp_path / family, family, seed=7)
    ids, mask, labels = _batch()
    local = AutoModelForCausalLM.from_pretrained(tiny).requires_grad_(False)
    embeddings = local.get_input_embeddings()(ids).detach().requires_grad_(True)
    local(inputs_embeds=embeddings, attention_mask=mask, labels=labels).loss.backward()
    with (
        ThreadSwarm(tiny, [(0, 2), (2, 4)]) as swarm,
        DistributedModelForCausalLM.from_pretrained(tiny, initial_peers=[swarm.bootstrap]) as model,
    ):
        ours = model.get_input_embeddings()(ids).detach().requires_grad_(True)
        output = model(inputs_embeds=ours, attention_mask=mask, labels=labels)
        output.loss.backward()
    assert ours.grad is not None and embeddings.grad is not None
    assert ours.grad.abs().sum() > 0
    torch.testing.assert_close(ours.grad, embeddings.grad, rtol=1e-4, atol=1e-6)


def _tune(
    forward: torch.nn.Module, embed: torch.nn.Module, steps: int
) -> tuple[list[float], torch.Tensor]:
    """A soft prompt before every row, trained with Adam; the losses, and the prompt."""
    ids, mask, labels = _batch()
    prompt = torch.nn.Parameter(torch.zeros(1, PROMPT_TOKENS, embed.weight.shape[1]))
    optimizer = torch.optim.Adam([prompt], lr=0.05)
    losses = []
    for _ in range(steps):
        inputs = torch.cat([prompt.expand(2, -1, -1), embed(ids).detach()], dim=1)
        ones = torch.ones(2, PROMPT_TOKENS, dtype=mask.dtype)
        ignored = torch.full((2, PROMPT_TOKENS), -100)
        loss = forward(
            inputs_embeds=inputs,
            attention_mask=torch.cat([ones, mask], dim=1),
            labels=torch.cat([ignored, labels], dim=1),
        ).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    return losses, prompt.detach()


def test_a_soft_prompt_trains_as_it_would_on_the_local_model(tiny: Path) -> None:
    """The blocks stay on the peers, frozen; the loss goes down step by step as it does
    locally, and the prompt learnt is the same. Each peer ran every backward on the graph
    its forward kept, and keeps none once the steps are over."""
    local = AutoModelForCausalLM.from_pretrained(tiny).requires_grad_(False)
    expected, expected_prompt = _tune(local, local.get_input_embeddings(), steps=6)
    assert expected[-1] < expected[0]
    with (
        ThreadSwarm(tiny, [(0, 2), (2, 4)]) as swarm,
        DistributedModelForCausalLM.from_pretrained(tiny, initial_peers=[swarm.bootstrap]) as model,
    ):
        losses, prompt = _tune(model, model.get_input_embeddings(), steps=6)
        for peer in swarm.peers:
            status = swarm.status(peer)
            assert (status.kept_backwards, status.kept_bytes) == (6, 0)
        model(_batch()[0])  # logits only: no backward to come, nothing kept
        assert all(swarm.status(peer).kept_bytes == 0 for peer in swarm.peers)
    torch.testing.assert_close(torch.tensor(losses), torch.tensor(expected), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(prompt, expected_prompt, rtol=1e-3, atol=1e-5)


def test_peers_with_no_room_for_a_graph_train_the_same(tiny: Path) -> None:
    """Peers that keep 1 KB of graphs measure the first forward's as too large and build
    none after it: each backward computes its forward again, and the steps are the same."""
    local = AutoModelForCausalLM.from_pretrained(tiny).requires_grad_(False)
    expected, expected_prompt = _tune(local, local.get_input_embeddings(), steps=3)
    with (
        ThreadSwarm(tiny, [(0, 2), (2, 4)], backend=BackendConfig(max_kept_bytes=1000)) as swarm,
        DistributedModelForCausalLM.from_pretrained(tiny, initial_peers=[swarm.bootstrap]) as model,
    ):
        losses, prompt = _tune(model, model.get_input_embeddings(), steps=3)
        for peer in swarm.peers:
            status = swarm.status(peer)
            assert (status.kept_too_large, status.kept_backwards, status.kept_bytes) == (3, 0, 0)
    torch.testing.assert_close(torch.tensor(losses), torch.tensor(expected), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(prompt, expected_prompt, rtol=1e-3, atol=1e-5)


def test_a_forward_freed_without_a_backward_has_the_peers_drop_its_graphs(tiny: Path) -> None:
    """Its autograd graph gone, the client tells each peer (`span.release`), which then
    holds nothing for it, long before the graphs' 120 s would run out."""
    ids, mask, labels = _batch()
    with (
        ThreadSwarm(tiny, [(0, 2), (2, 4)]) as swarm,
        DistributedModelForCausalLM.from_pretrained(tiny, initial_peers=[swarm.bootstrap]) as model,
    ):
        embeddings = model.get_input_embeddings()(ids).detach().requires_grad_(True)
        output = model(inputs_embeds=embeddings, attention_mask=mask, labels=labels)
        assert all(swarm.status(peer).kept_bytes > 0 for peer in swarm.peers)
        del output  # an evaluation that forgot `torch.no_grad()`, say
        gc.collect()
        deadline = time.monotonic() + 10
        while any(swarm.status(peer).kept_bytes for peer in swarm.peers):
            assert time.monotonic() < deadline, "the peers still keep the graphs"
            time.sleep(0.02)  # polling the peers' status, with a deadline
        for peer in swarm.peers:
            assert (swarm.status(peer).kept_backwards, swarm.status(peer).kept_released) == (0, 1)


def test_a_peer_lost_before_the_backward_is_replaced(
    tiny: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The hop whose peer is gone runs forward again from the input it took, on a replica,
    and back: the gradient is the one the lost peer would have given."""
    hidden = torch.randn(2, 6, 64, generator=torch.Generator().manual_seed(3))
    grad_output = torch.randn(2, 6, 64, generator=torch.Generator().manual_seed(4))

    async def scenario(swarm: ThreadSwarm) -> tuple[torch.Tensor, torch.Tensor, str]:
        async with trio.open_nursery() as nursery:
            rpc = RPCHost(Identity.generate(), TcpTransport())
            await nursery.start(rpc.run_outbound)
            dht = DHTNode(rpc, DHTConfig(client_mode=True))
            bootstrap = PeerAddress.parse(swarm.bootstrap)
            await nursery.start(partial(dht.run, initial_peers=[bootstrap]))
            view = SwarmView(rpc, dht, model_name(tiny), 4, ClientConfig())
            await view.refresh()
            trace: Trace = []
            rng = random.Random(0)
            await forward_through_swarm(view, hidden, rng=rng, trace=trace)
            expected = await backward_through_swarm(view, trace, grad_output, rng=rng)
            lost = trace[-1].hop.peer  # served blocks 2..3
            await trio.to_thread.run_sync(swarm.stop_peer, swarm.peer(lost))
            got = await backward_through_swarm(view, trace, grad_output, rng=rng)
            nursery.cancel_scope.cancel()
        return expected, got, lost

    with ThreadSwarm(tiny, [(0, 2), (2, 4), (2, 4)]) as swarm:
        expected, got, lost = trio.run(scenario, swarm)
    assert f"peer {lost[:8]} failed a backward" in caplog.text
    assert torch.equal(got, expected)
