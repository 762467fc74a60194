"""Logging set-up for the command-line layer: everything to stderr, stdout stays for results."""

from __future__ import annotations

import logging
import sys

FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


def configure_logging(verbosity: int = 0) -> None:
    """Send log records to stderr; -v shows debug records of our own packages."""
    level = logging.DEBUG if verbosity > 0 else logging.INFO
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(FORMAT, datefmt="%H:%M:%S"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    for package in ("security", "routing", "peer", "swarm"):
        logging.getLogger(package).setLevel(level)
