"""MODEL arguments: local directories as they are, the default model by its name, hub ids by
download, one name for all."""

from __future__ import annotations

from pathlib import Path

import pytest

from swarm.checkpoints import resolve_checkpoint, swarm_name
from swarm.default_model import prepare_default_model
from swarm.errors import SwarmError


def test_a_local_directory_is_used_as_it_is(tmp_path: Path) -> None:
    assert resolve_checkpoint(str(tmp_path)) == tmp_path


@pytest.mark.slow
def test_the_default_models_name_is_its_converted_checkpoint() -> None:
    """`swarm peer SmolLM2-135M-Instruct` works on a machine with no hub (converted once)."""
    checkpoint = resolve_checkpoint("SmolLM2-135M-Instruct")
    assert checkpoint == prepare_default_model() and (checkpoint / "config.json").is_file()
    assert swarm_name("SmolLM2-135M-Instruct") == swarm_name(str(checkpoint))


def test_an_unknown_model_is_a_clear_error() -> None:
    with pytest.raises(SwarmError, match="not a local checkpoint directory"):
        resolve_checkpoint("no-such-org/no-such-model-anywhere")


def test_a_hub_id_and_a_local_copy_have_the_same_swarm_name() -> None:
    local = "/models/SmolLM2-135M-Instruct/"
    assert swarm_name("HuggingFaceTB/SmolLM2-135M-Instruct") == swarm_name(local)
    assert swarm_name(local) == "SmolLM2-135M-Instruct"
    assert swarm_name(local, "custom") == "custom"
