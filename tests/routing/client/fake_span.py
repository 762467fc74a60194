"""A fake span server for the client's chain tests: the span protocol over the in-memory
network, with made-up blocks that compute in the event loop (no worker thread, so the
autojump clock stays exact), and faults on command.

Block `b` keeps, per session, the running sum `S` of every input it has seen, and maps an
input position `x_t` to `x_t + S_t / (b + 2)` (`S_t` includes `x_t`). Its output thus depends
on the whole history: a replacement peer whose cache was not rebuilt by replaying the lost
peer's inputs gives different numbers. `reference(x)` is the same function over a whole
sequence at once, written independently (a cumulative sum).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from functools import partial
from typing import Literal

import torch
import trio

from routing.address import PeerAddress
from routing.announcement import PeerAnnouncement, PeerState, block_key
from routing.dht import DHTConfig, DHTNode
from routing.errors import HandlerError
from routing.memory_network import MemoryNetwork
from routing.rpc import BidiStream, CallContext, Packet, RPCHost
from routing.span_protocol import (
    INFERENCE,
    INFO,
    SessionOpened,
    SessionRequest,
    parse_step,
    step_header,
)
from routing.tensor_codec import decode_tensor, encode_tensor
from security import Identity

MODEL = "fake-model"
NUM_BLOCKS = 4
HIDDEN = 8

Fault = Literal["none", "stall", "error", "garbage", "refuse"]  # refuse: sessions, as invalid


def reference(hidden: torch.Tensor, start: int = 0, end: int = NUM_BLOCKS) -> torch.Tensor:
    """Blocks [start, end) over a whole sequence [1, n, HIDDEN] at once."""
    for block in range(start, end):
        hidden = hidden + torch.cumsum(hidden, dim=1) / (block + 2)
    return hidden


@dataclass
class FakePeer:
    """One fake peer; `fault` changes how it answers steps from now on. Its cache takes
    `cache_tokens` (each session reserves its `max_length`); it refuses a session beyond."""

    rpc: RPCHost
    dht: DHTNode
    start: int
    end: int
    host: str
    throughput: float
    scope: trio.CancelScope
    cache_tokens: int = 10_000
    fault: Fault = "none"
    sessions: int = 0  # open now
    reserved: int = 0  # cache tokens of the sessions open now
    steps: int = 0  # steps answered, all sessions together
    opened: list[tuple[int, int]] = field(default_factory=list)  # spans of sessions opened

    @property
    def peer(self) -> str:
        return str(self.rpc.peer_id)

    @property
    def address(self) -> PeerAddress:
        return self.rpc.address

    def kill(self) -> None:
        """Stop serving at once (its connections break)."""
        self.scope.cancel()

    def announcement(self) -> PeerAnnouncement:
        return PeerAnnouncement(
            address=self.rpc.address, model=MODEL, start=self.start, end=self.end,
            state=PeerState.ONLINE, throughput=self.throughput,
            cache_tokens_left=self.cache_tokens - self.reserved, sessions=self.sessions,
            dtype="float32", version="fake",
        )  # fmt: skip

    async def announce(self) -> None:
        """Publish its numbers now (a real peer does it every minute)."""
        for block in range(self.start, self.end):
            await self.dht.store_own(block_key(MODEL, block), self.announcement().encode(), 600)

    async def info(self, request: Packet, context: CallContext) -> Packet:
        return Packet(self.announcement().to_fields())

    async def inference(self, stream: BidiStream, context: CallContext) -> None:
        request = SessionRequest.parse((await stream.receive()).header)
        if not self.start <= request.start < request.end <= self.end:
            raise HandlerError("bad_span", "not my blocks")
        if self.fault == "refuse":
            raise HandlerError("invalid_request", "refusing on purpose")
        if self.reserved + request.max_length > self.cache_tokens:
            raise HandlerError("cache_budget", f"{self.cache_tokens - self.reserved} left")
        sums = {b: torch.zeros(1, 1, HIDDEN) for b in range(request.start, request.end)}
        self.reserved += request.max_length
        self.sessions += 1
        self.opened.append((request.start, request.end))
        try:
            opened = SessionOpened(secrets.token_hex(4), request.start, request.end, 64)
            await stream.send(Packet(opened.header()))
            async for packet in stream:
                number, tensor = parse_step(packet.header)
                hidden = decode_tensor(tensor, packet.body)
                if self.fault == "stall":
                    await trio.sleep_forever()
                if self.fault == "error":
                    raise HandlerError("out_of_memory", "failing on purpose")
                for block in range(request.start, request.end):
                    running = sums[block] + torch.cumsum(hidden, dim=1)
                    sums[block] = running[:, -1:]
                    hidden = hidden + running / (block + 2)
                if self.fault == "garbage":
                    hidden = hidden[:, :, :-1]
                header, body = encode_tensor(hidden)
                await stream.send(Packet(step_header(number, header), body))
                self.steps += 1
        finally:
            self.sessions -= 1
            self.reserved -= request.max_length


async def start_fake_peer(
    nursery: trio.Nursery,
    network: MemoryNetwork,
    host: str,
    bootstrap: PeerAddress,
    start: int,
    end: int,
    *,
    throughput: float = 1000.0,
    cache_tokens: int = 10_000,
) -> FakePeer:
    """Serve, join the DHT and announce blocks [start, end) as online."""
    rpc = RPCHost(Identity.generate(), network.transport(host))
    scope = trio.CancelScope()
    dht = DHTNode(rpc, DHTConfig(), clock=trio.current_time)
    peer = FakePeer(rpc, dht, start, end, host, throughput, scope, cache_tokens)
    rpc.add_unary(INFO, peer.info)
    rpc.add_stream(INFERENCE, peer.inference)

    async def serve(*, task_status: trio.TaskStatus[None]) -> None:
        with scope:
            async with trio.open_nursery() as inner:
                await inner.start(rpc.run, host, 1)
                await inner.start(partial(dht.run, initial_peers=[bootstrap]))
                await peer.announce()
                task_status.started()

    await nursery.start(serve)
    return peer
