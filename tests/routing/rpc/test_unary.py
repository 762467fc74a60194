"""Unary calls: exact deadlines, cancellation reaching the remote, typed remote errors
that leave the connection and the other calls alone, caps, late replies, built-ins."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from routing.errors import CallTimeoutError, HandlerError, MessageTooLargeError, RemoteError
from routing.rpc import CallContext, Packet, RPCConfig

from .helpers import memory_pair, wait_until


async def test_a_deadline_is_exact_and_the_remote_sees_the_cancel(
    autojump_clock: trio.testing.MockClock,
) -> None:
    cancelled_at: list[float] = []

    async def slow(request: Packet, context: CallContext) -> Packet:
        try:
            await trio.sleep(100)
        except trio.Cancelled:
            cancelled_at.append(trio.current_time())
            raise
        return Packet({"late": True})

    async with memory_pair() as (_, server, client, _):
        server.add_unary("slow", slow)
        await client.ping(server.address, timeout=5)
        start = trio.current_time()
        with pytest.raises(CallTimeoutError):
            await client.call(server.address, "slow", Packet(), timeout=3)
        assert trio.current_time() - start == pytest.approx(3.0)
        await wait_until(lambda: bool(cancelled_at))
        assert cancelled_at[0] == pytest.approx(start + 3.0)  # at once, not at 100 s
        assert server.stats().handlers == 0 and client.stats().calls == 0


async def test_a_caller_cancelled_by_its_own_scope_cancels_the_remote(
    autojump_clock: trio.testing.MockClock,
) -> None:
    entered, cancelled = trio.Event(), trio.Event()

    async def slow(request: Packet, context: CallContext) -> Packet:
        entered.set()
        try:
            await trio.sleep_forever()
        finally:
            cancelled.set()
        raise AssertionError("unreachable")

    async with memory_pair() as (_, server, client, _):
        server.add_unary("slow", slow)
        async with trio.open_nursery() as nursery:

            async def caller() -> None:
                await client.call(server.address, "slow", Packet(), timeout=1000)

            nursery.start_soon(caller)
            await entered.wait()
            nursery.cancel_scope.cancel()
        with trio.fail_after(1):
            await cancelled.wait()
        assert client.stats().calls == 0
        await wait_until(lambda: server.stats().handlers == 0)


async def test_a_failing_handler_leaves_concurrent_calls_running(
    autojump_clock: trio.testing.MockClock,
) -> None:
    release = trio.Event()
    waiting = 0

    async def wait_for_release(request: Packet, context: CallContext) -> Packet:
        nonlocal waiting
        waiting += 1
        await release.wait()
        return Packet({"n": request.header["n"]})

    async def fail(request: Packet, context: CallContext) -> Packet:
        if request.header.get("typed"):
            raise HandlerError("bad_span", "blocks 3:9 are not served here")
        raise KeyError("internal detail")

    async with memory_pair() as (_, server, client, _):
        server.add_unary("wait", wait_for_release)
        server.add_unary("fail", fail)
        done: list[int] = []

        async def waiter(n: int) -> None:
            reply = await client.call(server.address, "wait", Packet({"n": n}), timeout=60)
            done.append(reply.header["n"])

        async with trio.open_nursery() as nursery:
            for n in range(10):
                nursery.start_soon(waiter, n)
            await wait_until(lambda: waiting == 10)
            with pytest.raises(RemoteError) as typed:
                await client.call(server.address, "fail", Packet({"typed": True}), timeout=5)
            assert (typed.value.code, typed.value.message) == (
                "bad_span",
                "blocks 3:9 are not served here",
            )
            with pytest.raises(RemoteError) as internal:
                await client.call(server.address, "fail", Packet(), timeout=5)
            assert internal.value.code == "internal" and "detail" not in str(internal.value)
            assert done == [] and server.stats().handlers == 10
            release.set()
        assert sorted(done) == list(range(10))
        assert client.stats().connections == 1 and server.stats().connections == 1


async def test_unknown_and_reserved_methods(autojump_clock: trio.testing.MockClock) -> None:
    async with memory_pair() as (_, server, client, _):
        with pytest.raises(RemoteError) as unknown:
            await client.call(server.address, "no.such.method", Packet(), timeout=5)
        assert unknown.value.code == "unknown_method" and "no.such.method" in unknown.value.message
        with pytest.raises(RemoteError) as long_name:
            await client.call(server.address, "x" * 10_000, Packet(), timeout=5)
        assert len(long_name.value.message) < 300  # the echo of the name is clipped
        with pytest.raises(ValueError):
            server.add_unary("ping", server.call)  # type: ignore[arg-type]
        with pytest.raises(ValueError):
            server.add_unary("echo", server.call)  # type: ignore[arg-type]


async def test_too_many_concurrent_calls_are_refused_as_overloaded(
    autojump_clock: trio.testing.MockClock,
) -> None:
    release = trio.Event()

    async def hold(request: Packet, context: CallContext) -> Packet:
        await release.wait()
        return Packet()

    async with memory_pair(RPCConfig(max_concurrent_calls=3)) as (_, server, client, _):
        server.add_unary("hold", hold)
        async with trio.open_nursery() as nursery:
            for _ in range(3):
                nursery.start_soon(
                    lambda: client.call(server.address, "hold", Packet(), timeout=60)
                )
            await wait_until(lambda: server.stats().handlers == 3)
            with pytest.raises(RemoteError) as refused:
                await client.call(server.address, "hold", Packet(), timeout=5)
            assert refused.value.code == "overloaded"
            assert (await client.ping(server.address, timeout=5)) >= 0  # answered by the reader
            release.set()
        await client.call(server.address, "echo", Packet(), timeout=5)  # capacity is back


async def test_payloads_near_and_over_the_cap(autojump_clock: trio.testing.MockClock) -> None:
    config = RPCConfig(max_message_size=1 << 20, max_header_size=64 << 10)

    async def inflate(request: Packet, context: CallContext) -> Packet:
        return Packet({}, bytes(int(request.header["size"])))

    async with memory_pair(config) as (_, server, client, _):
        server.add_unary("inflate", inflate)
        body = bytes(range(256)) * 4000  # 1,024,000 bytes: just under the cap with the prefix
        reply = await client.call(server.address, "echo", Packet({"k": 1}, body), timeout=30)
        assert bytes(reply.body) == body
        with pytest.raises(MessageTooLargeError):  # refused before sending
            await client.call(server.address, "echo", Packet({}, bytes(1 << 20)), timeout=30)
        with pytest.raises(RemoteError) as too_big:  # the handler's reply is over the cap
            await client.call(server.address, "inflate", Packet({"size": 2 << 20}), timeout=30)
        assert too_big.value.code == "reply_too_large"
        assert client.stats().connections == 1  # none of it broke the connection


async def test_a_late_reply_after_a_timeout_is_dropped(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def stubborn(request: Packet, context: CallContext) -> Packet:
        with trio.CancelScope(shield=True):  # ignores the CANCEL and replies anyway
            await trio.sleep(5)
        return Packet({"late": True})

    async with memory_pair() as (_, server, client, _):
        server.add_unary("stubborn", stubborn)
        with pytest.raises(CallTimeoutError):
            await client.call(server.address, "stubborn", Packet(), timeout=1)
        await trio.sleep(10)  # the reply arrived meanwhile and was dropped
        reply = await client.call(server.address, "echo", Packet({"fresh": 1}), timeout=5)
        assert reply.header == {"fresh": 1}
        assert client.stats().connections == 1 and client.stats().calls == 0


async def test_the_body_arrives_without_a_copy_and_context_names_the_caller(
    autojump_clock: trio.testing.MockClock,
) -> None:
    seen: list[CallContext] = []

    async def inspect(request: Packet, context: CallContext) -> Packet:
        seen.append(context)
        body = request.body
        return Packet({"view": isinstance(body, memoryview), "size": len(body)})

    async with memory_pair() as (_, server, client, _):
        server.add_unary("inspect", inspect)
        reply = await client.call(server.address, "inspect", Packet({}, bytes(5000)), timeout=5)
        assert reply.header == {"view": True, "size": 5000}
        assert seen[0].peer_id == client.peer_id and seen[0].remote_host == "10.0.0.2"


async def test_ping_and_info_are_built_in(autojump_clock: trio.testing.MockClock) -> None:
    async with memory_pair() as (network, server, client, _):
        network.set_latency(0.004)
        await client.ping(server.address, timeout=5)
        assert await client.ping(server.address, timeout=5) == pytest.approx(0.008)
        server.set_info(lambda: {"version": "1.2"})
        info = await client.call(server.address, "info", Packet(), timeout=5)
        assert info.header == {
            "version": "1.2",
            "peer_id": str(server.peer_id),
            "address": str(server.address),
        }
