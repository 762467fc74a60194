"""MODEL arguments: local directories as they are, hub ids by download, one name for both."""

from __future__ import annotations

from pathlib import Path

import pytest

from swarm.checkpoints import resolve_checkpoint, swarm_name
from swarm.errors import SwarmError


def test_a_local_directory_is_used_as_it_is(tmp_path: Path) -> None:
    assert resolve_checkpoint(str(tmp_path)) == tmp_path


def test_an_unknown_model_is_a_clear_error() -> None:
    with pytest.raises(SwarmError, match="not a local checkpoint directory"):
        resolve_checkpoint("no-such-org/no-such-model-anywhere")


def test_a_hub_id_and_a_local_copy_have_the_same_swarm_name() -> None:
    local = "/models/SmolLM2-135M-Instruct/"
    assert swarm_name("HuggingFaceTB/SmolLM2-135M-Instruct") == swarm_name(local)
    assert swarm_name(local) == "SmolLM2-135M-Instruct"
    assert swarm_name(local, "custom") == "custom"
