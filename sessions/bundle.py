"""ServeDeck run bundles: one JSON file with everything stored about a run, importable unchanged."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import ValidationError
from pydantic_core import from_json

from backends.bench.results import STORED, RunStatus
from backends.redaction import redact
from sessions import run_rows
from sessions.database import Database
from sessions.errors import SessionStoreError
from sessions.jsoncodec import dump_model
from sessions.run_models import BUNDLE_FORMAT, BUNDLE_VERSION, BundleLevel, RunBundle
from sessions.run_writer import new_run_id
from sessions.secrets_guard import check_target, scrub_records
from sessions.timestamps import to_utc, utc_now

_IMPORT_CHUNK = 2000  # records per stored chunk on import


def export_bundle(db: Database, run_id: str) -> RunBundle:
    with db.read() as conn:
        summary = run_rows.fetch_summary(conn, run_id)
        levels = [
            BundleLevel(
                index=level.index,
                level=level.level,
                started_at=level.started_at,
                status=level.status,
                metrics=level.metrics,
                client=level.client,
                message=level.message,
                gpu=level.gpu,
                prompt_sampling=level.prompt_sampling,
                records=run_rows.fetch_records(conn, run_id, level.index),
                server_snapshots=run_rows.fetch_snapshots(conn, run_id, level.index),
            )
            for level in run_rows.fetch_levels(conn, run_id)
        ]
        config = run_rows.fetch_config(conn, run_id)
    return RunBundle(
        run_id=run_id,
        label=summary.label,
        gpu=summary.gpu,
        created_at=summary.created_at,
        finished_at=summary.finished_at,
        status=summary.status,
        message=summary.message,
        config=config,
        levels=levels,
    )


def bundle_json(bundle: RunBundle) -> str:
    return dump_model(bundle)


def parse_bundle(text: str | bytes, source: str) -> RunBundle:
    """Validate a bundle file's content; every problem is one line naming the file."""
    try:
        raw: Any = from_json(text)
    except ValueError as exc:
        raise SessionStoreError(
            f"{source} is not valid JSON ({exc}); is it a ServeDeck run bundle?"
        ) from None
    if not isinstance(raw, dict) or raw.get("format") != BUNDLE_FORMAT:
        raise SessionStoreError(
            f'{source} is not a ServeDeck run bundle (no "format": "{BUNDLE_FORMAT}"); '
            "create one with `servedeck runs export RUN --format bundle`"
        )
    version = raw.get("format_version")
    if isinstance(version, int) and version > BUNDLE_VERSION:
        raise SessionStoreError(
            f"{source} is a bundle of format version {version}, newer than this ServeDeck understands "
            f"({BUNDLE_VERSION}); upgrade ServeDeck to import it"
        )
    try:
        return RunBundle.model_validate(raw, context=STORED)
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(part) for part in error["loc"])
        raise SessionStoreError(
            f"{source} is a damaged run bundle: {where}: {error['msg']} ({exc.error_count()} problems)"
        ) from None


def read_bundle_file(path: Path) -> RunBundle:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise SessionStoreError(f"cannot read {path}: {exc.strerror or exc}") from None
    return parse_bundle(data, str(path))


def import_bundle(db: Database, bundle: RunBundle, *, new_id: bool = False) -> str:
    """Store a bundle as a run; returns its id. A bundle of a run that was still running when it was
    exported is stored as partial, since nothing will finish it here. A target URL with credentials is
    refused (as the bench refuses it); secrets in messages and request errors are masked."""
    check_target(bundle.config.target)
    indices = [level.index for level in bundle.levels]
    if len(set(indices)) != len(indices):
        raise SessionStoreError(
            f"bundle of run {bundle.run_id} lists a level twice (levels {indices}); it is damaged"
        )
    run_id = new_run_id(utc_now()) if new_id else bundle.run_id
    status = RunStatus.PARTIAL if bundle.status is RunStatus.RUNNING else bundle.status
    chunks = {
        level.index: [
            run_rows.EncodedChunk.of(scrub_records(level.records[start : start + _IMPORT_CHUNK]))
            for start in range(0, len(level.records), _IMPORT_CHUNK)
        ]
        for level in bundle.levels
    }
    with db.write() as conn:
        if conn.execute("SELECT 1 FROM runs WHERE id = ?", (run_id,)).fetchone() is not None:
            raise SessionStoreError(
                f"run {run_id} is already saved here; delete it first or import with --new-id"
            )
        run_rows.insert_run(
            conn,
            run_id=run_id,
            config=bundle.config,
            label=bundle.label,
            gpu=bundle.gpu,
            created_at=to_utc(bundle.created_at),
            status=status,
            finished_at=bundle.finished_at,
            message=redact(bundle.message),
        )
        for level in bundle.levels:
            run_rows.ensure_level(conn, run_id, level.index, level.level, level.started_at)
            for chunk in chunks[level.index]:
                run_rows.insert_chunk(conn, run_id, level.index, chunk)
            run_rows.insert_snapshots(conn, run_id, level.index, level.server_snapshots)
            level_status = RunStatus.PARTIAL if level.status is RunStatus.RUNNING else level.status
            run_rows.update_level(
                conn,
                run_id,
                index=level.index,
                level=level.level,
                started_at=level.started_at,
                status=level_status,
                metrics=level.metrics,
                client=level.client,
                message=redact(level.message),
                gpu=level.gpu,
                prompt_sampling=level.prompt_sampling,
            )
    return run_id
