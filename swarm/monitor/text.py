"""The swarm's picture as plain text, for a terminal (`swarm status`). Pure."""

from __future__ import annotations

from .snapshot import ModelView, PeerRow, SwarmSnapshot

COLUMNS = ("PEER", "BLOCKS", "STATE", "TOK/S", "CACHE LEFT", "SESSIONS", "RTT", "WEIGHTS")


def render_text(snapshot: SwarmSnapshot) -> str:
    """Per model: its coverage, then a table of its peers (one line each)."""
    if not snapshot.models:
        return "no model is announced in this swarm\n"
    return "\n".join(_model(view) for view in snapshot.models)


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
    rows = [COLUMNS, *(_row(peer) for peer in view.peers)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    lines = ["  " + "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
             for row in rows]  # fmt: skip
    return "\n".join([head, *lines]) + "\n"


def _row(peer: PeerRow) -> tuple[str, ...]:
    rtt = "no reply" if peer.rtt is None else f"{peer.rtt * 1000:.1f} ms"
    weights = peer.dtype + (f" {peer.quantization}" if peer.quantization else "")
    return (
        peer.peer_id.short(),
        f"{peer.start}-{peer.end - 1}",
        peer.state,
        f"{peer.throughput:.1f}",
        str(peer.cache_tokens_left),
        str(peer.sessions),
        rtt,
        weights,
    )
