"""TLS for the HTTP servers (the API, the monitor page, a peer's metrics).

`server_context` reads a certificate chain and its private key (PEM files, as `--tls-cert`
and `--tls-key` name them) into a server context of TLS 1.2 or later, with Python's default
ciphers; a file that is missing, unreadable or not a matching pair is a `TlsError` that
says which. The HTTP server wraps each connection in it (`swarm.http_server`).
"""

from __future__ import annotations

import ssl
from pathlib import Path

from .errors import SwarmError

__all__ = ["TlsError", "server_context"]


class TlsError(SwarmError):
    """The certificate or its key cannot be used."""


def server_context(certificate: Path, key: Path) -> ssl.SSLContext:
    """A context that serves `certificate` (PEM: the server's, then its chain), proven by
    `key` (PEM, unencrypted)."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    for path in (certificate, key):
        if not path.is_file():
            raise TlsError(f"no such file: {path}")
    try:
        context.load_cert_chain(certificate, key)
    except (OSError, ssl.SSLError) as error:
        raise TlsError(
            f"cannot serve TLS with the certificate {certificate} and the key {key}: {error}"
        ) from None
    return context
