"""`swarm` child processes (for `swarm demo` and end-to-end tests): start, read the address, stop.

Every long-running `swarm` command prints its address on a line of its own once ready; we
wait for that line with a deadline (never a sleep). Processes are stopped with SIGTERM and
killed if they linger, so nobody leaves one behind.
"""

from __future__ import annotations

import os
import selectors
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path


class SwarmProcess:
    """One `swarm ...` child process whose first stdout line is its address."""

    def __init__(
        self,
        args: Sequence[str],
        *,
        env: dict[str, str] | None = None,
        module: str = "swarm.cli",
        cwd: Path | None = None,
    ) -> None:
        self.args = list(args)
        # stderr goes to a file: a pipe nobody reads would block a chatty child.
        self.log = tempfile.TemporaryFile()  # noqa: SIM115 (lives as long as the process object)
        self.process = subprocess.Popen(
            [sys.executable, "-m", module, *self.args],
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=self.log,
            env={**os.environ, **(env or {})},
        )
        self.address = ""

    @property
    def pid(self) -> int:
        return self.process.pid

    def wait_ready(self, timeout: float) -> str:
        """Read stdout until the address line appears; fail with the child's stderr."""
        assert self.process.stdout is not None
        deadline = time.monotonic() + timeout
        selector = selectors.DefaultSelector()
        selector.register(self.process.stdout, selectors.EVENT_READ)
        try:
            while time.monotonic() < deadline:
                if not selector.select(timeout=max(0.0, deadline - time.monotonic())):
                    continue
                line = self.process.stdout.readline().decode().strip()
                if line:
                    self.address = line
                    return line
                if self.process.poll() is not None:
                    break
        finally:
            selector.close()
        self.stop()
        raise RuntimeError(f"swarm {' '.join(self.args)} did not become ready:\n{self.stderr()}")

    def stderr(self) -> str:
        """The last few KiB the process logged."""
        self.log.seek(0)
        return self.log.read().decode(errors="replace")[-4000:]

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        """Signal the process and wait for it; kill it if it does not stop in time."""
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process.stdout is not None:
            self.process.stdout.close()
        return self.process.returncode


@contextmanager
def swarm_processes() -> Iterator[list[SwarmProcess]]:
    """A list to start processes into; all of them are stopped on exit."""
    started: list[SwarmProcess] = []
    try:
        yield started
    finally:
        for process in reversed(started):
            process.stop()
