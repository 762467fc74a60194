"""The client-peer wire format: what one side writes the other parses; the rest is refused."""

from __future__ import annotations

from typing import Any

import pytest

from routing import span_protocol as protocol
from routing.address import PeerAddress
from routing.errors import ProtocolError
from security import Identity

TENSOR = {"dtype": "float32", "shape": [1, 1, 8]}


def test_round_trips() -> None:
    request = protocol.SessionRequest(start=2, end=5, max_length=64, batch_size=1)
    assert protocol.SessionRequest.parse(request.header()) == request
    assert "padding" not in request.header()["open"]
    padded = protocol.SessionRequest(2, 5, 64, batch_size=3, padding=(2, 0, 1))
    assert protocol.SessionRequest.parse(padded.header()) == padded
    opened = protocol.SessionOpened("abc", 2, 5, 64)
    assert protocol.SessionOpened.parse(opened.header()) == opened
    tuned = protocol.SessionRequest(2, 5, 64, adapter="tuned-1")
    assert protocol.SessionRequest.parse(tuned.header()) == tuned
    forked = protocol.SessionRequest(2, 5, 64, fork=protocol.SessionFork("abc-12", 30))
    assert protocol.SessionRequest.parse(forked.header()) == forked
    for forward in [
        protocol.ForwardRequest(1, 3, TENSOR),
        protocol.ForwardRequest(1, 3, TENSOR, [[0, 1], [1, 1]], adapter="tuned-1"),
        protocol.ForwardRequest(1, 3, TENSOR, keep=True),
        protocol.ForwardRequest(1, 3, TENSOR, kept="a" * 32),
    ]:
        assert protocol.ForwardRequest.parse(forward.header()) == forward
    assert protocol.ForwardRequest(1, 3, TENSOR).header().keys() == {"start", "end", "tensor"}
    assert protocol.kept_token({"tensor": TENSOR, "kept": "b" * 32}) == "b" * 32
    assert protocol.kept_token({"tensor": TENSOR}) is None
    assert protocol.parse_step(protocol.step_header(7, TENSOR)) == (7, TENSOR)
    assert protocol.server_time(protocol.step_header(7, TENSOR, 2.5)) == 0.0025
    timed = protocol.step_header(7, TENSOR, 2.5, 2.0)
    assert protocol.server_time(timed, "compute_ms") == 0.002
    assert protocol.server_time(protocol.step_header(7, TENSOR, 2.5), "compute_ms") is None


@pytest.mark.parametrize(
    "header",
    [
        {},
        {"open": None},
        {"open": {"start": "0", "end": 2, "max_length": 8, "batch_size": 1}},
        {"open": {"start": 0, "end": 2, "max_length": True, "batch_size": 1}},
        {"open": {"start": -1, "end": 2, "max_length": 8, "batch_size": 1}},
        {"open": {"start": 0, "end": 2**40, "max_length": 8, "batch_size": 1}},
        {"open": {"start": 0, "end": 2, "max_length": 8, "batch_size": 2, "padding": [1]}},
        {"open": {"start": 0, "end": 2, "max_length": 8, "batch_size": 1, "padding": ["1"]}},
        {"open": {"start": 0, "end": 2, "max_length": 8, "batch_size": 1, "padding": -1}},
        {"open": {"start": 0, "end": 2, "max_length": 8, "batch_size": 1, "padding": [-1]}},
        *(
            {"open": {"start": 0, "end": 2, "max_length": 8, "batch_size": 1, "fork": fork}}
            for fork in (
                "abc",
                {"session": "abc"},
                {"session": "abc", "tokens": -1},
                {"session": "", "tokens": 1},
                {"session": "a" * 65, "tokens": 1},
                {"session": 7, "tokens": 1},
            )
        ),
        {
            "open": {
                "start": 0,
                "end": 2,
                "max_length": 8,
                "batch_size": 5000,
                "padding": [0] * 5000,
            }
        },
    ],
)
def test_malformed_session_requests_are_refused(header: dict[str, Any]) -> None:
    with pytest.raises(ProtocolError):
        protocol.SessionRequest.parse(header)


@pytest.mark.parametrize(
    "mask",
    [
        1,
        [1, 0],
        [[0, 2]],
        [[0, 1], [1]],
        [[True, False]],
        [[0.0, 1.0]],
        [["1"]],
        [[1] * 1025] * 256,
    ],
)
def test_malformed_forward_masks_are_refused(mask: Any) -> None:
    with pytest.raises(ProtocolError, match="attention_mask"):
        protocol.ForwardRequest.parse(
            {**protocol.ForwardRequest(0, 1, TENSOR).header(), "attention_mask": mask}
        )


@pytest.mark.parametrize(("field", "value"), [("keep", 1), ("keep", "yes"), ("kept", 7),
                                             ("kept", ""), ("kept", "k" * 65)])  # fmt: skip
def test_malformed_kept_fields_are_refused(field: str, value: Any) -> None:
    with pytest.raises(ProtocolError, match=field):
        protocol.ForwardRequest.parse(
            {**protocol.ForwardRequest(0, 1, TENSOR).header(), field: value}
        )


@pytest.mark.parametrize("adapter", ["", "a b", 3, "x" * 200, ["tuned"]])
def test_malformed_adapter_names_are_refused(adapter: Any) -> None:
    with pytest.raises(ProtocolError, match="adapter"):
        protocol.ForwardRequest.parse(
            {**protocol.ForwardRequest(0, 1, TENSOR).header(), "adapter": adapter}
        )
    opening = protocol.SessionRequest(0, 1, 8).header()
    with pytest.raises(ProtocolError, match="adapter"):
        protocol.SessionRequest.parse({"open": {**opening["open"], "adapter": adapter}})


@pytest.mark.parametrize(
    "header", [{}, {"step": 1}, {"step": 1, "tensor": [1]}, {"step": None, "tensor": TENSOR}]
)
def test_malformed_steps_are_refused(header: dict[str, Any]) -> None:
    with pytest.raises(ProtocolError):
        protocol.parse_step(header)


ADDRESS = PeerAddress("10.0.0.2", 4000, Identity.generate().peer_id)


def test_relay_fields_round_trip() -> None:
    opened = protocol.SessionOpened("abc", 2, 5, 64, relay="f00d")
    assert protocol.SessionOpened.parse(opened.header()) == opened
    without = {"opened": {"session": "abc", "start": 2, "end": 5, "max_length": 64}}
    assert protocol.SessionOpened.parse(without).relay == ""  # a peer that does not relay
    targets = (
        protocol.RelayTarget(ADDRESS, "s1", "t1", 3),
        protocol.RelayTarget(ADDRESS, "s2", "t2", 0, reorder=(1, 1, 0)),
    )
    header = protocol.step_header(7, TENSOR, relay=targets)
    assert protocol.parse_relay(header) == targets
    assert protocol.parse_relay(protocol.step_header(7, TENSOR)) == ()
    assert protocol.was_relayed(protocol.step_header(7, TENSOR, relayed=True))
    assert not protocol.was_relayed(protocol.step_header(7, TENSOR, relayed=False))
    assert not protocol.was_relayed({"relayed": "yes"})
    join = protocol.RelayJoin("s1", "t1")
    assert protocol.RelayJoin.parse(join.header()) == join


TARGET = {"to": str(ADDRESS), "session": "s", "token": "t", "step": 0}


@pytest.mark.parametrize(
    "relay",
    [
        {"to": str(ADDRESS)},  # not a list
        [TARGET] * (protocol.MAX_RELAY_HOPS + 1),
        ["x"],
        [{**TARGET, "to": "nowhere"}],
        [{**TARGET, "to": 5}],
        [{**TARGET, "session": ""}],
        [{**TARGET, "token": "t" * (protocol.MAX_TOKEN_LENGTH + 1)}],
        [{**TARGET, "step": -1}],
        [{k: v for k, v in TARGET.items() if k != "step"}],
    ],
)
def test_malformed_relay_targets_are_refused(relay: Any) -> None:
    with pytest.raises(ProtocolError):
        protocol.parse_relay({"step": 0, "tensor": TENSOR, "relay": relay})


def test_a_steps_position_round_trips_and_malformed_ones_are_refused() -> None:
    assert protocol.parse_position(protocol.step_header(7, TENSOR, position=12)) == 12
    assert protocol.parse_position(protocol.step_header(7, TENSOR)) is None
    for position in (-1, "3", 2.5, True, [1]):
        with pytest.raises(ProtocolError, match="position"):
            protocol.parse_position({"step": 0, "tensor": TENSOR, "position": position})


def test_a_steps_reorder_round_trips_and_malformed_ones_are_refused() -> None:
    assert protocol.parse_reorder(protocol.step_header(7, TENSOR, reorder=(2, 0, 0))) == (2, 0, 0)
    assert protocol.parse_reorder(protocol.step_header(7, TENSOR)) == ()
    for reorder in ({"0": 1}, [0, -1], [0, True], [0, 1.0], [0] * (protocol.MAX_ROWS + 1)):
        with pytest.raises(ProtocolError, match="reorder"):
            protocol.parse_reorder({"step": 0, "tensor": TENSOR, "reorder": reorder})
    with pytest.raises(ProtocolError, match="reorder"):
        protocol.parse_relay({"relay": [{**TARGET, "reorder": "0"}]})


@pytest.mark.parametrize(
    "join", [{}, {"join": []}, {"join": {"session": "s"}}, {"join": {"session": 1, "token": "t"}}]
)
def test_malformed_relay_joins_are_refused(join: dict[str, Any]) -> None:
    with pytest.raises(ProtocolError):
        protocol.RelayJoin.parse(join)


def test_a_peer_cannot_claim_a_nonsense_server_time() -> None:
    for value in (-1, "3", True, 1e12):
        assert protocol.server_time({"server_ms": value}) is None
