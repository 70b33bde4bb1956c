"""The baseline client for ``bench_loadgen``: vLLM's benchmark client style, in its own pinned process.

What it does per request is what ``vllm bench serve`` does (reference/bench_anchors.md §1f): one
shared ``aiohttp.ClientSession`` with ``TCPConnector(limit=0)``, ``session.post(json=payload)``,
``async for line in resp.content`` (aiohttp's line iterator), ``strip()``, remove the ``data: ``
prefix, skip ``[DONE]``, take one timestamp per parsed line, then ``json.loads``, read
``choices[0].delta.content`` and append to the generated text. The timestamp is ``time.time_ns()``
instead of ``perf_counter()`` (same cost) so it can be compared with the fake server's ``emit_ns``;
where vLLM appends one inter-token latency per chunk, this appends the (emit_ns, arrival) pair.

The process runs on uvloop, pinned to one core, closed loop: ``concurrency`` lanes each send
requests back to back. It first opens the pool with one tiny request per lane (the load
generator pre-opens its connections too), reports ``ready``, waits for ``start``, and measures
its own CPU (``getrusage``) and wall time from ``start`` until the last lane is done.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import multiprocessing as mp
import os
import resource
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

from pydantic import BaseModel, Field

from backends.errors import ServeDeckError

_READY_TIMEOUT_S = 120.0
_RUN_TIMEOUT_S = 600.0
_time_ns = time.time_ns


class BaselineError(ServeDeckError):
    """The baseline client process failed to get ready or to finish."""


class BaselineJob(BaseModel):
    url: str = Field(description="full URL of the chat completions endpoint")
    payload: dict[str, Any] = Field(description="the JSON body of every measured request")
    warmup_payload: dict[str, Any] = Field(description="a tiny request sent once per lane to open the pool")
    requests: int = Field(ge=1)
    concurrency: int = Field(ge=1)
    cpu: int | None = None


class BaselineRequest(BaseModel):
    sent_ns: int = Field(description="time_ns() right before session.post, as vLLM takes its start time")
    status: int | None = None
    error: str | None = None
    req_ns: int | None = Field(default=None, description="server: when it parsed the request (first chunk)")
    emit_ns: list[int] = Field(default_factory=list, description="server emit_ns of every chunk with choices")
    arrival_ns: list[int] = Field(default_factory=list, description="client time_ns per parsed chunk")
    output_tokens: int | None = None
    text_chars: int = 0


class BaselineResult(BaseModel):
    cpu_seconds: float
    duration_s: float
    runqueue_wait_s: float | None = Field(
        default=None, description="time this process was runnable but waiting for a CPU (host contention)"
    )
    requests: list[BaselineRequest]


def runqueue_wait_s(pid: int | str = "self") -> float | None:
    """Seconds the task has spent runnable but not running (/proc/PID/schedstat), if the kernel tells."""
    try:
        with open(f"/proc/{pid}/schedstat") as f:
            return int(f.read().split()[1]) / 1e9
    except (OSError, ValueError, IndexError):
        return None


def baseline_cpu() -> int | None:
    """The core the load generator would use: the last one, when there is more than one."""
    try:
        available = sorted(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - non-Linux
        return None
    return available[-1] if len(available) > 1 else None


async def _one_request(session: Any, url: str, payload: dict[str, Any]) -> BaselineRequest:
    record = BaselineRequest(sent_ns=_time_ns())
    emits: list[int] = []
    arrivals: list[int] = []
    generated_text = ""
    first = True
    try:
        async with session.post(url=url, json=payload) as response:
            record.status = response.status
            if response.status != 200:
                record.error = f"HTTP {response.status}"
                return record
            async for chunk_bytes in response.content:
                chunk_bytes = chunk_bytes.strip()
                if not chunk_bytes:
                    continue
                chunk = chunk_bytes.decode("utf-8").removeprefix("data: ")
                if chunk != "[DONE]":
                    timestamp = _time_ns()
                    data = json.loads(chunk)
                    if choices := data.get("choices"):
                        content = choices[0]["delta"].get("content")
                        if first:
                            first = False
                            record.req_ns = data.get("req_ns")
                        emits.append(data["emit_ns"])
                        arrivals.append(timestamp)
                        generated_text += content or ""
                    elif usage := data.get("usage"):
                        record.output_tokens = usage.get("completion_tokens")
    except Exception as exc:  # one failed request must not end the run; vLLM records it the same way
        record.error = f"{exc.__class__.__name__}: {exc}"
    record.emit_ns = emits
    record.arrival_ns = arrivals
    record.text_chars = len(generated_text)
    return record


async def _run(job: BaselineJob, conn: Connection) -> None:
    import aiohttp

    loop = asyncio.get_running_loop()
    connector = aiohttp.TCPConnector(limit=0, limit_per_host=0, keepalive_timeout=60, force_close=False)
    timeout = aiohttp.ClientTimeout(total=6 * 60 * 60)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        warmups = await asyncio.gather(
            *(_one_request(session, job.url, job.warmup_payload) for _ in range(job.concurrency))
        )
        failed = [w for w in warmups if w.error is not None]
        if failed:
            raise BaselineError(f"the baseline client's warm-up requests failed: {failed[0].error}")
        conn.send(("ready",))
        message = await loop.run_in_executor(None, conn.recv)
        if message[0] != "start":
            return

        remaining = iter(range(job.requests))
        records: list[BaselineRequest] = []

        async def lane() -> None:
            for _ in remaining:
                records.append(await _one_request(session, job.url, job.payload))

        usage_before = resource.getrusage(resource.RUSAGE_SELF)
        wait_before = runqueue_wait_s()
        wall_before = time.perf_counter()
        await asyncio.gather(*(lane() for _ in range(min(job.concurrency, job.requests))))
        wall = time.perf_counter() - wall_before
        wait_after = runqueue_wait_s()
        usage_after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (usage_after.ru_utime - usage_before.ru_utime) + (usage_after.ru_stime - usage_before.ru_stime)
    waited = None if wait_before is None or wait_after is None else wait_after - wait_before
    result = BaselineResult(cpu_seconds=cpu, duration_s=wall, runqueue_wait_s=waited, requests=records)
    conn.send(("done", result))


def baseline_main(job: BaselineJob, conn: Connection) -> None:
    """Entry point of the baseline process (multiprocessing spawn target)."""
    if job.cpu is not None:
        with contextlib.suppress(OSError):
            os.sched_setaffinity(0, {job.cpu})
    import uvloop

    loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        loop.run_until_complete(_run(job, conn))
    except Exception as exc:  # report to the parent, which raises one clear error
        with contextlib.suppress(OSError, ValueError):
            conn.send(("fatal", f"{exc.__class__.__name__}: {exc}"))
    finally:
        loop.close()
        conn.close()


def run_baseline(job: BaselineJob, before_start: Callable[[], None]) -> BaselineResult:
    """Run one closed-loop level in a spawned process; ``before_start`` runs once the pool is open."""
    ctx = mp.get_context("spawn")
    parent_end, child_end = ctx.Pipe(duplex=True)
    process = ctx.Process(target=baseline_main, args=(job, child_end), name="baseline-aiohttp", daemon=True)
    process.start()
    child_end.close()
    try:
        ready = _receive(parent_end, _READY_TIMEOUT_S, "open its connections")
        if ready[0] != "ready":
            raise BaselineError(f"the baseline client failed before starting: {ready[-1]}")
        before_start()
        parent_end.send(("start",))
        done = _receive(parent_end, _RUN_TIMEOUT_S, "finish its requests")
        if done[0] != "done":
            raise BaselineError(f"the baseline client failed: {done[-1]}")
        result: BaselineResult = done[1]
        return result
    finally:
        with contextlib.suppress(OSError):
            parent_end.send(("cancel",))
        parent_end.close()
        process.join(timeout=10)
        if process.is_alive():
            process.kill()
            process.join(timeout=5)


def _receive(conn: Connection, timeout_s: float, what: str) -> tuple[Any, ...]:
    if not conn.poll(timeout_s):
        raise BaselineError(f"the baseline client did not {what} within {timeout_s:.0f} s; is the server up?")
    try:
        message: tuple[Any, ...] = conn.recv()
    except EOFError:
        raise BaselineError(f"the baseline client process died before it could {what}") from None
    return message
