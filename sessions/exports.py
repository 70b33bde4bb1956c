"""Files written from stored runs: vLLM ``--save-result`` JSON per level, the sweep CSV, bundles.

The vLLM and CSV content comes from ``backends.bench.export`` (one owner of those formats); this
module only loads the run and writes the files.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path

from backends.bench.results import LevelResult, SweepResult
from sessions.errors import SessionStoreError


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "run"


def vllm_file_name(sweep: SweepResult, level: LevelResult) -> str:
    """vLLM's pattern: ``{label}-{request_rate}qps[-concurrency{N}]-{base_model_id}-{date}.json``."""
    label = _slug(sweep.config.label or sweep.run_id)
    rate = level.level.request_rate
    rate_text = "inf" if rate == float("inf") else f"{rate:g}"
    cap = level.level.concurrency_cap
    concurrency = f"-concurrency{cap}" if cap is not None else ""
    model = _slug(sweep.config.target.model.split("/")[-1])
    local = level.started_at.astimezone() if level.started_at.tzinfo is not None else level.started_at
    return f"{label}-{rate_text}qps{concurrency}-{model}-{local:%Y%m%d-%H%M%S}.json"


def write_text_atomically(path: Path, text: str) -> Path:
    """Write ``text`` to ``path`` via a temporary file, so a crash never leaves half a file."""
    path = path.expanduser()
    if not path.parent.is_dir():
        raise SessionStoreError(f"cannot write {path}: folder {path.parent} does not exist; create it first")
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise SessionStoreError(f"cannot write {path}: {exc.strerror}; choose a writable folder") from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.chmod(tmp_name, 0o644)
        os.replace(tmp_name, path)
    except OSError as exc:
        Path(tmp_name).unlink(missing_ok=True)
        raise SessionStoreError(f"cannot write {path}: {exc.strerror}; choose a writable folder") from None
    return path


def write_vllm_results(sweep: SweepResult, directory: Path, *, detailed: bool = False) -> list[Path]:
    """One vLLM result file per finished level (``sweep`` must carry records: vLLM files list
    per-request latencies). Returns the paths written."""
    from backends.bench.export import to_vllm_result

    directory = directory.expanduser()
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SessionStoreError(f"cannot create {directory}: {exc.strerror}; choose another folder") from None
    written = []
    for level in sweep.levels:
        content = to_vllm_result(level, sweep.config, detailed=detailed)
        written.append(write_text_atomically(directory / vllm_file_name(sweep, level), json.dumps(content)))
    return written


def sweep_csv(sweep: SweepResult) -> str:
    from backends.bench.export import sweep_to_csv

    return sweep_to_csv(sweep)
