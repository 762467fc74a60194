"""`InferenceChain` over the in-memory network with fake span servers and the autojump clock.

Every test takes `autojump_clock` itself: pytest-trio uses a clock only from the test's own
arguments. The fake blocks (fake_span.py) depend on the whole history of a session, so the outputs
after a failover equal the reference only if the replacement's cache was rebuilt by
replaying exactly the lost hop's inputs. Deadlines are exact: the clock is trio's MockClock.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from functools import partial

import pytest
import torch
import trio
import trio.testing

from routing.address import PeerAddress
from routing.client import ChainFailedError, ClientConfig, InferenceChain, SwarmView
from routing.dht import DHTConfig, DHTNode, serve_dht_node
from routing.errors import RemoteError
from routing.memory_network import MemoryNetwork
from routing.path_selection import NoRoomError
from routing.rpc import RPCHost
from security import Identity

from .fake_span import HIDDEN, MODEL, NUM_BLOCKS, FakePeer, reference, start_fake_peer

CONFIG = ClientConfig(step_timeout=2.0, step_timeout_per_token=0.1)
CLIENT = "10.0.0.2"


@dataclass
class Net:
    network: MemoryNetwork
    nursery: trio.Nursery
    bootstrap: PeerAddress
    rpc: RPCHost
    dht: DHTNode
    peers: list[FakePeer] = field(default_factory=list)

    async def peer(
        self, start: int, end: int, throughput: float = 1000.0, cache_tokens: int = 10_000
    ) -> FakePeer:
        host = f"10.0.1.{len(self.peers) + 1}"
        peer = await start_fake_peer(
            self.nursery, self.network, host, self.bootstrap, start, end,
            throughput=throughput, cache_tokens=cache_tokens,
        )  # fmt: skip
        self.peers.append(peer)
        return peer

    async def view(self, config: ClientConfig = CONFIG) -> SwarmView:
        view = SwarmView(self.rpc, self.dht, MODEL, NUM_BLOCKS, config)
        await view.refresh()
        return view


@pytest.fixture
async def net(nursery: trio.Nursery) -> AsyncIterator[Net]:
    network = MemoryNetwork()
    network.set_latency(0.001)  # every link: RTTs above zero, as on any real network
    boot = await nursery.start(
        partial(serve_dht_node, clock=trio.current_time),
        Identity.generate(), network.transport("10.0.0.1"), "10.0.0.1", 1,
    )  # fmt: skip
    rpc = RPCHost(Identity.generate(), network.transport(CLIENT))
    await nursery.start(rpc.run, CLIENT, 1)
    dht = DHTNode(rpc, DHTConfig(client_mode=True), clock=trio.current_time)
    await nursery.start(partial(dht.run, initial_peers=[boot.address]))
    yield Net(network, nursery, boot.address, rpc, dht)
    nursery.cancel_scope.cancel()


async def _eventually(condition: Callable[[], bool]) -> None:
    """Poll (in virtual time) until `condition` holds; fail after 5 s."""
    with trio.fail_after(5.0):
        while not condition():  # noqa: ASYNC110 (the fake peers' counters have no event)
            await trio.sleep(0.01)


def _sequence(length: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(1, length, HIDDEN, generator=torch.Generator().manual_seed(seed))


async def _run_steps(
    chain: InferenceChain, sequence: torch.Tensor, prompt: int, before_step: dict[int, object]
) -> None:
    """Prompt, then one position per step; each output must equal the reference's."""
    expected = reference(sequence)
    bounds = [0, prompt, *range(prompt + 1, sequence.shape[1] + 1)]
    for index, (a, b) in enumerate(itertools.pairwise(bounds)):
        action = before_step.get(index)
        if callable(action):
            action()
        output = await chain.step(sequence[:, a:b])
        torch.testing.assert_close(output, expected[:, a:b])


@pytest.mark.parametrize(
    "spans", [[(0, 4)], [(0, 2), (2, 4)], [(0, 1), (1, 3), (3, 4)]], ids=["1hop", "2hops", "3hops"]
)
async def test_outputs_equal_the_reference_and_sessions_close(
    autojump_clock: trio.testing.MockClock, net: Net, spans: list[tuple[int, int]]
) -> None:
    for start, end in spans:
        await net.peer(start, end)
    async with InferenceChain(await net.view(), net.rpc, max_length=64) as chain:
        assert [(hop.start, hop.end) for hop in chain.route] == spans
        assert all(peer.sessions == 1 for peer in net.peers)
        await _run_steps(chain, _sequence(12), prompt=5, before_step={})
    assert all(peer.sessions == 0 for peer in net.peers)  # closed: the peers said so
    assert all(peer.steps == 8 for peer in net.peers)


@pytest.mark.parametrize("fault", ["stall", "silent", "error", "garbage", "cut", "kill"])
async def test_a_failing_hop_is_replaced_and_its_history_replayed(
    autojump_clock: trio.testing.MockClock, net: Net, fault: str
) -> None:
    """`stall`: the peer answers pings but never the step (slow, or its compute hung).
    `silent`: the network between the client and the peer goes quiet (a frozen process, a
    partition): nothing is closed, and nothing comes back, pings included."""
    first = await net.peer(0, 2)
    preferred = await net.peer(2, 4, throughput=2000.0)
    spare = await net.peer(2, 4, throughput=500.0)
    view = await net.view()

    def break_preferred() -> None:
        if fault == "cut":
            net.network.cut(preferred.host)
        elif fault == "silent":
            net.network.partition([CLIENT], [preferred.host])
        elif fault == "kill":
            preferred.kill()
        else:
            preferred.fault = fault  # type: ignore[assignment]

    async with InferenceChain(view, net.rpc, max_length=64) as chain:
        assert chain.route[1].peer == preferred.peer
        began = trio.current_time()
        await _run_steps(chain, _sequence(14), prompt=6, before_step={4: break_preferred})
        assert [hop.peer for hop in chain.route] == [first.peer, spare.peer]
        (failover,) = chain.failovers
        assert (failover.peer, failover.start, failover.end) == (preferred.peer, 2, 4)
        assert failover.replayed_tokens == 6 + 3  # the prompt and three single steps
        if fault == "stall":  # caught by its deadline, exactly (one-token step: 2.0 + 0.1)
            assert "did not answer in 2.1 s" in failover.error
            assert trio.current_time() - began == pytest.approx(2.1, abs=0.05)
        if fault == "silent":  # no answer 0.5 s into the step, nor to a ping within 1 s
            assert "answered neither the step nor a ping" in failover.error
            assert trio.current_time() - began == pytest.approx(1.5, abs=0.05)
        if fault == "error":
            assert "out_of_memory" in failover.error
        assert first.opened == [(0, 2)]  # the hop that did not fail was left alone
        assert spare.opened == [(2, 4)]
    await _eventually(lambda: first.sessions == spare.sessions == 0)
    assert preferred.peer in view.bans.banned()


async def test_a_lost_span_is_rebuilt_from_two_peers(
    autojump_clock: trio.testing.MockClock, net: Net
) -> None:
    whole = await net.peer(0, 4, throughput=5000.0)
    low = await net.peer(0, 2)
    high = await net.peer(2, 4)
    async with InferenceChain(await net.view(), net.rpc, max_length=64) as chain:
        assert [hop.peer for hop in chain.route] == [whole.peer]
        await _run_steps(chain, _sequence(10), prompt=3, before_step={2: whole.kill})
        assert [(h.peer, h.start, h.end) for h in chain.route] == [
            (low.peer, 0, 2), (high.peer, 2, 4)
        ]  # fmt: skip
        assert chain.failovers[0].replayed_tokens == 4


async def test_a_failing_replacement_is_replaced_too(
    autojump_clock: trio.testing.MockClock, net: Net
) -> None:
    await net.peer(0, 4, throughput=3000.0)
    await net.peer(0, 4, throughput=2000.0)
    last = await net.peer(0, 4, throughput=1000.0)
    first, second = net.peers[:2]

    def kill_the_one_in_use() -> None:
        (hop,) = chain.route
        next(peer for peer in net.peers if peer.peer == hop.peer).kill()

    async with InferenceChain(await net.view(), net.rpc, max_length=64) as chain:
        await _run_steps(
            chain, _sequence(12), prompt=4,
            before_step={2: kill_the_one_in_use, 5: kill_the_one_in_use},
        )  # fmt: skip
        assert [f.peer for f in chain.failovers] == [first.peer, second.peer]
        assert [f.replayed_tokens for f in chain.failovers] == [5, 8]
        assert chain.route[0].peer == last.peer


async def test_no_replica_left_is_a_clear_error_naming_the_blocks(
    autojump_clock: trio.testing.MockClock, net: Net
) -> None:
    await net.peer(0, 2)
    only = await net.peer(2, 4)
    async with InferenceChain(await net.view(), net.rpc, max_length=64) as chain:
        await chain.step(_sequence(3))
        only.fault = "error"
        with pytest.raises(
            ChainFailedError, match=r"block\(s\) 2-3 any more; the last failure: out_of_memory"
        ) as caught:
            await chain.step(_sequence(1))
    assert isinstance(caught.value.__cause__, RemoteError)


async def test_a_failover_waits_for_room_on_a_full_replica(
    autojump_clock: trio.testing.MockClock, net: Net
) -> None:
    """The replica left is full (another session holds its cache) until that session ends,
    5 s later: the failover waits for it, asking the peer again, and goes on with the
    reference's outputs."""
    used = await net.peer(0, 4, throughput=2000.0, cache_tokens=64)
    left = await net.peer(0, 4, cache_tokens=64)
    view = await net.view()
    sequence = _sequence(4)
    async with InferenceChain(view, net.rpc, max_length=64) as chain:
        other = await InferenceChain(view, net.rpc, max_length=64).__aenter__()
        assert (chain.route[0].peer, other.route[0].peer) == (used.peer, left.peer)
        outputs = [await chain.step(sequence[:, :3])]
        used.fault = "error"
        began = trio.current_time()
        async with trio.open_nursery() as nursery:

            async def other_ends() -> None:
                await trio.sleep(5.0)  # the other generation's own course, not a readiness wait
                await other.close()

            nursery.start_soon(other_ends)
            outputs.append(await chain.step(sequence[:, 3:]))
        assert trio.current_time() - began >= 5.0
        assert chain.route[0].peer == left.peer and [f.peer for f in chain.failovers] == [used.peer]
    torch.testing.assert_close(torch.cat(outputs, dim=1), reference(sequence))


async def test_a_failover_that_finds_no_room_says_so(
    autojump_clock: trio.testing.MockClock, net: Net
) -> None:
    """The replica left stays full (another session holds its cache): after waiting for
    room, the error names the room as what is missing, and the failure that lost the
    blocks."""
    used = await net.peer(0, 4, throughput=2000.0, cache_tokens=64)
    left = await net.peer(0, 4, cache_tokens=64)
    view = await net.view()
    async with (
        InferenceChain(view, net.rpc, max_length=64) as chain,
        InferenceChain(view, net.rpc, max_length=64) as other,
    ):
        assert (chain.route[0].peer, other.route[0].peer) == (used.peer, left.peer)
        await chain.step(_sequence(3))
        used.fault = "error"
        with pytest.raises(ChainFailedError, match=r"0-3 with room in its cache any more; "
                           r"the last failure: out_of_memory"):  # fmt: skip
            await chain.step(_sequence(1))


async def test_a_failover_reads_the_swarm_again_before_giving_up(
    autojump_clock: trio.testing.MockClock, net: Net
) -> None:
    """The only peer for blocks 2..3 fails; one that joined after the view was read takes
    over (before, the chain gave up without looking)."""
    await net.peer(0, 2)
    only = await net.peer(2, 4)
    sequence = _sequence(4)
    async with InferenceChain(await net.view(), net.rpc, max_length=64) as chain:
        outputs = [await chain.step(sequence[:, :3])]
        newcomer = await net.peer(2, 4)
        only.fault = "error"
        outputs.append(await chain.step(sequence[:, 3:]))
        assert chain.route[1].peer == newcomer.peer
        assert [f.peer for f in chain.failovers] == [only.peer]
    torch.testing.assert_close(torch.cat(outputs, dim=1), reference(sequence))


async def test_a_full_peer_is_not_banned_and_takes_a_session_once_one_closes(
    autojump_clock: trio.testing.MockClock, net: Net
) -> None:
    """Its cache holds one session. Asked for a second while the DHT still shows it empty, it
    refuses: the client says there is no room and bans nobody. Once its record shows it full
    too, the client asks nobody; when the first session closes, the client asks the peer for
    its numbers afresh instead of trusting the record, and opens one."""
    peer = await net.peer(0, 4, cache_tokens=64)
    view = await net.view()
    async with InferenceChain(view, net.rpc, max_length=64):
        with pytest.raises(NoRoomError, match=r"block\(s\) 0-3 with room in its cache"):
            await InferenceChain(view, net.rpc, max_length=64).__aenter__()
        assert view.bans.banned() == frozenset() and peer.opened == [(0, 4)]
        await peer.announce()
        await view.refresh()
        with pytest.raises(NoRoomError):
            await InferenceChain(view, net.rpc, max_length=64).__aenter__()
    async with InferenceChain(view, net.rpc, max_length=64) as chain:
        await _run_steps(chain, _sequence(6), prompt=3, before_step={})
    assert peer.opened == [(0, 4), (0, 4)]


async def test_a_full_replica_is_passed_over_for_one_with_room(
    autojump_clock: trio.testing.MockClock, net: Net
) -> None:
    full = await net.peer(0, 4, throughput=2000.0, cache_tokens=64)
    roomy = await net.peer(0, 4)
    view = await net.view()
    async with InferenceChain(view, net.rpc, max_length=64) as first:
        assert [hop.peer for hop in first.route] == [full.peer]
        async with InferenceChain(view, net.rpc, max_length=64) as second:
            assert [hop.peer for hop in second.route] == [roomy.peer]
    assert view.bans.banned() == frozenset()


async def test_a_peer_that_refuses_the_request_is_passed_over_not_banned(
    autojump_clock: trio.testing.MockClock, net: Net
) -> None:
    """A refusal of the request (`invalid_request`) says nothing of the peer's health; when
    every peer refuses, the error is theirs."""
    refusing = await net.peer(0, 4, throughput=2000.0)
    other = await net.peer(0, 4)
    refusing.fault = "refuse"
    view = await net.view()
    async with InferenceChain(view, net.rpc, max_length=64) as chain:
        assert [hop.peer for hop in chain.route] == [other.peer]
    other.fault = "refuse"
    with pytest.raises(ChainFailedError, match="invalid_request: refusing on purpose"):
        await InferenceChain(view, net.rpc, max_length=64).__aenter__()
    assert view.bans.banned() == frozenset()


async def test_a_cancelled_step_is_not_a_failover_and_leaves_no_session(
    autojump_clock: trio.testing.MockClock, net: Net
) -> None:
    """What Ctrl-C in the facade does: cancel the step in flight, then close the chain."""
    stalled = await net.peer(0, 4, throughput=2000.0)
    spare = await net.peer(0, 4)
    async with InferenceChain(await net.view(), net.rpc, max_length=64) as chain:
        await chain.step(_sequence(3))
        stalled.fault = "stall"
        with trio.move_on_after(0.5) as scope:  # well before the step's deadline
            await chain.step(_sequence(1))
        assert scope.cancelled_caught
    await _eventually(lambda: stalled.sessions == 0)
    await trio.sleep(1.0)  # and no re-routing later either
    assert chain.failovers == []
    assert spare.opened == []


async def test_a_banned_peer_comes_back_after_its_ban(
    autojump_clock: trio.testing.MockClock, net: Net
) -> None:
    flaky = await net.peer(0, 4, throughput=2000.0)
    await net.peer(0, 4)
    view = await net.view()
    async with InferenceChain(view, net.rpc, max_length=64) as chain:
        await chain.step(_sequence(2))
        flaky.fault = "error"
        await chain.step(_sequence(1))
        assert chain.route[0].peer != flaky.peer
    flaky.fault = "none"
    async with InferenceChain(view, net.rpc, max_length=64) as chain:
        assert chain.route[0].peer != flaky.peer  # still banned (2 s)
    await trio.sleep(2.0)
    async with InferenceChain(view, net.rpc, max_length=64) as chain:
        assert chain.route[0].peer == flaky.peer


async def test_a_silent_peer_is_left_out_until_it_answers_a_ping_again(
    autojump_clock: trio.testing.MockClock, net: Net
) -> None:
    """A frozen peer's bans run out long before its record leaves the DHT: routes still
    leave it out, without waiting on it again, until a refresh hears it."""
    frozen = await net.peer(0, 4, throughput=2000.0)
    spare = await net.peer(0, 4)
    view = await net.view()
    async with InferenceChain(view, net.rpc, max_length=64) as chain:
        await chain.step(_sequence(2))
        net.network.partition([CLIENT], [frozen.host])
        await chain.step(_sequence(1))
        assert chain.route[0].peer == spare.peer
    await trio.sleep(10.0)  # every ban is over
    for _ in range(2):
        began = trio.current_time()
        async with InferenceChain(view, net.rpc, max_length=64) as chain:
            await chain.step(_sequence(2))
            assert chain.route[0].peer == spare.peer
        assert trio.current_time() - began < 0.1  # no wait on the frozen peer
        await view.refresh()  # its ping fails again
    net.network.heal()
    await view.refresh()
    async with InferenceChain(view, net.rpc, max_length=64) as chain:
        assert chain.route[0].peer == frozen.peer
    assert [f.peer for f in chain.failovers] == []


async def test_the_view_refreshes_itself_and_finds_peers_that_join(
    autojump_clock: trio.testing.MockClock, net: Net
) -> None:
    await net.peer(0, 4)
    view = SwarmView(net.rpc, net.dht, MODEL, NUM_BLOCKS, ClientConfig(refresh_period=30.0))
    await net.nursery.start(view.run)
    first = set(view.peers)
    joined = await net.peer(0, 4, throughput=5000.0)
    await trio.sleep(29.0)
    assert set(view.peers) == first
    await trio.sleep(2.0)
    assert set(view.peers) == first | {joined.peer}
    async with InferenceChain(view, net.rpc, max_length=64) as chain:
        assert chain.route[0].peer == joined.peer


async def test_a_replica_behind_50_ms_gets_few_steps(
    autojump_clock: trio.testing.MockClock, net: Net
) -> None:
    slow = await net.peer(0, 4)
    fast = await net.peer(0, 4)
    net.network.set_latency(0.05, CLIENT, slow.host)
    view = await net.view()
    for _ in range(10):
        await view.refresh()  # pings again: smoothed RTTs
        async with InferenceChain(view, net.rpc, max_length=64) as chain:
            for _ in range(5):
                await chain.step(_sequence(1))
    assert fast.steps >= 0.8 * (fast.steps + slow.steps)
    slow_rtt, fast_rtt = view.rtts.get(slow.peer), view.rtts.get(fast.peer)
    assert slow_rtt is not None and fast_rtt is not None
    assert slow_rtt == pytest.approx(0.1, abs=0.01)  # a round trip: 50 ms each way
    assert fast_rtt == pytest.approx(0.002, abs=0.001)
