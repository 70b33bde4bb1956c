"""One input grammar for levels, goodput SLOs and percentiles (backends/bench/input_grammar.py), and the
limits a ``SweepConfig`` meets however it is built."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from backends.bench.input_grammar import MAX_LEVELS, parse_goodput, parse_levels, parse_percentiles
from backends.bench.models import Axis
from backends.bench.results import STORED, RunStatus, SweepConfig
from backends.errors import ConfigError
from backends.target_types import Target
from sessions import SessionStore
from tests.cli_runner import run_main

TARGET = Target(name="a", base_url="http://127.0.0.1:9", model="m")


def _bench(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    try:
        code, _, err = run_main(capsys, "bench", "--target", "http://127.0.0.1:9", "--no-save", *argv)
    except SystemExit as exit:  # argparse refused a flag
        code, err = int(exit.code or 0), capsys.readouterr().err
    return code, err


def _config(**fields: Any) -> SweepConfig:
    return SweepConfig(**{"target": TARGET, "axis": Axis.CONCURRENCY, "levels": [1.0], **fields})


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"levels": []}, "give at least one level"),
        ({"levels": [1.0] * (MAX_LEVELS + 1)}, f"at most {MAX_LEVELS} levels"),
        ({"levels": [1.5]}, "whole numbers of requests in flight"),
        ({"levels": [math.inf]}, "expected finite numbers"),
        ({"axis": Axis.REQUEST_RATE, "levels": [0.0]}, "levels must be > 0"),
        ({"axis": Axis.REQUEST_RATE, "levels": [math.nan]}, "expected finite numbers"),
        ({"percentiles": [0.0]}, r"(0, 100]"),
        ({"percentiles": [99.0, 100.5]}, r"(0, 100]"),
        ({"goodput_slos_ms": {"latency": 5.0}}, "unknown goodput SLO 'latency'"),
        ({"goodput_slos_ms": {"ttft": -5.0}}, "non-negative"),
        ({"burstiness": 0.0}, "--burstiness must be > 0"),
        ({"workers": 0}, "--workers must be >= 1"),
        ({"num_prompts": 0}, "--num-prompts must be >= 1"),
    ],
)
def test_a_config_built_directly_meets_the_same_limits(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        _config(**fields)
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_a_rate_of_inf_is_a_level_as_in_vllm() -> None:
    assert _config(axis=Axis.REQUEST_RATE, levels=[1.0, math.inf]).levels == [1.0, math.inf]
    assert parse_levels(Axis.REQUEST_RATE, "1, inf") == [1.0, math.inf]
    with pytest.raises(ConfigError, match="needs a real server"):
        parse_levels(Axis.REQUEST_RATE, "1,inf", allow_inf=False)


def test_a_stored_config_is_read_back_whatever_the_limits_are_now(tmp_path: Path) -> None:
    """A run saved with more levels than the limit (an older version, a long search) stays readable."""
    many = _config().model_copy(update={"levels": [float(n) for n in range(1, MAX_LEVELS + 9)]})
    with pytest.raises(ConfigError):
        SweepConfig.model_validate_json(many.model_dump_json())
    assert SweepConfig.model_validate_json(many.model_dump_json(), context=STORED) == many
    with SessionStore.open(tmp_path / "data") as store:
        writer = store.runs.writer()
        run_id = writer.begin_run(many, gpu=None)
        writer.finish_run(RunStatus.PARTIAL)
        assert store.runs.summary(run_id).level_values == many.levels
        assert [s.id for s in store.runs.list_runs()] == [run_id]
        assert store.runs.load_sweep(run_id).config.levels == many.levels


@pytest.mark.parametrize(
    ("text", "levels"),
    [("1,4,16", [1.0, 4.0, 16.0]), ("1 4 16", [1.0, 4.0, 16.0]), (" 1, 4,,16 ", [1.0, 4.0, 16.0])],
)
def test_levels_take_commas_and_spaces(text: str, levels: list[float]) -> None:
    assert parse_levels(Axis.CONCURRENCY, text) == levels


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("1,x", "levels: 'x' is not a number; expected comma-separated numbers"),
        ("", "give at least one level"),
        (",".join(["1"] * 40), "at most 32 levels per sweep, got 40"),
        ("1,1e999", "too large"),
    ],
)
def test_bad_levels_are_one_line(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_levels(Axis.REQUEST_RATE, text)


def test_goodput_is_vllms_key_value_form() -> None:
    assert parse_goodput(["ttft:500", "tpot:50"]) == {"ttft": 500.0, "tpot": 50.0}
    assert parse_goodput("ttft:500, e2el:3000") == {"ttft": 500.0, "e2el": 3000.0}
    assert parse_goodput("") == {}
    for bad, message in (
        ("ttft=500", "bad --goodput item 'ttft=500'"),
        ("ttft:soon", "milliseconds must be a number"),
        ("ttft:-1", "non-negative"),
        ("ttft:nan", "non-negative"),
    ):
        with pytest.raises(ConfigError, match=message):
            parse_goodput(bad)


def test_percentiles() -> None:
    assert parse_percentiles("50,90,99,99") == [50.0, 90.0, 99.0]
    for bad in ("", "p99", "0", "101"):
        with pytest.raises(ConfigError):
            parse_percentiles(bad)


# The CLI reads what the Bench form reads: each of these was accepted by one front end and refused by
# the other. A refused flag is exit 2 with one line; an accepted one gets as far as the (dead) target.
@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--concurrency", ",".join(["1"] * 40)], "at most 32 levels per sweep"),
        (["--request-rate", "0"], "levels must be > 0"),
        (["--concurrency", "1", "--goodput", "ttft:-5"], "non-negative"),
    ],
)
def test_the_cli_refuses_what_the_form_refuses(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code, err = _bench(capsys, *argv)
    assert code in (1, 2) and message in err and "cannot connect" not in err, err
    assert len(err.strip().splitlines()) == 1


def test_the_cli_takes_space_separated_levels_as_the_form_does(capsys: pytest.CaptureFixture[str]) -> None:
    code, err = _bench(capsys, "--concurrency", "1 4")
    assert code == 1 and "cannot connect" in err, err


def test_the_form_takes_what_the_cli_takes() -> None:
    """vllm bench serve's --request-rate inf was refused by the Bench form only."""
    from tui.services.bench_config import BenchFormValues, build_runs

    values = BenchFormValues(targets=["a"], axis=Axis.REQUEST_RATE, levels="1, inf", slos="ttft:500 tpot:50")
    (run,) = build_runs(values, [TARGET], {}.get)
    assert run.config.levels == [1.0, math.inf]
    assert run.config.goodput_slos_ms == {"ttft": 500.0, "tpot": 50.0}
