"""One client host's share of a peer's room (`peer.host_share`), pure."""

from __future__ import annotations

from pathlib import Path

import pytest

from peer.errors import HostShareError
from peer.host_share import HostShares, client_host
from routing.rpc import CallContext
from security import Identity
from swarm.cli import build_parser
from swarm.commands.peer import peer_config
from swarm.errors import SwarmError
from tests.support.tiny_model import write_tiny_model


def test_a_host_is_its_address_its_ipv6_network_or_the_caller_itself() -> None:
    caller = Identity.generate().peer_id

    def host(remote: str, circuit: str = "") -> str | None:
        return client_host(CallContext(caller, remote, circuit))

    assert host("203.0.113.7") == "203.0.113.7"
    assert host("2001:db8:1:2:aaaa::1") == host("2001:db8:1:2::9") == "2001:db8:1:2::/64"
    assert host("2001:db8:1:3::9") != host("2001:db8:1:2::9")
    for loopback in ("127.0.0.1", "127.3.2.1", "::1"):
        assert host(loopback) is None  # this machine: not limited
    assert host("", "203.0.113.7") == "203.0.113.7"  # through a circuit: where its relay says
    assert host("") == host("", "127.0.0.1") == f"peer {caller}"  # unknown, or the relay's
    assert host("") != client_host(CallContext(Identity.generate().peer_id, ""))  # own machine


def test_a_host_gets_its_share_of_tokens_and_of_sessions_and_no_more() -> None:
    shares = HostShares(0.5, max_tokens=100, max_sessions=4)
    shares.take("a", 30)
    shares.take("a", 20)  # 50 tokens: the whole share
    with pytest.raises(HostShareError, match=r"0\.5 of this peer's 4 sessions and 100 tokens"):
        shares.take("a", 1)
    shares.take("b", 10)  # another host
    shares.give_back("a", 20)
    shares.take("a", 5)
    with pytest.raises(HostShareError):  # tokens fit (40), sessions do not (3 > 2)
        shares.take("a", 5)
    assert (shares.tokens["a"], shares.sessions["a"]) == (35, 2)  # a refusal counts nothing
    shares.give_back("a", 30)
    shares.give_back("a", 5)
    assert "a" not in shares.tokens and "a" not in shares.sessions  # none left


def test_no_limit_for_a_share_of_one_or_this_machine() -> None:
    whole = HostShares(1.0, max_tokens=10, max_sessions=1)
    half = HostShares(0.5, max_tokens=10, max_sessions=1)
    for _ in range(5):
        whole.take("a", 10)  # the backend's own limits still hold: not this one's to say
        half.take(None, 10)
    with pytest.raises(HostShareError):
        half.take("a", 1)  # half a session: none
    for share in (0.0, -0.5, 1.5):
        with pytest.raises(ValueError, match="share"):
            HostShares(share, max_tokens=10, max_sessions=1)


def test_the_command_line_takes_a_share(tmp_path: Path) -> None:
    checkpoint = str(write_tiny_model(tmp_path / "tiny"))
    parser = build_parser()
    assert peer_config(parser.parse_args(["peer", checkpoint])).host_share == 1.0
    half = parser.parse_args(["peer", checkpoint, "--host-share", "0.5"])
    assert peer_config(half).host_share == 0.5
    for wrong in ("0", "1.5"):
        with pytest.raises(SwarmError, match="--host-share must be more than 0 and at most 1"):
            peer_config(parser.parse_args(["peer", checkpoint, "--host-share", wrong]))
