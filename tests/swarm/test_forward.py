"""Batch forward through the swarm (`model(input_ids)`), against the local transformers model."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from routing import RemoteError
from swarm import DistributedModelForCausalLM
from swarm.errors import SwarmError
from tests.support.thread_swarm import ThreadSwarm
from tests.support.tiny_model import write_tiny_model


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_model(tmp_path_factory.mktemp("forward") / "tiny-forward", seed=5)


def _batch(rows: int = 3, length: int = 12) -> torch.Tensor:
    return torch.randint(5, 200, (rows, length), generator=torch.Generator().manual_seed(1))


def test_logits_and_loss_equal_the_local_models(tiny: Path) -> None:
    """Through replicas drawn anew for every call: a 2-hop chain or the whole-model peer."""
    ids = _batch()
    labels = ids.clone()
    labels[0, :5] = -100  # ignored, as in transformers
    with torch.no_grad():
        expected = AutoModelForCausalLM.from_pretrained(tiny)(ids, labels=labels)
    with (
        ThreadSwarm(tiny, [(0, 2), (2, 4), (0, 4)]) as swarm,
        DistributedModelForCausalLM.from_pretrained(tiny, initial_peers=[swarm.bootstrap]) as model,
    ):
        for _ in range(8):
            output = model(ids, attention_mask=torch.ones_like(ids), labels=labels)
            torch.testing.assert_close(output.logits, expected.logits, rtol=1e-4, atol=1e-4)
            torch.testing.assert_close(output.loss, expected.loss, rtol=1e-5, atol=1e-5)
        assert model(ids).loss is None


@pytest.mark.parametrize("family", ["llama", "opt"])
def test_padding_on_either_side_is_hidden_as_transformers_hides_it(
    tiny: Path, family: str, tmp_path: Path
) -> None:
    """Rows of different lengths, padded on the right (a tokenizer's default) or the left:
    logits and loss (padding labelled -100) as transformers' model gives them (OPT's count
    each row's positions from its first token)."""
    if family != "llama":
        tiny = write_tiny_model(tmp_path / family, family, seed=5)
    ids = _batch(rows=3)
    right = torch.ones_like(ids)
    right[0, 7:], right[1, 10:] = 0, 0
    with (
        ThreadSwarm(tiny, [(0, 2), (2, 4)]) as swarm,
        DistributedModelForCausalLM.from_pretrained(tiny, initial_peers=[swarm.bootstrap]) as model,
    ):
        for mask in (right, right.flip(-1)):
            labels = ids.masked_fill(mask == 0, -100)
            with torch.no_grad():
                local = AutoModelForCausalLM.from_pretrained(tiny)
                expected = local(ids, attention_mask=mask, labels=labels)
            output = model(ids, attention_mask=mask, labels=labels)
            torch.testing.assert_close(output.logits, expected.logits, rtol=1e-4, atol=1e-4)
            torch.testing.assert_close(output.loss, expected.loss, rtol=1e-5, atol=1e-5)
            unmasked = model(ids, labels=labels)  # the mask matters
            assert not torch.allclose(unmasked.logits, expected.logits, atol=1e-3)


def test_a_request_every_peer_refuses_fails_at_once_without_bans(
    tiny: Path, caplog: pytest.LogCaptureFixture
) -> None:
    too_long = torch.randint(5, 200, (1, 513))  # the tiny model's context is 512
    with (
        ThreadSwarm(tiny, [(0, 4), (0, 4)]) as swarm,
        DistributedModelForCausalLM.from_pretrained(tiny, initial_peers=[swarm.bootstrap]) as model,
    ):
        with pytest.raises(RemoteError, match="invalid_request"):
            model(too_long)
        assert not [r for r in caplog.records if "failed a forward" in r.getMessage()]
        for mask in (torch.full((3, 12), 2), torch.ones(3, 11)):
            with pytest.raises(SwarmError, match="attention_mask must be 0 and 1"):
                model(_batch(), attention_mask=mask)
        with pytest.raises(SwarmError, match=r"\[batch, length\]"):
            model(torch.tensor([1, 2, 3]))
        with pytest.raises(SwarmError, match=r"labels must be \[3, 12\]"):
            model(_batch(), labels=_batch()[:, :5])


@pytest.mark.parametrize(
    ("fault", "message"),
    [("gone", "failed a forward"), ("stalled", "answered neither the forward nor a ping")],
)
def test_a_failing_replica_is_banned_and_the_other_used(
    tiny: Path, caplog: pytest.LogCaptureFixture, fault: str, message: str
) -> None:
    """`gone`: the peer stopped (connections refused). `stalled`: nothing moves either way,
    as with a frozen process; it fails 1.5 s in (0.5 s, then a 1 s ping), not after the
    call's 10 s deadline. Either way it is drawn once (odds 1/2), then banned."""
    ids = _batch(rows=2)
    with torch.no_grad():
        expected = AutoModelForCausalLM.from_pretrained(tiny)(ids).logits
    with (
        ThreadSwarm(tiny, [(0, 4), (0, 4)]) as swarm,
        DistributedModelForCausalLM.from_pretrained(tiny, initial_peers=[swarm.bootstrap]) as model,
    ):
        failing = swarm.peers[0]
        if fault == "gone":
            swarm.stop_peer(failing)
        else:
            swarm.fault(failing, "stall")
        with caplog.at_level(logging.WARNING, logger="routing.client.forward"):
            for _ in range(30):  # until it is drawn
                torch.testing.assert_close(model(ids).logits, expected, rtol=1e-4, atol=1e-4)
        if fault == "stalled":
            swarm.fault(failing, "resume")
    failed = [r.getMessage() for r in caplog.records if "failed a forward" in r.getMessage()]
    assert len(failed) == 1
    assert failing.peer[:8] in failed[0] and message in failed[0]
