"""Fast-forward of a multi-turn level: sessions replayed turn by turn on the twin's virtual clock.

The same loop the load generator's worker runs against a live server (``loadgen.worker._session``): a
session sends its first user turn, waits for the whole answer, thinks, then sends the history (earlier
user turns and the model's own answers, or the dataset's) plus the next user turn. Sessions start as the
live run starts them: ``concurrency`` users each taking the next conversation (closed loop), or one
session per arrival at the session rate, at most ``max_concurrency`` at once (open loop). Prompts are
tokenized as the live twin tokenizes them (Gemma's chat template over cl100k), and an answer's tokens
follow its prompt's in the block hashes, so a next turn finds the history cached as in vLLM.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import numpy as np

from backends.bench.loadgen.arrivals import arrival_times
from backends.bench.models import LoadLevel, RequestRecord, SampledConversation
from backends.bench.multi_turn import per_turn_metrics
from backends.bench.results import DatasetSpec, LevelResult
from backends.target_types import ServerSnapshot
from backends.twin.engine import InvalidRequestError, TwinEngine
from backends.twin.text import TwinTokenizer, answer_text

if TYPE_CHECKING:
    from backends.twin.fastforward import EarlyStop

_SNAPSHOT_INTERVAL_S = 1.0
# As the live twin (backends/twin/server.py): the answer tokens that join the prompt's block hashes.
_MAX_HASHED_ANSWER_TOKENS = 4096


def think_times(
    conversations: Sequence[SampledConversation], spec: DatasetSpec, seed: int
) -> list[list[float]]:
    """Each turn's think time before it, drawn as the load generator draws them (one worker)."""
    rng = np.random.default_rng(seed + 1)
    out = []
    for conversation in conversations:
        times = []
        for t in range(len(conversation.turns)):
            if t == 0 or spec.think_time_s <= 0:
                times.append(0.0)
            elif spec.think_time_dist == "exponential":
                times.append(float(rng.exponential(spec.think_time_s)))
            else:
                times.append(spec.think_time_s)
        out.append(times)
    return out


class _Turn:
    __slots__ = ("chunks", "error", "first", "output", "prompt_len", "queued", "reason", "server_tokens")

    def __init__(self) -> None:
        self.queued: float | None = None
        self.first: float | None = None
        self.chunks: list[float] = []
        self.output = 0
        self.reason: str | None = None
        self.error: str | None = None
        self.prompt_len = 0
        self.server_tokens: int | None = None


def run_sessions_level(
    engine: TwinEngine,
    level: LoadLevel,
    conversations: Sequence[SampledConversation],
    spec: DatasetSpec,
    *,
    index: int = 0,
    seed: int = 0,
    ignore_eos: bool = False,
    chat: bool = True,
    percentiles: Sequence[float] = (99.0,),
    goodput_slos_ms: dict[str, float] | None = None,
    early_stop: EarlyStop | None = None,
) -> LevelResult:
    """Play one multi-turn level through ``engine``; the clock starts at 0 like a live level's.
    ``early_stop`` sees every turn sent so far, in the order sent (an SLO search's early stop)."""
    from backends.twin.fastforward import simulated_level, snapshot

    started_at = datetime.now(UTC)
    tokenizer = TwinTokenizer()
    encode = tokenizer.encoding.encode_ordinary
    corpus = answer_text()
    count = len(conversations)
    offsets = [0]
    for conversation in conversations:
        offsets.append(offsets[-1] + len(conversation.turns))
    turns = [_Turn() for _ in range(offsets[-1])]
    think = think_times(conversations, spec, seed)
    session_arrivals = arrival_times(count, level.request_rate, level.burstiness, seed, ramp_up=level.ramp_up)
    cap = level.concurrency_cap if level.concurrency_cap is not None else count
    history: list[list[tuple[str, str]]] = [[] for _ in range(count)]
    context = [0] * count
    # (arrival, tie-break, session, turn, chained): chained = sent on a finish at that same instant, so it
    # reaches the server after the next step has begun (the client needs the finishing chunk first).
    ready: list[tuple[float, int, int, int, bool]] = []
    order = 0
    running: dict[str, tuple[int, int]] = {}
    requests_sent = 0
    # For ``early_stop``: each turn sent, in the order sent, and where it sits in that order.
    sent_order: list[float] = []
    first_order: list[float | None] = []
    order_of: dict[str, int] = {}

    def push(at: float, s: int, t: int, chained: bool) -> None:
        nonlocal order
        heapq.heappush(ready, (at, order, s, t, chained))
        order += 1

    next_session = 0
    active = 0

    def start_sessions(free_at: float) -> None:
        nonlocal next_session, active
        while next_session < count and active < cap:
            at = max(session_arrivals[next_session], free_at)
            push(at, next_session, 0, at == free_at and free_at > 0)
            next_session += 1
            active += 1

    def end_session(at: float) -> None:
        nonlocal active
        active -= 1
        start_sessions(at)

    def submit(s: int, t: int, at: float) -> None:
        nonlocal requests_sent
        turn = conversations[s].turns[t]
        state = turns[offsets[s] + t]
        state.queued = at
        context[s] += turn.user_len
        state.prompt_len = context[s]
        if chat:
            messages: list[tuple[str, str]] = []
            for user, answer in history[s]:
                messages += [("user", user), ("assistant", answer)]
            messages.append(("user", turn.user))
            prompt_ids = tokenizer.encode_chat(messages)
        else:
            parts = [f"User: {u}\n\nAssistant: {a}" for u, a in history[s]]
            parts.append(f"User: {turn.user}\n\nAssistant:")
            prompt_ids = tokenizer.encode_prompt("\n\n".join(parts))
        requests_sent += 1
        start = corpus.start_for(requests_sent)
        max_tokens = turn.expected_output_len
        token_ids = None
        if engine.pool.enable_caching:
            hashed = corpus.text(start, min(max_tokens, _MAX_HASHED_ANSWER_TOKENS))
            token_ids = prompt_ids + encode(hashed)
        request_id = f"{index}-{offsets[s] + t}"
        try:
            engine.add_request(
                request_id, len(prompt_ids), max_tokens, ignore_eos, at, request_id, token_ids=token_ids
            )
        except InvalidRequestError as err:
            state.error = str(err)
            end_session(at)
            return
        state.server_tokens = len(prompt_ids)
        running[request_id] = (s, t)
        order_of[request_id] = len(sent_order)
        sent_order.append(at)
        first_order.append(None)
        history[s].append((turn.user, turn.answer if spec.dataset_answers else ""))
        # The model's own answer is filled in when it finishes (its text: the corpus from ``start``).
        answer_starts[request_id] = start

    answer_starts: dict[str, int] = {}
    cached: dict[str, int] = {}

    def finished(request_id: str, output_tokens: int, reason: str | None, at: float) -> None:
        s, t = running.pop(request_id)
        state = turns[offsets[s] + t]
        state.output = output_tokens
        state.reason = reason
        turn = conversations[s].turns[t]
        if spec.dataset_answers:
            context[s] += turn.answer_len
        else:
            history[s][-1] = (turn.user, corpus.text(answer_starts[request_id], output_tokens))
            context[s] += output_tokens
        if t + 1 < len(conversations[s].turns):
            gap = think[s][t + 1]
            push(at + gap, s, t + 1, gap == 0)
        else:
            end_session(at)

    # The level's baseline: the counters before its first step (the engine carries the cache over levels).
    snapshots: list[ServerSnapshot] = [snapshot(engine, 0.0)]
    next_snapshot = _SNAPSHOT_INTERVAL_S
    now = 0.0
    idle_steps = 0
    stopped: str | None = None
    start_sessions(0.0)
    while ready or engine.has_work():
        deferred: list[tuple[int, int, float]] = []
        while ready and ready[0][0] <= now:
            at, _, s, t, chained = heapq.heappop(ready)
            if chained and at == now and engine.has_work():
                deferred.append((s, t, at))
            else:
                submit(s, t, at)
        if not engine.has_work() and not deferred:
            if not ready:
                break
            now = max(now, ready[0][0])
            continue
        step = engine.step(now)
        end = now + step.duration_s
        if step.num_scheduled == 0:
            idle_steps += 1
            if idle_steps > 2 and not deferred:
                raise RuntimeError("the twin engine scheduled nothing twice with work queued")
        else:
            idle_steps = 0
        for out in step.outputs:
            s, t = running[out.request_id]
            state = turns[offsets[s] + t]
            if state.first is None:
                state.first = end
                cached[out.request_id] = out.cached_tokens
                first_order[order_of[out.request_id]] = end
            state.chunks.append(end)
            if out.finish_reason is not None:
                finished(out.request_id, out.output_tokens, out.finish_reason.value, end)
        for s, t, at in deferred:
            submit(s, t, at)
        now = end
        if now >= next_snapshot:
            snapshots.append(snapshot(engine, now))
            next_snapshot = math.floor(now / _SNAPSHOT_INTERVAL_S + 1) * _SNAPSHOT_INTERVAL_S
            if early_stop is not None:
                stopped = early_stop(now, sent_order, len(sent_order), first_order)
                if stopped is not None:
                    break

    records = []
    for s, conversation in enumerate(conversations):
        for t, turn in enumerate(conversation.turns):
            position = offsets[s] + t
            state = turns[position]
            if state.queued is None:
                continue  # an earlier turn failed: the session ended there
            request_id = f"{index}-{position}"
            timings = None
            if request_id in cached and state.server_tokens is not None:
                hit = cached[request_id]
                timings = {"cache_n": float(hit), "prompt_n": float(state.server_tokens - hit)}
            records.append(
                RequestRecord(
                    index=position,
                    prompt_len=state.prompt_len,
                    expected_output_len=turn.expected_output_len,
                    queued_at=state.queued,
                    sent_at=state.queued,
                    first_token_at=state.first,
                    chunk_times=state.chunks,
                    chunk_tokens=[1] * len(state.chunks),
                    input_tokens=state.server_tokens,
                    output_tokens=state.output if state.error is None else None,
                    finish_reason=state.reason,
                    http_status=200 if state.error is None else 400,
                    error=state.error,
                    success=state.error is None and state.first is not None,
                    server_timings=timings,
                    session=s,
                    turn=t,
                )
            )
    duration = max((r.chunk_times[-1] for r in records if r.chunk_times), default=0.0)
    if stopped is not None:
        duration = now
    snapshots.append(snapshot(engine, now))
    return simulated_level(
        index,
        level,
        started_at,
        records,
        snapshots,
        duration,
        offsets[-1],
        stopped,
        goodput_slos_ms,
        percentiles,
        turns=per_turn_metrics(records),
    )
