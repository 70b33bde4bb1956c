"""Capacity advisor (`servedeck plan --advise`): SLO parsing, the fast-forward knee search, the ranking."""

from __future__ import annotations

import json
from collections.abc import Sequence

import pytest

from backends.advisor.advise import Search, Verdict, rank, search_shapes, unservable_line
from backends.advisor.knee import find_knee, run_trial
from backends.bench.models import Axis, LoadLevel, SampledRequest
from backends.bench.results import RunStatus, SweepConfig
from backends.bench.slo import parse_slo
from backends.errors import ConfigError
from backends.target_types import Target, TargetKind
from backends.twin.engine import TwinConfig, TwinEngine
from backends.twin.fastforward import run_level, sample_dataset
from manifests.catalog import default_catalog
from manifests.cost import estimate_cost
from manifests.gpus import ACCELERATORS, GpuType
from tests.cli_runner import run_subcommand
from tui.cli import plan

pytestmark = pytest.mark.timeout(300)

SLO = "p99_ttft:2000,p99_tpot:100"


def _requests(num_prompts: int, output_len: int | None = 256) -> list[SampledRequest]:
    target = Target(name="twin", base_url="twin://test", model="google/gemma-3-27b-it", kind=TargetKind.TWIN)
    sweep = SweepConfig(
        target=target, axis=Axis.REQUEST_RATE, levels=[1.0], num_prompts=num_prompts, output_len=output_len
    )
    return sample_dataset(sweep).requests


@pytest.fixture(scope="module")
def article_search() -> Search:
    """The article's load (1000 ShareGPT prompts, output 256) over the whole catalog, searched once."""
    return search_shapes("gemma-3-27b-it", _requests(1000), slo=parse_slo(SLO), catalog=default_catalog())


def run(argv: Sequence[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    return run_subcommand(plan.add_parser, "plan", argv, capsys)


# -- SLO grammar ------------------------------------------------------------------------------------------


def test_slo_keys_follow_vllm_names() -> None:
    slo = parse_slo("p99_ttft:2000,p99_tpot_ms:100,mean_e2el:30000,median_itl:40")
    assert [(t.metric, t.stat, t.limit_ms) for t in slo.targets] == [
        ("ttft", "99", 2000.0),
        ("tpot", "99", 100.0),
        ("e2el", "mean", 30000.0),
        ("itl", "median", 40.0),
    ]
    each = parse_slo("ttft:500,tpot:50,goodput:0.95")
    assert each.per_request_ms == {"ttft": 500.0, "tpot": 50.0} and each.goodput == 0.95
    assert parse_slo("p99.9_ttft:3000").targets[0].stat == "99.9"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("p99_ttfb:2000", "unknown --slo key 'p99_ttfb'"),
        ("latency:5", "unknown --slo key 'latency'"),
        ("itl:20", "unknown --slo key 'itl'"),
        ("p99_ttft:fast", "bad --slo value in 'p99_ttft:fast': 'fast' is not a number"),
        ("p99_ttft:-3", "must be a number > 0"),
        ("p99_ttft", "use KEY:VALUE"),
        ("goodput:0.9", "needs a latency target"),
        ("p99_ttft:100,goodput:0.9", "goodput:F needs a per-request target"),
        ("ttft:100,goodput:1.5", "goodput is a fraction"),
        ("p99_ttft:100,p99_ttft_ms:200", "names p99_ttft twice"),
    ],
)
def test_bad_slo_is_one_line(text: str, message: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ConfigError, match=None) as err:
        parse_slo(text)
    assert message in str(err.value)
    code, out, stderr = run(["--advise", "--rate", "1", "--slo", text], capsys)
    assert code == 1 and out == ""
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0]


def test_allowed_violations_match_numpy_percentiles() -> None:
    import numpy as np

    slo = parse_slo("p99_ttft:1")
    target = slo.targets[0]
    for n in (1, 10, 99, 100, 101, 1000):
        k = slo.allowed_violations(target, n)
        # k requests just over the limit may still leave p99 within it; k + 1 over it, by any amount, never do
        under = [0.0] * (n - k) + [1.001] * k
        over = [0.0] * (n - k - 1) + [1.001] * (k + 1)
        assert np.percentile(under, 99) <= 1.0
        assert np.percentile(over, 99) > 1.0


# -- the fast-forward search ---------------------------------------------------------------------------


def test_an_overloaded_level_stops_early_with_the_ttft_signal() -> None:
    config = TwinConfig.build("gemma-3-27b-it", "h100", 1)
    requests = _requests(300)
    slo = parse_slo(SLO)
    trial = run_trial(config, requests, 200.0, slo)
    assert not trial.passed and trial.stopped_early
    assert "p99 TTFT over 2,000 ms on" in trial.reasons[0]
    full = run_level(TwinEngine(config), LoadLevel(axis=Axis.REQUEST_RATE, value=200.0), requests)
    assert full.status is RunStatus.COMPLETE and full.metrics.ttft.percentiles["99"] > 2000
    watched = run_level(
        TwinEngine(config),
        LoadLevel(axis=Axis.REQUEST_RATE, value=200.0),
        requests,
        early_stop=lambda now, sent, admitted, first: "stop" if now >= 3.0 else None,
    )
    assert watched.status is RunStatus.PARTIAL and "stopped early: stop" in (watched.message or "")
    assert watched.metrics.duration < full.metrics.duration


def test_knee_is_within_the_tolerance_of_a_dense_sweep() -> None:
    config = TwinConfig.build("gemma-3-27b-it", "a100-80gb", 2)
    requests = _requests(200)
    slo = parse_slo("p99_ttft:1500,p99_tpot:80")
    knee = find_knee(config, requests, slo, tolerance=0.1)
    assert knee.rate is not None and 0 < knee.rate <= knee.saturation
    assert len(knee.trials) <= 10
    dense = [knee.saturation * f / 20 for f in range(1, 21)]
    passing = [r for r in dense if run_trial(config, requests, r, slo).passed]
    assert passing, "a dense sweep of the same twin passes somewhere"
    assert knee.rate >= max(passing) / 1.1 - 1e-9
    assert run_trial(config, requests, knee.rate, slo).passed


def test_floors_say_why_no_rate_can_meet_the_slo() -> None:
    config = TwinConfig.build("gemma-3-27b-it", "cpu-c4", 1)
    knee = find_knee(config, _requests(100), parse_slo("p99_ttft:2000,p99_tpot:100"))
    assert knee.rate is None and knee.trials == ()
    assert (
        knee.reason is not None and "p99 TPOT floor" in knee.reason and "one decode step alone" in knee.reason
    )


# -- the advice ------------------------------------------------------------------------------------------


def test_article_load_at_rate_1_the_cheapest_fitting_config_wins(article_search: Search) -> None:
    catalog = default_catalog()
    advice = rank(article_search, rate=1.0, catalog=catalog)
    best = advice.passing[0]
    assert best.replicas == 1
    fitting_gpu_prices = {
        s.label: estimate_cost(catalog, s.gpu, s.gpu_count).total_usd_per_hour
        for s in article_search.shapes
        if not ACCELERATORS[s.gpu].is_cpu
    }
    assert best.label == min(fitting_gpu_prices, key=fitting_gpu_prices.__getitem__) == "4xL4 24GB"
    assert [s.usd_per_million for s in advice.passing] == sorted(
        s.usd_per_million or 0 for s in advice.passing
    )
    assert {s.label for s in article_search.skipped} == {"1xL4 24GB", "2xL4 24GB", "1xA100 40GB"}
    cpu = [s for s in advice.shapes if ACCELERATORS[s.gpu].is_cpu]
    assert cpu and all(s.verdict is Verdict.SLO and "floor" in s.why for s in cpu)


def test_article_load_at_rate_500_only_multi_h100_passes(article_search: Search) -> None:
    advice = rank(article_search, rate=500.0, catalog=default_catalog())
    assert advice.passing
    for shape in advice.passing:
        assert shape.gpu in (GpuType.H100, GpuType.H100_MEGA) and shape.gpu_count >= 2, shape.label
        assert shape.replicas is not None and shape.replicas * (shape.knee.rate or 0) >= 500
        assert shape.headroom is not None and shape.headroom >= 0
    assert unservable_line(advice) is None


def test_a_rate_no_shape_can_serve_is_one_line(article_search: Search) -> None:
    advice = rank(article_search, rate=100_000.0, catalog=default_catalog())
    line = unservable_line(advice)
    assert line is not None and "\n" not in line
    assert "no catalog shape serves 100000 req/s" in line and "the best, 8xH100 80GB" in line
    assert "raise --max-replicas" in line


def test_a_cpu_node_never_passes_a_2s_ttft_slo_at_rate_10(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--advise", "--rate", "10", "--slo", "p99_ttft:2000", "--gpus", "cpu-c4,cpu-c4d"]
    code, out, err = run([*argv, "--max-replicas", "1", "--num-prompts", "200", "--json"], capsys)
    assert code == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "no catalog shape" in lines[0] and "10 req/s" in lines[0]
    document = json.loads(out)
    assert document["simulated"] is True and len(document["shapes"]) == 4
    for shape in document["shapes"]:
        assert shape["verdict"] != "ok"
        assert shape["knee"]["rate"] is None or shape["knee"]["rate"] < 10


def test_cli_table_and_chart(capsys: pytest.CaptureFixture[str]) -> None:
    argv = [
        "--advise",
        "--rate",
        "30",
        "--slo",
        SLO,
        "--gpus",
        "h100,l4",
        "--max-gpus",
        "2",
        "--num-prompts",
        "150",
    ]
    code, out, err = run(argv, capsys)
    assert code == 0, err
    assert "Capacity advisor (vLLM twin, simulated): gemma-3-27b-it at 30 req/s" in out
    assert "req/s per replica" in out and "$/1M tok" in out and "headroom" in out
    assert "Does not fit:\n  1xL4 24GB:" in out
    assert "$ per 1M tokens at 30 req/s (lower is better):" in out and "█" in out
    assert "Cheapest: " in out


def test_plain_plan_still_needs_gpu_and_axis(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(["--request-rate", "1"], capsys)
    assert code == 1 and "plan needs --gpu" in err
    code, _, err = run(["--gpu", "h100"], capsys)
    assert code == 1 and "plan needs --concurrency or --request-rate" in err
    code, _, err = run(["--advise", "--slo", SLO], capsys)
    assert code == 1 and "--advise needs --rate" in err
    code, _, err = run(["--advise", "--rate", "1", "--slo", SLO, "--gpus", "tpu"], capsys)
    assert code == 1 and "--gpus: unknown GPU type 'tpu'" in err
