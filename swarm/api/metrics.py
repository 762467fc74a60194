"""`swarm api`'s own Prometheus metrics, at `/metrics` (behind the API key, if there is one).

Counters since the server started: requests by route and HTTP status, prompt tokens (once
per request), those an answer's session held already (a conversation's next turn, or a
fork of a waiting session: `swarm_api_cached_prompt_tokens_total`, every answer's) and
completion tokens (every answer's, streamed or whole); histograms of the
latencies users feel: a request's time by route (read to last byte sent, a stream's
included), each answer's time to its first token, and the time between its tokens; gauges
of now: generations under way, the most that run at once, and sessions waiting for a
conversation's next turn. Every sample has the label `model` (the id requests name).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from peer.activity import Durations

from ..prometheus import Labels, exposition, histogram, metric

REQUEST_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
TOKEN_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5)


@dataclass
class ApiActivity:
    """Running totals since the server started."""

    requests: Counter[tuple[str, int]] = field(default_factory=Counter)  # (route, status)
    prompt_tokens: int = 0
    cached_tokens: int = 0  # of the answers' prompts, those their sessions held already
    completion_tokens: int = 0
    request_seconds: dict[str, Durations] = field(default_factory=dict)  # by route
    first_token_seconds: Durations = field(default_factory=lambda: Durations(REQUEST_BUCKETS))
    token_gap_seconds: Durations = field(default_factory=lambda: Durations(TOKEN_BUCKETS))

    def request_took(self, route: str, seconds: float) -> None:
        self.request_seconds.setdefault(route, Durations(REQUEST_BUCKETS)).observe(seconds)

    def token_came(self, seconds: float, *, first: bool) -> None:
        """An answer's token, `seconds` after its request (`first`) or its previous token."""
        self.completion_tokens += 1
        (self.first_token_seconds if first else self.token_gap_seconds).observe(seconds)


@dataclass(frozen=True)
class ApiLoad:
    """The server's state at a scrape."""

    running: int  # generations under way
    max_concurrent: int
    idle_sessions: int  # waiting for a conversation's next turn


def render_api_metrics(model_id: str, activity: ApiActivity, load: ApiLoad) -> str:
    """The server's metrics as the text Prometheus scrapes."""
    model: Labels = (("model", model_id),)
    requests = [
        ((*model, ("route", route), ("status", str(status))), count)
        for (route, status), count in sorted(activity.requests.items())
    ]
    lines = [
        *metric("swarm_api_requests_total", "counter", "Requests, by route and status.",
                requests),
        *metric("swarm_api_prompt_tokens_total", "counter", "Prompt tokens, once a request.",
                [(model, activity.prompt_tokens)]),
        *metric("swarm_api_cached_prompt_tokens_total", "counter",
                "Prompt tokens an answer's session held already.",
                [(model, activity.cached_tokens)]),
        *metric("swarm_api_completion_tokens_total", "counter", "Tokens generated.",
                [(model, activity.completion_tokens)]),
        *metric("swarm_api_generations", "gauge", "Generations under way.",
                [(model, load.running)]),
        *metric("swarm_api_max_concurrent_generations", "gauge", "The most that run at once.",
                [(model, load.max_concurrent)]),
        *metric("swarm_api_idle_sessions", "gauge", "Sessions waiting for a next turn.",
                [(model, load.idle_sessions)]),
        *histogram("swarm_api_request_seconds", "Requests' time, read to last byte sent.",
                   [((*model, ("route", route)), times)
                    for route, times in sorted(activity.request_seconds.items())]),
        *histogram("swarm_api_first_token_seconds", "Time to each answer's first token.",
                   [(model, activity.first_token_seconds)]),
        *histogram("swarm_api_token_gap_seconds", "Time between an answer's tokens.",
                   [(model, activity.token_gap_seconds)]),
    ]  # fmt: skip
    return exposition(lines)
