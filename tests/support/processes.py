"""`swarm.processes` for tests: children start in the repository root, where `tests` imports."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from swarm import processes
from swarm.processes import swarm_processes as swarm_processes

ROOT = Path(__file__).resolve().parents[2]


class SwarmProcess(processes.SwarmProcess):
    """A `python -m MODULE ARGS` child of the test run, started in the repository root."""

    def __init__(
        self, args: Sequence[str], *, env: dict[str, str] | None = None, module: str = "swarm.cli"
    ) -> None:
        super().__init__(args, env=env, module=module, cwd=ROOT)
