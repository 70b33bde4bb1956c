"""Trace replay (Mooncake JSONL, BurstGPT CSV): parsing, one line per bad input, prompts of the traced
lengths from ShareGPT text, and the traced arrival times in the live load generator and in fast-forward."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from backends.bench.datasets import sample_requests, sharegpt_words
from backends.bench.models import Axis
from backends.bench.results import DatasetSpec, RunStatus, SweepConfig
from backends.bench.sweep import run_sweep
from backends.bench.tokenizers import TiktokenCounter
from backends.bench.traces import load_trace
from backends.errors import ConfigError, DatasetError
from backends.target_types import Target, TargetKind
from backends.targets import discover_target
from backends.twin.engine import TwinConfig
from backends.twin.fastforward import run_sweep as fast_forward
from tests.cli_runner import run_main
from tests.fakes.sse_server import FakeSSEServer

pytestmark = pytest.mark.timeout(120)

BURSTGPT_HEADER = "Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type"


def mooncake(path: Path, rows: list[tuple[float, int, int]]) -> Path:
    path.write_text(
        "".join(
            json.dumps({"timestamp": t, "input_length": n, "output_length": m, "hash_ids": [1, 2]}) + "\n"
            for t, n, m in rows
        )
    )
    return path


def burstgpt(path: Path, rows: list[str], header: str = BURSTGPT_HEADER) -> Path:
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


def test_mooncake_times_start_at_the_first_request_and_scale(tmp_path: Path) -> None:
    file = mooncake(tmp_path / "t.jsonl", [(1000, 40, 8), (1500, 60, 4), (3000, 30, 16)])
    trace = load_trace(file, time_scale=0.5)
    assert trace.format == "mooncake"
    assert [r.arrival_s for r in trace.requests] == [0.0, 0.25, 1.0]
    assert [(r.input_len, r.output_len) for r in trace.requests] == [(40, 8), (60, 4), (30, 16)]


def test_burstgpt_reads_seconds_and_leaves_out_failed_requests(tmp_path: Path) -> None:
    file = burstgpt(
        tmp_path / "b.csv",
        ["5,ChatGPT,100,20,120,Conversation log", "6.5,GPT-4,80,0,80,API log", "7,ChatGPT,50,10,60,API log"],
    )
    trace = load_trace(file)
    assert trace.format == "burstgpt"
    assert [(r.arrival_s, r.input_len, r.output_len) for r in trace.requests] == [
        (0.0, 100, 20),
        (2.0, 50, 10),
    ]
    assert trace.notes == ("1 requests of b.csv with 0 request or response tokens (failed) left out",)


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        (
            "unsorted.jsonl",
            '{"timestamp": 10, "input_length": 5, "output_length": 5}\n'
            '{"timestamp": 4, "input_length": 5, "output_length": 5}\n',
            "unsorted.jsonl line 2: timestamp 4 comes before the previous one (10); "
            "the trace must be sorted by time",
        ),
        (
            "negative.jsonl",
            '{"timestamp": -3, "input_length": 5, "output_length": 5}\n',
            "negative.jsonl line 1: negative timestamp -3; trace timestamps must be >= 0",
        ),
        (
            "missing.jsonl",
            '{"timestamp": 0, "input_length": 5}\n',
            "missing.jsonl line 1 has no 'output_length' (Mooncake trace format)",
        ),
        (
            "unsorted.csv",
            f"{BURSTGPT_HEADER}\n9,ChatGPT,5,5,10,API log\n2,ChatGPT,5,5,10,API log\n",
            "unsorted.csv line 3: timestamp 2 comes before the previous one (9); "
            "the trace must be sorted by time",
        ),
        (
            "negative.csv",
            f"{BURSTGPT_HEADER}\n-1,ChatGPT,5,5,10,API log\n",
            "negative.csv line 2: negative timestamp -1; trace timestamps must be >= 0",
        ),
        (
            "columns.csv",
            "Timestamp,Model,Request tokens\n1,ChatGPT,5\n",
            "columns.csv has no 'Response tokens' column (BurstGPT CSV columns: Timestamp, Model, "
            "Request tokens, Response tokens, Total tokens, Log Type); "
            "its header is Timestamp, Model, Request tokens",
        ),
        ("trace.txt", "x", "cannot tell the trace format of trace.txt from its suffix"),
    ],
)
def test_bad_traces_are_one_clear_line(tmp_path: Path, name: str, content: str, message: str) -> None:
    file = tmp_path / name
    file.write_text(content)
    with pytest.raises(DatasetError) as caught:
        load_trace(file)
    assert str(caught.value).startswith(message)
    assert "\n" not in str(caught.value)


def test_prompts_have_the_traced_lengths_in_sharegpt_words(tmp_path: Path) -> None:
    file = mooncake(tmp_path / "t.jsonl", [(0, 120, 7), (250, 37, 3), (900, 400, 12)])
    spec = DatasetSpec(kind="trace", path=str(file), trace_time_scale=2.0)
    counter = TiktokenCounter()
    dataset = sample_requests(spec, 10, counter, 0, None)
    assert [r.arrival_s for r in dataset.requests] == [0.0, 0.5, 1.8]
    assert [r.expected_output_len for r in dataset.requests] == [7, 3, 12]
    assert [r.prompt_len for r in dataset.requests] == [120, 37, 400]
    assert [counter.count(r.prompt) for r in dataset.requests] == [120, 37, 400]
    words = set(sharegpt_words(0))
    for request in dataset.requests:
        assert set(request.prompt.split()) <= words
    assert "the trace has 3 requests, fewer than 10: sends all of them" in dataset.notes
    assert len({r.prompt for r in dataset.requests}) == 3


TWIN = Target(name="twin", base_url="twin://test", model="google/gemma-3-27b-it", kind=TargetKind.TWIN)


def test_fast_forward_releases_each_request_at_its_traced_time(tmp_path: Path) -> None:
    rows = [(i * 37.5, 50 + i, 8) for i in range(40)]
    file = mooncake(tmp_path / "t.jsonl", rows)
    sweep = SweepConfig(
        target=TWIN,
        dataset=DatasetSpec(kind="trace", path=str(file), trace_time_scale=0.5),
        axis=Axis.CONCURRENCY,
        levels=[64],
        num_prompts=40,
    )
    result = fast_forward(TwinConfig.build("gemma-3-27b-it", "h100", 1, max_model_len=8192), sweep)
    records = result.levels[0].records
    assert [r.queued_at for r in records] == pytest.approx([t * 1e-3 * 0.5 for t, _, _ in rows])
    assert all(r.sent_at == pytest.approx(r.queued_at) for r in records)  # 64 slots: nothing waits
    # Whole words: a prompt lands within a token or two of its traced length when no word count hits it.
    assert all(abs(r.prompt_len - n) <= 2 for r, (_, n, _) in zip(records, rows, strict=True))


def test_a_trace_refuses_request_rates_it_would_ignore(tmp_path: Path) -> None:
    file = mooncake(tmp_path / "t.jsonl", [(0, 10, 4)])
    sweep = SweepConfig(
        target=TWIN, dataset=DatasetSpec(kind="trace", path=str(file)), axis=Axis.REQUEST_RATE, levels=[5.0]
    )
    with pytest.raises(ConfigError, match=r"^a trace replays its own arrival times, so --request-rate 5"):
        fast_forward(TwinConfig.build("gemma-3-27b-it", "h100", 1, max_model_len=8192), sweep)


@pytest.fixture(scope="module")
def server() -> Iterator[FakeSSEServer]:
    with FakeSSEServer(mode="tick") as srv:
        yield srv


def test_live_sweep_schedules_the_traced_times(tmp_path: Path, server: FakeSSEServer) -> None:
    rows = [(i * 20.0, 30, 4) for i in range(25)]
    file = burstgpt(tmp_path / "b.csv", [f"{t / 1000},ChatGPT,{n},{m},{n + m},API log" for t, n, m in rows])
    target = asyncio.run(discover_target(f"http://127.0.0.1:{server.port}"))
    config = SweepConfig(
        target=target,
        dataset=DatasetSpec(kind="trace", path=str(file)),
        axis=Axis.REQUEST_RATE,
        levels=[float("inf")],
        num_prompts=25,
    )
    result = asyncio.run(asyncio.wait_for(run_sweep(config, lambda _event: None), timeout=60))
    assert result.status is RunStatus.COMPLETE
    records = sorted(result.levels[0].records, key=lambda r: r.index)
    assert [r.queued_at for r in records] == pytest.approx([t / 1000 for t, _, _ in rows])
    assert all(r.success and r.output_tokens == 4 for r in records)


def test_bench_cli_says_a_bad_trace_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], server: FakeSSEServer
) -> None:
    file = mooncake(tmp_path / "bad.jsonl", [(5, 10, 4), (1, 10, 4)])
    code, _, err = run_main(
        capsys, "bench", "--base-url", f"http://127.0.0.1:{server.port}", "--trace", str(file)
    )
    assert code != 0
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "bad.jsonl line 2: timestamp 1 comes before the previous one" in lines[0]
    assert "Traceback" not in err
