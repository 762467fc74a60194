"""`TrioThread.spawn`: a task started from any thread without waiting, and nothing once the
loop has stopped (a finalizer may call it then)."""

from __future__ import annotations

import threading

from swarm.trio_thread import TrioThread


def test_spawn_starts_a_task_and_does_nothing_once_the_loop_stopped() -> None:
    loop = TrioThread()
    loop.start()
    ran = threading.Event()
    seen: list[str] = []

    async def task(name: str) -> None:
        seen.append(name)
        ran.set()

    loop.spawn(task, "first")
    assert ran.wait(timeout=10) and seen == ["first"]
    loop.close()
    loop.spawn(task, "after")  # no error, and it never runs
    assert seen == ["first"]
