"""The swarm's picture as plain text, for a terminal (`swarm status`). Pure."""

from __future__ import annotations

from collections.abc import Sequence

from .snapshot import ModelView, PeerRow, RelayRow, SwarmSnapshot

COLUMNS = ("PEER", "BLOCKS", "STATE", "TOK/S", "CACHE LEFT", "SESSIONS", "RTT", "WEIGHTS", "VIA")
RELAY_COLUMNS = ("RELAY", "ADDRESS", "STATE", "PEERS", "LISTENING", "CIRCUITS", "RTT")


def render_text(snapshot: SwarmSnapshot) -> str:
    """Per model: its coverage, then a table of its peers (one line each); then the relays."""
    parts = [_model(view) for view in snapshot.models] or ["no model is announced in this swarm\n"]
    if snapshot.relays:
        parts.append(_relays(snapshot.relays))
    return "\n".join(parts)


def _model(view: ModelView) -> str:
    if view.full_chain:
        coverage = "full chain"
    else:
        coverage = "gaps at blocks " + ", ".join(f"{a}-{b - 1}" for a, b in view.gaps)
    weakest = min((block.throughput for block in view.blocks), default=0.0)
    head = (
        f"{view.model}: {view.num_blocks} blocks, {len(view.peers)} peers, {coverage}, "
        f"weakest block {weakest:.1f} tok/s"
    )
    return _table(head, COLUMNS, [_row(peer) for peer in view.peers])


def _relays(relays: Sequence[RelayRow]) -> str:
    head = f"circuit relays: {len(relays)}"
    return _table(head, RELAY_COLUMNS, [_relay_row(relay) for relay in relays])


def _table(head: str, columns: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    cells = [columns, *rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    lines = ["  " + "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
             for row in cells]  # fmt: skip
    return "\n".join([head, *lines]) + "\n"


def _rtt(seconds: float | None) -> str:
    return "no reply" if seconds is None else f"{seconds * 1000:.1f} ms"


def _row(peer: PeerRow) -> tuple[str, ...]:
    weights = peer.dtype + (f" {peer.quantization}" if peer.quantization else "")
    return (
        peer.peer_id.short(),
        f"{peer.start}-{peer.end - 1}",
        peer.state,
        f"{peer.throughput:.1f}",
        str(peer.cache_tokens_left),
        str(peer.sessions),
        _rtt(peer.rtt),
        weights,
        "" if peer.via is None else peer.via.short(),
    )


def _relay_row(relay: RelayRow) -> tuple[str, ...]:
    load = relay.load
    return (
        relay.peer_id.short(),
        relay.address.rsplit("/", 1)[0],
        relay.state,
        str(relay.peers),
        "?" if load is None else f"{load.listeners}/{load.max_listeners}",
        "?" if load is None else f"{load.open}/{load.max_circuits}",
        _rtt(relay.rtt),
    )
