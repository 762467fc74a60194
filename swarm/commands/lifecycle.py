"""Running a long-lived service from the command line.

The service is an async callable started with `nursery.start`; the value it reports through
`task_status` is its own address, printed to stdout on a line of its own so that scripts and
tests can read it. SIGINT and SIGTERM cancel the service, which cleans up in its own
`finally` blocks (shielded where it must still talk to the network, e.g. to announce
`offline`).
"""

from __future__ import annotations

import logging
import signal
from collections.abc import Awaitable, Callable
from typing import Any

import trio

logger = logging.getLogger(__name__)

Service = Callable[..., Awaitable[None]]


async def serve_until_signal(service: Service, *args: Any) -> None:
    """Start `service`, print its address, and stop it on SIGINT or SIGTERM."""
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            address = await nursery.start(service, *args)
            print(address, flush=True)
            async for signum in signals:
                logger.info("received %s, stopping", signal.Signals(signum).name)
                nursery.cancel_scope.cancel()
                break


def run_service(service: Service, *args: Any) -> int:
    """Synchronous entry for a subcommand: run the service until a signal; exit code 0."""
    trio.run(serve_until_signal, service, *args)
    return 0
