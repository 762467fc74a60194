"""Which DHT records a client may route through (`usable_announcements`, pure)."""

from __future__ import annotations

import dataclasses

from routing.address import PeerAddress
from routing.announcement import PeerAnnouncement, PeerState
from routing.client.swarm_view import usable_announcements
from security import Identity, PeerId


def _announcement(identity: Identity, **changes: object) -> PeerAnnouncement:
    record = PeerAnnouncement(
        address=PeerAddress("127.0.0.1", 4000, identity.peer_id),
        model="tiny-model", start=0, end=4, state=PeerState.ONLINE, throughput=100.0,
        cache_tokens_left=1000, sessions=0, dtype="float32", version="test",
    )  # fmt: skip
    return dataclasses.replace(record, **changes)  # type: ignore[arg-type]


def test_only_online_records_of_this_model_that_fit_and_name_their_signer() -> None:
    good, offline, other, too_long, joining, impostor, victim = (
        Identity.generate() for _ in range(7)
    )
    records: dict[PeerId, PeerAnnouncement] = {
        good.peer_id: _announcement(good),
        offline.peer_id: _announcement(offline, state=PeerState.OFFLINE),
        other.peer_id: _announcement(other, model="other-model"),
        too_long.peer_id: _announcement(too_long, end=5),
        joining.peer_id: _announcement(joining, state=PeerState.JOINING),
        # signed by `impostor` but pointing at someone else's address: traffic redirection
        impostor.peer_id: _announcement(victim),
    }
    usable = usable_announcements(records, "tiny-model", num_blocks=4)
    assert usable == {str(good.peer_id): records[good.peer_id]}
