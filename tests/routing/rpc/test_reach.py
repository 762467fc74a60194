"""The built-in "reach" over TCP on 127.0.0.1: a node asks a peer to dial it back at the
address it announces, and learns whether others can reach it there."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio

from routing.address import PeerAddress
from routing.errors import RemoteError
from routing.public_address import PublicAddress
from routing.rpc import CircuitRelay, Packet, RPCHost, check_reach, log_reach, serve_via
from routing.rpc.reach import REACH
from routing.transport import TcpTransport
from security import Identity
from tests.support.ports import free_port

LIMIT = 20  # seconds: every test here is bounded in real time


@asynccontextmanager
async def _hosts(public: PublicAddress | None = None) -> AsyncIterator[tuple[RPCHost, RPCHost]]:
    """The peer asked, and the node that asks, which announces `public`."""
    with trio.fail_after(LIMIT):
        async with trio.open_nursery() as nursery:
            asked = RPCHost(Identity.generate(), TcpTransport())
            await nursery.start(asked.run, "127.0.0.1", 0)
            asking = RPCHost(Identity.generate(), TcpTransport())
            await nursery.start(asking.run, "127.0.0.1", 0, public)
            yield asked, asking
            nursery.cancel_scope.cancel()


async def test_a_node_others_can_dial_is_told_so(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="routing.rpc.reach")
    async with _hosts() as (asked, asking):
        reach = await check_reach(asking, asked.address)
        assert (reach.reached, reach.seen_from, reach.reason) == (True, "127.0.0.1", "")
        assert await log_reach(asking, [asked.address]) == reach
    assert f"others reach us at {asking.address}" in caplog.text


async def test_an_address_nobody_listens_at_is_reported_with_what_to_do(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """As behind NAT with no port forwarded: the announced port is closed. The warning says
    what to do; the peer asked serves on."""
    async with _hosts(PublicAddress(port=free_port())) as (asked, asking):
        reach = await log_reach(asking, [asked.address])
        assert reach is not None and not reach.reached and reach.seen_from == "127.0.0.1"
        assert str(asking.address.port) in reach.reason
        assert (await check_reach(asking, asked.address)).reached is False
        assert await asked.ping(asking.address, timeout=5) >= 0  # it still talks to us
    assert "others cannot reach us" in caplog.text and "--public-port" in caplog.text


async def test_the_peer_asked_dials_no_third_party() -> None:
    """An address on another host than the caller's, or with another peer id, is refused
    without a dial."""
    async with _hosts(PublicAddress(host="127.0.0.2")) as (asked, asking):
        reach = await check_reach(asking, asked.address)
        assert not reach.reached and "is not 127.0.0.1" in reach.reason
        someone_else = str(asked.address)  # a real node's address, not the caller's
        for address in (someone_else, "not an address", None):
            with pytest.raises(RemoteError, match="bad_request"):
                await asking.call(asked.address, REACH, Packet({"address": address}), timeout=5)


async def test_nobody_to_ask_is_no_answer() -> None:
    async with _hosts() as (_, asking):
        assert await log_reach(asking, []) is None
        silent = PeerAddress("127.0.0.1", free_port(), Identity.generate().peer_id)
        assert await log_reach(asking, [silent]) is None  # it did not answer: not asked again


async def test_a_peer_asked_through_a_circuit_cannot_say() -> None:
    """Asked through a circuit, a peer does not know where the call came from: it declines
    (it would else answer that nobody reaches the caller), and asking it finds nothing. (The
    asker announces a port nobody listens at, as behind NAT: else the peer would dial it
    back, and answer over that direct connection.)"""
    with trio.fail_after(LIMIT):
        async with _hosts(PublicAddress(port=free_port())) as (relay, asking), \
                trio.open_nursery() as nursery:  # fmt: skip
            CircuitRelay().register(relay)
            behind = RPCHost(Identity.generate(), TcpTransport())
            await nursery.start(behind.run_outbound)
            address = await nursery.start(serve_via, behind, relay.address)
            with pytest.raises(RemoteError, match="unknown_host"):
                await check_reach(asking, address)
            assert await log_reach(asking, [address]) is None
            nursery.cancel_scope.cancel()


class _NoDialOut(TcpTransport):
    """Listens as TCP does, but cannot dial anyone (as behind a strict firewall)."""

    async def connect(self, host: str, port: int) -> trio.abc.Stream:
        raise OSError("outbound connections are blocked here")


async def test_one_peer_that_cannot_dial_back_is_not_the_last_word() -> None:
    """Two opinions: a peer that cannot dial out says "unreached", the next one reaches us,
    and that stands; two that cannot are believed, and the third is not asked."""
    with trio.fail_after(LIMIT):
        async with _hosts() as (asked, asking), trio.open_nursery() as nursery:
            blocked = []
            for _ in range(2):
                host = RPCHost(Identity.generate(), _NoDialOut())
                blocked.append(await nursery.start(host.run, "127.0.0.1", 0))
            reach = await log_reach(asking, [blocked[0], asked.address])
            assert reach is not None and reach.reached
            reach = await log_reach(asking, [*blocked, asked.address])
            assert reach is not None and not reach.reached
            assert "outbound connections are blocked" in reach.reason
            nursery.cancel_scope.cancel()
