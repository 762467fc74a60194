"""Relay: two real peers pass hidden states to each other, and refuse what they should.

Peer A serves blocks 0..1 and peer B blocks 2..3 of a tiny model, over the in-memory network.
The client opens a session on each; steps sent to A that name B's session go on to B, which
answers the client although the client never sent it anything. The reference is the
backend's own full-sequence forward over all four blocks (bit-identical code path to a
local model, see test_correctness).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import pytest
import torch
import trio

from peer.backend import BackendConfig, SpanBackend
from peer.daemon import PeerConfig, serve_peer
from peer.relay_links import MAX_LINKS, RelayLinks
from routing import span_protocol as protocol
from routing.address import PeerAddress
from routing.client import ClientConfig, InferenceChain, SwarmView
from routing.dht import DHTConfig, DHTNode, serve_dht_node
from routing.errors import RemoteError
from routing.memory_network import MemoryNetwork
from routing.rpc import BidiStream, CallContext, Packet, RPCConfig, RPCHost
from routing.tensor_codec import decode_tensor, encode_tensor
from security import Identity
from tests.support.tiny_model import write_tiny_model

HIDDEN = 64
HOST_A, HOST_B, CLIENT = "10.0.0.2", "10.0.0.3", "10.0.0.9"


@dataclass
class Pair:
    network: MemoryNetwork
    a: PeerAddress
    b: PeerAddress
    client: RPCHost
    dht: DHTNode
    checkpoint: Path

    def reference(self, hidden: torch.Tensor) -> torch.Tensor:
        return SpanBackend.load(self.checkpoint, 0, 4).forward(hidden)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_model(tmp_path_factory.mktemp("relay") / "tiny", seed=2)


@pytest.fixture
async def pair(checkpoint: Path, nursery: trio.Nursery) -> AsyncIterator[Pair]:
    network = MemoryNetwork()
    boot = await nursery.start(
        serve_dht_node, Identity.generate(), network.transport("10.0.0.1"), "10.0.0.1", 1
    )
    addresses = []
    for host, blocks in ((HOST_A, (0, 2)), (HOST_B, (2, 4))):
        config = PeerConfig(
            checkpoint=checkpoint,
            blocks=blocks,
            host=host,
            port=1,
            initial_peers=(boot.address,),
            backend=BackendConfig(max_cache_tokens=256, max_sessions=4),
        )
        serve = partial(serve_peer, config, Identity.generate(), network.transport(host))
        addresses.append(await nursery.start(serve))
    client = RPCHost(Identity.generate(), network.transport(CLIENT))
    await nursery.start(client.run, CLIENT, 1)
    dht = DHTNode(client, DHTConfig(client_mode=True))
    await nursery.start(partial(dht.run, initial_peers=[boot.address]))
    yield Pair(network, addresses[0], addresses[1], client, dht, checkpoint)
    nursery.cancel_scope.cancel()


async def _open(
    stack: AsyncExitStack, client: RPCHost, peer: PeerAddress, start: int, end: int
) -> tuple[BidiStream, protocol.SessionOpened]:
    stream = await stack.enter_async_context(client.open_stream(peer, protocol.INFERENCE))
    await stream.send(Packet(protocol.SessionRequest(start, end, 32).header()))
    return stream, protocol.SessionOpened.parse((await stream.receive()).header)


def _step(number: int, hidden: torch.Tensor, relay: tuple[protocol.RelayTarget, ...]) -> Packet:
    header, body = encode_tensor(hidden)
    return Packet(protocol.step_header(number, header, relay=relay), body)


def _output(reply: Packet) -> torch.Tensor:
    return decode_tensor(protocol.tensor_header(reply.header), reply.body)


async def test_relayed_steps_equal_the_local_blocks(pair: Pair) -> None:
    hidden = torch.randn(1, 5, HIDDEN)
    outputs = []
    async with AsyncExitStack() as stack:
        to_a, _ = await _open(stack, pair.client, pair.a, 0, 2)
        to_b, opened_b = await _open(stack, pair.client, pair.b, 2, 4)
        assert opened_b.relay  # B takes relayed steps
        for number, piece in enumerate([hidden[:, :3], hidden[:, 3:4], hidden[:, 4:5]]):
            target = protocol.RelayTarget(pair.b, opened_b.session, opened_b.relay, number)
            await to_a.send(_step(number, piece, (target,)))
            from_a = await to_a.receive()
            assert protocol.was_relayed(from_a.header)
            from_b = await to_b.receive()  # the client sent B nothing
            assert protocol.parse_step(from_b.header)[0] == number
            outputs.append(_output(from_b))
    expected = pair.reference(hidden)
    torch.testing.assert_close(torch.cat(outputs, dim=1), expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("link", ["refused", "silent"])
async def test_a_chain_whose_peers_cannot_reach_each_other_goes_around(
    pair: Pair, link: str
) -> None:
    """`refused`: A says it could not relay. `silent`: A's connection to B stalls, so the
    relayed step never comes; B is late but answers a ping, so the client sends B its own
    copy, which B takes. Either way B keeps its cache and gets its inputs from the client
    from then on, with no step deadline waited for (it is 10 s here)."""
    view = SwarmView(pair.client, pair.dht, pair.checkpoint.name, 4, ClientConfig())
    await view.refresh()
    hidden = torch.randn(1, 6, HIDDEN)
    async with InferenceChain(view, pair.client, max_length=32) as chain:
        outputs = [await chain.step(hidden[:, :4])]  # relayed
        pair.network.partition([HOST_A], [HOST_B], refuse=True, cut=link == "refused")
        with trio.fail_after(5):
            outputs += [await chain.step(hidden[:, i : i + 1]) for i in (4, 5)]
        peers = [hop.peer for hop in chain.route]
        relayed = [[t.relayed for t in steps] for _, steps in chain.timings]
    torch.testing.assert_close(torch.cat(outputs, dim=1), pair.reference(hidden), atol=1e-5, rtol=0)
    assert peers == [str(pair.a.peer_id), str(pair.b.peer_id)]  # nobody was replaced
    assert not chain.failovers and not view.bans.banned()
    assert relayed == [[False] * 3, [True, False, False]]


async def test_relay_needs_the_sessions_token(pair: Pair) -> None:
    async with AsyncExitStack() as stack:
        to_b, opened = await _open(stack, pair.client, pair.b, 2, 4)
        joins = {
            "wrong token": protocol.RelayJoin(opened.session, "0" * 32).header(),
            "unknown session": protocol.RelayJoin("nobody", opened.relay).header(),
            "garbage": {"join": ["x"]},
        }
        for name, header in joins.items():
            async with pair.client.open_stream(pair.b, protocol.RELAY) as relay:
                await relay.send(Packet(header))
                with pytest.raises(RemoteError) as caught:
                    await relay.receive()
                assert caught.value.code in ("bad_relay", "bad_request"), name
        # the session was not touched: its first step is still step 0
        await to_b.send(_step(0, torch.randn(1, 2, HIDDEN), ()))
        assert protocol.parse_step((await to_b.receive()).header)[0] == 0


async def test_a_failing_relayed_step_fails_the_clients_session(pair: Pair) -> None:
    async with AsyncExitStack() as stack:
        to_b, opened = await _open(stack, pair.client, pair.b, 2, 4)
        async with pair.client.open_stream(pair.b, protocol.RELAY) as relay:  # as peer A would
            await relay.send(Packet(protocol.RelayJoin(opened.session, opened.relay).header()))
            await relay.send(_step(0, torch.randn(1, 1, 8), ()))  # the wrong width
            with pytest.raises(RemoteError, match="hidden size"):
                await to_b.receive()


async def test_a_step_taken_is_ignored_and_a_step_ahead_refused(pair: Pair) -> None:
    """A step can come twice (relayed, and from a client that found it late): the first copy
    is taken, the second ignored. A step ahead of the one due is refused."""
    hidden = torch.randn(1, 3, HIDDEN)
    async with AsyncExitStack() as stack:
        to_b, opened = await _open(stack, pair.client, pair.b, 2, 4)
        async with pair.client.open_stream(pair.b, protocol.RELAY) as relay:  # as peer A would
            await relay.send(Packet(protocol.RelayJoin(opened.session, opened.relay).header()))
            await relay.send(_step(0, hidden[:, :2], ()))
            first = await to_b.receive()
            await to_b.send(_step(0, torch.randn(1, 2, HIDDEN), ()))  # the client's late copy
            await to_b.send(_step(1, hidden[:, 2:], ()))
            second = await to_b.receive()  # the answer to step 1: step 0 was not run twice
            await relay.send(_step(1, torch.randn(1, 1, HIDDEN), ()))  # the relay's late copy
            await to_b.send(_step(2, hidden[:, 2:], ()))
            third = await to_b.receive()
        assert protocol.came_by_relay(first.header) and not protocol.came_by_relay(second.header)
        assert [protocol.parse_step(r.header)[0] for r in (first, second, third)] == [0, 1, 2]
        b_alone = SpanBackend.load(pair.checkpoint, 2, 4)
        b_alone.open_session("reference", 8)
        expected = [b_alone.step("reference", x) for x in (hidden[:, :2], hidden[:, 2:])]
        torch.testing.assert_close(_output(first), expected[0], atol=1e-5, rtol=0)
        torch.testing.assert_close(_output(second), expected[1], atol=1e-5, rtol=0)
        await to_b.send(_step(4, torch.randn(1, 1, HIDDEN), ()))  # step 3 is due
        with pytest.raises(RemoteError) as caught:
            await to_b.receive()
        assert caught.value.code == "step_order"


async def test_a_relay_send_to_a_peer_that_stopped_reading_gives_up(
    pair: Pair, nursery: trio.Nursery
) -> None:
    """Once the stream's credit is spent, a send waits for a reader that never comes: it is
    given up after its bound (the timeout, plus a second per MIN_RATE bytes), not held until
    the connection's write-stall timeout, so the peer can still answer its client in time."""
    receiver = RPCHost(Identity.generate(), pair.network.transport("10.0.0.7"))

    async def never_read(stream: BidiStream, context: CallContext) -> None:
        await trio.sleep_forever()

    receiver.add_stream(protocol.RELAY, never_read)
    address = await nursery.start(receiver.run, "10.0.0.7", 1)
    links = RelayLinks(pair.client, timeout=0.5)
    target = protocol.RelayTarget(address, "session", "token", 0)
    step = _step(0, torch.randn(1, 400, HIDDEN), ())  # 100 KB: 41 fill the 4 MiB of credit
    with trio.fail_after(10):
        sent = 0
        while await links.send(target, step):
            sent += 1
    assert 0 < sent <= RPCConfig().stream_window // len(step.body) + 1  # one may overshoot
    await links.aclose()


async def test_a_session_keeps_at_most_a_few_relay_streams(
    pair: Pair, nursery: trio.Nursery
) -> None:
    """A client that names a new next hop on every step cannot make a peer hold a stream for
    each: the oldest is closed first."""
    receiver = RPCHost(Identity.generate(), pair.network.transport("10.0.0.7"))
    open_now = []

    async def count(stream: BidiStream, context: CallContext) -> None:
        open_now.append(stream)
        try:
            async for _ in stream:
                pass
        finally:
            open_now.remove(stream)

    receiver.add_stream(protocol.RELAY, count)
    address = await nursery.start(receiver.run, "10.0.0.7", 1)
    links = RelayLinks(pair.client, timeout=2.0)
    for number in range(MAX_LINKS + 3):
        target = protocol.RelayTarget(address, f"session-{number}", "token", 0)
        assert await links.send(target, _step(0, torch.randn(1, 1, HIDDEN), ()))
    with trio.fail_after(5):
        while len(open_now) > MAX_LINKS:  # noqa: ASYNC110 (a remote handler ends)
            await trio.sleep(0.01)
    await links.aclose()
    with trio.fail_after(5):
        while open_now:  # noqa: ASYNC110
            await trio.sleep(0.01)
