"""The real `bench-worker` entry (what each pod runs) as subprocesses against the fake SSE server,
its stdout lines decoded and merged like the driver does."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from backends.bench.metrics import compute_metrics
from backends.bench.models import (
    Axis,
    LoadLevel,
    RequestRecord,
    SampledConversation,
    SampledRequest,
    SampledTurn,
)
from backends.kube_bench.bundle import CONVERSATIONS_BLOB, DATASET_BLOB, pack_parts, part_key
from backends.kube_bench.codec import PodFatal, PodReady, PodStart, PodSummary, decode
from backends.kube_bench.merge import PodOutcome, merge_pods
from backends.kube_bench.plan import (
    PLAN_ENV,
    SessionSettings,
    WorkerPlan,
    encode_conversations,
    encode_dataset,
)
from backends.kube_bench.shares import all_shares, pod_share
from tests.fakes.sse_server import FakeSSEServer

pytestmark = pytest.mark.timeout(120)

REPO_ROOT = Path(__file__).resolve().parents[2]
WORKER = [sys.executable, "-m", "tui.cli.bench_worker"]


@pytest.fixture(scope="module")
def server() -> Iterator[FakeSSEServer]:
    with FakeSSEServer(mode="tick") as srv:
        yield srv


def _dataset(count: int) -> list[SampledRequest]:
    return [
        SampledRequest(prompt=f"question {i}: " + "word " * i, prompt_len=4 + i, expected_output_len=6)
        for i in range(count)
    ]


def _bundle(tmp_path: Path, dataset: list[SampledRequest]) -> Path:
    folder = tmp_path / "bundle"
    folder.mkdir()
    # Small parts: the worker must join several, as from several ConfigMaps.
    for configmap in pack_parts({DATASET_BLOB: encode_dataset(dataset)}, part_bytes=64):
        for key, data in configmap.items():
            (folder / key).write_bytes(data)
    assert (folder / part_key(DATASET_BLOB, 1)).exists()
    return folder


def _plan(url: str, level: LoadLevel, pods: int, num_requests: int, start_in_s: float = 1.5) -> WorkerPlan:
    return WorkerPlan(
        run_id="test",
        level_index=0,
        level=level,
        pods=pods,
        num_requests=num_requests,
        seed=3,
        base_url=url,
        model="fake-model",
        start_at_epoch=time.time() + start_in_s,
        request_timeout_s=30.0,
        idle_timeout_s=10.0,
    )


def _start(
    plan: WorkerPlan, bundle: Path, index: int, extra: list[str] | None = None
) -> subprocess.Popen[str]:
    env = {**os.environ, PLAN_ENV: plan.model_dump_json(), "JOB_COMPLETION_INDEX": str(index)}
    return subprocess.Popen(
        [*WORKER, "--bundle", str(bundle), *(extra or [])],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _outcome(index: int, expected: int, stdout: str) -> PodOutcome:
    outcome = PodOutcome(pod_index=index, expected=expected)
    for line in stdout.splitlines():
        message = decode(line)
        if isinstance(message, RequestRecord):
            outcome.records.append(message)
        elif isinstance(message, PodReady):
            outcome.ready = message
        elif isinstance(message, PodStart):
            outcome.start = message
        elif isinstance(message, PodSummary):
            outcome.summary = message
        elif isinstance(message, PodFatal):
            outcome.failure = message.message
    return outcome


def test_two_worker_pods_split_a_closed_loop_level_and_merge_exactly(
    server: FakeSSEServer, tmp_path: Path
) -> None:
    dataset = _dataset(14)
    bundle = _bundle(tmp_path, dataset)
    level = LoadLevel(axis=Axis.CONCURRENCY, value=5)
    # Room for two interpreters to start on a busy machine before the shared start.
    plan = _plan(f"http://127.0.0.1:{server.port}", level, pods=2, num_requests=len(dataset), start_in_s=6.0)
    processes = [_start(plan, bundle, index) for index in range(2)]
    outputs = [process.communicate(timeout=60) for process in processes]
    assert [process.returncode for process in processes] == [0, 0], [err for _, err in outputs]

    shares = all_shares(level, len(dataset), 2, plan.seed)
    outcomes = [_outcome(k, len(shares[k].indices), out) for k, (out, _) in enumerate(outputs)]
    for outcome, share in zip(outcomes, shares, strict=True):
        assert outcome.ready is not None and outcome.ready.connections == share.concurrency
        assert outcome.start is not None and outcome.start.late_s == 0.0
        assert outcome.start.zero_epoch == plan.start_at_epoch  # both pods share one time zero
        assert outcome.summary is not None and outcome.summary.records == len(share.indices)
        assert sorted(r.index for r in outcome.records) == share.indices
        assert outcome.failure is None

    merged = merge_pods(outcomes)
    assert [r.index for r in merged.records] == list(range(14))
    assert all(r.success and r.output_tokens == 6 for r in merged.records)
    assert [r.prompt_len for r in merged.records] == [s.prompt_len for s in dataset]
    metrics = compute_metrics(merged.records, merged.duration_s, goodput_slos_ms=None, percentiles=[99])
    assert metrics.completed == 14 and metrics.failed == 0
    assert metrics.max_concurrent_requests <= 5
    assert merged.problems == []


def test_an_open_loop_pod_sends_its_share_on_the_seeded_schedule(
    server: FakeSSEServer, tmp_path: Path
) -> None:
    dataset = _dataset(9)
    level = LoadLevel(axis=Axis.REQUEST_RATE, value=40.0)
    plan = _plan(f"http://127.0.0.1:{server.port}", level, pods=3, num_requests=len(dataset), start_in_s=0.5)
    process = _start(plan, _bundle(tmp_path, dataset), 1)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 0, err
    outcome = _outcome(1, 3, out)
    share = pod_share(level, len(dataset), 3, 1, plan.seed)
    records = sorted(outcome.records, key=lambda r: r.index)
    assert [r.index for r in records] == share.indices == [1, 4, 7]
    assert [r.queued_at for r in records] == share.arrivals
    # Sent at its arrival time (uvloop's timers have millisecond resolution).
    assert all(r.sent_at is not None and r.sent_at >= r.queued_at - 0.002 for r in records), [
        (r.queued_at, r.sent_at) for r in records
    ]


def test_an_unreachable_target_is_a_fatal_line_and_a_failed_exit(tmp_path: Path) -> None:
    with socket_on_closed_port() as port:
        dataset = _dataset(4)
        plan = _plan(
            f"http://127.0.0.1:{port}", LoadLevel(axis=Axis.CONCURRENCY, value=2), 1, 4, start_in_s=0.2
        )
        process = _start(plan, _bundle(tmp_path, dataset), 0)
        out, _ = process.communicate(timeout=60)
    assert process.returncode == 1
    outcome = _outcome(0, 4, out)
    assert outcome.failure is not None and outcome.failure.startswith(f"cannot connect to 127.0.0.1:{port}")
    assert outcome.summary is None


def test_without_a_plan_the_worker_says_where_it_runs(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != PLAN_ENV}
    done = subprocess.run(
        [*WORKER, "--index", "0"], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"servedeck: error: no bench plan: set {PLAN_ENV} or pass --plan FILE (this command runs inside the "
        "pods that `servedeck bench --in-cluster` starts)"
    ]
    fatal = decode(done.stdout.strip())
    assert isinstance(fatal, PodFatal) and fatal.message.startswith("no bench plan")


def test_a_bundle_of_another_run_is_refused(server: FakeSSEServer, tmp_path: Path) -> None:
    plan = _plan(f"http://127.0.0.1:{server.port}", LoadLevel(axis=Axis.CONCURRENCY, value=2), 1, 10)
    process = _start(plan, _bundle(tmp_path, _dataset(4)), 0)
    out, _ = process.communicate(timeout=60)
    assert process.returncode == 2
    assert "the bundle holds 4 prompts but the plan expects 10" in (_outcome(0, 10, out).failure or "")


def test_sigterm_before_the_start_still_ends_with_a_summary(server: FakeSSEServer, tmp_path: Path) -> None:
    dataset = _dataset(4)
    plan = _plan(
        f"http://127.0.0.1:{server.port}", LoadLevel(axis=Axis.CONCURRENCY, value=2), 1, 4, start_in_s=60
    )
    process = _start(plan, _bundle(tmp_path, dataset), 0)
    assert process.stdout is not None
    first = process.stdout.readline()
    assert isinstance(decode(first), PodReady)
    process.send_signal(signal.SIGTERM)
    out, _ = process.communicate(timeout=30)
    assert process.returncode == 0
    outcome = _outcome(0, 4, first + out)
    assert outcome.summary is not None and outcome.summary.cancelled and outcome.summary.records == 0


class socket_on_closed_port:
    """A port nothing listens on (bound, then closed)."""

    def __enter__(self) -> int:
        import socket

        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.port = int(sock.getsockname()[1])
        sock.close()
        return self.port

    def __exit__(self, *exc_info: object) -> None:
        return None


def test_bench_worker_registers_as_a_hidden_servedeck_command(tmp_path: Path) -> None:
    import argparse

    from tui.cli import bench_worker

    root = argparse.ArgumentParser(prog="servedeck")
    subparsers = root.add_subparsers(dest="command", metavar="COMMAND")
    bench_worker.add_parser(subparsers)
    args = root.parse_args(
        ["bench-worker", "--index", "2", "--plan", str(tmp_path / "p.json"), "--bundle", "/b"]
    )
    assert args.handler is bench_worker.run_bench_worker
    assert (args.index, args.plan, args.bundle) == (2, tmp_path / "p.json", Path("/b"))
    assert "bench-worker" not in root.format_help()


# --- multi-turn: the pod runs the session loop over the bundle's conversations --------------------------


def _conversations(count: int) -> list[SampledConversation]:
    turn = SampledTurn(user="hello there", answer="hi", user_len=3, answer_len=1, expected_output_len=4)
    return [SampledConversation(turns=[turn, turn]) for _ in range(count)]


def test_a_multi_turn_pod_refuses_a_bundle_without_its_sessions(
    server: FakeSSEServer, tmp_path: Path
) -> None:
    level = LoadLevel(axis=Axis.CONCURRENCY, value=2)
    plan = _plan(f"http://127.0.0.1:{server.port}", level, 1, 5).model_copy(
        update={"multi_turn": SessionSettings()}
    )
    bundle = _bundle(tmp_path, _dataset(5))
    process = _start(plan, bundle, 0)
    out, _ = process.communicate(timeout=60)
    assert process.returncode == 2
    assert "has no conversations parts" in (_outcome(0, 10, out).failure or "")
    (bundle / part_key(CONVERSATIONS_BLOB, 0)).write_bytes(encode_conversations([_conversations(2)]))
    process = _start(plan, bundle, 0)
    out, _ = process.communicate(timeout=60)
    assert process.returncode == 2
    assert "the bundle holds 2 sessions but the plan expects 5" in (_outcome(0, 10, out).failure or "")
