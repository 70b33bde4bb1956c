"""Bench form workloads (issue 13): multi-turn, shared prefix, trace replay and ramp-up picked in the form
compile to the SweepConfig the CLI builds from the same choices (one input grammar), re-run from History
round-trips, bad input is one line, and a multi-turn sweep run from the form reaches the live twin."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

import pytest
from textual.widgets import Checkbox, Input, Select

from backends.bench.models import Axis
from backends.bench.results import SweepConfig
from backends.errors import ConfigError
from backends.target_types import Target
from sessions.store import SessionStore
from tests.tui.test_tui_bench import SIZE, BenchHarness, bench, fill, static_text, wait_until
from tui.cli import bench as bench_cli
from tui.cli.bench_vllm import normalize
from tui.cli.sweep_args import config_from_args
from tui.context import AppContext
from tui.services.bench_config import BenchFormValues, build_runs, values_from_config
from tui.widgets.bench.form import DATASET_ROWS

pytestmark = pytest.mark.anyio
TARGET = Target(name="a", base_url="http://127.0.0.1:1", model="m")


@pytest.fixture
def trace_file(tmp_path: Path) -> Path:
    path = tmp_path / "trace.jsonl"
    rows = [{"timestamp": 100 * i, "input_length": 64, "output_length": 8} for i in range(5)]
    path.write_text("\n".join(json.dumps(row) for row in rows) + "\n")
    return path


def _cli_config(argv: list[str]) -> SweepConfig:
    """The config `servedeck bench` builds from ``argv`` (parsed as the command parses it)."""
    parser = argparse.ArgumentParser(prog="servedeck")
    bench_cli.add_parser(parser.add_subparsers())
    args = parser.parse_args(["bench", "--target", TARGET.base_url, *argv])
    normalize(args)
    args.dataset_extra = bench_cli.vllm_dataset_fields(args)
    return config_from_args(args, TARGET)


def _form_config(**fields: Any) -> SweepConfig:
    values = BenchFormValues(targets=["a"], price_source="none", **fields)
    (run,) = build_runs(values, [TARGET], {}.get)
    return run.config


# Form fields and the CLI flags of the same workload.
SAME_WORKLOADS = [
    (
        {"dataset": "multi_turn", "turns": "3", "think_time": "1.5", "think_exponential": True},
        [
            "--dataset",
            "multi_turn",
            "--turns",
            "3",
            "--think-time",
            "1.5",
            "--think-time-dist",
            "exponential",
        ],
    ),
    (
        {"dataset": "multi_turn", "turns": "2", "dataset_answers": True, "axis": Axis.REQUEST_RATE},
        ["--turns", "2", "--use-dataset-answers", "--request-rate", "1,4,16"],
    ),
    (
        {"dataset": "prefix_repetition", "num_prefixes": "4", "prefix_len": "128", "suffix_len": "384"},
        [
            "--dataset-name",
            "prefix_repetition",
            "--prefix-repetition-num-prefixes",
            "4",
            "--prefix-repetition-prefix-len",
            "128",
            "--prefix-repetition-suffix-len",
            "384",
        ],
    ),
    (
        {
            "axis": Axis.REQUEST_RATE,
            "ramp_up": "linear",
            "ramp_start_rps": "2",
            "ramp_end_rps": "20",
        },
        ["--ramp-up-strategy", "linear", "--ramp-up-start-rps", "2", "--ramp-up-end-rps", "20"],
    ),
]


@pytest.mark.parametrize(("fields", "argv"), SAME_WORKLOADS)
def test_the_form_builds_the_config_the_cli_builds(fields: dict[str, Any], argv: list[str]) -> None:
    common = ["--num-prompts", "100", "--output-len", "256"]
    if "--request-rate" not in argv and "--ramp-up-strategy" not in argv:
        common += ["--concurrency", "1,4,16"]
    cli = _cli_config([*argv, *common])
    form = _form_config(**fields)
    assert form.dataset == cli.dataset
    assert (form.axis, form.levels) == (cli.axis, cli.levels)
    assert (form.ramp_up_strategy, form.ramp_up_start_rps, form.ramp_up_end_rps) == (
        cli.ramp_up_strategy,
        cli.ramp_up_start_rps,
        cli.ramp_up_end_rps,
    )


def test_a_trace_in_the_form_is_the_clis_trace(trace_file: Path) -> None:
    cli = _cli_config(
        ["--trace", str(trace_file), "--trace-time-scale", "0.5", "--concurrency", "4", "--output-len", "256"]
    )
    form = _form_config(dataset="trace", trace_path=str(trace_file), trace_time_scale="0.5", levels="4")
    assert form.dataset == cli.dataset


@pytest.mark.parametrize(("fields", "_argv"), SAME_WORKLOADS)
def test_rerunning_a_saved_workload_round_trips(fields: dict[str, Any], _argv: list[str]) -> None:
    saved = _form_config(**fields)
    values = values_from_config(saved, [TARGET])
    (run,) = build_runs(values, [TARGET], {}.get, base=saved)
    assert run.config == saved
    assert math.isinf(saved.levels[0]) == bool(fields.get("ramp_up"))


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"dataset": "multi_turn", "turns": "0"}, "turns must be at least 1"),
        ({"dataset": "multi_turn", "think_time": "-1"}, "think time must be a finite number >= 0"),
        (
            {"dataset": "prefix_repetition", "prefix_len": "many"},
            "prefix tokens: 'many' is not a whole number",
        ),
        ({"dataset": "trace", "trace_path": ""}, "trace file: type the path"),
        ({"dataset": "trace", "trace_path": "/no/such.jsonl"}, "trace file: no such file"),
        ({"dataset": "trace", "trace_path": "{trace}", "trace_time_scale": "0"}, "time scale must be"),
        (
            {"dataset": "trace", "trace_path": "{trace}", "axis": Axis.REQUEST_RATE, "levels": "5"},
            "a trace replays its own arrival times",
        ),
        (
            {"axis": Axis.REQUEST_RATE, "ramp_up": "linear", "ramp_start_rps": "9", "ramp_end_rps": "3"},
            "ramp-up start rate 9 must not exceed the end rate 3",
        ),
        ({"ramp_up": "linear", "ramp_start_rps": "1", "ramp_end_rps": "3"}, "pick the request rate axis"),
    ],
)
def test_bad_workload_fields_are_one_line(fields: dict[str, Any], expected: str, trace_file: Path) -> None:
    fields = {k: str(trace_file) if v == "{trace}" else v for k, v in fields.items()}
    with pytest.raises(ConfigError, match=expected) as err:
        _form_config(**fields)
    assert "\n" not in str(err.value)


async def test_each_workload_shows_its_own_fields_and_ramp_up_replaces_the_levels(tmp_path: Path) -> None:
    app = BenchHarness(AppContext(data_dir=tmp_path, targets=[TARGET], selected_target="a"))
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        screen = bench(app)
        every_row = {row for rows in DATASET_ROWS.values() for row in rows}
        for kind, rows in DATASET_ROWS.items():
            screen.query_one("#bench-dataset", Select).value = kind
            await pilot.pause()
            shown = {row for row in every_row if screen.query_one(f"#{row}").display}
            assert shown == set(rows), kind
        assert not screen.query_one("#bench-row-ramp").display  # concurrency axis: no ramp
        screen.query_one("#bench-dataset", Select).value = "sharegpt"
        screen.query_one("#bench-axis", Select).value = Axis.REQUEST_RATE
        await pilot.pause()
        assert screen.query_one("#bench-row-ramp").display
        assert not screen.query_one("#bench-row-ramp-rates").display
        screen.query_one("#bench-ramp", Select).value = "exponential"
        await pilot.pause()
        assert screen.query_one("#bench-row-ramp-rates").display
        assert not screen.query_one("#bench-row-levels").display
        fill(screen, ramp_start="1", ramp_end="8")
        form = screen.query_one("BenchForm")
        values = form.values()  # type: ignore[attr-defined]
        assert (values.ramp_up, values.ramp_start_rps, values.ramp_end_rps) == ("exponential", "1", "8")


async def test_a_multi_turn_sweep_from_the_form_runs_sessions_on_the_live_twin(
    twin_target: Target, tmp_path: Path
) -> None:
    app = BenchHarness(AppContext(data_dir=tmp_path, targets=[twin_target], selected_target="twin-1xH100"))
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        screen = bench(app)
        screen.query_one("#bench-dataset", Select).value = "multi_turn"
        await pilot.pause()
        fill(screen, turns="3", think="0", levels="2", prompts="2", output_len="16")
        screen.query_one("#bench-dataset-answers", Checkbox).value = False
        screen.query_one("#bench-levels", Input).focus()
        await pilot.press("ctrl+r")
        await wait_until(pilot, lambda: not screen.running)
        assert "error" not in static_text(screen, "#bench-form-message").lower()
    with SessionStore.open(tmp_path) as store:
        (summary,) = store.runs.list_runs()
        result = store.runs.load_sweep(summary.id, with_records=True)
    assert result.config.dataset.kind == "multi_turn" and result.config.dataset.turns == 3
    (level,) = result.levels
    assert level.metrics.completed == 6  # 2 sessions x 3 turns
    assert level.turns is not None and [t.turn for t in level.turns] == [0, 1, 2]
