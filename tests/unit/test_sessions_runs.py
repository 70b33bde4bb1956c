"""Bench runs in the sessions store: writing as a run goes, History queries, overlays, labels, deletion."""

from __future__ import annotations

import math
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from backends.bench.results import RunStatus
from sessions import RunFilter, SessionStore, SessionStoreError
from tests.sessions_helpers import (
    infinite_rate_config,
    make_config,
    make_level_result,
    make_records,
    make_snapshots,
    make_target,
)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SessionStore]:
    with SessionStore.open(tmp_path / "data") as opened:
        yield opened


def _complete_run(
    store: SessionStore, *, target_name: str = "twin-h100", gpu: str = "1x H100", label: str | None = None
) -> str:
    config = make_config(target=make_target(name=target_name), label=label)
    writer = store.runs.writer()
    run_id = writer.begin_run(config, gpu=gpu)
    for index in range(len(config.levels)):
        writer.finish_level(make_level_result(config, index, make_records(0, 4, seed=index, chunks=8)))
    writer.finish_run(RunStatus.COMPLETE)
    return run_id


def test_records_are_stored_as_they_arrive_and_levels_finish(store: SessionStore) -> None:
    config = make_config()
    writer = store.runs.writer()
    run_id = writer.begin_run(config, gpu="4x L4")
    assert store.runs.summary(run_id).status is RunStatus.RUNNING

    first, second = make_records(0, 5, chunks=32), make_records(5, 7, chunks=32)
    assert writer.add_records(0, first) == 5
    assert store.runs.level_records(run_id, 0) == first  # committed, visible before the level ends
    writer.add_server_snapshots(0, make_snapshots(4))
    assert writer.add_records(0, second) == 7
    # The finished level also carries every record; the ones already stored are not stored twice.
    writer.finish_level(make_level_result(config, 0, first + second))
    writer.finish_run(RunStatus.COMPLETE)

    assert store.runs.level_records(run_id, 0) == first + second
    snapshots = store.runs.level_snapshots(run_id, 0)
    assert [s.t for s in snapshots] == [0.0, 1.0, 2.0, 3.0]  # the level's own 3 were already there
    summary = store.runs.summary(run_id)
    assert summary.status is RunStatus.COMPLETE
    assert summary.records_stored == 12
    assert summary.gpu == "4x L4"
    assert summary.finished_at is not None


def test_load_sweep_returns_metrics_and_optionally_records(store: SessionStore) -> None:
    config = make_config()
    writer = store.runs.writer()
    run_id = writer.begin_run(config)
    results = [make_level_result(config, i, make_records(0, 3, seed=i, chunks=8)) for i in range(3)]
    for result in results:
        writer.finish_level(result)
    writer.finish_run(RunStatus.COMPLETE, "all good")

    sweep = store.runs.load_sweep(run_id)
    assert sweep.run_id == run_id
    assert sweep.config == config
    assert sweep.status is RunStatus.COMPLETE
    assert sweep.message == "all good"
    assert [level.metrics for level in sweep.levels] == [r.metrics for r in results]
    assert all(level.records == [] and level.server_snapshots == [] for level in sweep.levels)

    full = store.runs.load_sweep(run_id, with_records=True, with_snapshots=True)
    assert full.levels == results


def test_overlay_loading_never_decodes_records(store: SessionStore) -> None:
    run_ids = [_complete_run(store, gpu=gpu) for gpu in ("4x L4", "1x H100", "2x H100")]
    # Damage every stored record chunk: an overlay must still load, since it needs metrics only.
    with store.db.write() as conn:
        conn.execute("UPDATE run_record_chunks SET payload = X'00112233'")
    sweeps = store.runs.load_sweeps(run_ids)
    assert [s.run_id for s in sweeps] == run_ids
    assert all(len(s.levels) == 3 for s in sweeps)
    with pytest.raises(SessionStoreError, match="requests of level 0 cannot be read"):
        store.runs.load_sweep(run_ids[0], with_records=True)


def test_unfinished_level_is_listed_but_left_out_of_overlays(store: SessionStore) -> None:
    config = make_config()
    writer = store.runs.writer()
    run_id = writer.begin_run(config)
    writer.finish_level(make_level_result(config, 0, make_records(0, 3, chunks=4)))
    writer.add_records(1, make_records(0, 2, chunks=4))
    writer.finish_run(RunStatus.PARTIAL, "cancelled")

    detail = store.runs.detail(run_id)
    assert [(level.index, level.status, level.records_stored) for level in detail.levels] == [
        (0, RunStatus.COMPLETE, 3),
        (1, RunStatus.PARTIAL, 2),
    ]
    assert detail.levels[1].metrics is None
    assert [level.index for level in store.runs.load_sweep(run_id).levels] == [0]


def test_infinite_request_rate_level_survives_storage(store: SessionStore) -> None:
    config = infinite_rate_config()
    writer = store.runs.writer()
    run_id = writer.begin_run(config)
    writer.finish_level(make_level_result(config, 1, make_records(0, 2, chunks=4)))
    writer.finish_run(RunStatus.PARTIAL)
    sweep = store.runs.load_sweep(run_id)
    assert sweep.config.levels == [2.0, math.inf]
    assert sweep.levels[0].level.value == math.inf


def test_writer_context_records_truthful_status(store: SessionStore) -> None:
    config = make_config()
    with pytest.raises(KeyboardInterrupt), store.runs.writer() as writer:
        interrupted = writer.begin_run(config)
        writer.add_records(0, make_records(0, 2, chunks=4))
        raise KeyboardInterrupt
    assert store.runs.summary(interrupted).status is RunStatus.PARTIAL

    with pytest.raises(RuntimeError), store.runs.writer() as writer:
        failed = writer.begin_run(config)
        raise RuntimeError("target refused the connection")
    summary = store.runs.summary(failed)
    assert summary.status is RunStatus.FAILED
    assert summary.message == "RuntimeError: target refused the connection"

    with store.runs.writer() as writer:
        complete = writer.begin_run(config)
        for index in range(3):
            writer.finish_level(make_level_result(config, index))
    assert store.runs.summary(complete).status is RunStatus.COMPLETE


def test_level_index_outside_the_sweep_is_refused(store: SessionStore) -> None:
    writer = store.runs.writer()
    writer.begin_run(make_config(levels=[1.0]))
    with pytest.raises(ValueError, match="outside the 1 levels"):
        writer.add_records(3, make_records(0, 1))


def test_writing_to_a_run_deleted_by_someone_else_is_one_clear_error(store: SessionStore) -> None:
    writer = store.runs.writer()
    run_id = writer.begin_run(make_config())
    writer.finish_run(RunStatus.COMPLETE)
    store.runs.delete_run(run_id)

    other = store.runs.writer()
    other_id = other.begin_run(make_config())
    with store.db.write() as conn:
        conn.execute("DELETE FROM runs WHERE id = ?", (other_id,))
    with pytest.raises(SessionStoreError, match="was deleted while it was being written"):
        other.add_records(0, make_records(0, 1))


def test_filters_by_target_gpu_label_status_and_date(store: SessionStore) -> None:
    l4 = _complete_run(store, target_name="gke-l4", gpu="4x L4", label="baseline 100%")
    h100 = _complete_run(store, target_name="gke-h100", gpu="1x H100", label="tuned")
    running = store.runs.writer().begin_run(
        make_config(target=make_target(name="twin-a100")), gpu="A100 80GB"
    )

    def ids(**kwargs: object) -> list[str]:
        return [summary.id for summary in store.runs.list_runs(RunFilter.model_validate(kwargs))]

    assert ids() == [running, h100, l4]  # newest first
    assert ids(target="H100") == [h100]
    assert ids(target="gemma-3-27b") == [running, h100, l4]  # matches the model too
    assert ids(gpu="l4") == [l4]
    assert ids(label="100%") == [l4]  # % is literal, not a wildcard
    assert ids(label="_") == []
    assert ids(status="running") == [running]
    assert ids(limit=1) == [running]
    now = datetime.now(UTC)
    assert ids(since=now - timedelta(hours=1)) == [running, h100, l4]
    assert ids(since=now + timedelta(hours=1)) == []
    assert ids(until=now - timedelta(hours=1)) == []


def test_label_delete_and_prefix_resolution(store: SessionStore) -> None:
    run_id = _complete_run(store)
    store.runs.set_label(run_id, "H100 after tuning")
    assert store.runs.summary(run_id).label == "H100 after tuning"
    store.runs.set_label(run_id, None)
    assert store.runs.summary(run_id).label is None

    assert store.runs.resolve_run_id(run_id[:-2]) == run_id
    other = _complete_run(store)
    common = run_id[:4]  # the year: shared by both runs
    assert other.startswith(common)
    with pytest.raises(SessionStoreError, match="matches several runs"):
        store.runs.resolve_run_id(common)

    store.runs.delete_run(run_id)
    with store.db.read() as conn:
        assert conn.execute(
            "SELECT COUNT(*) FROM run_record_chunks WHERE run_id = ?", (run_id,)
        ).fetchone() == (0,)
        assert conn.execute(
            "SELECT COUNT(*) FROM server_snapshots WHERE run_id = ?", (run_id,)
        ).fetchone() == (0,)
    with pytest.raises(SessionStoreError, match="no run"):
        store.runs.summary(run_id)
    with pytest.raises(SessionStoreError, match="no run"):
        store.runs.set_label(run_id, "x")
    with pytest.raises(SessionStoreError, match="no run 'nope'"):
        store.runs.resolve_run_id("nope")


def test_a_run_being_written_by_a_live_process_cannot_be_deleted(store: SessionStore) -> None:
    run_id = store.runs.writer().begin_run(make_config())  # this very process is the live writer
    with pytest.raises(SessionStoreError, match="still being written by process"):
        store.runs.delete_run(run_id)


def test_target_url_with_credentials_is_refused(store: SessionStore) -> None:
    config = make_config(
        target=make_target().model_copy(update={"base_url": "https://user:hunter2@vllm.example"})
    )
    with pytest.raises(SessionStoreError, match="contains credentials"):
        store.runs.writer().begin_run(config)
    assert store.runs.list_runs() == []


def test_run_id_given_by_the_runner_is_used_and_must_be_new(store: SessionStore) -> None:
    writer = store.runs.writer()
    assert writer.begin_run(make_config(), run_id="sweep-0001") == "sweep-0001"
    with pytest.raises(SessionStoreError, match="'sweep-0001' is already saved; use another id"):
        store.runs.writer().begin_run(make_config(), run_id="sweep-0001")
