"""`HopSession` waiting for a reply: liveness pings and the client's copy of a relayed step.

A scripted peer (no network) answers when the test says; the autojump clock makes every wait
exact. Pings are every 0.5 s (`Liveness.every`)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import torch
import trio
import trio.testing

from routing.address import PeerAddress
from routing.client.hop_session import HopSession, Liveness, Resend
from routing.errors import CallTimeoutError, PeerUnresponsiveError
from routing.path_selection import Hop
from routing.rpc import Packet
from routing.span_protocol import SessionOpened, parse_step, step_header
from routing.tensor_codec import encode_tensor
from security import Identity

HIDDEN = torch.ones(1, 1, 8)


class ScriptedPeer:
    """Opens the session at once (unless `opens` is False); answers step 0 when `answer()`
    is called."""

    def __init__(self, opens: bool = True) -> None:
        self.received: list[tuple[float, int]] = []  # (when, step number)
        self._replies, self._inbox = trio.open_memory_channel[Packet](8)
        if opens:
            self._replies.send_nowait(Packet(SessionOpened("s", 0, 2, 16).header()))

    def answer(self) -> None:
        header, body = encode_tensor(HIDDEN)
        self._replies.send_nowait(Packet(step_header(0, header), body))

    async def send(self, packet: Packet) -> None:
        if "step" in packet.header:
            self.received.append((trio.current_time(), parse_step(packet.header)[0]))

    async def receive(self) -> Packet:
        return await self._inbox.receive()

    @asynccontextmanager
    async def open_stream(self, address: PeerAddress, method: str) -> AsyncIterator[ScriptedPeer]:
        yield self


def _unopened(alive: bool | None) -> HopSession:
    async def ping() -> bool:
        return bool(alive)

    liveness = None if alive is None else Liveness(0.5, ping)
    address = PeerAddress("10.0.0.1", 1, Identity.generate().peer_id)
    return HopSession(Hop("peer", 0, 2), address, torch.float32, liveness)


async def _session(peer: ScriptedPeer, alive: bool | None) -> HopSession:
    session = _unopened(alive)
    await session.open(peer, max_length=16, timeout=5.0)  # type: ignore[arg-type]
    return session


@pytest.mark.parametrize(("answer_at", "copy_at"), [(1.5, None), (3.2, 2.0)])
async def test_a_copy_goes_out_only_once_the_answer_is_that_late(
    autojump_clock: trio.testing.MockClock, answer_at: float, copy_at: float | None
) -> None:
    """The copy is due 2 s into the wait: it leaves with the first ping answered after that,
    and not at all if the answer comes before."""
    peer = ScriptedPeer()
    session = await _session(peer, alive=True)
    began = trio.current_time()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(session.receive, HIDDEN, 10.0, Resend((), after=2.0))
        await trio.sleep(answer_at)
        peer.answer()
    sent = [(round(when - began, 3), step) for when, step in peer.received]
    assert sent == ([] if copy_at is None else [(copy_at, 0)])


async def test_a_peer_that_misses_a_ping_fails_the_step_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    session = await _session(ScriptedPeer(), alive=False)
    began = trio.current_time()
    with pytest.raises(PeerUnresponsiveError, match="answered neither the step nor a ping"):
        await session.receive(HIDDEN, 10.0, Resend(()))
    assert trio.current_time() - began == pytest.approx(0.5)


async def test_without_liveness_only_the_deadline_counts(
    autojump_clock: trio.testing.MockClock,
) -> None:
    session = await _session(ScriptedPeer(), alive=None)
    began = trio.current_time()
    with pytest.raises(CallTimeoutError, match=r"did not answer in 3\.0 s"):
        await session.receive(HIDDEN, 3.0)
    assert trio.current_time() - began == pytest.approx(3.0)


async def test_opening_a_session_on_a_silent_peer_fails_at_its_first_missed_ping(
    autojump_clock: trio.testing.MockClock,
) -> None:
    session = _unopened(alive=False)
    began = trio.current_time()
    with pytest.raises(PeerUnresponsiveError, match="neither the session request nor a ping"):
        await session.open(ScriptedPeer(opens=False), max_length=16, timeout=10.0)  # type: ignore[arg-type]
    assert trio.current_time() - began == pytest.approx(0.5)
