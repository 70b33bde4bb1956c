"""ServeDeck run bundles round-trip losslessly; bad bundle files get one clear message; no secrets stored."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from backends.bench.results import RunStatus
from sessions import MessageRole, SessionStore, SessionStoreError
from sessions.bundle import bundle_json, parse_bundle, read_bundle_file
from tests.sessions_helpers import (
    API_KEY_ENV,
    infinite_rate_config,
    make_config,
    make_level_result,
    make_records,
    make_snapshots,
)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SessionStore]:
    with SessionStore.open(tmp_path / "origin") as opened:
        yield opened


def write_partial_run(store: SessionStore) -> str:
    """Two finished levels, one cut off mid-way with records and snapshots but no metrics."""
    config = make_config(levels=[1.0, 8.0, 32.0], label="4xL4 vs H100")
    writer = store.runs.writer()
    run_id = writer.begin_run(config, gpu="4x L4")
    writer.finish_level(make_level_result(config, 0, make_records(0, 40, seed=1)))
    writer.add_records(1, make_records(0, 30, seed=2))
    writer.add_records(1, make_records(30, 10, seed=3))
    writer.finish_level(make_level_result(config, 1, make_records(0, 40, seed=2), status=RunStatus.PARTIAL))
    writer.add_records(2, make_records(0, 7, seed=4))
    writer.add_server_snapshots(2, make_snapshots(5, offset=7.5))
    writer.finish_run(RunStatus.PARTIAL, "cancelled by the user")
    return run_id


def test_export_import_export_is_identical(store: SessionStore, tmp_path: Path) -> None:
    run_id = write_partial_run(store)
    first = bundle_json(store.export_bundle(run_id))

    with SessionStore.open(tmp_path / "elsewhere") as other:
        imported = other.import_bundle(parse_bundle(first, "bundle"))
        assert imported == run_id
        second = bundle_json(other.export_bundle(imported))
        assert other.runs.summary(imported) == store.runs.summary(run_id)
        assert other.runs.detail(imported) == store.runs.detail(run_id)
        for level in range(3):
            assert other.runs.level_records(imported, level) == store.runs.level_records(run_id, level)
            assert other.runs.level_snapshots(imported, level) == store.runs.level_snapshots(run_id, level)
    assert second == first

    bundle = parse_bundle(first, "bundle")
    assert [len(level.records) for level in bundle.levels] == [40, 40, 7]
    assert bundle.levels[2].metrics is None
    assert bundle.gpu == "4x L4"
    assert bundle.message == "cancelled by the user"


def test_infinite_values_survive_the_bundle(store: SessionStore, tmp_path: Path) -> None:
    config = infinite_rate_config()
    writer = store.runs.writer()
    run_id = writer.begin_run(config)
    writer.finish_level(make_level_result(config, 1, make_records(0, 3, chunks=8)))
    writer.finish_run(RunStatus.PARTIAL)
    text = bundle_json(store.export_bundle(run_id))
    with SessionStore.open(tmp_path / "elsewhere") as other:
        imported = other.import_bundle(parse_bundle(text, "bundle"))
        assert other.runs.load_sweep(imported).levels[0].level.value == float("inf")
        assert bundle_json(other.export_bundle(imported)) == text


def test_importing_an_existing_run_needs_a_new_id(store: SessionStore) -> None:
    run_id = write_partial_run(store)
    bundle = store.export_bundle(run_id)
    with pytest.raises(
        SessionStoreError, match="already saved here; delete it first or import with --new-id"
    ):
        store.import_bundle(bundle)
    copy_id = store.import_bundle(bundle, new_id=True)
    assert copy_id != run_id
    assert store.export_bundle(copy_id).levels == bundle.levels


def test_bundle_of_a_running_run_imports_as_partial(store: SessionStore, tmp_path: Path) -> None:
    writer = store.runs.writer()
    run_id = writer.begin_run(make_config())
    writer.add_records(0, make_records(0, 3, chunks=4))
    bundle = store.export_bundle(run_id)
    assert bundle.status is RunStatus.RUNNING
    with SessionStore.open(tmp_path / "elsewhere") as other:
        imported = other.import_bundle(bundle)
        assert other.runs.summary(imported).status is RunStatus.PARTIAL
        assert other.runs.detail(imported).levels[0].status is RunStatus.PARTIAL
        assert other.recovered_runs == []


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "is not valid JSON"),
        ('{"runs": []}', "is not a ServeDeck run bundle"),
        ("[1, 2]", "is not a ServeDeck run bundle"),
        ('{"format": "servedeck-run", "format_version": 7}', "format version 7, newer than"),
        ('{"format": "servedeck-run", "format_version": 1, "run_id": "x"}', "is a damaged run bundle"),
    ],
)
def test_bad_bundle_files_are_one_clear_error(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "bundle.json"
    path.write_text(content)
    with pytest.raises(SessionStoreError, match=message) as caught:
        read_bundle_file(path)
    assert str(path) in str(caught.value)
    assert "\n" not in str(caught.value)


def test_missing_bundle_file_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(SessionStoreError, match=r"cannot read .*missing\.json"):
        read_bundle_file(tmp_path / "missing.json")


def test_bundle_listing_a_level_twice_is_refused(store: SessionStore) -> None:
    run_id = write_partial_run(store)
    raw = json.loads(bundle_json(store.export_bundle(run_id)))
    raw["levels"].append(raw["levels"][0])
    with pytest.raises(SessionStoreError, match="lists a level twice"):
        store.import_bundle(parse_bundle(json.dumps(raw), "bundle"), new_id=True)


def test_api_key_value_never_reaches_the_database_or_a_bundle(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = "sk-live-0123456789abcdef-DO-NOT-STORE"
    monkeypatch.setenv(API_KEY_ENV, secret)
    monkeypatch.setenv("HF_TOKEN", secret + "-hf")
    data_dir = tmp_path / "data"
    with SessionStore.open(data_dir) as store:
        run_id = write_partial_run(store)
        chat = store.chats.create_chat(make_config().target, params={"temperature": 0.1})
        store.chats.append_message(chat.id, MessageRole.USER, "hello")
        bundle = bundle_json(store.export_bundle(run_id))
    files = {path.name: path.read_bytes() for path in data_dir.iterdir() if path.is_file()}
    assert "sessions.db" in files
    everything = b"".join(files.values()) + bundle.encode()
    assert API_KEY_ENV.encode() in everything  # the reference to the key is kept...
    assert secret.encode() not in everything  # ...its value never is
    assert b"sk-live" not in everything
