"""Typed errors of the peer package: one root, `PeerError`, and one class per failure.

Every error carries a short machine-readable `code` (class attribute) so that the RPC layer can
forward it to the remote caller as `HandlerError(error.code, str(error))` without a lookup
table. Messages are written for the remote caller: they name the limit that was hit and never
contain tracebacks or local paths of other users.
"""

from __future__ import annotations

from typing import ClassVar

__all__ = [
    "AdapterError",
    "CacheBudgetError",
    "CheckpointError",
    "HostShareError",
    "InvalidRequestError",
    "MixedLengthsError",
    "PeerError",
    "SessionExistsError",
    "SessionLimitError",
    "SessionNotFoundError",
    "UnknownAdapterError",
    "UnsupportedModelError",
    "WorkerClosedError",
]


class PeerError(Exception):
    """Root of every error raised by the `peer` package."""

    code: ClassVar[str] = "peer_error"


class UnsupportedModelError(PeerError):
    """The checkpoint's architecture is not one this peer can serve."""

    code: ClassVar[str] = "unsupported_model"


class CheckpointError(PeerError):
    """The checkpoint directory is unreadable, incomplete or inconsistent."""

    code: ClassVar[str] = "bad_checkpoint"


class InvalidRequestError(PeerError):
    """A request does not fit the model or the span: dtype, shape, range, length."""

    code: ClassVar[str] = "invalid_request"


class SessionExistsError(InvalidRequestError):
    """An inference session with this id is already open."""

    code: ClassVar[str] = "session_exists"


class SessionNotFoundError(PeerError):
    """No open session has this id (never opened, closed, or expired when idle)."""

    code: ClassVar[str] = "session_not_found"


class CacheBudgetError(PeerError):
    """Opening the session would exceed the attention-cache token budget."""

    code: ClassVar[str] = "cache_budget"


class SessionLimitError(PeerError):
    """Opening the session would exceed the maximum number of concurrent sessions."""

    code: ClassVar[str] = "session_limit"


class HostShareError(PeerError):
    """Opening the session would give the caller's host more than its share of the peer
    (`peer.host_share`)."""

    code: ClassVar[str] = "host_share"


class WorkerClosedError(PeerError):
    """The compute worker is not running (not started yet, or shut down)."""

    code: ClassVar[str] = "worker_closed"


class MixedLengthsError(PeerError):
    """Merged steps of sessions of different lengths reached a block that needs one length
    for all rows (Llama 4's attention temperature); the steps are run one by one instead."""

    code: ClassVar[str] = "mixed_lengths"


class AdapterError(PeerError):
    """A LoRA adapter directory is unreadable, or asks for what a peer cannot apply."""

    code: ClassVar[str] = "bad_adapter"


class UnknownAdapterError(InvalidRequestError):
    """A request names an adapter this peer does not have."""

    code: ClassVar[str] = "unknown_adapter"
