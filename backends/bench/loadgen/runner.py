"""Parent side of the load generator: runs one level across worker processes.

Workers are spawned (not forked) so they never inherit a UI's threads or event loop. The level's
clock starts only after every worker has opened its keep-alive connections.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import math
import multiprocessing as mp
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

from backends.bench.loadgen.arrivals import arrival_times, busiest_second
from backends.bench.loadgen.requests import Endpoint, RequestOptions
from backends.bench.loadgen.selfmon import merge_client_stats
from backends.bench.loadgen.worker import SessionPlan, WorkerJob, WorkerProgress, job_records, worker_main
from backends.bench.models import ClientStats, LoadLevel, RequestRecord, SampledConversation
from backends.errors import ConfigError, TargetError

_READY_TIMEOUT_S = 60.0
_START_MARGIN_S = 0.05
_MAX_PREOPEN = 1024


@dataclass
class LevelPlan:
    level: LoadLevel
    requests: list[bytes]
    prompt_lens: list[int]
    output_lens: list[int]
    seed: int = 0
    workers: int = 1
    request_timeout_s: float = 600.0
    idle_timeout_s: float = 60.0
    probe_timing: bool = False
    arrivals: list[float] | None = None  # trace replay: each request's release time; None: the level's
    # Multi-turn: the level's sessions (``requests`` is then empty: a turn's bytes need the answers before
    # it), how to render their turns, and the think time between turns.
    conversations: list[SampledConversation] | None = None
    options: RequestOptions | None = None
    dataset_answers: bool = False
    think_time_s: float = 0.0
    think_time_dist: str = "fixed"

    @property
    def total(self) -> int:
        if self.conversations is not None:
            return sum(len(c.turns) for c in self.conversations)
        return len(self.requests)


@dataclass
class LevelOutcome:
    records: list[RequestRecord]
    client: ClientStats
    duration_s: float
    cancelled: bool = False
    error: str | None = None
    start_at: float | None = None  # time.perf_counter() of the first dispatch (telemetry aligns to it)


@dataclass
class LevelProgress:
    """Totals over all workers, updated as worker messages arrive."""

    t: float = 0.0
    sent: int = 0
    completed: int = 0
    failed: int = 0
    in_flight: int = 0
    new_tokens: int = 0
    new_records: list[RequestRecord] = field(default_factory=list)


def _split(count: int, parts: int, part: int) -> int:
    return count // parts + (1 if part < count % parts else 0)


def _worker_cpus(workers: int) -> list[int | None]:
    """Pin workers to the last cores so the first core stays free for a UI, when there is room."""
    try:
        available = sorted(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - non-Linux
        return [None] * workers
    if len(available) <= workers:
        return [None] * workers
    return [available[-1 - i] for i in range(workers)]


def session_jobs(plan: LevelPlan, endpoint: Endpoint) -> list[WorkerJob]:
    """Multi-turn: sessions dealt round-robin to workers; the arrival schedule is the sessions'. The
    in-cluster pods call this too, ``plan.workers`` = pods, and each runs its own job of the list."""
    import numpy as np

    conversations = plan.conversations or []
    assert plan.options is not None
    level = plan.level
    count = len(conversations)
    workers = max(1, min(plan.workers, count or 1))
    arrivals = arrival_times(count, level.request_rate, level.burstiness, plan.seed, ramp_up=level.ramp_up)
    rng = np.random.default_rng(plan.seed + 1)
    offsets = [0]
    for conversation in conversations:
        offsets.append(offsets[-1] + len(conversation.turns))
    cap = level.concurrency_cap
    cpus = _worker_cpus(workers)
    jobs = []
    for w in range(workers):
        ids = list(range(w, count, workers))
        sessions: list[list[int]] = []
        indices: list[int] = []
        users: list[str] = []
        answers: list[str] = []
        user_lens: list[int] = []
        answer_lens: list[int] = []
        output_lens: list[int] = []
        think: list[float] = []
        for s in ids:
            positions = []
            for t, turn in enumerate(conversations[s].turns):
                positions.append(len(indices))
                indices.append(offsets[s] + t)
                users.append(turn.user)
                answers.append(turn.answer)
                user_lens.append(turn.user_len)
                answer_lens.append(turn.answer_len)
                output_lens.append(turn.expected_output_len)
                if t == 0 or plan.think_time_s <= 0:
                    think.append(0.0)
                elif plan.think_time_dist == "exponential":
                    think.append(float(rng.exponential(plan.think_time_s)))
                else:
                    think.append(plan.think_time_s)
            sessions.append(positions)
        worker_cap = None if cap is None else max(1, _split(cap, workers, w))
        preopen = len(ids) if worker_cap is None else min(worker_cap, len(ids))
        jobs.append(
            WorkerJob(
                worker_index=w,
                endpoint=endpoint,
                requests=[],
                indices=indices,
                prompt_lens=user_lens,
                output_lens=output_lens,
                arrivals=[0.0] * len(indices),
                concurrency=worker_cap,
                preopen=min(max(1, preopen), _MAX_PREOPEN),
                request_timeout_s=plan.request_timeout_s,
                idle_timeout_s=plan.idle_timeout_s,
                cpu=cpus[w],
                session_plan=SessionPlan(
                    sessions=sessions,
                    session_ids=ids,
                    session_arrivals=[arrivals[s] for s in ids],
                    users=users,
                    answers=answers,
                    user_lens=user_lens,
                    answer_lens=answer_lens,
                    think_s=think,
                    dataset_answers=plan.dataset_answers,
                    options=plan.options,
                ),
            )
        )
    return jobs


def build_jobs(plan: LevelPlan, endpoint: Endpoint) -> list[WorkerJob]:
    if plan.conversations is not None:
        return session_jobs(plan, endpoint)
    level = plan.level
    total = len(plan.requests)
    workers = max(1, min(plan.workers, total or 1))
    arrivals = plan.arrivals
    if arrivals is None:
        rate, burstiness = level.request_rate, level.burstiness
        arrivals = arrival_times(total, rate, burstiness, plan.seed, ramp_up=level.ramp_up)
    elif len(arrivals) != total:
        raise ConfigError(f"{len(arrivals)} arrival times for {total} requests")
    cap = level.concurrency_cap
    cpus = _worker_cpus(workers)
    jobs = []
    for w in range(workers):
        positions = list(range(w, total, workers))
        worker_cap = None if cap is None else max(1, _split(cap, workers, w))
        if worker_cap is not None:
            preopen = min(worker_cap, len(positions))
        else:
            # Two seconds of arrivals (all of them at rate inf, all at once).
            rate = level.ramp_up[2] if level.ramp_up is not None else level.request_rate
            if plan.arrivals is not None:
                rate = float(busiest_second(plan.arrivals))
            preopen = len(positions) if math.isinf(rate) else min(len(positions), max(8, math.ceil(rate * 2)))
        jobs.append(
            WorkerJob(
                worker_index=w,
                endpoint=endpoint,
                requests=[plan.requests[i] for i in positions],
                indices=positions,
                prompt_lens=[plan.prompt_lens[i] for i in positions],
                output_lens=[plan.output_lens[i] for i in positions],
                arrivals=[arrivals[i] for i in positions],
                concurrency=worker_cap,
                preopen=min(preopen, _MAX_PREOPEN),
                request_timeout_s=plan.request_timeout_s,
                idle_timeout_s=plan.idle_timeout_s,
                cpu=cpus[w],
                probe_timing=plan.probe_timing,
            )
        )
    return jobs


def _keep_thread_off(cpus: set[int]) -> set[int] | None:
    """Move the calling thread off ``cpus`` (Linux affinity is per thread); its old CPUs, to restore."""
    if not cpus or not hasattr(os, "sched_getaffinity"):
        return None
    try:
        before = os.sched_getaffinity(0)
        if before - cpus:
            os.sched_setaffinity(0, before - cpus)
            return before
    except OSError:
        pass
    return None


def _restore_thread_cpus(cpus: set[int] | None) -> None:
    if cpus is not None:
        with contextlib.suppress(OSError):
            os.sched_setaffinity(0, cpus)


class _WorkerHandle:
    def __init__(self, job: WorkerJob, inbox: Callable[[int, tuple[Any, ...]], None]) -> None:
        ctx = mp.get_context("spawn")
        self.index = job.worker_index
        parent_end, child_end = ctx.Pipe(duplex=True)
        self.conn: Connection = parent_end
        self.process = ctx.Process(target=worker_main, args=(job, child_end), daemon=True)
        self.process.start()
        child_end.close()
        self._inbox = inbox
        self._job = job
        self._worker_cpu = job.cpu
        # The level's time zero; set before "start" is sent, and progress only comes after that.
        self.start_at = 0.0
        self._reader = threading.Thread(target=self._read, name=f"loadgen-reader-{self.index}", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        # Unpickling progress and building its records on the worker's core would steal the core from the
        # measurement: this thread keeps off it, and does that work itself.
        if self._worker_cpu is not None:
            with contextlib.suppress(OSError):
                others = os.sched_getaffinity(0) - {self._worker_cpu}
                if others:
                    os.sched_setaffinity(0, others)
        while True:
            try:
                message = self.conn.recv()
            except (EOFError, OSError):
                self._inbox(self.index, ("eof",))
                return
            if message[0] == "progress":
                progress: WorkerProgress = message[1]
                message = ("progress", progress, job_records(self._job, self.start_at, progress.finished))
            self._inbox(self.index, message)

    def send(self, message: tuple[Any, ...]) -> None:
        with contextlib.suppress(OSError):
            self.conn.send(message)

    def stop(self) -> None:
        self.process.join(timeout=5)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(timeout=5)


async def run_level(
    plan: LevelPlan,
    endpoint: Endpoint,
    on_progress: Callable[[LevelProgress], None],
    cancel: asyncio.Event,
) -> LevelOutcome:
    """Run one level; finished requests survive cancel and worker death."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[int, tuple[Any, ...]]] = asyncio.Queue()

    def inbox(index: int, message: tuple[Any, ...]) -> None:
        loop.call_soon_threadsafe(queue.put_nowait, (index, message))

    jobs = build_jobs(plan, endpoint)
    handles = [_WorkerHandle(job, inbox) for job in jobs]
    records: list[RequestRecord] = []
    stats: dict[int, ClientStats] = {}
    latest: dict[int, WorkerProgress] = {}
    completed = failed = 0
    finished: set[int] = set()
    error: str | None = None
    cancelled = False
    start_at = 0.0
    end_at: float | None = None
    own_cpus: set[int] | None = None
    cancel_task = loop.create_task(cancel.wait())
    try:
        ready: set[int] = set()
        deadline = loop.time() + _READY_TIMEOUT_S
        while len(ready) < len(handles):
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise TargetError("load generator workers did not get ready in time (connections not opened)")
            getter = loop.create_task(queue.get())
            done, _ = await asyncio.wait(
                {getter, cancel_task}, timeout=remaining, return_when="FIRST_COMPLETED"
            )
            if getter not in done:
                getter.cancel()
                if cancel_task in done:
                    for handle in handles:
                        handle.send(("cancel",))
                    return LevelOutcome([], ClientStats(), 0.0, cancelled=True)
                continue
            index, message = getter.result()
            if message[0] == "ready":
                ready.add(index)
            elif message[0] == "fatal":
                raise TargetError(str(message[1]))
            elif message[0] == "eof":
                raise TargetError("a load generator worker exited before starting")
        # The clock is about to start: collect earlier work's garbage now rather than mid-level, and keep
        # this thread (it takes in every progress message) off the workers' cores while they measure.
        gc.collect()
        own_cpus = _keep_thread_off({job.cpu for job in jobs if job.cpu is not None})
        start_at = time.perf_counter() + _START_MARGIN_S
        for handle in handles:
            handle.start_at = start_at
            handle.send(("start", start_at))

        while len(finished) < len(handles):
            getter = loop.create_task(queue.get())
            waiting: set[asyncio.Task[Any]] = {getter}
            if not cancelled:
                waiting.add(cancel_task)
            done, _ = await asyncio.wait(waiting, return_when="FIRST_COMPLETED")
            if cancel_task in done and not cancelled:
                cancelled = True
                end_at = time.perf_counter()
                for handle in handles:
                    handle.send(("cancel",))
            if getter not in done:
                getter.cancel()
                continue
            index, message = getter.result()
            kind = message[0]
            if kind == "progress":
                progress: WorkerProgress = message[1]
                new_records: list[RequestRecord] = message[2]
                latest[index] = progress
                records.extend(new_records)
                succeeded = sum(1 for record in new_records if record.success)
                completed += succeeded
                failed += len(new_records) - succeeded
                on_progress(
                    LevelProgress(
                        t=progress.t,
                        sent=sum(p.sent for p in latest.values()),
                        completed=completed,
                        failed=failed,
                        in_flight=sum(p.in_flight for p in latest.values()),
                        new_tokens=progress.tokens,
                        new_records=new_records,
                    )
                )
            elif kind == "done":
                stats[index] = message[1]
                finished.add(index)
            elif kind == "fatal":
                error = error or f"{message[1]}; finished requests were kept"
            elif kind == "eof" and index not in finished:
                error = error or f"load generator worker {index} died; finished requests were kept"
                finished.add(index)
        if end_at is None:
            end_at = time.perf_counter()
    finally:
        _restore_thread_cpus(own_cpus)
        cancel_task.cancel()
        for handle in handles:
            if handle.index not in finished:
                handle.send(("cancel",))
        await asyncio.gather(*(asyncio.to_thread(handle.stop) for handle in handles))
    records.sort(key=lambda r: r.index)
    return LevelOutcome(
        records=records,
        client=merge_client_stats(list(stats.values())),
        duration_s=max(0.0, end_at - start_at),
        start_at=start_at,
        cancelled=cancelled,
        error=error,
    )
