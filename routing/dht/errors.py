"""Errors of the DHT, under `routing.errors.RoutingError` like the rest of the package."""

from __future__ import annotations

from ..errors import ProtocolError, RoutingError
from ..records import RecordRejectedError as RecordRejectedError

__all__ = ["BootstrapError", "DHTError", "MalformedReplyError", "RecordRejectedError"]


class DHTError(RoutingError):
    """Root of the DHT's own failures."""


class MalformedReplyError(ProtocolError):
    """A remote DHT node answered with something we refuse (types, sizes, addresses, records).

    The node counts as failed for the lookup that asked it; the lookup goes on.
    """


class BootstrapError(DHTError):
    """None of the initial peers answered, so the node could not join the swarm."""
