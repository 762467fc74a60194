"""Errors of the routing package: one root, `RoutingError`, and a class per failure.

Local vs remote: `ProtocolError` means the remote sent something malformed (the connection
it came on may be closed; the server goes on serving others). `RemoteError` means the remote
handler failed and told us so with a code and a message. `HandlerError` is what a handler
raises to choose the code and message the caller gets.
"""

from __future__ import annotations

__all__ = [
    "AddressError",
    "CallTimeoutError",
    "ConnectionLostError",
    "HandlerError",
    "ListenError",
    "MessageTooLargeError",
    "NotAMemberError",
    "PeerUnreachableError",
    "PeerUnresponsiveError",
    "ProtocolError",
    "RemoteError",
    "RoutingError",
    "StreamClosedError",
]


class RoutingError(Exception):
    """Root of every error raised by `routing`."""


class AddressError(RoutingError, ValueError):
    """A peer address that does not parse as HOST:PORT/PEER_ID."""


class ListenError(RoutingError, OSError):
    """A server cannot listen where it was told (the port taken, the host not ours)."""


class ProtocolError(RoutingError):
    """The remote sent a malformed message (bad framing, kind, header or payload)."""


class MessageTooLargeError(ProtocolError):
    """A message over the configured size cap (checked before anything is allocated)."""


class ConnectionLostError(RoutingError):
    """The connection a call or stream used closed before it finished."""


class PeerUnreachableError(RoutingError):
    """Could not connect to the peer, or the secure handshake with it failed."""


class NotAMemberError(PeerUnreachableError):
    """In a private swarm: a peer outside its members, which we do not dial, or one that
    closed our connection because we are not among its members."""


class CallTimeoutError(RoutingError):
    """A call did not get its reply within its timeout (the remote handler is cancelled)."""


class PeerUnresponsiveError(RoutingError):
    """A peer kept a reply waiting and did not answer a ping meanwhile (frozen or cut off)."""


class StreamClosedError(RoutingError):
    """A stream has no more data to give, or can no longer send (ended or cancelled)."""


class _CodedError(RoutingError):
    """An error with a short machine-readable code and a human-readable message."""

    def __init__(self, code: str, message: str = "") -> None:
        super().__init__(f"{code}: {message}" if message else code)
        self.code = code
        self.message = message

    def __reduce__(self) -> tuple[type, tuple[str, str]]:
        return (type(self), (self.code, self.message))


class RemoteError(_CodedError):
    """The remote handler failed; `code` and `message` are what the remote sent."""


class HandlerError(_CodedError):
    """Raised by a handler: the caller gets a `RemoteError` with this code and message."""
