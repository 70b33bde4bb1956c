"""Typed views of stored bench runs, for History, the CLI and bundles."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field

from backends.bench.metrics import BenchmarkMetrics
from backends.bench.models import ClientStats, LoadLevel, RequestRecord
from backends.bench.results import PromptSampling, RunStatus, SweepConfig
from backends.target_types import ServerSnapshot
from backends.telemetry.models import LevelGpuTelemetry


class RunFilter(BaseModel):
    """History filters. Text filters match case-insensitively anywhere in the field."""

    target: str | None = None  # target name, base URL or model
    gpu: str | None = None
    label: str | None = None
    status: RunStatus | None = None
    since: datetime | None = None  # created at or after
    until: datetime | None = None  # created before
    limit: int | None = None


class RunSummary(BaseModel):
    id: str
    label: str | None
    gpu: str | None
    target_name: str
    base_url: str
    model: str
    axis: str
    level_values: list[float]
    created_at: datetime
    finished_at: datetime | None
    status: RunStatus
    message: str | None
    levels_stored: int
    records_stored: int
    kind: Literal["sweep", "search"] = "sweep"  # "search": an SLO search (config.search holds its verdicts)


class LevelSummary(BaseModel):
    """A stored level; ``metrics`` is ``None`` for a level that was cut off before it finished."""

    index: int
    level: LoadLevel
    started_at: datetime
    status: RunStatus
    records_stored: int
    metrics: BenchmarkMetrics | None
    client: ClientStats | None
    message: str | None
    gpu: LevelGpuTelemetry | None = None
    prompt_sampling: PromptSampling | None = None


class RunDetail(BaseModel):
    summary: RunSummary
    config: SweepConfig
    levels: list[LevelSummary]


class BundleLevel(BaseModel):
    index: int
    level: LoadLevel
    started_at: datetime
    status: RunStatus
    metrics: BenchmarkMetrics | None
    client: ClientStats | None
    message: str | None
    gpu: LevelGpuTelemetry | None = None
    prompt_sampling: PromptSampling | None = None
    records: list[RequestRecord] = Field(default_factory=list)
    server_snapshots: list[ServerSnapshot] = Field(default_factory=list)


BUNDLE_FORMAT = "servedeck-run"
BUNDLE_VERSION = 1  # keep in step with RunBundle.format_version


class RunBundle(BaseModel):
    """Everything stored about one run, as one JSON file that imports back unchanged."""

    format: Literal["servedeck-run"] = "servedeck-run"
    format_version: Literal[1] = 1
    run_id: str
    label: str | None
    gpu: str | None
    created_at: datetime
    finished_at: datetime | None
    status: RunStatus
    message: str | None
    config: SweepConfig
    levels: list[BundleLevel]
