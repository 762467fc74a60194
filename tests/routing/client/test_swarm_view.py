"""Which DHT records a client may route through (`usable_announcements`, pure), and which
peers a client running a LoRA adapter routes through."""

from __future__ import annotations

import dataclasses

import pytest

from routing.address import PeerAddress
from routing.announcement import PeerAnnouncement, PeerState
from routing.client.swarm_view import SwarmView, usable_announcements
from routing.errors import ProtocolError
from routing.path_selection import NoRouteError
from routing.records import DHTValue
from security import Identity, PeerId


def _announcement(identity: Identity, **changes: object) -> PeerAnnouncement:
    record = PeerAnnouncement(
        address=PeerAddress("127.0.0.1", 4000, identity.peer_id),
        model="tiny-model", start=0, end=4, state=PeerState.ONLINE, throughput=100.0,
        cache_tokens_left=1000, sessions=0, dtype="float32", version="test",
    )  # fmt: skip
    return dataclasses.replace(record, **changes)  # type: ignore[arg-type]


def test_only_online_records_of_this_model_that_fit_and_name_their_signer() -> None:
    good, offline, other, too_long, joining, draining, impostor, victim = (
        Identity.generate() for _ in range(8)
    )
    records: dict[PeerId, PeerAnnouncement] = {
        good.peer_id: _announcement(good),
        offline.peer_id: _announcement(offline, state=PeerState.OFFLINE),
        other.peer_id: _announcement(other, model="other-model"),
        too_long.peer_id: _announcement(too_long, end=5),
        joining.peer_id: _announcement(joining, state=PeerState.JOINING),
        draining.peer_id: _announcement(draining, state=PeerState.DRAINING),
        # signed by `impostor` but pointing at someone else's address: traffic redirection
        impostor.peer_id: _announcement(victim),
    }
    usable = usable_announcements(records, "tiny-model", num_blocks=4)
    assert usable == {str(good.peer_id): records[good.peer_id]}


def test_adapters_quantization_and_session_length_travel_in_a_record() -> None:
    record = _announcement(Identity.generate(), adapters=("tuned", "chat-v2"), quantization="int8")
    assert PeerAnnouncement.decode(record.encode()) == record
    plain = PeerAnnouncement.decode(_announcement(Identity.generate()).encode())
    assert plain.adapters == () and plain.quantization == ""
    fields = record.to_fields()
    for bad in [["a b"], "tuned", [1], ["x"] * 9]:
        with pytest.raises(ProtocolError, match="adapters"):
            PeerAnnouncement.from_fields({**fields, "adapters": bad})
    for wrong in ["<b>int8</b>", "x" * 17, 8]:
        with pytest.raises(ProtocolError, match="quantization"):
            PeerAnnouncement.from_fields({**fields, "quantization": wrong})
    with pytest.raises(ProtocolError, match="max_session_length"):
        PeerAnnouncement.from_fields({**fields, "max_session_length": "long"})
    with pytest.raises(ProtocolError, match=">= 0"):
        PeerAnnouncement.from_fields({**fields, "max_session_length": -1})
    longest = _announcement(Identity.generate(), max_session_length=2048)
    assert PeerAnnouncement.decode(longest.encode()).max_session_length == 2048
    del fields["quantization"], fields["adapters"], fields["max_session_length"]  # older
    older = PeerAnnouncement.from_fields(fields)
    assert older.quantization == "" and older.max_session_length == 0


def test_a_client_with_an_adapter_routes_through_the_peers_that_run_it() -> None:
    plain, tuned_head, tuned_tail = (Identity.generate() for _ in range(3))
    view = SwarmView(
        None,
        None,
        "tiny-model",
        4,
        adapter="tuned",
        clock=lambda: 0.0,  # type: ignore[arg-type]
    )
    view.peers = {
        str(plain.peer_id): _announcement(plain, throughput=1000.0),
        str(tuned_head.peer_id): _announcement(tuned_head, end=2, adapters=("tuned",)),
        str(tuned_tail.peer_id): _announcement(tuned_tail, start=2, adapters=("other", "tuned")),
    }
    assert [hop.peer for hop in view.route(0, 4)] == [
        str(tuned_head.peer_id),
        str(tuned_tail.peer_id),
    ]
    view.adapter = None
    assert [hop.peer for hop in view.route(0, 4)] == [str(plain.peer_id)]
    view.adapter = "missing"
    with pytest.raises(NoRouteError, match=r"block\(s\) 0-3 with adapter 'missing'"):
        view.route(0, 4)


class _Listed:
    """A DHT that lists each peer's record under every block's key."""

    def __init__(self) -> None:
        self.records: dict[PeerId, PeerAnnouncement] = {}

    async def get(self, key: str) -> dict[PeerId, DHTValue]:
        return {peer: DHTValue(a.encode(), 1e9) for peer, a in self.records.items()}


class _Answering:
    async def ping(self, address: PeerAddress, *, timeout: float) -> float:  # noqa: ASYNC109
        return 0.001


async def test_a_banned_peer_that_moved_is_forgiven_at_its_new_address() -> None:
    """A peer banned where it was (it left its relay, say) is routed through again once its
    record names another address; one still at the same address stays banned."""
    moving, staying = Identity.generate(), Identity.generate()
    dht = _Listed()
    dht.records = {identity.peer_id: _announcement(identity) for identity in (moving, staying)}
    view = SwarmView(_Answering(), dht, "tiny-model", 4, clock=lambda: 0.0)  # type: ignore[arg-type]
    await view.refresh()
    for identity in (moving, staying):
        view.bans.ban(str(identity.peer_id))
    moved = PeerAddress("127.0.0.1", 4001, moving.peer_id)
    dht.records[moving.peer_id] = _announcement(moving, address=moved)
    await view.refresh()
    assert view.bans.banned() == {str(staying.peer_id)}
    assert view.peers[str(moving.peer_id)].address == moved
