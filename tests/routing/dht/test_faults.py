"""Forged, oversized and long-lived records, floods and malformed replies are refused, and the
nodes go on working."""

from __future__ import annotations

import dataclasses
import random
from typing import Any

import pytest
import trio

from routing.address import PeerAddress
from routing.dht import DHTConfig, RecordRejectedError, SignedRecord, protocol
from routing.errors import RemoteError
from routing.memory_network import MemoryNetwork
from routing.rpc import CallContext, Packet, RPCHost
from security import Identity

from .swarm import Swarm

KEY = "tiny-model.0"


async def _raw_call(rpc: RPCHost, target: PeerAddress, method: str, header: dict[str, Any]) -> Any:
    return (await rpc.call(target, method, Packet(header), timeout=5.0)).header


async def _swarm(nursery: trio.Nursery, size: int, config: DHTConfig | None = None) -> Swarm:
    swarm = Swarm(MemoryNetwork(), nursery, config=config or DHTConfig())
    await swarm.grow(size, random.Random(size))
    return swarm


async def _client(swarm: Swarm, nursery: trio.Nursery, host: str = "10.9.9.9") -> RPCHost:
    """A bare RPC host on the swarm's network, to send hand-made requests."""
    rpc = RPCHost(Identity.generate(), swarm.network.transport(host))
    await nursery.start(rpc.run, host, 5000)
    return rpc


async def test_forged_oversized_and_long_lived_records_are_refused(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with trio.open_nursery() as nursery:
        swarm = await _swarm(nursery, 8)
        honest = swarm.members[0].node
        mallory = await _client(swarm, nursery)
        alice = Identity.generate()
        now = trio.current_time()
        target = swarm.members[1].address

        async def refused(record: SignedRecord, reason: str) -> None:
            with pytest.raises(RemoteError) as caught:
                request = {"key": record.key, "record": record.to_wire(), "sender": None}
                await _raw_call(mallory, target, protocol.STORE, request)
            assert caught.value.code == "record_rejected"
            assert reason in caught.value.message
            with pytest.raises(RecordRejectedError, match=reason):
                await honest.store_record(record)  # refused locally before going anywhere

        genuine = SignedRecord.create(alice, KEY, b"alice's", now + 60)
        forged = dataclasses.replace(
            SignedRecord.create(mallory.identity, KEY, b"mallory's", now + 60), subkey=alice.peer_id
        )
        await refused(forged, "subkey is not the peer id")
        await refused(dataclasses.replace(genuine, value=b"changed"), "bad signature")
        await refused(SignedRecord.create(alice, KEY, b"x" * 5000, now + 60), "over 4096")
        await refused(SignedRecord.create(alice, KEY, b"v", now + 3600), "ahead")
        with pytest.raises(RecordRejectedError):
            await honest.store(KEY, alice.peer_id, b"v", now + 60)  # not our subkey
        with pytest.raises(RecordRejectedError):
            await honest.store_own(KEY, b"v", ttl=3600)

        # nothing of that was stored anywhere, and the swarm still works
        assert all(len(member.node.storage) == 0 for member in swarm.members)
        assert await honest.store_record(genuine) >= 8
        for member in swarm.members:
            got = await member.node.get(KEY)
            assert {peer: value.value for peer, value in got.items()} == {alice.peer_id: b"alice's"}
        nursery.cancel_scope.cancel()


async def test_malformed_requests_get_typed_errors_and_stores_are_rate_limited(
    autojump_clock: trio.testing.MockClock,
) -> None:
    config = DHTConfig(store_rate=1.0, store_burst=5.0)
    async with trio.open_nursery() as nursery:
        swarm = await _swarm(nursery, 4, config)
        client = await _client(swarm, nursery)
        target = swarm.members[0].address
        for method, header in [
            (protocol.FIND_NODE, {"target": b"short"}),
            (protocol.FIND_NODE, {}),
            (protocol.FIND_VALUE, {"key": 7}),
            (protocol.FIND_VALUE, {"key": "k" * 1000}),
            (protocol.STORE, {"key": KEY, "record": "junk"}),
            (protocol.FIND_NODE, {"target": bytes(20), "sender": ["h", "not a port"]}),
        ]:
            try:
                await _raw_call(client, target, method, header)
            except RemoteError as error:
                assert error.code in ("bad_request", "record_rejected"), error
            else:
                assert header.get("sender"), "only a bad sender is ignored rather than refused"
        assert client.identity.peer_id not in {a.peer_id for a in swarm.members[0].node.table}

        client = await _client(swarm, nursery, host="10.9.9.8")  # fresh token bucket
        record = SignedRecord.create(client.identity, KEY, b"v", trio.current_time() + 60)
        request = {"key": KEY, "record": record.to_wire(), "sender": None}
        codes = []
        for _ in range(8):
            try:
                await _raw_call(client, target, protocol.STORE, request)
                codes.append("ok")
            except RemoteError as error:
                codes.append(error.code)
        assert codes == ["ok"] * 5 + ["rate_limited"] * 3
        await trio.sleep(1.0)  # one token back
        assert (await _raw_call(client, target, protocol.STORE, request))["stored"] is True
        assert await swarm.members[1].node.ping(target)  # still serving others
        nursery.cancel_scope.cancel()


MALFORMED_REPLIES: dict[str, Any] = {
    "nodes not a list": {"nodes": "everyone"},
    "too many nodes": {"nodes": [["10.1.1.1", 4000, bytes(32)]] * 21},
    "node of wrong type": {"nodes": [17]},
    "unusable port": {"nodes": [["10.1.1.1", 70000, bytes(32)]]},
    "short peer id": {"nodes": [["10.1.1.1", 4000, b"x"]]},
    "records not a list": {"nodes": [], "records": {"a": 1}},
    "forged record": "forged",
}


@pytest.mark.parametrize("kind", list(MALFORMED_REPLIES))
async def test_a_malformed_reply_fails_that_node_and_the_lookup_goes_on(
    autojump_clock: trio.testing.MockClock, kind: str
) -> None:
    async with trio.open_nursery() as nursery:
        swarm = await _swarm(nursery, 6)
        owner = swarm.members[1].node
        await owner.store_own(KEY, b"the owner's", ttl=300)

        rogue = await _client(swarm, nursery, host="10.6.6.6")
        asked = []

        async def ping(packet: Packet, context: CallContext) -> Packet:
            return Packet({})

        async def malformed(packet: Packet, context: CallContext) -> Packet:
            asked.append(context.peer_id)
            reply = MALFORMED_REPLIES[kind]
            if reply == "forged":
                forged = SignedRecord.create(
                    rogue.identity, KEY, b"rogue's", trio.current_time() + 60
                )
                forged = dataclasses.replace(forged, subkey=owner.peer_id)
                reply = {"nodes": [], "records": [forged.to_wire()]}
            return Packet(reply)

        rogue.add_unary(protocol.PING, ping)
        rogue.add_unary(protocol.FIND_NODE, malformed)
        rogue.add_unary(protocol.FIND_VALUE, malformed)

        # a client that knows the rogue and one honest node, and asks everyone it knows
        client = await swarm.add([swarm.members[0].address])
        client.node.config = dataclasses.replace(client.node.config, get_quorum=0)
        rogue_address = PeerAddress("10.6.6.6", 5000, rogue.identity.peer_id)
        assert await client.node.ping(rogue_address)
        assert rogue.identity.peer_id in {a.peer_id for a in client.node.table}
        got = await client.node.get(KEY)
        assert asked, "the rogue was asked"
        assert {peer: value.value for peer, value in got.items()} == {owner.peer_id: b"the owner's"}
        assert rogue.identity.peer_id not in {a.peer_id for a in client.node.table}
        assert (await client.node.find_nodes(owner.node_id)).nodes[0].peer_id == owner.peer_id
        nursery.cancel_scope.cancel()
