"""The vLLM twin's engine: vLLM V1's scheduler over a paged KV cache, timed by a roofline.

One ``step(now)`` is one engine iteration, as ``vllm/v1/core/sched/scheduler.py`` ``schedule()`` does it:

1. Running requests first, in admission order, each asking for ``num_tokens - num_computed`` tokens (1 for
   a decode, the rest of the prompt for a chunked prefill) within ``max_num_batched_tokens``. When the KV
   pool has no room, the newest running request is preempted (FCFS policy: ``running.pop()``), its blocks
   freed (hashed ones stay cached) and it goes back to the front of the waiting queue to be recomputed.
2. Then, only if nothing was preempted, waiting requests in order while the budget and ``max_num_seqs``
   allow: prefix-cache lookup, then the rest of the prompt, chunked to the budget (or not at all when
   chunked prefill is off and it does not fit).

The step's tokens become visible at ``now + duration_s`` (duration from ``roofline.Roofline``). A request
whose prefill completes in a step samples its first token in that step; each later step adds one token.
A request stops at ``max_tokens`` ("length"), or at ``eos_after`` tokens ("stop") when the caller gives
one and does not set ``ignore_eos`` — the twin has no language model, so whoever drives it decides the
natural answer length (fast-forward takes it from the dataset's completion when asked).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

import numpy as np
from pydantic import BaseModel, ConfigDict

from backends.errors import ServeDeckError
from backends.twin.capacity import MemoryPlan, plan_memory
from backends.twin.engine_config import TwinConfig
from backends.twin.kv_blocks import BlockOwner, BlockPool, chained_block_hashes
from backends.twin.roofline import Roofline, StepCost

__all__ = [
    "BurstResult",
    "CapacityFacts",
    "EngineStats",
    "FinishReason",
    "InvalidRequestError",
    "PromptTooLongError",
    "StepResult",
    "TokenOutput",
    "TwinConfig",
    "TwinEngine",
]


class FinishReason(StrEnum):
    LENGTH = "length"
    STOP = "stop"
    ABORT = "abort"


class InvalidRequestError(ServeDeckError):
    """A request vLLM would answer with HTTP 400 (``BadRequestError``); ``str(err)`` is vLLM's message."""


class PromptTooLongError(InvalidRequestError):
    """Prompt (plus max_tokens) over max-model-len, worded as vLLM's OpenAI server words it."""

    def __init__(self, prompt_tokens: int, max_tokens: int, max_model_len: int) -> None:
        self.prompt_tokens = prompt_tokens
        self.max_tokens = max_tokens
        self.max_model_len = max_model_len
        if prompt_tokens >= max_model_len:
            message = (
                f"This model's maximum context length is {max_model_len} tokens. However, your request has "
                f"{prompt_tokens} input tokens. Please reduce the length of the input messages."
            )
        else:
            message = (
                f"'max_tokens' or 'max_completion_tokens' is too large: {max_tokens}. This model's maximum "
                f"context length is {max_model_len} tokens and your request has {prompt_tokens} input tokens "
                f"({max_tokens} > {max_model_len} - {prompt_tokens})."
            )
        super().__init__(message)


@dataclass(slots=True)
class TokenOutput:
    """Tokens one request produced in a step (always 1 today: no speculative decoding)."""

    request_id: str
    new_tokens: int
    output_tokens: int  # generated so far, this step's included
    finish_reason: FinishReason | None
    cached_tokens: int  # prompt tokens served from the prefix cache at (first) scheduling


@dataclass(slots=True)
class StepResult:
    started_at: float
    duration_s: float
    outputs: list[TokenOutput]  # requests that produced a token this step
    preempted: list[str]
    num_scheduled: int
    prefill_tokens: int  # tokens computed for requests still in (re)prefill, recomputation included
    decode_tokens: int
    new_prompt_tokens: int  # prompt tokens of requests that got their first token (vLLM's prompt counter)
    cost: StepCost | None = None  # what the roofline timed (the twin's simulated GPU telemetry reads it)

    @property
    def finished_at(self) -> float:
        return self.started_at + self.duration_s

    @property
    def finished(self) -> list[TokenOutput]:
        return [out for out in self.outputs if out.finish_reason is not None]


@dataclass(slots=True)
class BurstResult:
    """``steps`` consecutive pure-decode steps taken at once (fast-forward only)."""

    started_at: float
    step_ends: list[float]
    request_ids: list[str]
    finished: list[TokenOutput]


class CapacityFacts(BaseModel):
    model_config = ConfigDict(frozen=True)

    num_gpu_blocks: int
    block_size: int
    kv_cache_tokens: int  # vLLM's "GPU KV cache size: N tokens"
    max_model_len: int
    max_concurrency: float  # vLLM's "Maximum concurrency for max_model_len tokens per request: X.XXx"
    kv_cache_bytes_per_gpu: int
    weight_bytes_per_gpu: int
    max_num_seqs: int
    max_num_batched_tokens: int


class EngineStats(BaseModel):
    running: int
    waiting: int
    kv_cache_usage: float  # 0..1
    prompt_tokens_total: int
    generation_tokens_total: int
    preemptions_total: int
    prefix_cache_queries_total: int  # tokens looked up
    prefix_cache_hits_total: int  # tokens found
    requests_finished_total: int
    capacity: CapacityFacts


class _Request(BlockOwner):
    __slots__ = (
        "arrival_time",
        "cached_tokens",
        "finish_reason",
        "max_tokens",
        "num_computed",
        "num_preemptions",
        "num_tokens",
        "output_tokens",
        "prompt_tokens",
        "stop_after",
    )

    def __init__(
        self,
        request_id: str,
        prompt_tokens: int,
        max_tokens: int,
        stop_after: int,
        arrival_time: float,
        prefix_key: str | None,
        prefix_blocks: int,
        token_hashes: Sequence[int] | None = None,
    ) -> None:
        super().__init__(request_id, prefix_key, prefix_blocks, token_hashes)
        self.prompt_tokens = prompt_tokens
        self.max_tokens = max_tokens
        self.stop_after = stop_after
        self.finish_reason = FinishReason.LENGTH if stop_after >= max_tokens else FinishReason.STOP
        self.arrival_time = arrival_time
        self.num_tokens = prompt_tokens
        self.num_computed = 0
        self.output_tokens = 0
        self.num_preemptions = 0
        self.cached_tokens = 0


class TwinEngine:
    def __init__(self, config: TwinConfig) -> None:
        self.config = config
        self.memory: MemoryPlan = plan_memory(config)
        self.roofline = Roofline(config)
        self.block_size = config.block_size
        self.max_model_len = config.resolved_max_model_len
        self.max_num_seqs = config.resolved_max_num_seqs
        self.max_num_batched_tokens = config.resolved_max_num_batched_tokens
        self.chunked_prefill = config.enable_chunked_prefill
        self.pool = BlockPool(
            self.memory.num_gpu_blocks, self.memory.layout, config.block_size, config.enable_prefix_caching
        )
        window = self.memory.layout.sliding_window or config.model.sliding_window
        self._window = window if config.model.num_sliding_layers else None
        self.waiting: deque[_Request] = deque()
        self.running: list[_Request] = []
        self._requests: dict[str, _Request] = {}
        self.prompt_tokens_total = 0
        self.generation_tokens_total = 0
        self.preemptions_total = 0
        self.prefix_queries_total = 0
        self.prefix_hits_total = 0
        self.finished_total = 0

    # -- requests ---------------------------------------------------------------------------------------

    def add_request(
        self,
        request_id: str,
        prompt_tokens: int,
        max_tokens: int,
        ignore_eos: bool = False,
        arrival_time: float = 0.0,
        prefix_key: str | None = None,
        *,
        eos_after: int | None = None,
        prefix_len: int | None = None,
        token_ids: Sequence[int] | None = None,
    ) -> None:
        """Queue a request. ``token_ids`` (the prompt's, then the answer's the twin will give) make the
        prefix cache block-level, as vLLM's: any request starting with the same token blocks hits them.
        Without them ``prefix_key`` names the prompt's content (same key, same leading tokens) and
        ``prefix_len`` says how many leading tokens it covers (default: the whole prompt)."""
        if request_id in self._requests:
            raise InvalidRequestError(f"request id {request_id!r} is already in the engine")
        if prompt_tokens < 1:
            raise InvalidRequestError("the prompt must have at least 1 token")
        if max_tokens < 1:
            raise InvalidRequestError(f"max_tokens must be at least 1, got {max_tokens}")
        if prompt_tokens >= self.max_model_len or prompt_tokens + max_tokens > self.max_model_len:
            raise PromptTooLongError(prompt_tokens, max_tokens, self.max_model_len)
        stop_after = max_tokens
        if eos_after is not None and not ignore_eos:
            stop_after = max(1, min(max_tokens, eos_after))
        shared = prompt_tokens if prefix_len is None else max(0, min(prefix_len, prompt_tokens))
        prefix_blocks = shared // self.block_size if prefix_key is not None else 0
        token_hashes = (
            chained_block_hashes(token_ids, self.block_size)
            if token_ids is not None and self.pool.enable_caching
            else None
        )
        request = _Request(
            request_id,
            prompt_tokens,
            max_tokens,
            stop_after,
            arrival_time,
            prefix_key,
            prefix_blocks,
            token_hashes,
        )
        self._requests[request_id] = request
        self.waiting.append(request)

    def abort_request(self, request_id: str) -> bool:
        """Drop a request (client went away); False when it is not in the engine."""
        request = self._requests.pop(request_id, None)
        if request is None:
            return False
        if request in self.waiting:
            self.waiting.remove(request)
        else:
            self.running.remove(request)
        self.pool.free(request)
        return True

    def has_work(self) -> bool:
        return bool(self.running or self.waiting)

    # -- one iteration ----------------------------------------------------------------------------------

    def step(self, now: float) -> StepResult:
        scheduled, preempted = self._schedule()
        # One pass: what the step computes (for the roofline), then its effect on each request.
        window = self._window
        tokens = kv_full = kv_sliding = prefill_tokens = new_prompt_tokens = 0
        pairs_full = pairs_sliding = 0.0
        outputs: list[TokenOutput] = []
        finished: list[_Request] = []
        for request, n in scheduled:
            before = request.num_computed
            after = before + n
            tokens += n
            kv_full += after
            if n == 1 and before >= request.prompt_tokens:  # a decode (or the last token of a recompute)
                pairs_full += after
                if window is not None:
                    capped = after if after < window else window
                    kv_sliding += capped
                    pairs_sliding += capped
            else:
                prefill_tokens += n
                # Causal attention of a chunk: its token j attends to before + j + 1 positions.
                pairs_full += n * before + n * (n + 1) / 2
                if window is not None:
                    kv_sliding += after if after < window else window
                    pairs_sliding += n * min(before + (n + 1) / 2, window)
            request.num_computed = after
            if after == request.num_tokens:
                request.num_tokens = after + 1
                produced = request.output_tokens + 1
                request.output_tokens = produced
                if produced == 1:
                    new_prompt_tokens += request.prompt_tokens
                reason = None
                if produced >= request.stop_after:
                    reason = request.finish_reason
                    finished.append(request)
                outputs.append(TokenOutput(request.request_id, 1, produced, reason, request.cached_tokens))
        cost = StepCost(
            tokens=tokens,
            sampled=len(outputs),
            sequences=len(scheduled),
            kv_full_tokens=kv_full,
            kv_sliding_tokens=kv_sliding,
            attn_full_pairs=pairs_full,
            attn_sliding_pairs=pairs_sliding,
            prefill_tokens=prefill_tokens,
        )
        self.prompt_tokens_total += new_prompt_tokens
        self.generation_tokens_total += len(outputs)
        if finished:
            self._finish(finished)
        return StepResult(
            started_at=now,
            duration_s=self.roofline.step_seconds(cost),
            outputs=outputs,
            preempted=[r.request_id for r in preempted],
            num_scheduled=len(scheduled),
            prefill_tokens=prefill_tokens,
            decode_tokens=tokens - prefill_tokens,
            new_prompt_tokens=new_prompt_tokens,
            cost=cost,
        )

    def _schedule(self) -> tuple[list[tuple[_Request, int]], list[_Request]]:
        budget = self.max_num_batched_tokens
        pool = self.pool
        running = self.running
        scheduled: list[tuple[_Request, int]] = []
        preempted: list[_Request] = []
        size = self.block_size
        caching = pool.enable_caching
        index = 0
        while index < len(running) and budget > 0:
            request = running[index]
            n = request.num_tokens - request.num_computed
            if n > budget:
                n = budget
            total = request.num_computed + n
            if total <= request.blocks * size and (not caching or total // size <= len(request.hashes)):
                # Fast path: the tokens fit the blocks held and complete no new block to register.
                scheduled.append((request, n))
                budget -= n
                index += 1
                continue
            while not pool.allocate(request, total):
                victim = running.pop()
                self._preempt(victim)
                preempted.append(victim)
                if victim is request:
                    break
            else:
                scheduled.append((request, n))
                budget -= n
                index += 1
                continue
            break
        if preempted:
            return scheduled, preempted
        waiting = self.waiting
        while waiting and budget > 0 and len(running) < self.max_num_seqs:
            request = waiting[0]
            hits = pool.count_hits(request, request.num_tokens)
            computed = hits * self.block_size
            n = request.num_tokens - computed
            if n > budget:
                if not self.chunked_prefill:
                    break
                n = budget
            if not pool.allocate_first(request, hits, computed + n):
                break
            waiting.popleft()
            if pool.enable_caching:
                self.prefix_queries_total += request.num_tokens
                self.prefix_hits_total += computed
            if request.num_preemptions == 0:
                request.cached_tokens = computed
            request.num_computed = computed
            running.append(request)
            scheduled.append((request, n))
            budget -= n
        return scheduled, preempted

    def _preempt(self, request: _Request) -> None:
        self.pool.free(request)
        request.num_computed = 0
        request.num_preemptions += 1
        self.preemptions_total += 1
        self.waiting.appendleft(request)

    def _finish(self, finished: list[_Request]) -> None:
        done = set(map(id, finished))
        self.running = [r for r in self.running if id(r) not in done]
        for request in finished:
            self.pool.free(request)
            del self._requests[request.request_id]
        self.finished_total += len(finished)

    # -- fast-forward -----------------------------------------------------------------------------------

    def decode_burst(self, now: float, until: float, max_steps: int) -> BurstResult | None:
        """Take several pure-decode steps at once when stepping one by one would do exactly the same.

        Only when nothing waits, every running request is decoding, the batch fits the token budget, the
        pool holds every block the steps need (so no preemption), and each step starts before ``until``
        (the next arrival). The burst ends at the first finish. None when it cannot take 2 steps or more.
        """
        running = self.running
        if self.waiting or not running or len(running) > self.max_num_batched_tokens:
            return None
        steps = max_steps
        for request in running:
            if request.num_tokens - request.num_computed != 1 or request.output_tokens == 0:
                return None
            left = request.stop_after - request.output_tokens
            if left < steps:
                steps = left
        if steps < 2:
            return None
        pool = self.pool
        contexts = np.fromiter((r.num_tokens for r in running), dtype=np.int64, count=len(running))
        size = self.block_size
        pages = 0
        for request, context in zip(running, contexts.tolist(), strict=True):
            pages += pool.pages_between(request.blocks, -(-(context + steps - 1) // size))
        if pages > pool.free_pages:
            return None
        durations = self._decode_durations(contexts, steps)
        starts = now + np.concatenate(([0.0], np.cumsum(durations[:-1])))
        taken = int(np.searchsorted(starts, until, side="left"))
        if taken < 2:
            return None
        ends = (starts[:taken] + durations[:taken]).tolist()
        finished: list[_Request] = []
        outputs: list[TokenOutput] = []
        for request in running:
            request.num_computed += taken
            request.num_tokens += taken
            request.output_tokens += taken
            pool.allocate(request, request.num_computed)
            if request.output_tokens >= request.stop_after:
                finished.append(request)
                outputs.append(
                    TokenOutput(
                        request.request_id,
                        1,
                        request.output_tokens,
                        request.finish_reason,
                        request.cached_tokens,
                    )
                )
        ids = [r.request_id for r in running]
        self.generation_tokens_total += taken * len(running)
        if finished:
            self._finish(finished)
        return BurstResult(started_at=now, step_ends=ends, request_ids=ids, finished=outputs)

    def _decode_durations(self, contexts: np.ndarray, steps: int) -> np.ndarray:
        """Roofline times of ``steps`` decode steps of this batch, contexts growing one token a step."""
        batch = len(contexts)
        offsets = np.arange(steps, dtype=np.int64)
        kv_full = contexts.sum() + batch * offsets
        if self._window is not None:
            kv_sliding = np.minimum(contexts[:, None] + offsets[None, :], self._window).sum(axis=0)
        else:
            kv_sliding = np.zeros(steps, dtype=np.int64)
        return self.roofline.decode_seconds(batch, kv_full, kv_sliding)

    # -- observability ----------------------------------------------------------------------------------

    def capacity(self) -> CapacityFacts:
        plan = self.memory
        return CapacityFacts(
            num_gpu_blocks=plan.num_gpu_blocks,
            block_size=plan.block_size,
            kv_cache_tokens=plan.kv_cache_tokens,
            max_model_len=plan.max_model_len,
            max_concurrency=plan.max_concurrency,
            kv_cache_bytes_per_gpu=plan.kv_cache_bytes,
            weight_bytes_per_gpu=plan.weight_bytes,
            max_num_seqs=self.max_num_seqs,
            max_num_batched_tokens=self.max_num_batched_tokens,
        )

    def stats(self) -> EngineStats:
        return EngineStats(
            running=len(self.running),
            waiting=len(self.waiting),
            kv_cache_usage=self.pool.usage,
            prompt_tokens_total=self.prompt_tokens_total,
            generation_tokens_total=self.generation_tokens_total,
            preemptions_total=self.preemptions_total,
            prefix_cache_queries_total=self.prefix_queries_total,
            prefix_cache_hits_total=self.prefix_hits_total,
            requests_finished_total=self.finished_total,
            capacity=self.capacity(),
        )
