#!/usr/bin/env python3
"""Benchmark the transport: RPC over SecureStream on loopback TCP vs a plain TCP echo.

Round trip: a one-token hidden state (1 x 1 x 4096, float32 = 16 KiB and bfloat16 = 8 KiB)
sent as a unary call whose handler decodes the tensor and sends it back (tensor_codec both
ways), against a plain TCP echo of the same bytes with no framing, no encryption and no RPC
(the server knows the size and echoes exactly that many bytes). "added" = RPC median minus
plain median: what Noise + the RPC layer cost per round trip.

Throughput: 16 MiB payloads sent as a unary call with an empty reply, against plain TCP
sending 16 MiB and waiting for a 1-byte acknowledgement.

Client and server run in this one process and one trio loop (both sides' CPU is counted),
on 127.0.0.1 with TCP_NODELAY.

    .venv/bin/python scripts/bench_transport.py [--runs 2000] [--bulk-runs 20]
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import time
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path

import torch
import trio

from routing.rpc import CallContext, Packet, RPCHost
from routing.tensor_codec import decode_tensor, encode_tensor
from routing.transport import TcpTransport
from security import Identity

MIB = 1024 * 1024
BULK = 16 * MIB


async def _receive_exactly(stream: trio.abc.ReceiveStream, size: int) -> None:
    left = size
    while left:
        data = await stream.receive_some(min(left, 1 << 20))
        if not data:
            raise EOFError
        left -= len(data)


async def _plain_server(
    payload_size: int, reply_size: int, *, task_status: trio.TaskStatus[int]
) -> None:
    reply = bytes(reply_size)

    async def handle(stream: trio.SocketStream) -> None:
        stream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, True)
        buffer = bytearray()
        while True:
            while len(buffer) < payload_size:
                data = await stream.receive_some(1 << 20)
                if not data:
                    return
                buffer += data
            del buffer[:payload_size]
            await stream.send_all(reply or bytes(payload_size))

    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    async with trio.open_nursery() as nursery:
        await nursery.start(trio.serve_listeners, handle, listeners)
        task_status.started(port)


async def _time(runs: int, once: Callable[[], Awaitable[None]]) -> list[float]:
    for _ in range(max(10, runs // 20)):  # warm up
        await once()
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        await once()
        samples.append(time.perf_counter() - start)
    return samples


async def plain_round_trip(nursery: trio.Nursery, size: int, reply: int, runs: int) -> list[float]:
    port = await nursery.start(_plain_server, size, reply)
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    payload = bytes(size)

    async def once() -> None:
        await stream.send_all(payload)
        await _receive_exactly(stream, reply or size)

    async with stream:
        return await _time(runs, once)


async def _echo_tensor(request: Packet, context: CallContext) -> Packet:
    tensor = decode_tensor(request.header, request.body)
    header, body = encode_tensor(tensor)
    return Packet(header, body)


async def _sink(request: Packet, context: CallContext) -> Packet:
    return Packet({"n": len(request.body)})


def _percentile(samples: list[float], q: float) -> float:
    return statistics.quantiles(samples, n=100)[int(q) - 1]


RESULTS: dict[str, dict[str, float]] = {}  # for --json


def _row(name: str, samples: list[float], baseline: list[float] | None, size: int) -> str:
    median = statistics.median(samples) * 1e3
    p90 = _percentile(samples, 90) * 1e3
    added = "" if baseline is None else f"{median - statistics.median(baseline) * 1e3:+.3f}"
    rate = size / statistics.median(samples) / 1e6
    RESULTS[name] = {"median_ms": median, "p90_ms": p90, "mb_per_s": rate}
    return f"| {name:<34} | {median:9.3f} | {p90:9.3f} | {added:>9} | {rate:10.1f} |"


async def main(runs: int, bulk_runs: int) -> None:
    print("| case                               | median ms |    p90 ms | added ms |       MB/s |")
    print("|------------------------------------|-----------|-----------|----------|------------|")
    async with trio.open_nursery() as nursery:
        server = RPCHost(Identity.generate(), TcpTransport())
        server.add_unary("echo", _echo_tensor)
        server.add_unary("sink", _sink)
        address = await nursery.start(partial(server.run, "127.0.0.1", 0))
        client = RPCHost(Identity.generate(), TcpTransport())
        await nursery.start(partial(client.run, "127.0.0.1", 0))
        await client.call(address, "ping", Packet(), timeout=10)  # connect + handshake

        for dtype in (torch.float32, torch.bfloat16):
            hidden = torch.randn(1, 1, 4096).to(dtype)
            header, body = encode_tensor(hidden)
            size = len(body)
            plain = await plain_round_trip(nursery, size, 0, runs)

            async def rpc_once(header: dict[str, object] = header, body: memoryview = body) -> None:
                reply = await client.call(address, "echo", Packet(header, body), timeout=10)
                decode_tensor(reply.header, reply.body)

            rpc = await _time(runs, rpc_once)
            name = str(dtype).removeprefix("torch.")
            print(_row(f"plain TCP echo {size // 1024} KiB", plain, None, 2 * size))
            print(_row(f"RPC echo 1x1x4096 {name}", rpc, plain, 2 * size))

        plain_bulk = await plain_round_trip(nursery, BULK, 1, bulk_runs)
        payload = bytes(BULK)

        async def bulk_once() -> None:
            await client.call(address, "sink", Packet({}, payload), timeout=60)

        rpc_bulk = await _time(bulk_runs, bulk_once)
        print(_row("plain TCP 16 MiB one way", plain_bulk, None, BULK))
        print(_row("RPC 16 MiB one way (unary)", rpc_bulk, plain_bulk, BULK))
        nursery.cancel_scope.cancel()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=2000)
    parser.add_argument("--bulk-runs", type=int, default=20)
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args()
    trio.run(main, args.runs, args.bulk_runs)
    if args.json:
        args.json.write_text(json.dumps(RESULTS, indent=1))
