"""The advisor and its "verify on the cluster" search in a child process, for the TUI.

Both are CPU-bound Python (the advisor's fast-forward levels, the search's record parsing): in the UI's
process they would hold the interpreter lock the UI thread needs. ``run_in_child`` spawns a process that
runs one job and sends small typed messages back over a pipe: progress (``AdvisorProgress``, one per
shape; ``VerifyLevel``, one per level tried), then exactly one ``JobDone`` or ``JobFailed``. ``cancel``
ends an advice at once (nothing to keep); a search stops its level and returns the levels tried.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import multiprocessing
import threading
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Literal

from pydantic import BaseModel, Field, TypeAdapter

from backends.advisor.advise import DEFAULT_MAX_GPUS, DEFAULT_MAX_REPLICAS, Advice, advise
from backends.bench.models import Axis
from backends.bench.results import DatasetSpec, SweepConfig
from backends.bench.search_record import SearchLevel
from backends.bench.slo import parse_slo
from backends.bench.slo_search import DEFAULT_MAX_LEVELS, SearchResult
from backends.errors import ConfigError, ServeDeckError
from backends.target_types import Target, TargetKind
from manifests.gpus import GpuType
from manifests.model_profiles import ModelProfile

DEFAULT_ADVISOR_PROMPTS = 500
POLL_S = 0.2


class AdviseJob(BaseModel):
    job: Literal["advise"] = "advise"
    model: str | ModelProfile
    rate: float
    slo: str
    gpus: list[GpuType] | None = None
    max_gpus: int = DEFAULT_MAX_GPUS
    max_replicas: int = DEFAULT_MAX_REPLICAS
    spot: bool = False
    num_prompts: int = DEFAULT_ADVISOR_PROMPTS
    output_len: int | None = None
    dataset: DatasetSpec = Field(default_factory=DatasetSpec)
    seed: int = 0
    calibration: str | None = Field(default=None, description="a saved twin calibration profile's name")
    turns: int = Field(default=1, description="user turns per conversation; above 1 the rate is sessions/s")
    think_time_s: float = Field(default=0.0, description="multi-turn: seconds between a session's turns")


class VerifyJob(BaseModel):
    """An SLO search of ``base`` (its target, prompts) from the advisor's prediction ``start``."""

    job: Literal["verify"] = "verify"
    base: SweepConfig
    slo: str
    axis: Axis = Axis.REQUEST_RATE
    start: float | None = None
    start_source: str = "probe"
    max_levels: int = DEFAULT_MAX_LEVELS


class AdvisorProgress(BaseModel):
    kind: Literal["progress"] = "progress"
    done: int
    total: int
    label: str


class VerifyLevel(BaseModel):
    kind: Literal["level"] = "level"
    level: SearchLevel


class JobDone(BaseModel):
    kind: Literal["done"] = "done"
    advice: Advice | None = None
    notes: list[str] = Field(default_factory=list)
    search: SearchResult | None = None


class JobFailed(BaseModel):
    kind: Literal["failed"] = "failed"
    message: str


Job = AdviseJob | VerifyJob
HostMessage = AdvisorProgress | VerifyLevel | JobDone | JobFailed
_MESSAGE: TypeAdapter[HostMessage] = TypeAdapter(HostMessage)


def check_job(job: Job) -> None:
    """Bad input as one line before a process is started."""
    parse_slo(job.slo)
    if isinstance(job, AdviseJob):
        if not math.isfinite(job.rate) or job.rate <= 0:
            raise ConfigError(f"rate must be a number of requests/s > 0, not {job.rate:g}")
        if job.num_prompts < 1:
            raise ConfigError(f"prompts must be at least 1, not {job.num_prompts}")
        if job.max_gpus < 1:
            raise ConfigError(f"max GPUs must be at least 1, not {job.max_gpus}")
        if job.turns < 1:
            raise ConfigError(f"turns must be at least 1 (1 = single-turn), not {job.turns}")
        if not math.isfinite(job.think_time_s) or job.think_time_s < 0:
            raise ConfigError(f"think time must be 0 s or more, not {job.think_time_s:g}")


def run_advise(job: AdviseJob, progress: Callable[[int, int, str], None] | None = None) -> JobDone:
    from backends.advisor.knee import Sessions
    from backends.twin.fastforward import sample_dataset
    from manifests.catalog import default_catalog

    spec = job.dataset
    if job.turns > 1:
        # as `plan --advise --turns N`: ShareGPT conversations replayed turn by turn, one session each
        spec = DatasetSpec(kind="multi_turn", path=None, turns=job.turns, think_time_s=job.think_time_s)
    sweep = SweepConfig(
        target=Target(name="twin advisor", base_url="twin://advisor", model="advisor", kind=TargetKind.TWIN),
        dataset=spec,
        axis=Axis.REQUEST_RATE,
        levels=[1.0],
        num_prompts=job.num_prompts,
        output_len=job.output_len,
        seed=job.seed,
        same_prompts=True,
    )
    dataset = sample_dataset(sweep)
    conversations = dataset.conversations_for_level(0)
    sessions = (
        Sessions(conversations=tuple(conversations), spec=sweep.dataset)
        if conversations is not None
        else None
    )
    gpus, engine_args = job.gpus, None
    if job.calibration is not None:
        from backends.twin.calibration import calibrated_gpus, load_profile

        profile = load_profile(job.calibration)
        gpus, engine_args = calibrated_gpus(profile, gpus), {"constants": profile.constants}
    advice = advise(
        job.model,
        dataset.requests,
        rate=job.rate,
        slo=parse_slo(job.slo),
        catalog=default_catalog(),
        gpus=gpus,
        max_gpus=job.max_gpus,
        max_replicas=job.max_replicas,
        spot=job.spot,
        seed=job.seed,
        engine_args=engine_args,
        progress=progress,
        sessions=sessions,
    )
    return JobDone(advice=advice, notes=dataset.notes)


async def _run_verify(job: VerifyJob, conn: Connection, cancel: asyncio.Event) -> JobDone:
    from backends.bench.slo_search import find_max

    result = await find_max(
        job.base,
        parse_slo(job.slo),
        axis=job.axis,
        start=job.start,
        start_source=job.start_source,
        max_levels=job.max_levels,
        cancel=cancel,
        on_level=lambda level: _send(conn, VerifyLevel(level=level)),
    )
    return JobDone(search=result)


def _send(conn: Connection, message: HostMessage) -> None:
    # pickled, not JSON: a knee's saturation trial is at rate inf, which JSON cannot carry
    conn.send(message)


def _child_main(conn: Connection, job: Job) -> None:
    def progress(done: int, total: int, label: str) -> None:
        _send(conn, AdvisorProgress(done=done, total=total, label=label))

    try:
        if isinstance(job, AdviseJob):
            done = run_advise(job, progress)
        else:
            done = asyncio.run(_verify_with_cancel(job, conn))
        _send(conn, done)
    except ServeDeckError as err:
        _send(conn, JobFailed(message=str(err)))
    except Exception as err:  # a bug: one line to the UI, not a silent dead child
        _send(conn, JobFailed(message=f"{job.job} failed unexpectedly ({type(err).__name__}: {err})"))
    finally:
        conn.close()


async def _verify_with_cancel(job: VerifyJob, conn: Connection) -> JobDone:
    cancel = asyncio.Event()
    loop = asyncio.get_running_loop()

    def listen() -> None:
        with contextlib.suppress(EOFError, OSError):
            conn.recv_bytes()  # anything from the parent, or the parent gone, cancels
        loop.call_soon_threadsafe(cancel.set)

    threading.Thread(target=listen, daemon=True, name="verify-cancel").start()
    return await _run_verify(job, conn, cancel)


def run_in_child(
    job: Job, on_message: Callable[[HostMessage], None], cancel: threading.Event | None = None
) -> JobDone:
    """Run ``job`` in a spawned process; every progress message goes to ``on_message`` (on this thread).
    Returns the ``JobDone``; a ``JobFailed`` becomes its ServeDeckError line (ConfigError)."""
    check_job(job)
    cancel = cancel or threading.Event()
    context = multiprocessing.get_context("spawn")
    parent, child = context.Pipe()
    # not daemonic: the search starts load-generator processes, which a daemonic process may not
    process = context.Process(
        target=_child_main, args=(child, job), daemon=False, name=f"servedeck-{job.job}"
    )
    process.start()
    child.close()
    cancel_sent = False
    try:
        while True:
            if cancel.is_set() and not cancel_sent:
                cancel_sent = True
                if isinstance(job, AdviseJob):
                    raise ConfigError("the advisor was cancelled")
                with contextlib.suppress(OSError):
                    parent.send_bytes(b"cancel")
            if not parent.poll(POLL_S):
                if not process.is_alive() and not parent.poll(0):
                    raise ConfigError(
                        f"the {job.job} process ended without an answer (exit {process.exitcode})"
                    )
                continue
            try:
                message = _MESSAGE.validate_python(parent.recv())
            except EOFError:
                raise ConfigError(
                    f"the {job.job} process ended without an answer (exit {process.exitcode})"
                ) from None
            if isinstance(message, JobDone):
                return message
            if isinstance(message, JobFailed):
                raise ConfigError(message.message)
            on_message(message)
    finally:
        parent.close()
        process.join(timeout=2.0)
        if process.is_alive():
            process.kill()
            process.join(timeout=2.0)
