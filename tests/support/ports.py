"""A port on 127.0.0.1 that nothing listens at, for tests that need one closed or free."""

from __future__ import annotations

import socket


def free_port() -> int:
    """A port the kernel just handed out and took back: nothing listens there now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])
