"""`SpanBackend`: the synchronous compute core of a peer (no trio, no network, no threads).

It owns a loaded `Span` and serves:
- `forward(hidden, start, end)`: stateless; a batch of equal-length sequences through blocks
  `start..end-1` (model indices), positions 0..T-1, causal attention; `backward` gives the
  gradient of its input, from the graph `forward_kept` kept if it still is
  (`peer.kept_forwards`), else computing the forward again;
- inference sessions: `open_session` reserves `batch_size * max_length` cache tokens against the
  budget (refused at once when over, before allocating), `step` appends to the session's KV
  cache (prompt first, then single tokens, or any chunk), after dropping the tokens past a
  `position` (speculative decoding's rejected drafts) and putting its rows in a new order
  (`reorder`, for beam search) if asked, `close_session` frees it;
- `step_many`: steps of several sessions; those with the same block range and the same number
  of new tokens are merged into one forward over the concatenated batch (right-padded caches,
  causal mask), which turns per-session matrix-vector products into one matrix product.

Every input is validated against the model before anything runs or is allocated; violations
raise `InvalidRequestError` (or another `PeerError`), never `assert`, and leave all sessions as
they were. Not thread-safe: `peer.worker.ComputeWorker` calls it from one thread.
Outputs are returned on the CPU (ready for the wire codec), in the span's dtype.
Steps of one token a row run on the torch threads that `step_threads` chooses, longer ones
(prompts, drafts) on those `prompt_threads` chooses, when set (`peer.thread_choice`: the
measured count or all threads, or one thread when other processes hold the cores), telling
apart steps while the peer's only session steps and while several do.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch

from .adapters import Adapters
from .checkpoint import Checkpoint
from .errors import (
    CacheBudgetError,
    InvalidRequestError,
    MixedLengthsError,
    SessionExistsError,
    SessionLimitError,
    SessionNotFoundError,
)
from .kept_forwards import DEFAULT_MAX_BYTES, ForwardKey, KeptForwards
from .kv_cache import SessionCache, StepCache
from .span import Span, load_span
from .thread_choice import ThreadChoice

__all__ = ["BackendConfig", "SessionInfo", "SpanBackend", "StepRequest"]

logger = logging.getLogger(__name__)

CROWD_STEPS = 8  # a step is crowded if another session stepped among the last this many


@dataclass(frozen=True)
class BackendConfig:
    """Caps of one backend. `max_session_length=None` means the model's context length."""

    max_cache_tokens: int = 32768  # sum of batch_size * max_length over open sessions
    max_sessions: int = 128
    max_session_length: int | None = None
    max_batch_size: int = 64  # rows per request (forward or session)
    max_forward_tokens: int = 16384  # batch * length of one stateless forward
    max_merged_rows: int = 64  # rows merged into one step_many forward
    max_kept_bytes: int = DEFAULT_MAX_BYTES  # activations kept for backwards (0: none)


@dataclass(frozen=True)
class SessionInfo:
    """An open session: its block range (model indices) and reservation."""

    session_id: str
    start: int
    end: int
    max_length: int
    batch_size: int
    padding: tuple[int, ...] = ()  # left padding of each row's first tokens; () for none
    adapter: str | None = None  # the LoRA adapter its steps run with (`peer.adapters`)

    @property
    def row_padding(self) -> tuple[int, ...]:
        return self.padding or (0,) * self.batch_size


@dataclass(frozen=True)
class StepRequest:
    """One step of one session for `step_many`; `start`/`end` default to the session's range."""

    session_id: str
    hidden_states: torch.Tensor
    start: int | None = None
    end: int | None = None
    reorder: tuple[int, ...] = ()  # row i of the cache becomes row reorder[i] first
    position: int | None = None  # the cached tokens to keep, the others dropped first


class _Session:
    def __init__(self, info: SessionInfo, cache: SessionCache) -> None:
        self.info = info
        self.cache = cache


class SpanBackend:
    """Stateless forward and KV-cached inference sessions over one span of blocks."""

    def __init__(self, span: Span, config: BackendConfig | None = None) -> None:
        self.span = span
        self.config = config or BackendConfig()
        context = int(getattr(span.config, "max_position_embeddings", 0) or 0)
        self.max_session_length = self.config.max_session_length or context or 2048
        if span.positions is not None:  # learned positions (GPT-2) end there
            table = span.positions.num_embeddings - span.family.position_offset
            self.max_session_length = min(self.max_session_length, table)
        self._sessions: dict[str, _Session] = {}
        self._reserved_tokens = 0
        self.adapters = Adapters()  # LoRA adapters, loaded by `peer.adapters.load_adapter`
        self.kept = KeptForwards(self.config.max_kept_bytes)  # forwards' graphs, for backwards
        # torch threads of steps of one token a row, and of longer ones (None: the thread's own)
        self.step_threads: ThreadChoice | None = None
        self.prompt_threads: ThreadChoice | None = None
        self._stepped: deque[str] = deque(maxlen=CROWD_STEPS)  # the sessions of recent steps

    @classmethod
    def load(
        cls,
        checkpoint: str | Path | Checkpoint,
        start: int,
        end: int,
        *,
        dtype: str | torch.dtype = torch.float32,
        device: str | torch.device = "cpu",
        config: BackendConfig | None = None,
        quantization: str | None = None,
    ) -> SpanBackend:
        span = load_span(
            checkpoint, start, end, dtype=dtype, device=device, quantization=quantization
        )
        return cls(span, config)

    # ----- state for announcements -----
    @property
    def start(self) -> int:
        return self.span.start

    @property
    def end(self) -> int:
        return self.span.end

    @property
    def dtype(self) -> torch.dtype:
        return self.span.dtype

    @property
    def hidden_size(self) -> int:
        return self.span.hidden_size

    @property
    def cache_tokens_left(self) -> int:
        return self.config.max_cache_tokens - self._reserved_tokens

    @property
    def active_sessions(self) -> int:
        return len(self._sessions)

    def session_ids(self) -> list[str]:
        return list(self._sessions)

    def session_info(self, session_id: str) -> SessionInfo:
        return self._session(session_id).info

    def session_length(self, session_id: str) -> int:
        """Tokens already in the session's cache (the position of its next token)."""
        return self._session(session_id).cache.length

    # ----- validation -----
    def _range(self, start: int | None, end: int | None) -> tuple[int, int]:
        start = self.span.start if start is None else start
        end = self.span.end if end is None else end
        if not isinstance(start, int) or not isinstance(end, int):
            raise InvalidRequestError("start and end must be integers")
        if not self.span.start <= start < end <= self.span.end:
            raise InvalidRequestError(
                f"blocks {start}..{end} are not inside this span {self.span.start}..{self.span.end}"
            )
        return start, end

    def _check_hidden(self, hidden: object, what: str) -> torch.Tensor:
        if not isinstance(hidden, torch.Tensor):
            raise InvalidRequestError(f"{what}: hidden states must be a tensor")
        if hidden.dim() != 3:
            raise InvalidRequestError(
                f"{what}: hidden states must be [batch, length, {self.hidden_size}], "
                f"got shape {list(hidden.shape)}"
            )
        batch, length, width = hidden.shape
        if width != self.hidden_size:
            raise InvalidRequestError(
                f"{what}: hidden size {width} does not match the model's {self.hidden_size}"
            )
        if batch < 1 or length < 1:
            raise InvalidRequestError(f"{what}: empty hidden states {list(hidden.shape)}")
        if batch > self.config.max_batch_size:
            raise InvalidRequestError(
                f"{what}: batch {batch} is over the limit {self.config.max_batch_size}"
            )
        if hidden.dtype != self.dtype:
            raise InvalidRequestError(
                f"{what}: dtype {hidden.dtype} does not match the served dtype {self.dtype}"
            )
        return hidden

    def _session(self, session_id: str) -> _Session:
        session = self._sessions.get(session_id)
        if session is None:
            raise SessionNotFoundError(f"no open session {session_id!r}")
        return session

    def _check_step(self, request: StepRequest) -> tuple[_Session, torch.Tensor]:
        session = self._session(request.session_id)
        info = session.info
        what = f"session {info.session_id!r}"
        if (request.start is not None and request.start != info.start) or (
            request.end is not None and request.end != info.end
        ):
            raise InvalidRequestError(
                f"{what} was opened for blocks {info.start}..{info.end}, "
                f"not {request.start}..{request.end}"
            )
        hidden = self._check_hidden(request.hidden_states, what)
        if hidden.shape[0] != info.batch_size:
            raise InvalidRequestError(
                f"{what}: batch {hidden.shape[0]} differs from the session's {info.batch_size}"
            )
        position = session.cache.length if request.position is None else request.position
        if not isinstance(position, int) or not 0 <= position <= session.cache.length:
            raise InvalidRequestError(
                f"{what}: position {position} is not within its {session.cache.length} "
                "cached tokens"
            )
        if position + hidden.shape[1] > info.max_length:
            raise InvalidRequestError(
                f"{what}: {position} + {hidden.shape[1]} tokens exceed "
                f"its max_length {info.max_length}"
            )
        _check_reorder(request.reorder, info, what)
        return session, hidden

    # ----- stateless forward and backward -----
    def forward(
        self,
        hidden_states: torch.Tensor,
        start: int | None = None,
        end: int | None = None,
        attention_mask: torch.Tensor | Sequence[Sequence[int]] | None = None,
        *,
        adapter: str | None = None,
    ) -> torch.Tensor:
        """Blocks `start..end-1` over `[batch, length, hidden]`, positions 0..length-1;
        `attention_mask` (`[batch, length]`, 0 for padding) as transformers' model takes it;
        `adapter`: a LoRA adapter of this peer's to run them with."""
        run = self._stateless(hidden_states, start, end, attention_mask, "forward")
        with torch.no_grad(), self.adapters.using(adapter):
            return run(hidden_states.to(self.span.device)).cpu()

    def forward_kept(
        self,
        hidden_states: torch.Tensor,
        start: int | None = None,
        end: int | None = None,
        attention_mask: torch.Tensor | Sequence[Sequence[int]] | None = None,
        *,
        adapter: str | None = None,
        owner: str = "",
    ) -> tuple[torch.Tensor, str | None]:
        """`forward`, keeping its graph for a backward from `owner`: the output, and the
        token of the graph (None if it is too large to keep, or none are kept)."""
        run = self._stateless(hidden_states, start, end, attention_mask, "forward")
        first, last = self._range(start, end)
        units = hidden_states.shape[0] * hidden_states.shape[1] * (last - first)
        if not self.kept.may_keep(units):  # no graph to make
            return self.forward(hidden_states, start, end, attention_mask, adapter=adapter), None
        with (
            torch.enable_grad(),
            self.adapters.using(adapter),
            self.kept.counting(self._frozen()) as saved,
        ):
            leaf, output = self._graph(run, hidden_states)
        key = ForwardKey(owner, start, end, adapter)
        token = self.kept.keep(key, leaf, output, _mask(attention_mask), saved.total, units)
        return output.detach().cpu(), token

    def backward(
        self,
        inputs: torch.Tensor,
        grad_outputs: torch.Tensor,
        start: int | None = None,
        end: int | None = None,
        attention_mask: torch.Tensor | Sequence[Sequence[int]] | None = None,
        *,
        adapter: str | None = None,
        kept: str | None = None,
        owner: str = "",
    ) -> torch.Tensor:
        """The gradient with respect to `inputs` of blocks `start..end-1`, given the gradient
        of their outputs (both `[batch, length, hidden]`), as `forward` runs them: through the
        graph `kept` names if `forward_kept` kept it for `owner` over the same input, else
        computing the forward again with gradients on. The blocks' own weights get none."""
        run = self._stateless(inputs, start, end, attention_mask, "backward")
        grad = self._check_hidden(grad_outputs, "backward: the output gradient")
        if grad.shape != inputs.shape:
            raise InvalidRequestError(
                f"backward: an output gradient of {list(grad.shape)} for inputs of "
                f"{list(inputs.shape)}"
            )
        key = ForwardKey(owner, start, end, adapter)
        graph = None if kept is None else self.kept.take(kept, key, inputs, _mask(attention_mask))
        with torch.enable_grad(), self.adapters.using(adapter):
            leaf, output = graph or self._graph(run, inputs)
            (gradient,) = torch.autograd.grad(output, leaf, grad.to(self.span.device))
        return gradient.cpu()

    def _graph(
        self, run: Callable[[torch.Tensor], torch.Tensor], inputs: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The blocks' graph over `inputs` (gradients on): its leaf and its output."""
        leaf = inputs.to(self.span.device).detach().requires_grad_(True)
        return leaf, run(leaf)

    def _frozen(self) -> Iterator[torch.Tensor]:
        """The span's weights and buffers (adapters' included): what no graph keeps alive."""
        for module in (self.span.layers, self.span.rotary, self.span.positions):
            if module is not None:
                yield from module.parameters()
                yield from module.buffers()

    def _stateless(
        self,
        hidden_states: torch.Tensor,
        start: int | None,
        end: int | None,
        attention_mask: torch.Tensor | Sequence[Sequence[int]] | None,
        what: str,
    ) -> Callable[[torch.Tensor], torch.Tensor]:
        """Check a stateless request; return the blocks' run over its hidden states."""
        start, end = self._range(start, end)
        hidden = self._check_hidden(hidden_states, what)
        batch, length, _ = hidden.shape
        mask = _mask(attention_mask)
        if mask is not None and mask.shape != (batch, length):
            raise InvalidRequestError(
                f"{what}: attention_mask {list(mask.shape)} is not {[batch, length]}"
            )
        if batch * length > self.config.max_forward_tokens:
            raise InvalidRequestError(
                f"{what}: {batch}x{length} tokens exceed the limit {self.config.max_forward_tokens}"
            )
        if length > self.max_session_length:
            raise InvalidRequestError(
                f"{what}: length {length} exceeds the context length {self.max_session_length}"
            )
        first, last = start - self.span.start, end - self.span.start
        positions = torch.arange(length, device=self.span.device)[None, :]
        keys = None if mask is None else mask.to(self.span.device)
        if keys is not None and self.span.family.mask_positions:  # OPT: from each row's first
            positions = keys.long().cumsum(-1) * keys - 1  # padding: -1, as transformers has it
        return partial(
            self.span.run_layers,
            first=first,
            last=last,
            position_ids=positions,
            past=[0],
            keys=keys,
        )

    # ----- sessions -----
    def open_session(
        self,
        session_id: str,
        max_length: int,
        batch_size: int = 1,
        start: int | None = None,
        end: int | None = None,
        padding: Sequence[int] = (),
        adapter: str | None = None,
        *,
        fork_of: str | None = None,
        fork_tokens: int = 0,
    ) -> SessionInfo:
        """Reserve `batch_size * max_length` cache tokens for blocks `start..end-1`. `padding`:
        how many of each row's first tokens are padding (prompts of different lengths, padded
        on the left), which no token attends to; `adapter`: the LoRA adapter its steps take.
        `fork_of`: a session of the same blocks, rows, padding and adapter whose first
        `fork_tokens` cached tokens the new one begins with (a copy)."""
        start, end = self._range(start, end)
        self.adapters.check(adapter)
        if not isinstance(session_id, str) or not session_id:
            raise InvalidRequestError("session id must be a non-empty string")
        if session_id in self._sessions:
            raise SessionExistsError(f"session {session_id!r} is already open")
        if not isinstance(max_length, int) or not 1 <= max_length <= self.max_session_length:
            raise InvalidRequestError(
                f"max_length {max_length} must be within 1..{self.max_session_length}"
            )
        if not isinstance(batch_size, int) or not 1 <= batch_size <= self.config.max_batch_size:
            raise InvalidRequestError(
                f"batch_size {batch_size} must be within 1..{self.config.max_batch_size}"
            )
        if padding and (
            len(padding) != batch_size
            or not all(isinstance(p, int) and 0 <= p < max_length for p in padding)
        ):
            raise InvalidRequestError(
                f"padding must be {batch_size} counts within 0..{max_length - 1}, "
                f"not {list(padding)[:8]}"
            )
        if len(self._sessions) >= self.config.max_sessions:
            raise SessionLimitError(f"{len(self._sessions)} sessions open, the limit")
        tokens = max_length * batch_size
        if tokens > self.cache_tokens_left:
            raise CacheBudgetError(
                f"session needs {tokens} cache tokens, {self.cache_tokens_left} left "
                f"of {self.config.max_cache_tokens}"
            )
        cache = SessionCache(
            num_layers=end - start,
            batch_size=batch_size,
            max_length=max_length,
            layout=self.span.cache_layout,
            dtype=self.dtype,
            device=self.span.device,
        )
        info = SessionInfo(session_id, start, end, max_length, batch_size, tuple(padding), adapter)
        if fork_of is not None:
            self._copy_into(cache, info, self._session(fork_of), fork_tokens)
        self._sessions[session_id] = _Session(info, cache)
        self._reserved_tokens += tokens
        logger.debug("opened session %s: %s", session_id, info)
        return info

    @staticmethod
    def _copy_into(cache: SessionCache, info: SessionInfo, source: _Session, tokens: int) -> None:
        """`cache` (of a session opened as `info`) begins with `source`'s first `tokens`."""
        alike = ("start", "end", "batch_size", "row_padding", "adapter")
        if any(getattr(info, name) != getattr(source.info, name) for name in alike):
            raise InvalidRequestError(
                f"session {source.info.session_id!r} differs from the new one in its blocks, "
                "rows, padding or adapter"
            )
        if not isinstance(tokens, int) or not 0 <= tokens <= min(
            source.cache.length, info.max_length
        ):
            raise InvalidRequestError(
                f"cannot begin with {tokens} of its {source.cache.length} cached tokens "
                f"(max_length {info.max_length})"
            )
        cache.keys[:, :, :, :tokens] = source.cache.keys[:, :, :, :tokens]
        cache.values[:, :, :, :tokens] = source.cache.values[:, :, :, :tokens]
        cache.length = tokens

    def close_session(self, session_id: str) -> None:
        """Free a session's cache and reservation; unknown ids raise SessionNotFoundError."""
        session = self._sessions.pop(session_id, None)
        if session is None:
            raise SessionNotFoundError(f"no open session {session_id!r}")
        self._reserved_tokens -= session.info.max_length * session.info.batch_size
        self._stepped = deque((s for s in self._stepped if s != session_id), CROWD_STEPS)
        logger.debug("closed session %s", session_id)

    def step(
        self,
        session_id: str,
        hidden_states: torch.Tensor,
        start: int | None = None,
        end: int | None = None,
        *,
        reorder: Sequence[int] = (),
        position: int | None = None,
    ) -> torch.Tensor:
        """Append `[batch, length, hidden]` to the session; returns the blocks' output.
        First, `position` (speculative decoding): only the first `position` cached tokens
        are kept (a failed step leaves the session so); `reorder` (beam search): row i of the
        cache becomes what row `reorder[i]` was; rows of different left padding do not mix."""
        return self.run_step(
            StepRequest(session_id, hidden_states, start, end, tuple(reorder), position)
        )

    def run_step(self, request: StepRequest) -> torch.Tensor:
        """`step`, its arguments as one request (as the scheduler holds them)."""
        session, hidden = self._check_step(request)
        return self._run_sessions([session], [hidden], [request])

    def step_many(self, requests: Sequence[StepRequest]) -> list[torch.Tensor]:
        """Steps of distinct sessions, merged where they share a range and a length.

        All requests are validated first; if any is invalid, nothing runs and the error of the
        first one is raised (callers that need per-request errors fall back to `step`).
        """
        ids = [request.session_id for request in requests]
        if len(set(ids)) != len(ids):
            raise InvalidRequestError("step_many: a session appears twice in one batch")
        checked = [self._check_step(request) for request in requests]
        groups: dict[tuple[int, int, int, str | None], list[int]] = {}
        for index, (session, hidden) in enumerate(checked):
            info = session.info
            key = (info.start, info.end, hidden.shape[1], info.adapter)
            groups.setdefault(key, []).append(index)
        outputs: list[torch.Tensor | None] = [None] * len(requests)
        for members in groups.values():
            for chunk in self._chunks(members, checked):
                try:
                    merged = self._run_sessions(
                        [checked[i][0] for i in chunk],
                        [checked[i][1] for i in chunk],
                        [requests[i] for i in chunk],
                    )
                except MixedLengthsError:  # nothing was committed: one session at a time
                    for i in chunk:
                        outputs[i] = self._run_sessions(
                            [checked[i][0]], [checked[i][1]], [requests[i]]
                        )
                    continue
                row = 0
                for i in chunk:
                    rows = checked[i][0].info.batch_size
                    outputs[i] = merged[row : row + rows]
                    row += rows
        return [output for output in outputs if output is not None]

    def _chunks(
        self, members: list[int], checked: list[tuple[_Session, torch.Tensor]]
    ) -> list[list[int]]:
        chunks: list[list[int]] = [[]]
        rows = 0
        for index in members:
            size = checked[index][0].info.batch_size
            if chunks[-1] and rows + size > self.config.max_merged_rows:
                chunks.append([])
                rows = 0
            chunks[-1].append(index)
            rows += size
        return chunks

    def _run_sessions(
        self,
        sessions: list[_Session],
        hiddens: list[torch.Tensor],
        requests: list[StepRequest],
    ) -> torch.Tensor:
        """One forward over the sessions' steps (checked), each session first cut back to
        its request's `position`; the rows' new orders are committed with the step."""
        for session, request in zip(sessions, requests, strict=True):
            if request.position is not None:
                session.cache.length = request.position
        info = sessions[0].info
        first, last = info.start - self.span.start, info.end - self.span.start
        q_len = hiddens[0].shape[1]
        device = self.span.device
        with torch.no_grad(), self._threads(sessions, q_len), self.adapters.using(info.adapter):
            orders = [request.reorder for request in requests]
            cache = StepCache([s.cache for s in sessions], q_len, first, orders)
            past = cache.past_lengths
            pads = [pad for session in sessions for pad in session.info.row_padding]
            hidden = torch.cat([h.to(device) for h in hiddens]) if len(hiddens) > 1 else hiddens[0]
            hidden = hidden.to(device)
            positions = _positions(past, pads, q_len, device)
            keys = None
            if any(pads):  # each row's first `pad` keys are its left padding
                indices = torch.arange(max(past) + q_len, device=device)
                keys = indices[None, :] >= torch.tensor(pads, device=device)[:, None]
            output = self.span.run_layers(
                hidden, first, last, position_ids=positions, past=past, keys=keys, cache=cache
            )
            cache.commit()
        return output.cpu()

    @contextmanager
    def _threads(self, sessions: list[_Session], q_len: int) -> Iterator[None]:
        """Run a step on the threads `step_threads` (one token a row) or `prompt_threads`
        (more) chooses for its size in tokens (apart while other sessions stepped among the
        last `CROWD_STEPS`), and tell it how long the step took; then restore the thread's
        count."""
        ids = [session.info.session_id for session in sessions]
        crowded = len({*self._stepped, *ids}) > 1
        self._stepped.extend(ids)
        choice = self.step_threads if q_len == 1 else self.prompt_threads
        if choice is None:
            yield
            return
        size = q_len * sum(session.info.batch_size for session in sessions)
        threads, previous = choice.threads(size, crowded), torch.get_num_threads()
        torch.set_num_threads(threads)
        began = time.perf_counter()
        try:
            yield
        finally:
            torch.set_num_threads(previous)
        choice.record(threads, time.perf_counter() - began, size, crowded)


def _check_reorder(reorder: tuple[int, ...], info: SessionInfo, what: str) -> None:
    """A new order of the session's rows, each taken from a row of the same left padding."""
    if not reorder:
        return
    padding = info.row_padding
    if len(reorder) != info.batch_size or not all(
        isinstance(row, int) and 0 <= row < info.batch_size and padding[row] == padding[index]
        for index, row in enumerate(reorder)
    ):
        raise InvalidRequestError(
            f"{what}: reorder must name, for each of its {info.batch_size} rows, a row of the "
            f"same padding, not {list(reorder)[:8]}"
        )


def _positions(
    past: Sequence[int], pads: Sequence[int], q_len: int, device: torch.device
) -> torch.Tensor:
    """Position ids of the new tokens, `[1 or rows, q_len]`: counted from each row's first
    token after its padding; a padding token gets 1, as in transformers."""
    new = torch.arange(q_len, device=device)
    if len(set(past)) == 1 and not any(pads):
        return (new + past[0])[None, :]
    index = torch.tensor(past, device=device)[:, None] + new[None, :]
    start = torch.tensor(pads, device=device)[:, None]
    return torch.where(index >= start, index - start, 1)


def _mask(attention_mask: torch.Tensor | Sequence[Sequence[int]] | None) -> torch.Tensor | None:
    """The attention mask as a tensor of booleans (None: no padding)."""
    return None if attention_mask is None else torch.as_tensor(attention_mask).bool()
