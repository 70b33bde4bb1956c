"""An SLO search is stored in History as a run of kind "search" with its verdicts, and charts from them."""

from __future__ import annotations

from pathlib import Path

import pytest

from backends.bench.results import SweepConfig
from backends.bench.search_chart import search_chart
from backends.twin.engine_config import TwinConfig
from backends.twin.process import start_twin_process
from sessions import SessionStore
from tests.cli_runner import run_main

# 8 sequences at most: past concurrency 8 a request waits a whole answer for a slot (as in test_slo_search).
TWIN = TwinConfig.build("gemma-3-27b-it", "h100", 1, max_num_seqs=8)


@pytest.mark.timeout(300)
def test_a_saved_search_is_a_search_run_with_its_verdicts_and_chart(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    with start_twin_process(TWIN, log_interval_s=3600.0) as twin:
        code, out, err = run_main(
            capsys,
            "bench",
            "--target",
            twin.base_url,
            "--find-max",
            "concurrency",
            "--slo",
            "p99_ttft:300,p99_tpot:200",
            "--num-prompts",
            "16",
            "--output-len",
            "16",
            "--max-levels",
            "5",
            "--data-dir",
            str(tmp_path),
        )
        code_sweep, _, err_sweep = run_main(
            capsys,
            "bench",
            "--target",
            twin.base_url,
            "--concurrency",
            "1",
            "--num-prompts",
            "2",
            "--output-len",
            "4",
            "--data-dir",
            str(tmp_path),
        )
    assert code in (0, 1) and "search saved as run " in err, (out, err)
    assert code_sweep == 0, err_sweep
    with SessionStore.open(tmp_path) as store:
        runs = store.runs.list_runs()
        kinds = sorted(run.kind for run in runs)
        search_run = next(run for run in runs if run.kind == "search")
        detail = store.runs.detail(search_run.id)
    assert kinds == ["search", "sweep"]
    config: SweepConfig = detail.config
    record = config.search
    assert record is not None and record.slo == "p99_ttft:300,p99_tpot:200"
    assert [level.value for level in record.levels] == config.levels == search_run.level_values
    assert len(record.levels) == len(detail.levels) <= 5
    assert record.start_source.startswith("probe")
    verdicts = {level.verdict for level in record.levels}
    assert "pass" in verdicts and "fail" in verdicts, record.levels

    chart = search_chart(config, [level.metrics for level in detail.levels])
    assert chart is not None
    assert [panel.title for panel in chart.panels] == ["p99 TTFT ms", "p99 TPOT ms"]
    assert [panel.limit_ms for panel in chart.panels] == [300.0, 200.0]
    ttft = chart.panels[0]
    values = [point.value for point in ttft.points]
    assert values == sorted(values) and sorted(p.order for p in ttft.points) == list(
        range(1, len(values) + 1)
    )
    knees = [point for point in ttft.points if point.knee]
    assert record.knee is not None and [p.value for p in knees] == [record.knee]
    assert all(point.value <= record.knee for point in ttft.points if point.verdict == "pass")
    # A level that failed on TTFT measured over the line (unless it was stopped by another signal).
    for point in ttft.points:
        if point.verdict == "pass":
            assert point.measured_ms is not None and point.measured_ms <= 300.0
    assert chart.summary.startswith(f"SLO search within p99_ttft:300,p99_tpot:200: knee {record.knee:.4g}")


def test_a_plain_sweep_has_no_search_chart() -> None:
    from backends.bench.models import Axis
    from backends.target_types import Target

    config = SweepConfig(
        target=Target(name="t", base_url="http://127.0.0.1:1", model="m"), axis=Axis.CONCURRENCY, levels=[1.0]
    )
    assert search_chart(config, []) is None
