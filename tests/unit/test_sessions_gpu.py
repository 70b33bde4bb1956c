"""History keeps a level's GPU telemetry: written by the run writer, read back, carried by bundles."""

from __future__ import annotations

from pathlib import Path

from backends.bench.results import RunStatus
from backends.telemetry.models import LevelGpuTelemetry
from sessions import SessionStore
from sessions.bundle import bundle_json, parse_bundle
from tests.sessions_helpers import make_config, make_level_result, make_records

GPU = LevelGpuTelemetry(
    gpus=2,
    readings=9,
    simulated=True,
    gpu_util_mean=0.61,
    dram_active_mean=0.55,
    power_w_mean=903.5,
    power_w_max=1011.0,
    fb_used_mib_max=145_000.0,
    energy_j=4210.0,
    energy_source="counter",
    kj_per_1m_output_tokens=512.25,
    usd_per_1m_output_tokens=3.1,
)


def test_level_gpu_telemetry_survives_history_and_a_bundle(tmp_path: Path) -> None:
    config = make_config(levels=[1.0, 8.0])
    with SessionStore.open(tmp_path / "a") as store:
        writer = store.runs.writer()
        run_id = writer.begin_run(config, gpu="2x H100")
        first = make_level_result(config, 0, make_records(0, 5, seed=1)).model_copy(update={"gpu": GPU})
        writer.finish_level(first)
        writer.finish_level(make_level_result(config, 1, make_records(0, 5, seed=2)))
        writer.finish_run(RunStatus.COMPLETE)
        sweep = store.runs.load_sweep(run_id)
        assert [level.gpu for level in sweep.levels] == [GPU, None]
        text = bundle_json(store.export_bundle(run_id))
    with SessionStore.open(tmp_path / "b") as other:
        imported = other.import_bundle(parse_bundle(text, "bundle"))
        assert [level.gpu for level in other.runs.load_sweep(imported).levels] == [GPU, None]
