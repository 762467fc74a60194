"""A private swarm over TCP: hosts talk only to the peers among their members. An outsider
that dials in is refused right after the handshake with a typed error (its calls, unary or
stream, never reach a handler), members are never disturbed, and nobody dials an outsider."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path

import pytest
import trio

from routing.errors import NotAMemberError
from routing.rpc import CallContext, Packet, RPCConfig, RPCHost
from routing.transport import TcpTransport
from security import Identity

from .helpers import CountingTransport, wait_until

LIMIT = 20  # seconds: every test here is bounded in real time


@asynccontextmanager
async def _swarm(
    members: list[Identity], outsider: Identity
) -> AsyncIterator[tuple[list[RPCHost], RPCHost, list[str]]]:
    """Members' hosts (each with "echo", which records who called), and an outsider's host
    with no members list of its own."""
    config = RPCConfig(members=frozenset(identity.peer_id for identity in members))
    served: list[str] = []

    async def echo(request: Packet, context: CallContext) -> Packet:
        served.append(str(context.peer_id))
        return Packet(dict(request.header))

    with trio.fail_after(LIMIT):
        async with trio.open_nursery() as nursery:
            hosts = []
            for identity in [*members, outsider]:
                host_config = RPCConfig() if identity is outsider else config
                rpc = RPCHost(identity, CountingTransport(TcpTransport()), host_config)
                rpc.add_unary("echo", echo)
                await nursery.start(partial(rpc.run, "127.0.0.1", 0))
                hosts.append(rpc)
            yield hosts[:-1], hosts[-1], served
            nursery.cancel_scope.cancel()


async def test_an_outsider_is_refused_and_members_are_served() -> None:
    members = [Identity.generate(), Identity.generate()]
    async with _swarm(members, Identity.generate()) as ([a, b], outsider, served):
        with pytest.raises(NotAMemberError, match="not_a_member"):
            await outsider.call(a.address, "echo", Packet({"x": 1}), timeout=5)
        with pytest.raises(NotAMemberError, match="not_a_member"):
            async with outsider.open_stream(a.address, "echo") as stream:
                await stream.send(Packet({"x": 2}))
                await stream.receive()
        reply = await b.call(a.address, "echo", Packet({"x": 3}), timeout=5)
        assert reply.header == {"x": 3}
        assert served == [str(b.peer_id)]  # the outsider's calls reached no handler
        await wait_until(lambda: a.stats().connections == 1 and a.stats().unauthenticated == 0)
        assert outsider.stats().connections == 0


async def test_a_member_never_dials_an_outsider() -> None:
    members = [Identity.generate()]
    async with _swarm(members, Identity.generate()) as ([a], outsider, served):
        with pytest.raises(NotAMemberError, match="not among this swarm's members"):
            await a.call(outsider.address, "echo", Packet(), timeout=5)
        with pytest.raises(NotAMemberError):
            async with a.open_stream(outsider.address, "echo"):
                pass
        transport = a._transport
        assert isinstance(transport, CountingTransport) and transport.connects == 0
        assert served == []


def test_a_host_must_be_among_its_own_members() -> None:
    config = RPCConfig(members=frozenset({Identity.generate().peer_id}))
    with pytest.raises(NotAMemberError, match="our own peer id"):
        RPCHost(Identity.generate(), TcpTransport(), config)


async def test_a_host_follows_its_members_file(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Taken off the list, a member's connection closes and it is refused from then on;
    put on it, an outsider is served; a file that no longer reads keeps the list."""
    a, b, c = Identity.generate(), Identity.generate(), Identity.generate()
    path = tmp_path / "members.txt"
    path.write_text(f"{a.peer_id}\n{b.peer_id}\n")
    config = RPCConfig(members_file=path, members_check=0.02)
    with trio.fail_after(LIMIT):
        async with trio.open_nursery() as nursery:
            host = RPCHost(a, TcpTransport(), config)
            host.add_unary("echo", _echo)
            await nursery.start(partial(host.run, "127.0.0.1", 0))
            member, outsider = RPCHost(b, TcpTransport()), RPCHost(c, TcpTransport())
            await nursery.start(member.run_outbound)
            await nursery.start(outsider.run_outbound)
            assert (await member.call(host.address, "echo", Packet({"x": 1}), timeout=5)).header
            with pytest.raises(NotAMemberError):
                await outsider.call(host.address, "echo", Packet(), timeout=5)

            path.write_text(f"{a.peer_id}\n{c.peer_id}  # b is out, c is in\n")
            await wait_until(lambda: member.stats().connections == 0)
            with pytest.raises(NotAMemberError):
                await member.call(host.address, "echo", Packet(), timeout=5)
            await outsider.call(host.address, "echo", Packet({"x": 2}), timeout=5)

            path.write_text("not a peer id\n")  # a broken edit: the list stays as it was
            await wait_until(lambda: "keeping the members list as it was" in caplog.text)
            await outsider.call(host.address, "echo", Packet({"x": 3}), timeout=5)
            nursery.cancel_scope.cancel()


async def _echo(request: Packet, context: CallContext) -> Packet:
    return Packet(dict(request.header))


def test_a_config_takes_the_members_or_their_file() -> None:
    ids = [Identity.generate().peer_id]
    assert RPCConfig.for_members(ids).members == frozenset(ids)
    assert RPCConfig.for_members(Path("members.txt")).members_file == Path("members.txt")
    assert RPCConfig.for_members(None) == RPCConfig()
    with pytest.raises(ValueError, match="not both"):
        RPCConfig(members=frozenset(ids), members_file=Path("members.txt"))
