"""HTTPS for the HTTP servers (`swarm/tls.py`, `swarm/http_server.py`): real TLS on
127.0.0.1, with a self-signed certificate that the client trusts."""

from __future__ import annotations

import http.client
import os
import socket
import ssl
from contextlib import closing
from pathlib import Path

import pytest
import trio

from swarm.cli import main
from swarm.http_server import HttpConfig, HttpServer, Request, Response
from swarm.tls import TlsError, server_context
from tests.support.tls import trusting, write_certificate

LIMIT = 10.0  # seconds: every client call is bounded


async def _hello(request: Request) -> Response:
    return Response(200, b"hello " + request.method.encode())


def _get(port: int, context: ssl.SSLContext | None) -> tuple[int, bytes]:
    """GET / over HTTPS with `context` (over plain HTTP without one)."""
    if context is None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=LIMIT)
    else:
        connection = http.client.HTTPSConnection("127.0.0.1", port, timeout=LIMIT, context=context)
    with closing(connection):
        connection.request("GET", "/")
        reply = connection.getresponse()
        return reply.status, reply.read()


def _closed_after(port: int, sent: bytes) -> bytes:
    """What the server says to a client that sends `sent` (maybe nothing), until it closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=LIMIT) as client:
        client.sendall(sent)
        received = b""
        while part := client.recv(4096):
            received += part
        return received


async def test_https_is_served_and_a_client_without_tls_is_closed_alone(tmp_path: Path) -> None:
    """A client that trusts the certificate gets its answer. One that does not refuses it;
    one that speaks plain HTTP, sends garbage or nothing is closed (nothing in clear, within
    the request timeout), and the server goes on serving with no connection left held."""
    certificate, key = write_certificate(tmp_path)
    server = HttpServer(
        _hello, HttpConfig(request_timeout=1.0), "test", server_context(certificate, key)
    )
    async with trio.open_nursery() as nursery:
        host, port = await nursery.start(server.run, "127.0.0.1", 0)
        assert server.url(host, port) == f"https://127.0.0.1:{port}"
        trusted = trusting(certificate)
        assert await trio.to_thread.run_sync(_get, port, trusted) == (200, b"hello GET")
        with pytest.raises(ssl.SSLCertVerificationError):
            await trio.to_thread.run_sync(_get, port, ssl.create_default_context())
        with pytest.raises((http.client.HTTPException, OSError)):
            await trio.to_thread.run_sync(_get, port, None)
        for sent in (b"", os.urandom(2048), b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"):
            with trio.fail_after(LIMIT):
                said = await trio.to_thread.run_sync(_closed_after, port, sent)
            assert b"HTTP/1.1" not in said and b"hello" not in said
        assert await trio.to_thread.run_sync(_get, port, trusted) == (200, b"hello GET")
        with trio.fail_after(LIMIT):
            while True:  # polled until every connection is let go
                if not server._connections.borrowed_tokens:
                    break
                await trio.sleep(0.01)
        nursery.cancel_scope.cancel()


def test_a_certificate_that_cannot_serve_is_a_typed_error(tmp_path: Path) -> None:
    certificate, key = write_certificate(tmp_path)
    _, other_key = write_certificate(tmp_path, "other")
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
    cases = [
        (tmp_path / "missing.pem", key, "no such file"),
        (certificate, other_key, "cannot serve TLS"),  # not the certificate's key
        (garbage, key, "cannot serve TLS"),
    ]
    for cert_path, key_path, said in cases:
        with pytest.raises(TlsError, match=said) as caught:
            server_context(cert_path, key_path)
        assert str(cert_path) in str(caught.value) or str(key_path) in str(caught.value)


def test_the_command_line_takes_the_certificate_and_key_together(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """One without the other, or a peer's certificate without metrics to serve: exit
    status 1 and one line, before anything starts."""
    certificate, key = write_certificate(tmp_path)
    assert main(["monitor", "--tls-cert", str(certificate)]) == 1
    assert "TlsError: --tls-cert and --tls-key go together" in capsys.readouterr().err
    peer = ["peer", str(tmp_path / "no-model"), "--tls-cert", str(certificate)]
    assert main([*peer, "--tls-key", str(key)]) == 1
    err = capsys.readouterr().err
    assert "give --metrics-port too" in err and "Traceback" not in err
