#!/usr/bin/env python3
"""Benchmark the transport: RPC over SecureStream on loopback TCP vs a plain TCP echo.

Round trip: a one-token hidden state (1 x 1 x 4096, float32 = 16 KiB and bfloat16 = 8 KiB)
sent as a unary call whose handler decodes the tensor and sends it back (tensor_codec both
ways, and the caller decodes the reply), against a plain TCP echo of the same bytes with no
framing, no encryption and no RPC (the server knows the size and echoes exactly that many
bytes). In between, a SecureStream echo of the same bytes (Noise only, no RPC) shows which
layer costs what. "added" = median minus the plain TCP median, measured in the same run.

At token cadence (`--idle-ms`, default 15): the fp32 round trip again, with both ends idle
for that long before each call, as between the steps of a generation. On a virtual machine
an idle CPU takes a while to wake and caches go cold, so every layer costs more then; the
difference to the back-to-back rows is what a real token pays.

Throughput: 16 MiB payloads sent as a unary call with a small reply, against plain TCP
sending 16 MiB and waiting for a 1-byte acknowledgement.

Through a circuit: the fp32 round trip and the 16 MiB call again, to a peer that listens
nowhere and serves through a circuit relay (`routing/rpc/circuit.py`), as a peer behind NAT
does; the relay and that peer run in the servers' process, next to the direct servers.

Where the servers run: by default in a child process (`--layout split`), as two peers
would, each with its own CPU; `--layout one` runs client and servers in this one process
and one trio loop, so every byte's encryption and decryption share one core (a lower bound).
All on 127.0.0.1 with TCP_NODELAY. Aims (issue 2): < 0.3 ms added per round trip,
> 300 MB/s for 16 MiB payloads.

    .venv/bin/python scripts/bench_transport.py [--runs 2000] [--bulk-runs 20]
        [--idle-ms 15] [--layout split|one|both] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from contextlib import suppress
from functools import partial
from pathlib import Path
from typing import Any

import torch
import trio

from routing.address import PeerAddress
from routing.rpc import CallContext, CircuitRelay, Packet, RPCHost, serve_via
from routing.tensor_codec import decode_tensor, encode_tensor
from routing.transport import TcpTransport
from security import Identity, SecureStream

MIB = 1024 * 1024
BULK = 16 * MIB
HIDDEN = 4096
AIM_ADDED_MS = 0.3
AIM_MB_S = 300.0
SIZES = (HIDDEN * 4, HIDDEN * 2, BULK)  # what the echo servers serve (by request size)


# -- servers ---------------------------------------------------------------------------------


async def _receive_exactly(stream: trio.abc.ReceiveStream, size: int) -> bool:
    left = size
    while left:
        data = await stream.receive_some(min(left, 1 << 20))
        if not data:
            return False
        left -= len(data)
    return True


async def _echo_loop(stream: trio.abc.Stream, size: int) -> None:
    """Echo `size`-byte messages; a message of BULK bytes gets a 1-byte acknowledgement."""
    reply = b"k" if size == BULK else bytes(size)
    while await _receive_exactly(stream, size):
        await stream.send_all(reply)


async def _serve_plain(size: int, *, task_status: trio.TaskStatus[int]) -> None:
    async def handle(stream: trio.SocketStream) -> None:
        stream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, True)
        await _echo_loop(stream, size)

    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    async with trio.open_nursery() as nursery:
        await nursery.start(trio.serve_listeners, handle, listeners)
        task_status.started(listeners[0].socket.getsockname()[1])


async def _serve_secure(
    identity: Identity, size: int, *, task_status: trio.TaskStatus[int]
) -> None:
    async def handle(stream: trio.abc.Stream) -> None:
        secure = SecureStream(stream, identity, initiator=False)
        with suppress(trio.BrokenResourceError):
            await _echo_loop(secure, size)

    async with trio.open_nursery() as nursery:
        _, port = await nursery.start(partial(TcpTransport().serve, "127.0.0.1", 0, handle))
        task_status.started(port)


async def _echo_tensor(request: Packet, context: CallContext) -> Packet:
    tensor = decode_tensor(request.header, request.body)
    header, body = encode_tensor(tensor)
    return Packet(header, body)


async def _sink(request: Packet, context: CallContext) -> Packet:
    return Packet({"n": len(request.body)})


async def serve_all(*, task_status: trio.TaskStatus[dict[str, Any]]) -> None:
    """Every server the benchmark needs; started value: where they are."""
    async with trio.open_nursery() as nursery:
        rpc = RPCHost(Identity.generate(), TcpTransport())
        rpc.add_unary("echo", _echo_tensor)
        rpc.add_unary("sink", _sink)
        address = await nursery.start(partial(rpc.run, "127.0.0.1", 0))
        relay = RPCHost(Identity.generate(), TcpTransport())
        CircuitRelay().register(relay)
        relay_address = await nursery.start(partial(relay.run, "127.0.0.1", 0))
        behind = RPCHost(Identity.generate(), TcpTransport())  # listens nowhere
        behind.add_unary("echo", _echo_tensor)
        behind.add_unary("sink", _sink)
        await nursery.start(behind.run_outbound)
        circuit = await nursery.start(serve_via, behind, relay_address)
        identity = Identity.generate()
        where: dict[str, Any] = {"rpc": str(address), "circuit": str(circuit),
                                 "secure_id": identity.peer_id.to_base58()}  # fmt: skip
        for size in SIZES:
            where[f"plain_{size}"] = await nursery.start(_serve_plain, size)
            where[f"secure_{size}"] = await nursery.start(_serve_secure, identity, size)
        task_status.started(where)


def _serve_forever() -> None:
    """`--serve`: run the servers, print where they are as one JSON line, until killed."""

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            where = await nursery.start(serve_all)
            print(json.dumps(where), flush=True)

    trio.run(main)


# -- client ----------------------------------------------------------------------------------


async def _time(runs: int, once: Callable[[], Awaitable[None]], idle: float = 0.0) -> list[float]:
    """Time `once` `runs` times, after a warm-up; `idle` seconds of quiet before each."""
    for _ in range(max(10, runs // 20)):  # warm up
        await once()
    samples = []
    for _ in range(runs):
        if idle:
            await trio.sleep(idle)
        start = time.perf_counter()
        await once()
        samples.append(time.perf_counter() - start)
    return samples


async def _stream_round_trips(
    stream: trio.abc.Stream, size: int, runs: int, idle: float = 0.0
) -> list[float]:
    payload = bytes(size)
    reply = 1 if size == BULK else size

    async def once() -> None:
        await stream.send_all(payload)
        if not await _receive_exactly(stream, reply):
            raise EOFError("the echo server closed")

    return await _time(runs, once, idle)


async def _plain(where: dict[str, Any], size: int, runs: int, idle: float = 0.0) -> list[float]:
    stream = await trio.open_tcp_stream("127.0.0.1", where[f"plain_{size}"])
    async with stream:
        return await _stream_round_trips(stream, size, runs, idle)


async def _secure(where: dict[str, Any], size: int, runs: int) -> list[float]:
    from security import PeerId

    raw = await trio.open_tcp_stream("127.0.0.1", where[f"secure_{size}"])
    expected = PeerId.from_base58(where["secure_id"])
    stream = SecureStream(raw, Identity.generate(), initiator=True, expected_peer=expected)
    async with stream:
        return await _stream_round_trips(stream, size, runs)


class Table:
    """Rows printed as they come, and kept for `--json`."""

    def __init__(self) -> None:
        self.rows: dict[str, dict[str, float]] = {}
        print(
            "| case                                         | median ms |    p90 ms |  added ms |"
            "       MB/s |"
        )
        print(
            "|----------------------------------------------|-----------|-----------|-----------|"
            "------------|"
        )

    def row(self, name: str, samples: list[float], baseline: list[float] | None, size: int) -> None:
        median = statistics.median(samples)
        p90 = statistics.quantiles(samples, n=10)[-1]
        added = None if baseline is None else (median - statistics.median(baseline)) * 1e3
        self.rows[name] = {
            "median_ms": median * 1e3,
            "p90_ms": p90 * 1e3,
            "mb_per_s": size / median / 1e6,
        }
        if added is not None:
            self.rows[name]["added_ms"] = added
        added_text = "" if added is None else f"{added:+.3f}"
        print(
            f"| {name:<44} | {median * 1e3:9.3f} | {p90 * 1e3:9.3f} | {added_text:>9} |"
            f" {size / median / 1e6:10.1f} |",
            flush=True,
        )


async def run_client(
    where: dict[str, Any], runs: int, bulk_runs: int, idle: float, table: Table
) -> dict[str, float]:
    summary: dict[str, float] = {}
    async with trio.open_nursery() as nursery:
        client = RPCHost(Identity.generate(), TcpTransport())
        # It dials out only, as a client behind NAT does: the peer behind the relay would
        # dial back a client that listens, and the circuit's calls would go direct.
        await nursery.start(client.run_outbound)
        address = PeerAddress.parse(where["rpc"])
        circuit = PeerAddress.parse(where["circuit"])
        for target in (address, circuit):  # connect + handshake
            await client.call(target, "ping", Packet(), timeout=10)

        for dtype in (torch.float32, torch.bfloat16):
            name = str(dtype).removeprefix("torch.")
            header, body = encode_tensor(torch.randn(1, 1, HIDDEN).to(dtype))
            size = len(body)

            async def rpc_once(
                header: dict[str, Any] = header,
                body: memoryview = body,
                target: PeerAddress = address,
            ) -> None:
                reply = await client.call(target, "echo", Packet(header, body), timeout=10)
                decode_tensor(reply.header, reply.body)

            plain = await _plain(where, size, runs)
            secure = await _secure(where, size, runs)
            rpc = await _time(runs, rpc_once)
            table.row(f"plain TCP echo {size // 1024} KiB", plain, None, 2 * size)
            table.row(f"SecureStream echo {size // 1024} KiB", secure, plain, 2 * size)
            table.row(f"RPC echo 1x1x{HIDDEN} {name}", rpc, plain, 2 * size)
            summary[f"added_ms_{name}"] = (statistics.median(rpc) - statistics.median(plain)) * 1e3
            if dtype == torch.float32:
                relayed = await _time(runs, partial(rpc_once, target=circuit))
                table.row(f"RPC echo 1x1x{HIDDEN} {name} via a circuit", relayed, plain, 2 * size)
                summary["circuit_added_ms"] = (
                    statistics.median(relayed) - statistics.median(rpc)
                ) * 1e3
            if idle and dtype == torch.float32:  # at token cadence: both ends idle before
                idle_runs = max(50, runs // 10)
                plain_idle = await _plain(where, size, idle_runs, idle)
                rpc_idle = await _time(idle_runs, rpc_once, idle)
                quiet = f"after {idle * 1e3:.0f} ms idle"
                table.row(f"plain TCP echo {size // 1024} KiB {quiet}", plain_idle, None, 2 * size)
                table.row(f"RPC echo 1x1x{HIDDEN} {name} {quiet}", rpc_idle, plain_idle, 2 * size)

        payload = bytes(BULK)

        async def bulk_once(target: PeerAddress = address) -> None:
            await client.call(target, "sink", Packet({}, payload), timeout=60)

        plain_bulk = await _plain(where, BULK, bulk_runs)
        secure_bulk = await _secure(where, BULK, bulk_runs)
        rpc_bulk = await _time(bulk_runs, bulk_once)
        circuit_bulk = await _time(bulk_runs, partial(bulk_once, circuit))
        table.row("plain TCP 16 MiB one way", plain_bulk, None, BULK)
        table.row("SecureStream 16 MiB one way", secure_bulk, plain_bulk, BULK)
        table.row("RPC 16 MiB one way (unary)", rpc_bulk, plain_bulk, BULK)
        table.row("RPC 16 MiB one way via a circuit", circuit_bulk, plain_bulk, BULK)
        summary["rpc_mb_per_s"] = BULK / statistics.median(rpc_bulk) / 1e6
        summary["circuit_mb_per_s"] = BULK / statistics.median(circuit_bulk) / 1e6
        nursery.cancel_scope.cancel()
    return summary


async def run_one_process(runs: int, bulk_runs: int, idle: float, table: Table) -> dict[str, float]:
    async with trio.open_nursery() as nursery:
        where = await nursery.start(serve_all)
        summary = await run_client(where, runs, bulk_runs, idle, table)
        nursery.cancel_scope.cancel()
    return summary


def run_split(runs: int, bulk_runs: int, idle: float, table: Table) -> dict[str, float]:
    child = subprocess.Popen(
        [sys.executable, __file__, "--serve"], stdout=subprocess.PIPE, text=True
    )
    try:
        line = child.stdout.readline() if child.stdout else ""
        if not line:
            raise RuntimeError("the server process did not start")
        return trio.run(run_client, json.loads(line), runs, bulk_runs, idle, table)
    finally:
        child.kill()
        child.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--runs", type=int, default=2000)
    parser.add_argument("--bulk-runs", type=int, default=20)
    parser.add_argument(
        "--idle-ms",
        type=float,
        default=15.0,
        help="also time the fp32 round trip after this much quiet (token cadence; 0: skip)",
    )
    parser.add_argument("--layout", choices=["split", "one", "both"], default="both")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        _serve_forever()
        return
    results: dict[str, Any] = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "aims": {"added_ms": AIM_ADDED_MS, "mb_per_s": AIM_MB_S},
    }
    idle = args.idle_ms / 1e3
    layouts = ["split", "one"] if args.layout == "both" else [args.layout]
    for layout in layouts:
        print(
            f"\nlayout {layout}: "
            + (
                "servers in a child process"
                if layout == "split"
                else "client and servers in one process"
            )
        )
        table = Table()
        if layout == "split":
            summary = run_split(args.runs, args.bulk_runs, idle, table)
        else:
            summary = trio.run(run_one_process, args.runs, args.bulk_runs, idle, table)
        worst = max(v for k, v in summary.items() if k.startswith("added_ms"))
        print(
            f"added per round trip: {worst:.3f} ms (aim < {AIM_ADDED_MS}); "
            f"RPC 16 MiB: {summary['rpc_mb_per_s']:.0f} MB/s (aim > {AIM_MB_S:.0f})"
        )
        results[layout] = {"rows": table.rows, "summary": summary}
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
