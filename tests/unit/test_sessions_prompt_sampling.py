"""History keeps how a level's prompts were sampled (same for every level, own, overlapping).

It decides whether a high prefix-cache hit rate is worth a warning (``prefix_cache_warning``): a run
whose levels reuse the same prompts hits the cache by design, and warning about it after the run was
reopened from History, exported or imported would contradict what the live run said.
"""

from __future__ import annotations

from pathlib import Path

from backends.bench.results import PromptSampling, RunStatus
from backends.prometheus import prefix_cache_warning
from sessions import SessionStore
from sessions.bundle import bundle_json, parse_bundle
from tests.sessions_helpers import make_config, make_level_result, make_records


def test_prompt_sampling_survives_history_and_a_bundle(tmp_path: Path) -> None:
    config = make_config(levels=[1.0, 8.0])
    with SessionStore.open(tmp_path / "a") as store:
        writer = store.runs.writer()
        run_id = writer.begin_run(config)
        first = make_level_result(config, 0, make_records(0, 5, seed=1))
        writer.finish_level(first.model_copy(update={"prompt_sampling": PromptSampling.SAME}))
        writer.finish_level(make_level_result(config, 1, make_records(0, 5, seed=2)))
        writer.finish_run(RunStatus.COMPLETE)
        sweep = store.runs.load_sweep(run_id)
        assert [level.prompt_sampling for level in sweep.levels] == [PromptSampling.SAME, None]
        text = bundle_json(store.export_bundle(run_id))
    with SessionStore.open(tmp_path / "b") as other:
        imported = other.import_bundle(parse_bundle(text, "bundle"))
        levels = other.runs.load_sweep(imported).levels
        assert [level.prompt_sampling for level in levels] == [PromptSampling.SAME, None]
    # Reopened, a 50% hit rate on the same prompts is still expected, on prompts of unknown origin not.
    assert prefix_cache_warning(0.5, levels[0].prompt_sampling) is None
    assert prefix_cache_warning(0.5, levels[1].prompt_sampling) is not None
