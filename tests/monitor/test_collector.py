"""The collector against a fake DHT and a fake prober, on trio's MockClock (autojump)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

import pytest
import trio

from routing.address import PeerAddress
from routing.announcement import MODELS_KEY, PeerState, block_key
from routing.errors import PeerUnreachableError
from routing.records import DHTValue
from routing.relay_directory import RELAYS_KEY
from routing.rpc import RelayLoad
from security import Identity, PeerId
from swarm.monitor.collector import Collector, CollectorConfig, Probe, RelayProbe
from swarm.monitor.snapshot import PeerLoad, SwarmSnapshot

from .records import NOW, SwarmRecords, announcement

LOOKUP = 0.05  # virtual seconds one DHT get takes
PING = 0.01


def wall() -> float:
    """Wall-clock time that moves with the mock clock."""
    return NOW + trio.current_time()


class FakeDHT:
    def __init__(self, records: SwarmRecords) -> None:
        self.records = records
        self.reads: list[str] = []
        self.hang: set[str] = set()
        self.fail: set[str] = set()

    async def get(self, key: str) -> Mapping[PeerId, DHTValue]:
        self.reads.append(key)
        await trio.sleep(LOOKUP)
        if key in self.hang:
            await trio.sleep_forever()
        if key in self.fail:
            raise PeerUnreachableError("nobody answered")
        if key == MODELS_KEY:
            return dict(self.records.models)
        if key == RELAYS_KEY:
            return dict(self.records.relays)
        model, block = key.rsplit(".", 1)
        return dict(self.records.blocks.get(model, {}).get(int(block), {}))


class FakeProber:
    def __init__(self) -> None:
        self.rtts: dict[PeerId, float | None] = {}  # missing: answers in PING
        self.loads: dict[PeerId, PeerLoad] = {}  # missing: says nothing of its load
        self.pinged: list[PeerAddress] = []
        self.gate: trio.Event | None = None  # when set: probes wait for it
        self.called = trio.Event()

    async def __call__(self, address: PeerAddress) -> Probe | None:
        self.pinged.append(address)
        self.called.set()
        if self.gate is not None:
            await self.gate.wait()
        rtt = self.rtts.get(address.peer_id, PING)
        if rtt is None:
            await trio.sleep_forever()  # an unreachable peer: the collector's timeout ends it
        await trio.sleep(PING)
        return Probe(rtt, self.loads.get(address.peer_id))


def swarm_of_blocks(num_blocks: int) -> tuple[SwarmRecords, list[PeerId]]:
    """One peer per block of the model "tiny"."""
    records = SwarmRecords()
    records.add_model("tiny", num_blocks)
    peers = [records.peer("tiny", b, b + 1) for b in range(num_blocks)]
    return records, peers


async def wait_for(collector: Collector, ok: object, within: float) -> SwarmSnapshot:
    """Poll the collector's latest snapshot (virtual time) until `ok(snapshot)`."""
    with trio.fail_after(within):
        while True:
            snapshot = collector.latest()
            if snapshot is not None and ok(snapshot):  # type: ignore[operator]
                return snapshot
            await trio.sleep(0.01)


async def test_a_round_reads_models_then_every_block_concurrently(autojump_clock: object) -> None:
    records, peers = swarm_of_blocks(8)
    dht, pinger = FakeDHT(records), FakeProber()
    collector = Collector(dht, pinger, CollectorConfig(), clock=wall)
    started = trio.current_time()

    snapshot = await collector.collect_once()

    assert dht.reads[0] == MODELS_KEY and RELAYS_KEY in dht.reads  # the relays meanwhile
    blocks = [key for key in dht.reads[1:] if key != RELAYS_KEY]
    assert sorted(blocks) == sorted(block_key("tiny", b) for b in range(8))
    # One lookup for the models, one wave for all blocks, one wave of pings.
    assert trio.current_time() - started == pytest.approx(2 * LOOKUP + PING)
    view = snapshot.model("tiny")
    assert view is not None and view.full_chain
    assert {row.peer_id: row.rtt for row in view.peers} == dict.fromkeys(peers, PING)
    assert {address.peer_id for address in pinger.pinged} == set(peers)
    assert all(row.last_seen == pytest.approx(wall()) for row in view.peers)


async def test_concurrency_is_capped(autojump_clock: object) -> None:
    records, _ = swarm_of_blocks(10)
    collector = Collector(
        FakeDHT(records), FakeProber(), CollectorConfig(max_concurrent_gets=4), clock=wall
    )
    started = trio.current_time()
    await collector.collect_once()
    # 10 block reads, 4 at a time: 3 waves after the models read.
    assert trio.current_time() - started == pytest.approx(4 * LOOKUP + PING)


async def test_a_read_that_hangs_or_fails_leaves_a_gap_not_a_stall(autojump_clock: object) -> None:
    records, _ = swarm_of_blocks(4)
    dht = FakeDHT(records)
    dht.hang.add(block_key("tiny", 1))
    dht.fail.add(block_key("tiny", 2))
    config = CollectorConfig(get_timeout=3.0)
    collector = Collector(dht, FakeProber(), config, clock=wall)
    started = trio.current_time()

    snapshot = await collector.collect_once()

    assert trio.current_time() - started == pytest.approx(LOOKUP + config.get_timeout + PING)
    view = snapshot.model("tiny")
    assert view is not None and view.gaps == ((1, 3),)


async def test_an_unreachable_peer_has_no_rtt_but_keeps_its_last_sighting(
    autojump_clock: object,
) -> None:
    records, (first, second) = swarm_of_blocks(2)
    pinger = FakeProber()
    config = CollectorConfig(ping_timeout=1.5)
    collector = Collector(FakeDHT(records), pinger, config, clock=wall)
    await collector.collect_once()
    answered_at = wall()

    pinger.rtts[second] = None
    started = trio.current_time()
    snapshot = await collector.collect_once()

    assert trio.current_time() - started == pytest.approx(2 * LOOKUP + config.ping_timeout)
    view = snapshot.model("tiny")
    assert view is not None
    rows = {row.peer_id: row for row in view.peers}
    assert rows[first].rtt == PING and rows[first].last_seen == pytest.approx(wall())
    assert rows[second].rtt is None and rows[second].last_seen == pytest.approx(answered_at)


async def test_a_peer_that_misses_two_pings_in_a_row_is_unreachable_until_it_answers(
    autojump_clock: object,
) -> None:
    records, (first, second) = swarm_of_blocks(2)
    pinger = FakeProber()
    collector = Collector(FakeDHT(records), pinger, CollectorConfig(ping_timeout=1.0), clock=wall)

    def states(snapshot: SwarmSnapshot) -> tuple[str, str, bool]:
        view = snapshot.model("tiny")
        assert view is not None
        rows = {row.peer_id: row.state for row in view.peers}
        return rows[first], rows[second], view.full_chain

    await collector.collect_once()
    pinger.rtts[second] = None  # killed: it stops answering, its records stay
    assert states(await collector.collect_once()) == ("online", "online", True)  # one miss
    assert states(await collector.collect_once()) == ("online", "unreachable", False)
    del pinger.rtts[second]  # it answers again
    assert states(await collector.collect_once()) == ("online", "online", True)


async def test_a_peers_load_is_what_it_answered_else_its_records(
    autojump_clock: object,
) -> None:
    """The records say 1 session and 4,096 cache tokens left; the first peer answers 3
    sessions and 512 tokens, the second says nothing of its load."""
    records, (first, second) = swarm_of_blocks(2)
    prober = FakeProber()
    prober.loads[first] = PeerLoad(sessions=3, cache_tokens_left=512)
    collector = Collector(FakeDHT(records), prober, CollectorConfig(), clock=wall)
    view = (await collector.collect_once()).model("tiny")
    assert view is not None
    rows = {row.peer_id: (row.sessions, row.cache_tokens_left) for row in view.peers}
    assert rows == {first: (3, 512), second: (1, 4096)}
    prober.rtts[first] = None  # silent: back to its record
    view = (await collector.collect_once()).model("tiny")
    assert view is not None
    assert {row.peer_id: row.sessions for row in view.peers} == {first: 1, second: 1}


async def test_a_peers_tokens_per_second_come_from_its_counter_between_two_probes(
    autojump_clock: object,
) -> None:
    """It ran 300 tokens between two rounds 2 s apart: 150 per second. Unknown after its
    first answer, and when its counter goes back (it restarted)."""
    records, (first, _) = swarm_of_blocks(2)
    prober = FakeProber()
    collector = Collector(FakeDHT(records), prober, CollectorConfig(), clock=wall)

    async def serving_after(served: int) -> float | None:
        prober.loads[first] = PeerLoad(sessions=1, cache_tokens_left=512, served_tokens=served)
        view = (await collector.collect_once()).model("tiny")
        assert view is not None
        return {row.peer_id: row.serving for row in view.peers}[first]

    assert await serving_after(1000) is None
    await trio.sleep(2.0 - 2 * LOOKUP - PING)  # the next answer comes 2 s after this one
    assert await serving_after(1300) == pytest.approx(150.0)
    assert await serving_after(10) is None


async def test_the_picture_is_published_before_the_pings(autojump_clock: object) -> None:
    records, _ = swarm_of_blocks(2)
    pinger = FakeProber()
    collector = Collector(FakeDHT(records), pinger, CollectorConfig(), clock=wall)
    pinger.gate = trio.Event()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(collector.collect_once)
        await pinger.called.wait()
        early = collector.latest()
        assert early is not None and early.model("tiny") is not None
        assert all(row.rtt is None for row in early.models[0].peers)
        pinger.gate.set()
    late = collector.latest()
    assert late is not None and all(row.rtt == PING for row in late.models[0].peers)


async def test_offline_leaves_within_a_refresh_and_silence_at_expiry(
    autojump_clock: object,
) -> None:
    config = CollectorConfig(refresh=2.0)
    records = SwarmRecords()
    records.add_model("tiny", 4, expiration=NOW + 600)
    leaving = Identity.generate().peer_id
    leaving_record = announcement(leaving, "tiny", 0, 2)
    records.announce(leaving_record, expiration=NOW + 600)
    silent_expiry = NOW + 20.0
    silent = records.peer("tiny", 2, 4, expiration=silent_expiry)
    collector = Collector(FakeDHT(records), FakeProber(), config, clock=wall)

    async with trio.open_nursery() as nursery:
        await nursery.start(collector.run)  # started: the first snapshot exists
        first = collector.latest()
        assert first is not None and first.models[0].full_chain

        records.announce(replace(leaving_record, state=PeerState.OFFLINE), expiration=NOW + 600)
        gone = await wait_for(
            collector,
            lambda s: [r.peer_id for r in s.models[0].peers] == [silent],
            within=config.refresh,
        )
        assert gone.models[0].gaps == ((0, 2),)

        # The silent peer stays listed while its records live, and leaves once they expire.
        await trio.sleep_until(silent_expiry - NOW - 1.0)
        still = collector.latest()
        assert still is not None and [r.peer_id for r in still.models[0].peers] == [silent]
        expired = await wait_for(collector, lambda s: not s.models[0].peers, within=1.0 + 1.5)
        assert expired.models[0].gaps == ((0, 4),)
        assert collector.rounds >= (silent_expiry - NOW) / config.interval
        nursery.cancel_scope.cancel()


def test_the_refresh_period_is_bounded() -> None:
    with pytest.raises(ValueError, match="refresh"):
        CollectorConfig(refresh=0)
    assert CollectorConfig(refresh=3.0).interval == 1.5


class FakeRelayProber:
    def __init__(self) -> None:
        self.silent: set[PeerId] = set()  # these do not answer
        self.loads: dict[PeerId, RelayLoad] = {}  # missing: says nothing of its load
        self.probed: list[PeerAddress] = []

    async def __call__(self, address: PeerAddress) -> RelayProbe | None:
        self.probed.append(address)
        if address.peer_id in self.silent:
            await trio.sleep_forever()  # the collector's timeout ends it
        await trio.sleep(PING)
        return RelayProbe(PING, self.loads.get(address.peer_id))


async def test_relays_are_read_and_probed_each_round(autojump_clock: object) -> None:
    records, _ = swarm_of_blocks(2)
    loaded, silent = records.add_relay(4100), records.add_relay(4200)
    relay_prober = FakeRelayProber()
    relay_prober.loads[loaded] = RelayLoad(1, 0, 3, 700, max_listeners=64, max_circuits=256)
    relay_prober.silent.add(silent)
    dht = FakeDHT(records)
    collector = Collector(dht, FakeProber(), CollectorConfig(ping_timeout=1.0),
                          probe_relay=relay_prober, clock=wall)  # fmt: skip

    first = await collector.collect_once()
    rows = {row.peer_id: row for row in first.relays}
    assert RELAYS_KEY in dht.reads
    assert {address.peer_id for address in relay_prober.probed} == {loaded, silent}
    assert rows[loaded].load == relay_prober.loads[loaded] and rows[loaded].rtt == PING
    assert rows[loaded].last_seen == pytest.approx(wall() - 1.0, abs=0.1)  # the silent one's wait
    assert (rows[silent].rtt, rows[silent].load, rows[silent].state) == (None, None, "online")
    second = await collector.collect_once()
    assert {row.peer_id: row.state for row in second.relays}[silent] == "unreachable"

    listing = records.relays.pop(silent)  # its listing is gone: so is the relay, and its misses
    third = await collector.collect_once()
    assert [row.peer_id for row in third.relays] == [loaded]
    records.relays[silent] = listing  # back, still silent: one miss since, not three
    fourth = await collector.collect_once()
    assert {row.peer_id: row.state for row in fourth.relays}[silent] == "online"


async def test_without_a_relay_prober_relays_are_listed_unprobed(autojump_clock: object) -> None:
    records, _ = swarm_of_blocks(1)
    relay = records.add_relay()
    snapshot = await Collector(FakeDHT(records), FakeProber(), clock=wall).collect_once()
    assert [(row.peer_id, row.rtt, row.state) for row in snapshot.relays] == [
        (relay, None, "online")
    ]
