"""`swarm api`'s own Prometheus metrics, at `/metrics` (behind the API key, if there is one).

Counters since the server started: requests by route and HTTP status, prompt tokens (once
per request) and completion tokens (every answer's, streamed or whole); gauges of now:
generations under way, the most that run at once, and sessions waiting for a
conversation's next turn. Every sample has the label `model` (the id requests name).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from ..prometheus import Labels, exposition, metric


@dataclass
class ApiActivity:
    """Running totals since the server started."""

    requests: Counter[tuple[str, int]] = field(default_factory=Counter)  # (route, status)
    prompt_tokens: int = 0
    completion_tokens: int = 0


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
        *metric("swarm_api_completion_tokens_total", "counter", "Tokens generated.",
                [(model, activity.completion_tokens)]),
        *metric("swarm_api_generations", "gauge", "Generations under way.",
                [(model, load.running)]),
        *metric("swarm_api_max_concurrent_generations", "gauge", "The most that run at once.",
                [(model, load.max_concurrent)]),
        *metric("swarm_api_idle_sessions", "gauge", "Sessions waiting for a next turn.",
                [(model, load.idle_sessions)]),
    ]  # fmt: skip
    return exposition(lines)
