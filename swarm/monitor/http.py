"""The monitor's routes, served by `swarm.http_server`: the page at `/`, JSON at `/api/state`,
Prometheus metrics at `/metrics`.

The server is read-only and public-facing: only GET and HEAD exist (no body is wanted:
`HttpConfig`'s default cap of 1 KiB stays). The page carries a Content-Security-Policy that allows
exactly its own inline script and style (by hash) and fetches to its own origin, as a second
line of defence behind the page's escaping of peer-provided strings.
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources

from ..http_server import Handler, Request, Response
from ..prometheus import CONTENT_TYPE
from .metrics import render_metrics
from .snapshot import SwarmSnapshot


@dataclass(frozen=True)
class Page:
    html: bytes
    content_security_policy: str


def load_page() -> Page:
    """The static page, and a CSP that allows exactly its inline script and style."""
    html = resources.files("swarm.monitor").joinpath("static/index.html").read_text("utf-8")
    scripts = re.findall(r"<script>(.*?)</script>", html, re.DOTALL)
    styles = re.findall(r"<style>(.*?)</style>", html, re.DOTALL)
    policy = "; ".join(
        [
            "default-src 'none'",
            "script-src " + " ".join(_source_hash(s) for s in scripts),
            "style-src " + " ".join(_source_hash(s) for s in styles),
            "connect-src 'self'",
            "img-src data:",
            "base-uri 'none'",
            "form-action 'none'",
            "frame-ancestors 'none'",
        ]
    )
    return Page(html.encode("utf-8"), policy)


def _source_hash(source: str) -> str:
    digest = hashlib.sha256(source.encode("utf-8")).digest()
    return f"'sha256-{base64.b64encode(digest).decode('ascii')}'"


def monitor_handler(latest: Callable[[], SwarmSnapshot | None], page: Page) -> Handler:
    """Routes: `/` (and `/index.html`) the page, `/api/state` the latest snapshot as JSON,
    `/metrics` as Prometheus metrics (both 503 until the first snapshot)."""
    page_response = Response(
        200,
        page.html,
        "text/html; charset=utf-8",
        (("Content-Security-Policy", page.content_security_policy),),
    )

    async def handle(request: Request) -> Response:
        if request.method not in ("GET", "HEAD"):
            return Response(405, b"405 method not allowed\n", headers=(("Allow", "GET, HEAD"),))
        path = request.path
        if path in ("/", "/index.html"):
            return page_response
        if path not in ("/api/state", "/metrics"):
            return Response(404, b"404 not found\n")
        snapshot = latest()
        if snapshot is None:
            return Response(
                503, b'{"error":"no snapshot yet"}', "application/json", (("Retry-After", "1"),)
            )
        if path == "/metrics":
            return Response(200, render_metrics(snapshot).encode("utf-8"), CONTENT_TYPE)
        return Response(200, snapshot.to_json().encode("utf-8"), "application/json")

    return handle
