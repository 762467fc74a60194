"""The swarm's picture as Prometheus metrics (text exposition format 0.0.4), for `/metrics`.
Pure.

Every metric is a gauge named `swarm_...`: per model, its blocks, whether a full chain
exists, its peers by state and each block's coverage; per peer (labels `model` and `peer`,
its full id), what the page's table shows, as numbers, and `swarm_peer_info` (value 1) with
the text (address, state, version, dtype, quantization) as labels; per circuit relay (label
`relay`), its state, the peers announced through it, its load as it answered, its RTT, and
`swarm_relay_info` with its address and state. A value the monitor does not know (the RTT
of a peer that does not answer, the tokens per second before two probes) has no sample.
Label values come from peers and are escaped as the format requires.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

from routing.announcement import PeerState

from ..prometheus import Labels, Sample, exposition, metric
from .snapshot import UNREACHABLE, ModelView, PeerRow, RelayRow, SwarmSnapshot

STATES = (*(state.value for state in PeerState if state is not PeerState.OFFLINE), UNREACHABLE)

# name -> help, for the gauges of a peer's row (each read by `_peer_values`)
PEER_GAUGES = {
    "swarm_peer_span_start": "First block the peer serves.",
    "swarm_peer_span_end": "Block after the last one the peer serves.",
    "swarm_peer_reachable": "1 unless the peer missed the monitor's last pings.",
    "swarm_peer_throughput_tokens_per_second": "Throughput the peer announces.",
    "swarm_peer_serving_tokens_per_second": "Tokens per second its sessions ran lately.",
    "swarm_peer_sessions": "Inference sessions open on the peer.",
    "swarm_peer_cache_tokens_left": "Attention cache tokens the peer has left.",
    "swarm_peer_rtt_seconds": "Round trip to the peer, measured by the monitor.",
    "swarm_peer_last_seen_timestamp_seconds": "When the peer last answered the monitor.",
    "swarm_peer_record_expiration_timestamp_seconds": "When the peer's freshest record expires.",
}

# name -> help, for the gauges of a relay's row (each read by `_relay_values`)
RELAY_GAUGES = {
    "swarm_relay_reachable": "1 unless the relay missed the monitor's last probes.",
    "swarm_relay_peers": "Listed peers whose address is a circuit through the relay.",
    "swarm_relay_listeners": "Peers listening through the relay, as it answered.",
    "swarm_relay_max_listeners": "Peers the relay takes at most.",
    "swarm_relay_circuits_open": "Circuits open through the relay, as it answered.",
    "swarm_relay_max_circuits": "Circuits the relay holds open at most.",
    "swarm_relay_rtt_seconds": "Round trip to the relay, measured by the monitor.",
    "swarm_relay_last_seen_timestamp_seconds": "When the relay last answered the monitor.",
    "swarm_relay_listing_expiration_timestamp_seconds": "When the relay's listing expires.",
}


def render_metrics(snapshot: SwarmSnapshot) -> str:
    """The snapshot as the text Prometheus scrapes."""
    lines = [
        *_gauge("swarm_snapshot_timestamp_seconds", "When the monitor read the swarm.",
                [((), snapshot.taken_at)]),
        *_gauge("swarm_skipped_records", "Malformed or inconsistent records ignored.",
                [((), snapshot.skipped_records)]),
        *_gauge("swarm_model_blocks", "Transformer blocks of the model.",
                [(_model(view), view.num_blocks) for view in snapshot.models]),
        *_gauge("swarm_model_full_chain", "1 if online peers cover every block.",
                [(_model(view), float(view.full_chain)) for view in snapshot.models]),
        *_gauge("swarm_model_peers", "Peers listed for the model, by state.",
                [sample for view in snapshot.models for sample in _peers_by_state(view)]),
        *_gauge("swarm_block_peers", "Online peers that serve the block.",
                [sample for view in snapshot.models for sample in _blocks(view, "peers")]),
        *_gauge("swarm_block_throughput_tokens_per_second",
                "Announced throughput of the online peers that serve the block.",
                [sample for view in snapshot.models for sample in _blocks(view, "throughput")]),
        *_gauge("swarm_peer_info", "A peer's announced text, as labels (value 1).",
                [(_info(view, row), 1.0) for view in snapshot.models for row in view.peers]),
    ]  # fmt: skip
    for name, help_text in PEER_GAUGES.items():
        samples = [
            (_peer(view, row), value)
            for view in snapshot.models
            for row in view.peers
            if (value := _peer_values(row)[name]) is not None
        ]
        lines.extend(_gauge(name, help_text, samples))
    lines.extend(_gauge("swarm_relay_info", "A relay's address and state, as labels (value 1).",
                        [(_relay_info(row), 1.0) for row in snapshot.relays]))  # fmt: skip
    for name, help_text in RELAY_GAUGES.items():
        relays = [(_relay(row), value) for row in snapshot.relays
                  if (value := _relay_values(row)[name]) is not None]  # fmt: skip
        lines.extend(_gauge(name, help_text, relays))
    return exposition(lines)


def _gauge(name: str, help_text: str, samples: list[Sample]) -> Iterator[str]:
    return metric(name, "gauge", help_text, samples)


def _model(view: ModelView) -> Labels:
    return (("model", view.model),)


def _peer(view: ModelView, row: PeerRow) -> Labels:
    return (*_model(view), ("peer", row.peer_id.to_base58()))


def _info(view: ModelView, row: PeerRow) -> Labels:
    text = {"address": row.address, "state": row.state, "version": row.version,
            "dtype": row.dtype, "quantization": row.quantization}  # fmt: skip
    return (*_peer(view, row), *text.items())


def _peers_by_state(view: ModelView) -> Iterator[Sample]:
    counts = Counter(row.state for row in view.peers)
    for state in STATES:
        yield (*_model(view), ("state", state)), counts[state]


def _blocks(view: ModelView, field: str) -> Iterator[Sample]:
    for index, block in enumerate(view.blocks):
        yield (*_model(view), ("block", str(index))), getattr(block, field)


def _peer_values(row: PeerRow) -> dict[str, float | None]:
    return {
        "swarm_peer_span_start": row.start,
        "swarm_peer_span_end": row.end,
        "swarm_peer_reachable": float(row.state != UNREACHABLE),
        "swarm_peer_throughput_tokens_per_second": row.throughput,
        "swarm_peer_serving_tokens_per_second": row.serving,
        "swarm_peer_sessions": row.sessions,
        "swarm_peer_cache_tokens_left": row.cache_tokens_left,
        "swarm_peer_rtt_seconds": row.rtt,
        "swarm_peer_last_seen_timestamp_seconds": row.last_seen,
        "swarm_peer_record_expiration_timestamp_seconds": row.expiration,
    }


def _relay(row: RelayRow) -> Labels:
    return (("relay", row.peer_id.to_base58()),)


def _relay_info(row: RelayRow) -> Labels:
    return (*_relay(row), ("address", row.address), ("state", row.state))


def _relay_values(row: RelayRow) -> dict[str, float | None]:
    load = row.load
    return {
        "swarm_relay_reachable": float(row.state != UNREACHABLE),
        "swarm_relay_peers": row.peers,
        "swarm_relay_listeners": None if load is None else load.listeners,
        "swarm_relay_max_listeners": None if load is None else load.max_listeners,
        "swarm_relay_circuits_open": None if load is None else load.open,
        "swarm_relay_max_circuits": None if load is None else load.max_circuits,
        "swarm_relay_rtt_seconds": row.rtt,
        "swarm_relay_last_seen_timestamp_seconds": row.last_seen,
        "swarm_relay_listing_expiration_timestamp_seconds": row.expiration,
    }
