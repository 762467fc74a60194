"""What a peer has done lately, for the person who runs it.

The span server counts what it serves (`Activity`: sessions opened and refused, inference
steps and their tokens, batch forwards and backwards). Every `every` seconds the reporter
logs one line on the period just ended, with the load now; a quiet period logs nothing.
`summary` is the pure part; `ActivityReporter.run` the trio loop around it. `Durations`
counts times in buckets (a histogram, for their percentiles): the inference steps' here;
`PeerStatus` is the whole picture at one moment (totals, step times, announcement, cache),
which the `swarm peer` command serves as metrics.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace

import trio

from routing.announcement import PeerAnnouncement, PeerState
from routing.rpc import RelayLoad, RPCStats

logger = logging.getLogger(__name__)


@dataclass
class Activity:
    """Running totals since the peer started."""

    sessions: int = 0  # inference sessions opened
    forked: int = 0  # of them, those begun with a copy of another's cached tokens
    forked_tokens: int = 0  # the tokens they copied (not computed again), every row counted
    refused: int = 0  # sessions refused (no room, or a request it does not take)
    steps: int = 0  # inference steps served
    merged: int = 0  # of them, those run in one forward with other sessions' steps
    tokens: int = 0  # positions those steps ran, every row counted
    forwards: int = 0  # batch forwards and backwards served
    compute_seconds: float = 0.0  # the time the steps' blocks computed


@dataclass(frozen=True)
class Load:
    """The peer's state at a report: what it serves and how full it is."""

    start: int
    end: int  # exclusive
    sessions: int  # open now
    cache_tokens_left: int
    cache_tokens: int


STEP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)


@dataclass
class Durations:
    """Durations in seconds, counted in buckets: `counts[i]` took at most `bounds[i]` and
    more than the bound before; the last count is those over every bound."""

    bounds: tuple[float, ...]
    total: float = 0.0  # seconds, all of them
    counts: list[int] = field(init=False)

    def __post_init__(self) -> None:
        self.counts = [0] * (len(self.bounds) + 1)

    def observe(self, seconds: float) -> None:
        self.counts[sum(bound < seconds for bound in self.bounds)] += 1
        self.total += seconds

    def copy(self) -> Durations:
        copied = Durations(self.bounds, self.total)
        copied.counts = list(self.counts)
        return copied


@dataclass(frozen=True)
class PeerStatus:
    """A serving peer at one moment, for its operator's metrics."""

    announcement: PeerAnnouncement  # what it announces now: span, load, weights
    activity: Activity  # a copy of its totals
    step_times: Durations  # a copy of its steps' times (`STEP_BUCKETS`)
    cache_tokens: int  # its attention cache's size
    reached: bool | None = None  # its initial peers dialled it back where it listens (None:
    # not checked, or serving through a circuit)
    relay: RelayLoad | None = None  # the circuits it relays for others, if it relays any
    connections: RPCStats | None = None  # its connections now (direct, through relays)
    kept_bytes: int = 0  # activations it keeps for backwards to come (`peer.kept_forwards`)
    kept_backwards: int = 0  # backwards it ran on the graph their forward kept
    kept_released: int = 0  # graphs their callers released: no backward came for them
    kept_too_large: int = 0  # training forwards whose graph was over `--kept-activations`

    @property
    def draining(self) -> bool:
        """Whether it takes no new session, as it announces."""
        return self.announcement.state is PeerState.DRAINING


def summary(before: Activity, now: Activity, seconds: float, load: Load) -> str | None:
    """One line on what happened between two snapshots of the totals; None if nothing did."""
    done = Activity(**{f.name: getattr(now, f.name) - getattr(before, f.name) for f in fields(now)})
    if done == Activity():
        return None
    return (
        f"blocks {load.start}..{load.end - 1}, last {seconds:.0f} s: {done.sessions} sessions "
        f"opened, {done.refused} refused; {done.steps} steps, {done.tokens} tokens "
        f"({done.tokens / seconds:.1f}/s); {done.forwards} forwards and backwards. Now "
        f"{load.sessions} sessions open, {load.cache_tokens_left} of {load.cache_tokens} "
        "cache tokens free"
    )


class ActivityReporter:
    """Logs `summary` every `every` seconds (see the module doc)."""

    def __init__(self, activity: Activity, load: Callable[[], Load], every: float) -> None:
        self.activity = activity
        self.load = load
        self.every = every

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        before, since = replace(self.activity), trio.current_time()
        task_status.started()
        while True:
            await trio.sleep(self.every)
            now, at = replace(self.activity), trio.current_time()
            if (line := summary(before, now, at - since, self.load())) is not None:
                logger.info("%s", line)
            before, since = now, at
