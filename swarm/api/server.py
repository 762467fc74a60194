"""`ApiServer`: OpenAI's completions and chat completions API, generated through the swarm.

Routes: `GET /v1/models` (and `/v1/models/ID`), `POST /v1/completions`, `POST
/v1/chat/completions`, and `GET /metrics` for Prometheus (`swarm.api.metrics`); with
`"stream": true` the answer comes as server-sent events, one `data: {...}` chunk per piece
of text (or of the calls that `tool_choice` asks for: `call_stream.py`) and `data: [DONE]`
at the end, as OpenAI's clients read them. Each answer (`n` of them, side by side) takes a
waiting inference session whose prompt its own begins with, rewinds it to where they part
and sends only the rest (`session_pool.py`: a conversation's next turn), forks one it shares
a beginning with (a system prompt), has an answer under way that shares one fork its session
between two of its tokens (the `n` answers of a prompt compute it once), or opens one (a
chat request renders its messages with the model's chat template; where the peers have no
room for it, waiting sessions close, the oldest first, then it waits for the answers in
flight). After an answer the session waits for the next turn; when the answer fails or its
client goes away, it is closed. The model's facade blocks, so each generation runs in a
worker thread and hands its tokens to the server's event loop; at most `max_concurrent` run
at once, the others wait their turn. With an API key, a request must carry `Authorization:
Bearer KEY`.
"""

from __future__ import annotations

import hmac
import json
import logging
import math
import ssl
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import asynccontextmanager, closing, contextmanager, suppress
from dataclasses import dataclass, field, replace
from functools import partial
from typing import TYPE_CHECKING, Any

import torch
import trio
from jinja2 import TemplateError

from routing.errors import RoutingError
from routing.path_selection import NoRoomError

from ..errors import SwarmError
from ..generation import TokenLogprob
from ..http_server import HttpConfig, HttpServer, Request, Response, Write
from ..prometheus import CONTENT_TYPE
from .call_stream import CallStream
from .completion_text import CompletionText
from .logprobs import (
    LogprobStream,
    ScoredToken,
    chat_logprobs,
    completion_logprobs,
    scored_tokens,
)
from .metrics import ApiActivity, ApiLoad, render_api_metrics
from .requests import ApiError, CompletionRequest, read_request
from .session_pool import MIN_FORK_TOKENS, IdleSession, SessionPool, most_shared
from .tools import ToolCall, chat_messages, find_calls, may_be_calls

if TYPE_CHECKING:
    from ..model import DistributedModelForCausalLM, InferenceSession

logger = logging.getLogger(__name__)

ROUTES = {"/v1/completions": "completion", "/v1/chat/completions": "chat"}
COMPLETION_DEFAULT_TOKENS = 16  # OpenAI's default max_tokens for /v1/completions
PREDICTION_DRAFTS = 10  # tokens a round copied from a request's prediction, at most


@dataclass(frozen=True)
class ApiConfig:
    model_id: str  # what requests name as "model"
    max_tokens: int = 1024  # the most new tokens a request may ask for; chat's default
    max_concurrent: int = 8  # generations at once; more requests wait
    api_key: str | None = None
    idle_sessions: int = 4  # sessions that wait for a conversation's next turn
    idle_seconds: float = 120.0  # how long each may wait
    headroom: int = 512  # tokens a new session keeps for the turns after its first
    room_wait: float = 60.0  # seconds a request may wait for room the answers in flight free
    tls: ssl.SSLContext | None = None  # HTTPS (`swarm.tls`); None: plain HTTP
    http: HttpConfig = field(
        default_factory=lambda: HttpConfig(max_body_bytes=1 << 20, request_timeout=30.0)
    )

    def __post_init__(self) -> None:
        if self.max_tokens < 1 or self.max_concurrent < 1:
            raise SwarmError("the API's max_tokens and max_concurrent must be at least 1")
        if min(self.idle_sessions, self.idle_seconds, self.headroom, self.room_wait) < 0:
            raise SwarmError("the API's idle sessions, seconds and headroom must be >= 0")


class ApiServer:
    """The API of one model, over a client joined to the swarm."""

    def __init__(
        self, model: DistributedModelForCausalLM, tokenizer: Any, config: ApiConfig
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.config = config
        self.created = int(time.time())
        self.eos = frozenset(model.sampling_config().eos_token_ids)
        self.vocabulary = int(model.config.vocab_size)  # token ids a request may name
        # the peers' sessions end there (unless they were given more)
        self.context = int(getattr(model.config, "max_position_embeddings", 0) or 0)
        self._generations = trio.CapacityLimiter(config.max_concurrent)
        self._running = 0  # generations under way
        self._short_of_room = 0  # of them, those waiting for another to end
        self._ended = 0  # generations ended so far
        self._an_end = trio.Event()  # set (and replaced) whenever one ends
        self._generating: list[_Running] = []  # the answers under way, which others may fork
        self.sessions = SessionPool(config.idle_sessions, config.idle_seconds, trio.current_time)
        self.activity = ApiActivity()  # for /metrics

    async def run(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Serve until cancelled; reports the API's base URL (`http://HOST:PORT/v1`, or
        https with the config's TLS)."""
        server = HttpServer(self.handle, self.config.http, "api", self.config.tls)
        try:
            async with trio.open_nursery() as nursery:
                bound = await nursery.start(server.run, host, port)
                nursery.start_soon(self._close_expired_sessions)
                task_status.started(f"{server.url(*bound)}/v1")
        finally:
            await self._close([idle.session for idle in self.sessions.drain()])

    async def _close_expired_sessions(self) -> None:
        while True:
            await trio.sleep(max(self.config.idle_seconds / 4, 0.05))
            await self._close([idle.session for idle in self.sessions.expired()])

    async def _close(self, sessions: list[InferenceSession]) -> None:
        """Close sessions no answer uses (shielded: the server may be stopping)."""
        with trio.CancelScope(shield=True):
            for session in sessions:
                await trio.to_thread.run_sync(session.close)

    async def _wait_again(
        self, session: InferenceSession, tokens: Sequence[int], max_length: int, asked: int
    ) -> None:
        """`session` waits for its conversation's next turn (`SessionPool.put`); those it
        pushes out close."""
        pushed_out = self.sessions.put(session, tokens, max_length, asked)
        await self._close([idle.session for idle in pushed_out])

    async def _lent_back(self, lent: IdleSession) -> None:
        """A session lent to fork waits again, as it did."""
        await self._wait_again(lent.session, lent.tokens, lent.max_length, lent.asked)

    async def handle(self, request: Request) -> Response:
        """Answer `request`, and count it by route and status."""
        started, route = trio.current_time(), _route(request.path)
        response = await self._answer(request, started)
        self.activity.requests[route, response.status] += 1
        if response.stream is None:
            self.activity.request_took(route, trio.current_time() - started)
            return response
        stream = response.stream

        async def timed(write: Write) -> None:
            try:
                await stream(write)
            finally:
                self.activity.request_took(route, trio.current_time() - started)

        return replace(response, stream=timed)

    async def _answer(self, request: Request, started: float) -> Response:
        try:
            self._authorize(request)
            if request.path == "/v1/models" or request.path.startswith("/v1/models/"):
                _only(request, "GET")
                return self._models(request.path.removeprefix("/v1/models").strip("/"))
            if request.path == "/metrics":
                _only(request, "GET")
                load = ApiLoad(self._running, self.config.max_concurrent, len(self.sessions))
                text = render_api_metrics(self.config.model_id, self.activity, load)
                return Response(200, text.encode("utf-8"), CONTENT_TYPE)
            kind = ROUTES.get(request.path)
            if kind is None:
                raise ApiError(404, f"no route {request.path}", code="not_found")
            _only(request, "POST")
            return await self._complete(read_request(kind, request.body), started)
        except ApiError as error:
            return _json(error.status, error.to_json())

    def _authorize(self, request: Request) -> None:
        key = self.config.api_key
        given = request.headers.get("authorization", "")
        if key is not None and not hmac.compare_digest(given.encode(), f"Bearer {key}".encode()):
            raise ApiError(401, "a valid API key is required (Authorization: Bearer KEY)",
                           code="invalid_api_key")  # fmt: skip

    def _models(self, wanted: str) -> Response:
        model = {
            "id": self.config.model_id,
            "object": "model",
            "created": self.created,
            "owned_by": "swarm",
        }
        if not wanted:
            return _json(200, {"object": "list", "data": [model]})
        if wanted != self.config.model_id:
            raise ApiError(404, f"the model {wanted!r} does not exist", code="model_not_found")
        return _json(200, model)

    async def _complete(self, request: CompletionRequest, started: float) -> Response:
        if request.model != self.config.model_id:
            raise ApiError(
                404,
                f"the model {request.model!r} does not exist; this server has "
                f"{self.config.model_id!r}",
                "model",
                "model_not_found",
            )
        default = COMPLETION_DEFAULT_TOKENS if request.kind == "completion" else None
        max_tokens = request.max_tokens
        if max_tokens is None:
            max_tokens = default or self.config.max_tokens
        if max_tokens > self.config.max_tokens:
            raise ApiError(400, f"max_tokens may be at most {self.config.max_tokens}", "max_tokens")
        prompts = self._prompts(request)
        prompt_tokens = sum(int(prompt.ids.shape[1]) for prompt in prompts)
        self.activity.prompt_tokens += prompt_tokens
        if any(token >= self.vocabulary for token, _ in request.logit_bias):
            raise ApiError(400, f"logit_bias token ids must be below {self.vocabulary}",
                           "logit_bias")  # fmt: skip
        longest = max(int(prompt.ids.shape[1]) for prompt in prompts)
        if self.context and longest + max_tokens > self.context:
            raise ApiError(
                400,
                f"{longest} prompt tokens + {max_tokens} new ones exceed the model's "
                f"context of {self.context} tokens",
                "max_tokens",
                "context_length_exceeded",
            )
        answer = _Answer(request, self.config.model_id, prompt_tokens, max_tokens, self.eos,
                         started)  # fmt: skip
        drafts = self._prediction_drafts(request)
        choices = [  # numbered prompt after prompt, as OpenAI does
            _Choice(number * request.candidates + index, prompt,
                    CompletionText(self.tokenizer, request.stop),
                    request.generate_options(max_tokens, index) | drafts)
            for number, prompt in enumerate(prompts)
            for index in range(request.candidates)
        ]  # fmt: skip
        if request.stream:
            stream = partial(self._stream, prompts, choices, answer)
            return Response(200, content_type="text/event-stream", stream=stream)
        try:
            if max_tokens:
                await _side_by_side([partial(self._whole, choice, started) for choice in choices])
            await self._score_echoes(request, prompts)
        except (RoutingError, SwarmError) as error:
            logger.warning("a %s failed: %s", request.kind, error)
            raise _generation_error(error) from None
        kept = _best(choices, request.candidates, request.n)
        logprobs = []
        for choice in kept:
            choice.calls = answer.calls(choice.text)
            answer.log(choice.text, choice.calls)
            logprobs.append(
                self._logprobs(request, choice.prompt.scored, choice.text, choice.records)
            )
        return _json(200, answer.whole(kept, logprobs, choices))

    async def _whole(self, choice: _Choice, started: float) -> None:
        """Generate one answer whole (to a request read at `started`)."""

        async def collect(token: int, record: TokenLogprob | None) -> bool:
            choice.text.add(token)
            if record is not None:
                choice.records.append(record)
            return not choice.text.stopped

        await self._generate(choice, collect, started)

    async def _score_echoes(self, request: CompletionRequest, prompts: list[_Prompt]) -> None:
        """Score each prompt's tokens but the first, from one forward each, if the request
        echoes them with log probabilities."""
        if not request.echo or request.logprobs is None:
            return
        for prompt in prompts:
            async with self._generations:
                records = await trio.to_thread.run_sync(
                    self.model.token_logprobs, prompt.ids, request.logprobs
                )
            tokens = prompt.ids[0].tolist()
            prompt.scored = scored_tokens(self.tokenizer, tokens, [None, *records])

    def _logprobs(
        self,
        request: CompletionRequest,
        prompt: list[ScoredToken],
        text: CompletionText,
        records: list[TokenLogprob],
    ) -> dict[str, Any] | None:
        """One answer's log probabilities as its kind shapes them, after the echoed
        `prompt`'s (scored once for all answers), if the request asked for them."""
        if request.logprobs is None:
            return None
        length = len(text.text) if text.stopped else math.inf
        scored = prompt + scored_tokens(self.tokenizer, text.tokens, records, length)
        return self._shaped(request, scored, 0)

    def _shaped(
        self, request: CompletionRequest, scored: list[ScoredToken], offset: int
    ) -> dict[str, Any]:
        """Log probabilities as the request's kind shapes them (`offset`: where the first
        token's text begins)."""
        if request.kind == "chat":
            return chat_logprobs(self.tokenizer, scored)
        return completion_logprobs(self.tokenizer, scored, offset)

    def _prediction_drafts(self, request: CompletionRequest) -> dict[str, Any]:
        """Prompt lookup in the request's prediction, if it has one (`swarm.prompt_lookup`)."""
        if not request.prediction:
            return {}
        ids = self.tokenizer(request.prediction, add_special_tokens=False)["input_ids"]
        if self.context and len(ids) > self.context:  # each round looks it up: bound it
            raise ApiError(400, f"the prediction's {len(ids)} tokens exceed the model's context "
                           f"of {self.context}", "prediction")  # fmt: skip
        return {"prompt_lookup_num_tokens": PREDICTION_DRAFTS, "prediction_ids": ids}

    def _prompts(self, request: CompletionRequest) -> list[_Prompt]:
        """The request's prompts as tokens (a chat's: its messages in the chat template),
        with their text if the answers echo it."""
        if request.kind == "chat":
            return [_Prompt(self._checked(self._chat_ids(request)))]
        prompts = []
        for prompt in request.prompts:
            if isinstance(prompt, tuple):  # token ids
                if max(prompt) >= self.vocabulary:
                    raise ApiError(400, f"token ids must be below {self.vocabulary}", "prompt")
                ids = torch.tensor([prompt])
            else:
                ids = torch.as_tensor(self.tokenizer(prompt, return_tensors="pt")["input_ids"])
            echo = ""
            if request.echo and isinstance(prompt, str):
                echo = prompt
            elif request.echo:
                echo = str(self.tokenizer.decode(ids[0], skip_special_tokens=True))
            prompts.append(_Prompt(self._checked(ids), echo))
        return prompts

    def _chat_ids(self, request: CompletionRequest) -> torch.Tensor:
        template = getattr(self.tokenizer, "chat_template", None)
        if not template:
            raise ApiError(400, "this model has no chat template: use /v1/completions")
        native = "tools" in template  # it lists the tools itself
        messages = chat_messages(request.messages, request.tools, native)
        tools = {"tools": [t.to_json() for t in request.tools]} if native else {}
        try:
            return torch.as_tensor(self.tokenizer.apply_chat_template(
                messages, add_generation_prompt=True, return_tensors="pt",
                return_dict=True, **tools,
            )["input_ids"])  # fmt: skip
        except TemplateError as error:
            raise ApiError(400, f"the chat template refused the messages: {error}") from None

    @staticmethod
    def _checked(ids: torch.Tensor) -> torch.Tensor:
        if ids.shape[1] == 0:
            raise ApiError(400, "the prompt has no tokens", "prompt")
        return ids

    async def _stream(
        self, prompts: list[_Prompt], choices: list[_Choice], answer: _Answer, write: Write
    ) -> None:
        """Server-sent events: the pieces of each answer's text as they come, each answer's
        end, `[DONE]` (the answers side by side, their events one at a time)."""
        writing = trio.Lock()
        request = answer.request

        async def emit(body: Any) -> None:
            async with writing:
                await write(_event(body))

        async def run(choice: _Choice, offset: int) -> None:
            text, scored = choice.text, LogprobStream(self.tokenizer)
            forced = CallStream() if request.must_call else None  # calls by JSON mode
            holding = request.tool_choice != "none" and forced is None  # may it be calls

            async def send_piece(piece: str, *, final: bool = False) -> None:
                """A piece of text, with the log probabilities of the tokens that the text
                sent so far holds (`final`: all that are left)."""
                logprobs = None
                if request.logprobs is not None and (piece or final):
                    start = offset + scored.offset
                    length = math.inf if final and not text.stopped else len(text.sent)
                    if (taken := scored.take(length, final=final)) or piece:
                        logprobs = self._shaped(request, taken, start)
                if piece or logprobs:
                    await emit(answer.chunk(piece, choice.index, logprobs))

            async def feed_calls(calls: CallStream) -> None:
                """The parts of the forced calls that the text sent so far completes."""
                if deltas := calls.feed(text.sent):
                    await emit(answer.chunk("", choice.index, calls=deltas))

            async def send(token: int, record: TokenLogprob | None) -> bool:
                nonlocal holding
                if not text.stopped:
                    scored.add(token, record)
                piece = text.add(token)
                if forced is not None:
                    await feed_calls(forced)
                    return not text.stopped
                if holding and not may_be_calls(text.sent, request.tools):
                    holding, piece = False, text.sent  # text: what was held goes now
                if not holding:
                    await send_piece(piece)
                return not text.stopped

            if answer.max_tokens:
                await self._generate(choice, send, answer.started)
            choice.calls = answer.calls(text) if holding or forced is not None else []
            answer.log(text, choice.calls)
            if forced is not None:  # its calls went as they came: what is left of them
                text.finish()
                await feed_calls(forced)
            elif choice.calls:
                deltas = [call.delta(index) for index, call in enumerate(choice.calls)]
                await emit(answer.chunk("", choice.index, calls=deltas))
            else:
                rest = text.finish()
                await send_piece(text.text if holding else rest, final=True)
            reason = answer.reason(text, choice.calls)
            await emit(answer.chunk("", choice.index, reason=reason))

        try:
            await self._score_echoes(request, prompts)
            for choice in choices:
                scored = choice.prompt.scored
                echoed = self._shaped(request, scored, 0) if scored else None
                await emit(answer.chunk(choice.prompt.echo, choice.index, echoed, first=True))
            await _side_by_side([
                partial(run, choice, sum(len(token.text) for token in choice.prompt.scored))
                for choice in choices
            ])  # fmt: skip
        except (RoutingError, SwarmError) as error:  # the status is sent: say it in the stream
            logger.warning("a streamed %s failed: %s", answer.request.kind, error)
            await emit(_generation_error(error).to_json())
        else:
            if answer.request.include_usage:
                await emit(answer.usage_chunk(choices))
        await write(b"data: [DONE]\n\n")

    async def _generate(
        self,
        choice: _Choice,
        consume: Callable[[int, TokenLogprob | None], Awaitable[bool]],
        started: float,
    ) -> None:
        """Generate `choice` (to a request read at `started`) in a worker thread; `consume`
        each token in this loop as it comes, until it says it wants no more. Then, or when
        it fails or this is cancelled, no one receives any more: the thread stops at its
        next token and closes its session before this returns. Each token comes with its
        log probabilities if the choice's options ask for them."""
        send, receive = trio.open_memory_channel[tuple[int, TokenLogprob | None]](math.inf)
        input_ids = choice.prompt.ids
        tokens = input_ids[0].tolist()
        start = [await self._start(tokens, choice.options)]  # until the work takes it
        whole: list[tuple[InferenceSession, list[int]]] = []  # the session, if its answer
        # ended whole, and all it holds
        try:
            with self._forkable(tokens) as running:
                work = partial(self._work, choice, send, start, running, whole)
                async with self._generations, self._counted():
                    try:
                        async with trio.open_nursery() as nursery:
                            nursery.start_soon(trio.to_thread.run_sync, work)
                            async with receive:
                                await self._receive(receive, consume, started)
                    except BaseExceptionGroup as group:  # one side failed (the other ends quietly)
                        if len(group.exceptions) != 1:
                            raise
                        raise group.exceptions[0] from None
                    finally:
                        self.activity.cached_tokens += choice.cached
                        for session, held in whole:  # it waits for the next turn
                            await self._wait_again(session, held, session.max_length, len(tokens))
        finally:
            if start:  # cancelled before the work began
                await self._unused(start[0])

    async def _receive(
        self,
        receive: trio.MemoryReceiveChannel[tuple[int, TokenLogprob | None]],
        consume: Callable[[int, TokenLogprob | None], Awaitable[bool]],
        started: float,
    ) -> None:
        """`consume` each token as it comes, until it wants no more; time them."""
        last, first = started, True
        async for token, record in receive:
            now = trio.current_time()
            self.activity.token_came(now - last, first=first)
            last, first = now, False
            if not await consume(token, record):
                break

    async def _unused(self, start: _Start) -> None:
        """The session of a `start` no answer began in: a lent one waits again, a taken or
        forked one closes."""
        if start.lent is not None:
            await self._lent_back(start.lent[0])
        elif start.idle is not None:
            await self._close([start.idle.session])
        elif start.forked is not None:
            await self._close([start.forked[0]])

    async def _start(self, tokens: list[int], options: dict[str, Any]) -> _Start:
        """Where the session of an answer to `tokens` comes from: a waiting session that
        holds their beginning, else one that shares enough of it to fork, else a fork of a
        running answer's session made between its tokens, else a new one."""
        needed = len(tokens) + int(options["max_new_tokens"])
        if (idle := self.sessions.take(tokens, needed)) is not None:
            return _Start(idle=idle)
        if (lent := self.sessions.lend(tokens)) is not None:
            return _Start(lent=lent)
        length = self._session_length(len(tokens), options)
        return _Start(forked=await self._fork_running(tokens, length))

    async def _fork_running(
        self, tokens: list[int], length: int
    ) -> tuple[InferenceSession, int] | None:
        """A session of `length` forked from the running answer's that shares most of
        `tokens` (at least `MIN_FORK_TOKENS`, all but the last at most), and how many it
        holds: that answer forks its session between two of its tokens, once its prompt is
        computed (the answers of one prompt compute it once). None if no running answer
        shares that much, or if it ended first, or if the peers had no room."""
        found = most_shared(self._generating, lambda running: running.tokens, tokens[:-1],
                            lambda _, shared: shared >= MIN_FORK_TOKENS)  # fmt: skip
        if found is None:
            return None
        running, shared = found
        wanted = _ForkWanted(shared, length)
        running.wanted.append(wanted)
        try:
            await wanted.done.wait()
        except BaseException:  # cancelled: nobody takes the fork
            wanted.abandoned = True
            if wanted in running.wanted:
                running.wanted.remove(wanted)
            await self._close([] if wanted.session is None else [wanted.session])
            raise
        return None if wanted.session is None else (wanted.session, shared)

    @contextmanager
    def _forkable(self, tokens: list[int]) -> Iterator[_Running]:
        """An answer to the prompt `tokens` under way, whose session others may fork; those
        it has not forked when it ends open their own."""
        running = _Running(tokens)
        self._generating.append(running)
        try:
            yield running
        finally:
            self._generating.remove(running)
            for wanted in running.wanted:
                wanted.done.set()

    @asynccontextmanager
    async def _counted(self) -> AsyncIterator[None]:
        """One generation under way; its end (its session closed or waiting) wakes the
        requests waiting for room."""
        self._running += 1
        try:
            yield
        finally:
            self._running -= 1
            self._ended += 1
            self._an_end.set()
            self._an_end = trio.Event()

    def _work(
        self,
        choice: _Choice,
        send: trio.MemorySendChannel[tuple[int, TokenLogprob | None]],
        start: list[_Start],
        running: _Running,
        whole: list[tuple[InferenceSession, list[int]]],
    ) -> None:
        """In a worker thread: generate in the session that `start` says (taking it), sending
        only what it does not hold, and handing the tokens to the loop; between them, fork it
        for the other answers that want it (`running`). The session goes to `whole` if its
        answer ends whole, else it is closed. The choice learns how much of its prompt was held,
        and its drafts' fate."""
        options = choice.options
        try:
            session, choice.cached = self._session_for(choice.prompt.ids, options, start.pop())
            input_ids = choice.prompt.ids[:, choice.cached :]
            try:
                with closing(session.stream(input_ids, tokenizer=self.tokenizer, **options)) as s:
                    for token in s:
                        record = session.logprobs[-1] if "logprobs" in options else None
                        handed = trio.from_thread.run_sync(_hand, send, (token, record), running)
                        for wanted in handed:
                            self._serve_fork(session, wanted)
                choice.drafts = session.drafts
                history = session.input_ids
                whole.append((session, [] if history is None else history[0].tolist()))
            except trio.BrokenResourceError:
                pass  # nobody reads the tokens any more
            finally:
                if not whole:
                    session.close()
        finally:
            with suppress(trio.RunFinishedError):
                trio.from_thread.run_sync(send.close)

    def _session_for(
        self,
        input_ids: torch.Tensor,
        options: dict[str, Any],
        start: _Start,
    ) -> tuple[InferenceSession, int]:
        """The session to answer in (in a worker thread), and how many tokens of the prompt
        it holds already. A lent session waits again once forked."""
        if start.forked is not None:
            return start.forked
        if (idle := start.idle) is not None:
            idle.session.rewind(len(idle.tokens))
            return idle.session, len(idle.tokens)
        length = self._session_length(int(input_ids.shape[1]), options)
        if start.lent is not None:
            source, shared = start.lent
            try:
                while True:
                    try:
                        return source.session.fork(shared, max_length=length), shared
                    except NoRoomError:
                        if not self._close_oldest("a fork"):
                            break
            finally:
                trio.from_thread.run(self._lent_back, source)
            logger.info("no room on the peers to fork a waiting session: opening one")
        return self._open_session(length), 0

    def _serve_fork(self, session: InferenceSession, wanted: _ForkWanted) -> None:
        """Fork `session` for another answer (in this one's worker thread, between two of its
        tokens); where that fails, the other opens a session of its own."""
        fork = None
        try:
            fork = session.fork(wanted.tokens, max_length=wanted.max_length)
        except (RoutingError, SwarmError) as error:
            logger.info("could not fork a running answer's session: %s", error)
        taken = False
        try:
            taken = trio.from_thread.run_sync(wanted.deliver, fork)
        finally:
            if fork is not None and not taken:  # it gave up waiting
                fork.close()

    def _close_oldest(self, purpose: str) -> bool:
        """Close the session that has waited longest (in a worker thread), to make room for
        `purpose`; False if none waits."""
        waiting = trio.from_thread.run_sync(self.sessions.oldest)
        if waiting is None:
            return False
        logger.info("no room on the peers for %s: closing a waiting session", purpose)
        waiting.session.close()
        return True

    def _open_session(self, length: int) -> InferenceSession:
        """A new session (in a worker thread). Where the peers have no room for it, sessions
        waiting for a conversation's next turn make room, the oldest first; then it waits for
        answers in flight to end (at most `room_wait` s)."""
        deadline = trio.from_thread.run_sync(trio.current_time) + self.config.room_wait
        seen: int = trio.from_thread.run_sync(lambda: self._ended)
        while True:
            try:
                return self.model.inference_session(length).open()
            except NoRoomError:
                if self._close_oldest("a new session"):
                    continue
                ended = trio.from_thread.run(self._another_ends, seen, deadline)
                if ended is None:
                    raise
                seen = ended
                logger.info("no room on the peers for a new session: an answer ended, retrying")

    async def _another_ends(self, ended: int, deadline: float) -> int | None:
        """Once more than `ended` generations have ended, how many; None at `deadline`, or
        if none is generating (the others, if any, wait for room too)."""
        self._short_of_room += 1
        try:
            with trio.move_on_at(deadline):
                while self._ended == ended:
                    if self._running <= self._short_of_room:
                        return None
                    await self._an_end.wait()
                return self._ended
            return None
        finally:
            self._short_of_room -= 1

    def _session_length(self, prompt_tokens: int, options: dict[str, Any]) -> int:
        """This turn, and room for the next ones, within the model's context."""
        length = prompt_tokens + int(options["max_new_tokens"]) + self.config.headroom
        return min(length, self.context) if self.context else length


@dataclass(frozen=True)
class _Answer:
    """The JSON of one request's answer, whole or in chunks, as OpenAI's API shapes it."""

    request: CompletionRequest
    model_id: str
    prompt_tokens: int
    max_tokens: int
    eos: frozenset[int]
    started: float  # when the request was read (trio's clock)
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    created: int = field(default_factory=lambda: int(time.time()))

    def _head(self, chunk: bool = False) -> dict[str, Any]:
        chat = self.request.kind == "chat"
        kind = "chat.completion" + (".chunk" if chunk else "") if chat else "text_completion"
        prefix = "chatcmpl" if chat else "cmpl"
        return {"id": f"{prefix}-{self.id}", "object": kind, "created": self.created,
                "model": self.model_id}  # fmt: skip

    def calls(self, text: CompletionText) -> list[ToolCall]:
        """The tool calls that the answer makes, if it makes any (one, unless parallel
        calls are allowed)."""
        if self.request.tool_choice == "none":
            return []
        calls = find_calls(text.text, self.request.tools)
        return calls if self.request.parallel_calls else calls[:1]

    def reason(self, text: CompletionText, calls: Sequence[ToolCall] = ()) -> str:
        """`tool_calls` if it calls a tool; `length` if the tokens ran out before EOS or a
        stop sequence; else `stop`."""
        if calls:
            return "tool_calls"
        full = len(text.tokens) >= self.max_tokens
        ended = text.stopped or (bool(text.tokens) and text.tokens[-1] in self.eos)
        return "length" if full and not ended else "stop"

    def log(self, text: CompletionText, calls: Sequence[ToolCall] = ()) -> None:
        logger.info("%s %s: %d prompt tokens, %d new (%s)", self.request.kind, self.id[:8],
                    self.prompt_tokens, len(text.tokens), self.reason(text, calls))  # fmt: skip

    def usage(self, choices: Sequence[_Choice]) -> dict[str, Any]:
        """OpenAI's usage of these answers: the prompt's tokens that every answer's session
        held already among its details; with a prediction, the drafts taken and not."""
        completion_tokens = sum(len(choice.text.tokens) for choice in choices)
        cached = min((choice.cached for choice in choices), default=0)
        usage: dict[str, Any] = {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": self.prompt_tokens + completion_tokens,
            "prompt_tokens_details": {"cached_tokens": cached},
        }
        if self.request.prediction:
            usage["completion_tokens_details"] = {
                "accepted_prediction_tokens": sum(choice.drafts[0] for choice in choices),
                "rejected_prediction_tokens": sum(choice.drafts[1] for choice in choices),
            }
        return usage

    def whole(
        self,
        generated: list[_Choice],
        logprobs: list[dict[str, Any] | None],
        spent: Sequence[_Choice],
    ) -> Any:
        """The answer of the `generated` choices (of the `spent` ones: with `best_of`, the
        usage counts every answer generated)."""
        choices = []
        for made, choice_logprobs in zip(generated, logprobs, strict=True):
            text = made.text
            choice: dict[str, Any] = {
                "index": made.index,
                "logprobs": choice_logprobs,
                "finish_reason": self.reason(text, made.calls),
            }
            if made.calls:
                calls = [call.to_json() for call in made.calls]
                choice["message"] = {"role": "assistant", "content": None, "tool_calls": calls}
            elif self.request.kind == "chat":
                choice["message"] = {"role": "assistant", "content": text.text}
            else:
                choice["text"] = made.prompt.echo + text.text
            choices.append(choice)
        usage = self.usage(spent)
        return {**self._head(), "choices": choices, "usage": usage}

    def chunk(
        self,
        piece: str,
        index: int = 0,
        logprobs: dict[str, Any] | None = None,
        *,
        first: bool = False,
        reason: str | None = None,
        calls: Sequence[dict[str, Any]] = (),
    ) -> Any:
        choice: dict[str, Any] = {"index": index, "logprobs": logprobs, "finish_reason": reason}
        if self.request.kind == "chat":
            delta: dict[str, Any] = {"role": "assistant"} if first else {}
            if piece or first:
                delta["content"] = piece
            if calls:
                delta["tool_calls"] = list(calls)
            choice["delta"] = delta
        else:
            choice["text"] = piece
        return {**self._head(chunk=True), "choices": [choice]}

    def usage_chunk(self, choices: Sequence[_Choice]) -> Any:
        return {**self._head(chunk=True), "choices": [], "usage": self.usage(choices)}


@dataclass
class _Prompt:
    """One prompt of a request: its tokens, its text before the answers' if they echo it,
    and its tokens scored once for them (echo with log probabilities)."""

    ids: torch.Tensor
    echo: str = ""
    scored: list[ScoredToken] = field(default_factory=list)


@dataclass
class _Choice:
    """One answer to a request: its number, its prompt, its text so far, its generation's
    options and its tokens' log probabilities."""

    index: int
    prompt: _Prompt
    text: CompletionText
    options: dict[str, Any]
    records: list[TokenLogprob] = field(default_factory=list)
    calls: list[ToolCall] = field(default_factory=list)  # the tool it calls, if it calls one
    drafts: tuple[int, int] = (0, 0)  # drafts the model took and did not (prompt lookup)
    cached: int = 0  # prompt tokens its session held already (a next turn, or a fork)


@dataclass(frozen=True)
class _Start:
    """Where an answer's session comes from: a waiting one to rewind to its `tokens`, one
    lent to fork (and the tokens shared), a fork made already (and the tokens it holds);
    none: a new session."""

    idle: IdleSession | None = None
    lent: tuple[IdleSession, int] | None = None
    forked: tuple[InferenceSession, int] | None = None


@dataclass(eq=False)
class _ForkWanted:
    """An answer waiting for a fork of a running answer's session, holding `tokens`."""

    tokens: int
    max_length: int
    done: trio.Event = field(default_factory=trio.Event)
    session: InferenceSession | None = None  # the fork, once made (None: none)
    abandoned: bool = False  # the answer no longer waits (cancelled)

    def deliver(self, fork: InferenceSession | None) -> bool:
        """Hand over `fork` (None: there is none); False if nobody takes it."""
        if self.abandoned:
            return False
        self.session = fork
        self.done.set()
        return True


@dataclass(eq=False)
class _Running:
    """An answer under way to the prompt `tokens`, and the forks of its session wanted."""

    tokens: list[int]
    wanted: list[_ForkWanted] = field(default_factory=list)


def _hand(
    send: trio.MemorySendChannel[tuple[int, TokenLogprob | None]],
    token: tuple[int, TokenLogprob | None],
    running: _Running,
) -> list[_ForkWanted]:
    """In the loop: send a token on, and take the forks of its session wanted meanwhile."""
    send.send_nowait(token)
    wanted, running.wanted = running.wanted, []
    return wanted


def _best(choices: list[_Choice], candidates: int, n: int) -> list[_Choice]:
    """Of each prompt's `candidates` answers (in turn), the `n` whose tokens have the highest
    mean log probability, best first, numbered as OpenAI numbers `n` answers."""
    if candidates == n:
        return choices
    kept = []
    for first in range(0, len(choices), candidates):
        ranked = sorted(choices[first : first + candidates], key=_mean_logprob, reverse=True)
        for rank, choice in enumerate(ranked[:n]):
            choice.index = first // candidates * n + rank
            kept.append(choice)
    return kept


def _mean_logprob(choice: _Choice) -> float:
    scores = [record.logprob for record in choice.records]
    return sum(scores) / len(scores) if scores else 0.0


async def _side_by_side(jobs: list[Callable[[], Awaitable[None]]]) -> None:
    """Run `jobs` at once; the first to fail stops the others, and its error is raised."""
    if len(jobs) == 1:
        await jobs[0]()
        return
    try:
        async with trio.open_nursery() as nursery:
            for job in jobs:
                nursery.start_soon(job)
    except BaseExceptionGroup as group:
        raise group.exceptions[0] from None


def _route(path: str) -> str:
    """What a request to `path` is counted under in /metrics."""
    if path in ROUTES:
        return ROUTES[path]
    if path == "/v1/models" or path.startswith("/v1/models/"):
        return "models"
    return "metrics" if path == "/metrics" else "other"


def _only(request: Request, method: str) -> None:
    if request.method != method:
        raise ApiError(405, f"{request.path} takes {method}, not {request.method}")


def _generation_error(error: Exception) -> ApiError:
    if isinstance(error, RoutingError):
        return ApiError(503, f"the swarm could not serve this request: {error}")
    return ApiError(400, str(error))


def _json(status: int, body: Any) -> Response:
    return Response(status, json.dumps(body, ensure_ascii=False).encode(), "application/json")


def _event(body: Any) -> bytes:
    return b"data: " + json.dumps(body, ensure_ascii=False).encode("utf-8") + b"\n\n"
