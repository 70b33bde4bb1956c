"""Issue 10, items 6 and 7: each level draws its own prompts (so the prefix cache cannot flatter later
levels), the per-level prefix-cache hit rate is shown and warned about, and client-limited is judged
against what the client's lag distorts, with host contention reported apart."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from rich.console import Console
from textual.app import App, ComposeResult
from textual.coordinate import Coordinate
from textual.widgets import Checkbox, Static

from backends.bench.datasets import sample_requests
from backends.bench.loadgen.selfmon import client_stats, judge_client
from backends.bench.metrics import BenchmarkMetrics, Distribution
from backends.bench.models import Axis, ClientStats
from backends.bench.results import DatasetSpec, LevelResult, PromptSampling, SweepConfig, SweepResult
from backends.bench.sweep import run_sweep
from backends.prometheus import prefix_cache_hit_rate
from backends.target_types import ServerSnapshot, Target
from backends.targets import discover_target
from backends.twin.engine_config import TwinConfig
from backends.twin.process import TwinProcess, start_twin_process
from tests.tui.test_tui_bench import fixed_sweep
from tests.unit.test_datasets import WhitespaceCounter, conversation, file_spec, words, write_json
from tui.cli.bench_display import results_table
from tui.services.bench_config import build_runs, values_from_config
from tui.widgets.bench.form import BenchForm
from tui.widgets.bench.results import SweepResultsPanel

TWIN = TwinConfig.build("gemma-3-27b-it", "h100", 1)


def _env(data_dir: Path) -> dict[str, str]:
    return {**os.environ, "SERVEDECK_DATA_DIR": str(data_dir), "COLUMNS": "200"}


def _cli(args: list[str], data_dir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tui.cli", *args],
        capture_output=True,
        text=True,
        timeout=180,
        env=_env(data_dir),
        stdin=subprocess.DEVNULL,
    )


# --- datasets ------------------------------------------------------------------------------------


def test_each_level_draws_its_own_sharegpt_prompts_and_the_first_is_vllms(tmp_path: Path) -> None:
    records = [conversation(words(6 + i % 5, f"p{i}"), words(6, f"c{i}")) for i in range(60)]
    path = write_json(tmp_path / "sixty.json", records)
    counter = WhitespaceCounter()
    vllm = sample_requests(file_spec(path), 10, counter, seed=4, output_len=None)
    per_level = sample_requests(file_spec(path), 10, counter, seed=4, output_len=None, levels=3)

    assert per_level.sampling is PromptSampling.OWN
    levels = [[r.prompt for r in per_level.for_level(i)] for i in range(3)]
    assert levels[0] == [r.prompt for r in vllm.requests]
    assert all(len(level) == 10 for level in levels)
    assert len({p for level in levels for p in level}) == 30  # disjoint
    assert vllm.sampling is PromptSampling.SAME
    assert vllm.for_level(2) == vllm.requests


def test_a_dataset_too_small_for_disjoint_levels_overlaps_and_says_so(tmp_path: Path) -> None:
    records = [conversation(words(6, f"p{i}"), words(6, f"c{i}")) for i in range(15)]
    path = write_json(tmp_path / "fifteen.json", records)
    sampled = sample_requests(file_spec(path), 10, WhitespaceCounter(), seed=0, output_len=None, levels=2)
    assert sampled.sampling is PromptSampling.OVERLAP
    first = {r.prompt for r in sampled.for_level(0)}
    second = {r.prompt for r in sampled.for_level(1)}
    assert len(first) == len(second) == 10
    assert len(first & second) == 5  # the second level starts where the first ended, wrapping
    assert any("too few for 2 levels of 10 different prompts" in note for note in sampled.notes)


def test_random_prompts_differ_per_level_and_level_one_is_unchanged() -> None:
    spec = DatasetSpec(kind="random", random_input_len=20, random_output_len=4)
    counter = WhitespaceCounter()
    alone = sample_requests(spec, 5, counter, seed=1, output_len=None)
    per_level = sample_requests(spec, 5, counter, seed=1, output_len=None, levels=2)
    assert per_level.for_level(0) == alone.requests
    assert {r.prompt for r in per_level.for_level(0)}.isdisjoint({r.prompt for r in per_level.for_level(1)})


# --- a live twin ---------------------------------------------------------------------------------


@pytest.fixture
def twin() -> Iterator[TwinProcess]:
    with start_twin_process(TWIN, log_interval_s=3600.0) as process:
        yield process


def _twin_sweep(target: Target, *, same_prompts: bool) -> SweepResult:
    config = SweepConfig(
        target=target,
        dataset=DatasetSpec(kind="sharegpt"),
        axis=Axis.CONCURRENCY,
        levels=[4, 4],
        num_prompts=8,
        output_len=4,
        same_prompts=same_prompts,
    )
    return asyncio.run(asyncio.wait_for(run_sweep(config, lambda _: None), timeout=120))


@pytest.mark.timeout(180)
def test_second_level_of_a_live_twin_sweep_is_not_answered_by_the_prefix_cache(twin: TwinProcess) -> None:
    target = asyncio.run(discover_target(twin.base_url))
    fresh = _twin_sweep(target, same_prompts=False)
    rates = [prefix_cache_hit_rate(level.server_snapshots) for level in fresh.levels]
    assert [level.prompt_sampling for level in fresh.levels] == [PromptSampling.OWN] * 2
    assert rates[1] is not None and rates[1] < 0.2, rates  # today's code: ~0.97

    repeated = _twin_sweep(target, same_prompts=True)
    second = repeated.levels[1]
    rate = prefix_cache_hit_rate(second.server_snapshots)
    assert second.prompt_sampling is PromptSampling.SAME
    assert rate is not None and rate > 0.5
    caption = str(results_table(repeated).caption)
    assert "the same 8 at every level (--same-prompts" in caption
    assert "prefix cache answered" not in caption  # sharing was asked for: no warning


@pytest.mark.timeout(240)
def test_cli_bench_shows_prefix_hits_warns_on_overlap_and_writes_sampling(
    twin: TwinProcess, tmp_path: Path
) -> None:
    # 10 conversations for 2 levels of 8: the levels overlap, so the twin's prefix cache answers.
    records = [conversation(words(40, f"p{i}"), words(10, f"c{i}")) for i in range(10)]
    dataset = write_json(tmp_path / "ten.json", records)
    out = tmp_path / "run.json"
    args = ["bench", "--plain", "--no-save", "--target", twin.base_url, "--concurrency", "4,4"]
    args += ["--num-prompts", "8", "--output-len", "4", "--dataset", str(dataset), "--out", str(out)]
    proc = _cli(args, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "prefix hit" in proc.stdout
    assert "shared between levels" in proc.stdout
    assert "prefix cache answered" in proc.stdout  # the table's footnote
    assert "too few for 2 levels of 8 different prompts" in proc.stderr  # the start note
    levels = json.loads(out.read_text())["levels"]
    assert [lvl["servedeck"]["prompt_sampling"] for lvl in levels] == ["overlap", "overlap"]
    assert levels[1]["servedeck"]["server"]["prefix_cache_hit_rate"] > 0.2
    assert levels[1]["servedeck"]["prefix_cache_warning"]

    same = _cli([*args, "--same-prompts"], tmp_path)
    assert same.returncode == 0, same.stderr
    assert "(--same-prompts, vLLM's behaviour)" in same.stdout
    assert "every level sends the same 8 prompts" in same.stderr
    saved = json.loads(out.read_text())
    assert saved["servedeck_sweep"]["config"]["same_prompts"] is True
    assert saved["levels"][1]["servedeck"]["prompt_sampling"] == "same"


def test_plan_draws_prompts_per_level_unless_same_prompts(tmp_path: Path) -> None:
    base = ["plan", "--gpu", "h100", "--concurrency", "8,8", "--num-prompts", "16", "--output-len", "8"]

    def second_level_hit_rate(extra: list[str]) -> float:
        proc = _cli([*base, "--json", *extra], tmp_path)
        assert proc.returncode == 0, proc.stderr
        rate: float = json.loads(proc.stdout)["levels"][1]["twin"]["prefix_cache_hit_rate"]
        return rate

    assert second_level_hit_rate([]) < 0.2
    assert second_level_hit_rate(["--same-prompts"]) > 0.5
    table = _cli([*base, "--same-prompts"], tmp_path)
    assert "Prefix hit %" in table.stdout
    assert "the same 16 at every level (--same-prompts" in table.stdout


# --- client-limited judged against what it distorts ---------------------------------------------


def _metrics(itl_ms: float, ttft_ms: float) -> BenchmarkMetrics:
    metrics = fixed_sweep("twin-1xH100", "r1", 1.0).levels[0].metrics
    return metrics.model_copy(
        update={"completed": 10, "itl": Distribution(median=itl_ms), "ttft": Distribution(median=ttft_ms)}
    )


def test_lag_of_a_busy_host_small_next_to_itl_is_a_note_not_client_limited() -> None:
    # The case: lag p99 2.06 ms > 1 ms while the client used only 1% CPU.
    raw = client_stats([0.0001] * 95 + [0.00206] * 5, cpu_seconds=0.01, wall_seconds=1.0)
    assert not raw.client_limited  # today's code: starred client-limited

    judged = judge_client(raw, _metrics(itl_ms=40.0, ttft_ms=200.0))
    assert not judged.client_limited
    assert judged.note is not None and "busy host" in judged.note and "ITL 40.0 ms" in judged.note

    distorted = judge_client(raw, _metrics(itl_ms=5.0, ttft_ms=50.0))
    assert distorted.client_limited
    assert distorted.reason is not None and "10% of the median ITL 5.0 ms" in distorted.reason
    assert distorted.note is None

    saturated = judge_client(raw.model_copy(update={"cpu_percent": 95.0}), _metrics(40.0, 200.0))
    assert saturated.client_limited and saturated.reason is not None and "CPU 95%" in saturated.reason


def _level_with(
    client: ClientStats, hits: tuple[float, float] | None, sampling: PromptSampling
) -> LevelResult:
    level = fixed_sweep("twin-1xH100", "r1", 1.0).levels[1]
    snapshots = []
    if hits is not None:
        snapshots = [
            ServerSnapshot(t=0.0, prefix_cache_hits_total=0.0, prefix_cache_queries_total=0.0),
            ServerSnapshot(t=1.0, prefix_cache_hits_total=hits[0], prefix_cache_queries_total=hits[1]),
        ]
    return level.model_copy(
        update={"client": client, "server_snapshots": snapshots, "prompt_sampling": sampling}
    )


LIMITED = ClientStats(
    loop_lag_p99_ms=3.0,
    client_limited=True,
    reason="event-loop lag p99 3.00 ms > 10% of the median ITL 4.0 ms",
)
BUSY = ClientStats(loop_lag_p99_ms=2.06, note="busy host: event-loop lag p99 2.06 ms with client CPU 1%")


def test_cli_table_footnotes_say_why_a_level_is_marked() -> None:
    sweep = fixed_sweep("twin-1xH100", "r1", 1.0)
    sweep.levels = [
        _level_with(BUSY, (96.0, 100.0), PromptSampling.OWN),
        _level_with(LIMITED, None, PromptSampling.OWN),
    ]
    console = Console(width=220, record=True)
    console.print(results_table(sweep))
    text = console.export_text()
    assert "96%" in text and "n/a" in text
    assert "busy host: event-loop lag p99 2.06 ms" in text
    assert "client-limited: event-loop lag p99 3.00 ms > 10% of the median ITL" in text
    assert "prefix cache answered 96% of prompt tokens" in text
    assert "each level its own 10" in text


class _Panel(App[None]):
    def compose(self) -> ComposeResult:
        yield SweepResultsPanel()


@pytest.mark.timeout(60)
def test_tui_results_table_shows_hit_rate_and_reasons_in_tooltips_and_notes() -> None:
    async def run() -> None:
        app = _Panel()
        async with app.run_test(size=(160, 45)) as pilot:
            panel = app.query_one(SweepResultsPanel)
            table = panel.table
            warned = _level_with(BUSY, (96.0, 100.0), PromptSampling.OWN).model_copy(update={"index": 0})
            limited = _level_with(LIMITED, None, PromptSampling.OWN)
            for level in (warned, limited):
                table.level_started(0, "twin", level.index, level.level)
                table.level_finished(0, "twin", level, None)
            await pilot.pause()
            columns = [str(column.label) for column in table.columns.values()]
            assert "prefix hit" in columns
            prefix_col = columns.index("prefix hit")
            assert table.get_cell_at(Coordinate(0, prefix_col)) == "96%!"
            assert table.get_cell_at(Coordinate(1, prefix_col)) == "n/a"
            level_tip = table.tooltip_at(Coordinate(1, columns.index("level")))
            assert level_tip is not None and "client-limited: event-loop lag p99 3.00 ms" in level_tip
            prefix_tip = table.tooltip_at(Coordinate(0, prefix_col))
            assert prefix_tip is not None and "prefix cache answered 96%" in prefix_tip
            notes = str(panel.query_one("#results-notes", Static).render())
            assert "busy host" in notes
            assert "client-limited" in notes
            assert "prefix cache answered 96%" in notes
            table.hover_coordinate = Coordinate(1, columns.index("level"))
            await pilot.pause()
            assert table.tooltip == level_tip
            panel.clear()
            await pilot.pause()
            assert not panel.query_one("#results-notes", Static).display

    asyncio.run(run())


class _Form(App[None]):
    def compose(self) -> ComposeResult:
        yield BenchForm()


@pytest.mark.timeout(60)
def test_bench_form_checkbox_asks_for_the_same_prompts_and_round_trips() -> None:
    target = Target(name="t", base_url="http://127.0.0.1:1", model="m")

    async def run() -> None:
        app = _Form()
        async with app.run_test(size=(160, 45)) as pilot:
            form = app.query_one(BenchForm)
            form.set_targets([target], "t")
            default = build_runs(form.values(), [target], lambda _name: None)[0].config
            assert default.same_prompts is False
            box = app.query_one("#bench-same-prompts", Checkbox)
            box.focus()
            await pilot.press("space")
            config = build_runs(form.values(), [target], lambda _name: None)[0].config
            assert config.same_prompts is True
            assert values_from_config(config, [target]).same_prompts is True

    asyncio.run(run())
