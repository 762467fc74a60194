"""A peer's own metrics for Prometheus, served by `swarm peer --metrics-port` at `/metrics`.

Counters (`_total`) of what it served since it started: sessions opened and refused, those
begun as a copy of another (`swarm_peer_sessions_forked_total`) and the cached tokens they
copied (`swarm_peer_forked_tokens_total`), inference steps and their tokens, the steps run in
one forward with other sessions' (`swarm_peer_merged_steps_total`), the time the blocks
computed, and the backwards run on the graph their forward kept
(`swarm_peer_kept_backwards_total`), the kept graphs their callers released without one
(`swarm_peer_kept_released_total`) and the training forwards whose graph was over
`--kept-activations` (`swarm_peer_kept_too_large_total`); a histogram of the steps' times at
the peer, request to reply (`swarm_peer_step_seconds`: its buckets give percentiles, its sum
over its count the mean); gauges of its state now: span, sessions open, cache tokens left of
its cache's size, throughput, whether it drains, the bytes of activations it keeps for
backwards to come (`swarm_peer_kept_activation_bytes`), and `swarm_peer_info` (value 1) with
its address, version, dtype and quantization as labels; how others reach it
(`swarm_peer_circuit`, `swarm_peer_reached`), its connections open
(`swarm_peer_connections`, labelled `kind`: `direct`, or `relayed` through a circuit relay,
its own or another peer's), and, if it relays circuits, its relay's listeners, circuits and
bytes (`swarm_relay_*`). Every sample has the labels `model` and `peer` (its full id), as
the monitor's have.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from peer.activity import PeerStatus

from .http_server import Handler, Request, Response
from .prometheus import CONTENT_TYPE, Labels, exposition, histogram, metric

COUNTERS = {
    "swarm_peer_sessions_opened_total": ("sessions", "Inference sessions opened."),
    "swarm_peer_sessions_refused_total": ("refused", "Sessions refused (no room, bad request)."),
    "swarm_peer_sessions_forked_total": ("forked", "Sessions begun with a copy of another's."),
    "swarm_peer_forked_tokens_total": ("forked_tokens", "Cached tokens forks copied."),
    "swarm_peer_steps_total": ("steps", "Inference steps served."),
    "swarm_peer_merged_steps_total": ("merged", "Steps run in one forward with others'."),
    "swarm_peer_tokens_total": ("tokens", "Positions those steps ran, every row counted."),
    "swarm_peer_forwards_total": ("forwards", "Batch forwards and backwards served."),
    "swarm_peer_compute_seconds_total": ("compute_seconds", "Time the steps' blocks computed."),
}


def render_peer_metrics(status: PeerStatus) -> str:
    """The peer's status as the text Prometheus scrapes."""
    announced = status.announcement
    peer: Labels = (("model", announced.model), ("peer", announced.address.peer_id.to_base58()))
    gauges = {
        "swarm_peer_span_start": ("First block the peer serves.", announced.start),
        "swarm_peer_span_end": ("Block after the last one the peer serves.", announced.end),
        "swarm_peer_sessions": ("Inference sessions open.", announced.sessions),
        "swarm_peer_cache_tokens_left": ("Cache tokens left.", announced.cache_tokens_left),
        "swarm_peer_cache_tokens": ("Attention cache size, in tokens.", status.cache_tokens),
        "swarm_peer_throughput_tokens_per_second": ("Throughput announced.", announced.throughput),
        "swarm_peer_draining": ("1 while the peer takes no new session.", float(status.draining)),
        "swarm_peer_kept_activation_bytes": ("Activations kept for backwards to come.",
                                             status.kept_bytes),
    }  # fmt: skip
    text = {"address": str(announced.address), "version": announced.version,
            "dtype": announced.dtype, "quantization": announced.quantization}  # fmt: skip
    lines = [*metric("swarm_peer_info", "gauge", "The peer's text, as labels (value 1).",
                     [((*peer, *text.items()), 1.0)])]  # fmt: skip
    for name, (field, help_text) in COUNTERS.items():
        lines.extend(metric(name, "counter", help_text, [(peer, getattr(status.activity, field))]))
    lines.extend(metric("swarm_peer_kept_backwards_total", "counter", "Backwards run on the "
                        "graph their forward kept.", [(peer, status.kept_backwards)]))  # fmt: skip
    lines.extend(metric("swarm_peer_kept_released_total", "counter", "Kept graphs their "
                        "callers released unused.", [(peer, status.kept_released)]))  # fmt: skip
    lines.extend(metric("swarm_peer_kept_too_large_total", "counter", "Training forwards whose "
                        "graph was too large.", [(peer, status.kept_too_large)]))  # fmt: skip
    for name, (help_text, value) in gauges.items():
        lines.extend(metric(name, "gauge", help_text, [(peer, value)]))
    lines.extend(histogram("swarm_peer_step_seconds", "Inference steps' time here, request to "
                           "reply.", [(peer, status.step_times)]))  # fmt: skip
    lines.extend(_reach(peer, status))
    return exposition(lines)


def _reach(peer: Labels, status: PeerStatus) -> Iterator[str]:
    """How others reach the peer, and the circuits it relays for others, if it does."""
    circuit = float(status.announcement.address.via is not None)
    yield from metric("swarm_peer_circuit", "gauge", "1 while it serves through a circuit relay.",
                      [(peer, circuit)])  # fmt: skip
    if status.reached is not None:
        reached = float(status.reached)
        yield from metric("swarm_peer_reached", "gauge", "1 if its initial peers dialled it "
                          "back where it listens, 0 if not.", [(peer, reached)])  # fmt: skip
    connections = status.connections
    if connections is not None:
        kinds = {"direct": connections.connections - connections.relayed,
                 "relayed": connections.relayed}  # fmt: skip
        samples = [((*peer, ("kind", kind)), float(count)) for kind, count in kinds.items()]
        yield from metric("swarm_peer_connections", "gauge", "Connections open, by kind.",
                          samples)  # fmt: skip
    relay = status.relay
    if relay is not None:
        for name, kind, help_text, value in (
            ("swarm_relay_listeners", "gauge", "Peers listening through it.", relay.listeners),
            ("swarm_relay_circuits_open", "gauge", "Circuits open through it.", relay.open),
            ("swarm_relay_circuits_total", "counter", "Circuits opened through it.",
             relay.circuits),
            ("swarm_relay_bytes_total", "counter", "Bytes it copied, both ways.",
             relay.relayed_bytes),
        ):  # fmt: skip
            yield from metric(name, kind, help_text, [(peer, float(value))])


def peer_metrics_handler(status: Callable[[], PeerStatus | None]) -> Handler:
    """The one route, `/metrics` (GET or HEAD; 503 until the peer serves)."""

    async def handle(request: Request) -> Response:
        if request.method not in ("GET", "HEAD"):
            return Response(405, b"405 method not allowed\n", headers=(("Allow", "GET, HEAD"),))
        if request.path != "/metrics":
            return Response(404, b"404 not found\n")
        now = status()
        if now is None:
            return Response(503, b"the peer is not serving yet\n", headers=(("Retry-After", "1"),))
        return Response(200, render_peer_metrics(now).encode("utf-8"), CONTENT_TYPE)

    return handle
