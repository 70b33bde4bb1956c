"""Inside a load-generator pod: run this pod's share of one level and print it as protocol lines.

The pod renders its requests, opens its connections, prints ``ready``, sleeps until the shared start
(``WorkerPlan.start_at_epoch``, a wall-clock instant), prints ``start`` with its own time zero as an
epoch, then streams every finished request as a ``record`` line while it runs, and ends with
``summary``. A pod that is ready only after the shared start begins at once and says how late it was.
SIGTERM (the Job deleted, ctrl-c at the driver) cancels what is in flight and still prints the summary.

This runs the same ``LevelWorker`` as a local run, in this process on uvloop: one pod is one
load-generator process. Multi-turn: the pod builds the local run's session jobs with one worker per pod
(``session_jobs``: sessions dealt round-robin, one seeded session-arrival schedule and think times) and
runs its own, so the pods' sessions are disjoint and the level is the one a local run would send.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Callable
from typing import Any

from backends.bench.loadgen.requests import RequestOptions, parse_endpoint, render_body, render_request
from backends.bench.loadgen.runner import LevelPlan, session_jobs
from backends.bench.loadgen.worker import LevelWorker, WorkerJob, WorkerProgress, job_records
from backends.bench.models import ClientStats, SampledConversation, SampledRequest
from backends.bench.traces import trace_arrivals
from backends.errors import ConfigError
from backends.kube_bench.codec import (
    PodFatal,
    PodMessage,
    PodProgress,
    PodReady,
    PodStart,
    PodSummary,
    encode,
)
from backends.kube_bench.plan import WorkerPlan
from backends.kube_bench.shares import PodShare, pod_share
from backends.redaction import remember_secret

PROGRESS_INTERVAL_S = 1.0

Write = Callable[[str], None]


def _options(plan: WorkerPlan) -> RequestOptions:
    # Remembered: a server that quotes the key back in an error gets it masked in the pod's records.
    api_key = remember_secret(os.environ.get(plan.api_key_env)) if plan.api_key_env else None
    return RequestOptions(
        model=plan.model,
        endpoint=plan.endpoint,
        temperature=plan.temperature,
        ignore_eos=plan.ignore_eos,
        continuous_usage=plan.continuous_usage,
        api_key=api_key,
    )


def build_session_job(
    plan: WorkerPlan, pod_index: int, conversations: list[list[SampledConversation]]
) -> WorkerJob:
    """Multi-turn: this pod's sessions of the level, as the local run's worker ``pod_index`` of ``pods``."""
    settings = plan.multi_turn
    assert settings is not None
    if not conversations:
        raise ConfigError("the bundle holds no conversations but the plan is multi-turn")
    sessions = conversations[min(plan.level_index, len(conversations) - 1)]
    if len(sessions) != plan.num_requests:
        raise ConfigError(
            f"the bundle holds {len(sessions)} sessions but the plan expects {plan.num_requests}; "
            "the ConfigMaps do not belong to this run"
        )
    level_plan = LevelPlan(
        level=plan.level,
        requests=[],
        prompt_lens=[],
        output_lens=[],
        seed=plan.seed,
        workers=plan.pods,
        request_timeout_s=plan.request_timeout_s,
        idle_timeout_s=plan.idle_timeout_s,
        conversations=sessions,
        options=_options(plan),
        dataset_answers=settings.dataset_answers,
        think_time_s=settings.think_time_s,
        think_time_dist=settings.think_time_dist,
    )
    jobs = session_jobs(level_plan, parse_endpoint(plan.base_url))
    if pod_index >= len(jobs):
        raise ConfigError(f"pod index {pod_index} has no sessions: the level has {len(sessions)}")
    return jobs[pod_index].model_copy(
        update={"worker_index": pod_index, "cpu": None, "connect_timeout_s": plan.connect_timeout_s}
    )


def build_worker_job(
    plan: WorkerPlan, pod_index: int, dataset: list[SampledRequest]
) -> tuple[WorkerJob, PodShare]:
    if len(dataset) != plan.num_requests:
        raise ConfigError(
            f"the bundle holds {len(dataset)} prompts but the plan expects {plan.num_requests}; "
            "the ConfigMaps do not belong to this run"
        )
    share = pod_share(plan.level, plan.num_requests, plan.pods, pod_index, plan.seed, trace_arrivals(dataset))
    endpoint = parse_endpoint(plan.base_url)
    options = _options(plan)
    samples = [dataset[i] for i in share.indices]
    job = WorkerJob(
        worker_index=pod_index,
        endpoint=endpoint,
        requests=[render_request(endpoint, render_body(s, options), options) for s in samples],
        indices=share.indices,
        prompt_lens=[s.prompt_len for s in samples],
        output_lens=[s.expected_output_len for s in samples],
        arrivals=share.arrivals,
        concurrency=share.concurrency,
        preopen=share.preopen,
        request_timeout_s=plan.request_timeout_s,
        idle_timeout_s=plan.idle_timeout_s,
        connect_timeout_s=plan.connect_timeout_s,
    )
    return job, share


class _Printer:
    """Turns the worker's progress messages into record and (throttled) progress lines."""

    def __init__(self, pod_index: int, write: Write) -> None:
        self.pod_index = pod_index
        self.write = write
        self.records = 0
        self.tokens = 0
        self.completed = 0
        self.failed = 0
        self.last_progress = 0.0
        # Set once the job is built and the level's clock is known; progress comes only after that.
        self.job: WorkerJob | None = None
        self.start_at = 0.0

    def send(self, message: PodMessage) -> None:
        self.write(encode(message))

    def __call__(self, message: tuple[Any, ...]) -> None:
        if message[0] != "progress":
            return
        progress: WorkerProgress = message[1]
        assert self.job is not None, "progress before the job was built"
        records = job_records(self.job, self.start_at, progress.finished)
        for record in records:
            self.send(record)
            if record.success:
                self.completed += 1
            else:
                self.failed += 1
        self.records += len(records)
        self.tokens += progress.tokens
        now = time.monotonic()
        if now - self.last_progress >= PROGRESS_INTERVAL_S:
            self.last_progress = now
            self.send(
                PodProgress(
                    pod_index=self.pod_index,
                    t=progress.t,
                    sent=progress.sent,
                    completed=self.completed,
                    failed=self.failed,
                    in_flight=progress.in_flight,
                    tokens=self.tokens,
                )
            )
            self.tokens = 0


def _start_instant(start_at_epoch: float) -> tuple[float, float, float]:
    """(perf_counter at time zero, epoch at time zero, seconds late) for a shared start instant."""
    now_perf = time.perf_counter()
    now_epoch = time.time()
    wait = start_at_epoch - now_epoch
    if wait >= 0:
        return now_perf + wait, start_at_epoch, 0.0
    return now_perf, now_epoch, -wait


async def run_pod(
    plan: WorkerPlan,
    pod_index: int,
    dataset: list[SampledRequest],
    write: Write,
    conversations: list[list[SampledConversation]] | None = None,
) -> int:
    """Run share ``pod_index`` of ``plan``; every line goes to ``write``. Returns the exit status."""
    printer = _Printer(pod_index, write)
    try:
        if plan.multi_turn is not None:
            job = build_session_job(plan, pod_index, conversations or [])
        else:
            job, _ = build_worker_job(plan, pod_index, dataset)
    except ConfigError as err:
        printer.send(PodFatal(pod_index=pod_index, message=str(err)))
        return 2
    printer.job = job
    loop = asyncio.get_running_loop()
    worker = LevelWorker(job, loop, printer)
    terminated = asyncio.Event()

    def on_term() -> None:
        terminated.set()
        worker.cancel()

    for signum in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signum, on_term)
    try:
        await worker.pool.preopen(job.preopen)
    except ConnectionError as err:
        printer.send(PodFatal(pod_index=pod_index, message=str(err)))
        return 1
    printer.send(PodReady(pod_index=pod_index, connections=worker.pool.opened, epoch=time.time()))
    start_perf, zero_epoch, late_s = _start_instant(plan.start_at_epoch)
    printer.send(PodStart(pod_index=pod_index, zero_epoch=zero_epoch, late_s=late_s))
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(terminated.wait(), max(0.0, start_perf - time.perf_counter()))
    if terminated.is_set():
        worker.pool.close()
        printer.send(
            PodSummary(pod_index=pod_index, records=0, duration_s=0.0, client=ClientStats(), cancelled=True)
        )
        return 0
    closed_loop = all(a == 0.0 for a in job.arrivals) and job.concurrency is not None
    printer.start_at = start_perf
    stats = await worker.run(start_perf, closed_loop)
    stats.workers = 1
    printer.send(
        PodSummary(
            pod_index=pod_index,
            records=printer.records,
            duration_s=max(0.0, time.perf_counter() - start_perf),
            client=stats,
            cancelled=terminated.is_set(),
        )
    )
    return 0
