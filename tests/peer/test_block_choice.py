"""Block choice: a peer without `--blocks` takes the weakest part of the swarm."""

from __future__ import annotations

from dataclasses import replace
from functools import partial
from pathlib import Path

import pytest
import torch
import trio

from peer.block_choice import better_span, block_throughput, choose_span, claim_span
from peer.daemon import PeerConfig, serve_peer
from peer.errors import InvalidRequestError
from peer.rebalancer import PeerControl, RebalanceConfig
from routing import span_protocol as protocol
from routing.address import PeerAddress
from routing.announcement import PeerAnnouncement, PeerState
from routing.client.swarm_view import read_announcements
from routing.dht import DHTNode, serve_dht_node
from routing.errors import RemoteError
from routing.memory_network import MemoryNetwork
from routing.rpc import Packet, RPCHost
from routing.tensor_codec import decode_tensor, encode_tensor
from security import Identity, PeerId
from tests.support.tiny_model import write_tiny_model

ADDRESS = PeerAddress.parse("127.0.0.1:1/" + str(Identity.generate().peer_id))


def _peer(
    start: int, end: int, throughput: float, state: PeerState = PeerState.ONLINE
) -> PeerAnnouncement:
    return PeerAnnouncement(ADDRESS, "m", start, end, state, throughput, 100, 0, "float32", "0")


def test_an_empty_swarm_starts_at_the_first_block() -> None:
    assert choose_span(8, 3, []) == (0, 3)


def test_gaps_are_filled_first_then_the_thinnest_part() -> None:
    swarm = [_peer(0, 4, 10.0), _peer(6, 8, 50.0)]
    assert block_throughput(8, swarm) == [10.0] * 4 + [0.0] * 2 + [50.0] * 2
    assert choose_span(8, 2, swarm) == (4, 6)
    assert choose_span(8, 4, [*swarm, _peer(4, 6, 30.0)]) == (0, 4)


def test_offline_peers_do_not_count() -> None:
    assert choose_span(4, 2, [_peer(0, 2, 10.0, PeerState.OFFLINE), _peer(2, 4, 5.0)]) == (0, 2)


def test_impossible_lengths_are_refused() -> None:
    with pytest.raises(InvalidRequestError):
        choose_span(4, 5, [])


@pytest.fixture(scope="module")
def eight_blocks(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_model(tmp_path_factory.mktemp("choice") / "eight", num_layers=8)


@pytest.mark.parametrize("together", [False, True], ids=["one after another", "together"])
async def test_four_peers_without_blocks_cover_an_eight_block_model(
    eight_blocks: Path, nursery: trio.Nursery, together: bool
) -> None:
    network = MemoryNetwork()
    boot = await nursery.start(
        serve_dht_node, Identity.generate(), network.transport("10.0.0.1"), "10.0.0.1", 1
    )
    addresses: list[PeerAddress] = []

    async def start(index: int) -> None:
        host = f"10.0.1.{index + 1}"
        config = PeerConfig(
            checkpoint=eight_blocks, num_blocks=2, host=host, port=1, initial_peers=(boot.address,)
        )
        serve = partial(serve_peer, config, Identity.generate(), network.transport(host))
        addresses.append(await nursery.start(serve))

    with trio.fail_after(60):
        async with trio.open_nursery() as starting:
            for index in range(4):
                if together:  # all four at the same instant
                    starting.start_soon(start, index)
                else:  # as volunteers join, each once the one before serves
                    await start(index)
    client = RPCHost(Identity.generate(), network.transport("10.0.0.9"))
    await nursery.start(client.run_outbound)
    spans = []
    for address in addresses:
        info = await client.call(address, protocol.INFO, Packet({}), timeout=5)
        spans.append((info.header["start"], info.header["end"]))
    assert sorted(block for start, end in spans for block in range(start, end)) == list(range(8))
    nursery.cancel_scope.cancel()


def _claim(peer_id: str, start: int, end: int) -> PeerAnnouncement:
    address = PeerAddress("127.0.0.1", 1, PeerId.from_base58(peer_id))
    return PeerAnnouncement(address, "m", start, end, PeerState.JOINING, 0.0, 0, 0, "float32", "0")


def test_two_peers_claiming_the_same_span_at_once_part_on_their_next_look() -> None:
    first, second = sorted(str(Identity.generate().peer_id) for _ in range(2))
    # Both looked at an empty swarm at the same instant and claimed blocks 0..3.
    claims = {first: _claim(first, 0, 4), second: _claim(second, 0, 4)}
    assert claim_span(8, 4, first, claims) == (0, 4)  # the smaller id keeps its claim
    assert claim_span(8, 4, second, claims) == (4, 8)  # the other one moves
    claims[second] = _claim(second, 4, 8)
    assert claim_span(8, 4, first, claims) == (0, 4)  # and both stay put afterwards
    assert claim_span(8, 4, second, claims) == (4, 8)


def test_a_claim_counts_like_an_online_peer_and_our_own_never_counts() -> None:
    first, second, third = sorted(str(Identity.generate().peer_id) for _ in range(3))
    online = replace(_claim(first, 0, 2), state=PeerState.ONLINE, throughput=10.0)
    assert claim_span(4, 2, second, {first: online, second: _claim(second, 0, 2)}) == (2, 4)
    # A claim of a peer that goes first weighs like an online peer (their mean, 10 tokens/s).
    claims = {first: online, second: _claim(second, 2, 4)}
    assert claim_span(6, 2, third, claims) == (4, 6)
    assert claim_span(6, 2, first, {second: _claim(second, 2, 4)}) == (0, 2)


def test_a_peer_leaves_a_crowded_part_for_a_gap() -> None:
    others = [_peer(0, 4, 10.0), _peer(0, 4, 10.0)]  # blocks 4..7: nobody
    assert better_span(8, (0, 4), 10.0, others, margin=0.2) == (4, 8)


def test_no_move_below_the_margin() -> None:
    others = [_peer(0, 4, 10.0), _peer(4, 8, 9.0)]
    assert better_span(8, (0, 4), 10.0, others, margin=0.2) is None  # 9 -> 10 is 11 %
    assert better_span(8, (0, 4), 10.0, others, margin=0.05) == (4, 8)


async def test_a_peer_moves_to_a_gap_when_one_opens(
    eight_blocks: Path, nursery: trio.Nursery
) -> None:
    network = MemoryNetwork()
    boot = await nursery.start(
        serve_dht_node, Identity.generate(), network.transport("10.0.0.1"), "10.0.0.1", 1
    )
    common = {"checkpoint": eight_blocks, "port": 1, "initial_peers": (boot.address,)}
    mover = PeerConfig(
        host="10.0.2.1", num_blocks=4, rebalance=RebalanceConfig(interval=0.2), **common
    )
    moving = await nursery.start(
        partial(serve_peer, mover, Identity.generate(), network.transport("10.0.2.1"))
    )
    client = RPCHost(Identity.generate(), network.transport("10.0.0.9"))
    await nursery.start(client.run, "10.0.0.9", 1)

    async def span() -> tuple[int, int]:
        info = await client.call(moving, protocol.INFO, Packet({}), timeout=5)
        return info.header["start"], info.header["end"]

    assert await span() == (0, 4)  # an empty swarm: the first blocks
    fixed = PeerConfig(host="10.0.2.2", blocks=(0, 4), **common)  # now 0..3 twice, 4..7 never
    await nursery.start(
        partial(serve_peer, fixed, Identity.generate(), network.transport("10.0.2.2"))
    )
    with trio.fail_after(30):
        while await span() != (4, 8):  # noqa: ASYNC110 (polls a remote peer)
            await trio.sleep(0.1)
    hidden = torch.randn(1, 3, 64)
    header, body = encode_tensor(hidden)
    request = Packet(protocol.ForwardRequest(4, 8, header).header(), body)
    reply = await client.call(moving, protocol.FORWARD, request, timeout=5)
    assert decode_tensor(reply.header["tensor"], reply.body).shape == hidden.shape
    nursery.cancel_scope.cancel()


async def test_a_peer_with_a_session_moves_only_when_asked_to_drain(
    eight_blocks: Path, nursery: trio.Nursery
) -> None:
    network = MemoryNetwork()
    boot = await nursery.start(
        serve_dht_node, Identity.generate(), network.transport("10.0.0.1"), "10.0.0.1", 1
    )
    common = {"checkpoint": eight_blocks, "port": 1, "initial_peers": (boot.address,)}
    control = PeerControl()
    mover = PeerConfig(
        host="10.0.3.1", num_blocks=4, rebalance=RebalanceConfig(interval=0.2), **common
    )
    serve_mover = partial(
        serve_peer, mover, Identity.generate(), network.transport("10.0.3.1"), control
    )
    moving = await nursery.start(serve_mover)
    client = RPCHost(Identity.generate(), network.transport("10.0.0.9"))
    await nursery.start(client.run, "10.0.0.9", 1)
    dht = DHTNode(client)
    await nursery.start(partial(dht.run, initial_peers=[boot.address]))

    async def span() -> tuple[int, int]:
        info = await client.call(moving, protocol.INFO, Packet({}), timeout=5)
        return info.header["start"], info.header["end"]

    async def until_announced(state: PeerState) -> None:
        """Until the mover's record in the DHT, and its own word, say `state`."""
        while True:
            records = await read_announcements(dht, mover.name, 8, lookup_timeout=5)
            info = await client.call(moving, protocol.INFO, Packet({}), timeout=5)
            if records[moving.peer_id].state is state and info.header["state"] == state.value:
                return
            await trio.sleep(0.05)

    async with client.open_stream(moving, protocol.INFERENCE) as session:
        await session.send(Packet(protocol.SessionRequest(0, 4, 16).header()))
        await session.receive()
        fixed = PeerConfig(host="10.0.3.2", blocks=(0, 4), **common)
        fixed_transport = network.transport("10.0.3.2")
        await nursery.start(partial(serve_peer, fixed, Identity.generate(), fixed_transport))
        await trio.sleep(1.0)  # several rebalancing rounds: it has a session, it stays
        assert await span() == (0, 4)
        control.request_drain()
        with trio.fail_after(5):  # at once, not at the next refresh (60 s here)
            await until_announced(PeerState.DRAINING)
        async with client.open_stream(moving, protocol.INFERENCE) as refused:
            await refused.send(Packet(protocol.SessionRequest(0, 4, 16).header()))
            with pytest.raises(RemoteError) as caught:
                await refused.receive()
            assert caught.value.code == "draining"
    with trio.fail_after(30):  # its last session ended: it moves, and takes sessions again
        while await span() != (4, 8):  # noqa: ASYNC110 (polls a remote peer)
            await trio.sleep(0.1)
        while control.draining:  # noqa: ASYNC110 (a flag of the peer under test)
            await trio.sleep(0.05)
    with trio.fail_after(5):
        await until_announced(PeerState.ONLINE)
    nursery.cancel_scope.cancel()
