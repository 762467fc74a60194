"""DHT message parsing: what a node accepts from requests and replies."""

from __future__ import annotations

import random

import pytest

from routing.dht import MalformedReplyError, RecordPolicy, protocol
from routing.errors import HandlerError
from security import PeerId

from .helpers import random_address


def test_nodes_round_trip() -> None:
    rng = random.Random(40)
    addresses = [random_address(rng, host=f"10.0.0.{i}", port=4000 + i) for i in range(1, 21)]
    header = {"nodes": [protocol.encode_node(a) for a in addresses]}
    assert protocol.reply_nodes(header, max_nodes=20) == addresses
    with pytest.raises(MalformedReplyError, match="at most 19"):
        protocol.reply_nodes(header, max_nodes=19)


def test_sender_takes_the_authenticated_peer_id() -> None:
    rng = random.Random(41)
    me = PeerId(rng.randbytes(32))
    address = protocol.request_sender({"sender": ["10.0.0.1", 4000]}, me)
    assert address is not None and address.peer_id == me and address.port == 4000
    for bad in (
        None,
        "10.0.0.1:4000",
        ["10.0.0.1"],
        ["", 4000],
        ["h", 0],
        ["h", True],
        ["h", 1 << 16],
    ):
        assert protocol.request_sender({"sender": bad}, me) is None


@pytest.mark.parametrize(
    "header",
    [{"target": "x" * 20}, {"target": bytes(21)}, {"key": b"bytes"}, {"key": ""}],
)
def test_bad_requests_raise_handler_errors(header: dict[str, object]) -> None:
    with pytest.raises(HandlerError):
        if "target" in header:
            protocol.request_target(header)
        else:
            protocol.request_key(header, RecordPolicy())


def test_records_in_replies_are_capped_and_typed() -> None:
    policy = RecordPolicy()
    with pytest.raises(MalformedReplyError, match="at most 2"):
        protocol.reply_records("k", {"records": [[]] * 3}, policy, max_records=2)
    with pytest.raises(MalformedReplyError, match="bad record"):
        protocol.reply_records("k", {"records": [[1, 2, 3, 4, 5]]}, policy, max_records=2)
    assert protocol.reply_records("k", {}, policy, max_records=2) == []
    with pytest.raises(MalformedReplyError):
        protocol.reply_stored({"stored": 1})
