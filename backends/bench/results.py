"""Results of a level and of a sweep, and their exports (vLLM ``--save-result`` JSON, CSV)."""

from __future__ import annotations

import math
from datetime import datetime
from enum import StrEnum
from typing import Any, Self

from pydantic import BaseModel, Field, ValidationInfo, ValidatorFunctionWrapHandler, model_validator

from backends.bench.input_grammar import check_goodput, check_levels, check_percentiles
from backends.bench.metrics import BenchmarkMetrics
from backends.bench.models import Axis, ClientStats, LoadLevel, RequestRecord, TurnMetrics
from backends.bench.search_record import SearchRecord
from backends.errors import ConfigError
from backends.target_types import ServerSnapshot, Target
from backends.telemetry.models import LevelGpuTelemetry

# Validation context for a config read back from History, a journal, a bundle or a results file: it was
# checked when it was planned, and a run saved under older limits (or a search's many levels) stays readable.
STORED: dict[str, Any] = {"stored": True}


class RunStatus(StrEnum):
    RUNNING = "running"
    COMPLETE = "complete"
    PARTIAL = "partial"
    FAILED = "failed"


class PromptSampling(StrEnum):
    """How a level's prompts were drawn from the dataset."""

    OWN = "own"  # its own sample, disjoint from the other levels'
    SAME = "same"  # the same sample at every level (vLLM's and the article's behaviour)
    OVERLAP = "overlap"  # the dataset is too small for disjoint samples: levels share prompts


class DatasetSpec(BaseModel):
    """Which prompts to send: bundled ShareGPT, a user's ShareGPT-format file, or synthetic random."""

    kind: str = "sharegpt"  # "sharegpt" | "file" | "random" | "prefix_repetition" | "custom" | "codebase_qa"
    path: str | None = None
    random_input_len: int = 1024
    random_output_len: int = 128
    random_range_ratio: float = 0.0
    random_prefix_len: int = 0
    # vLLM's prefix_repetition dataset: num_prefixes shared prefixes, each followed by its own suffixes.
    prefix_len: int = 256
    suffix_len: int = 256
    num_prefixes: int = 10
    prefix_output_len: int = 128
    custom_output_len: int = 256  # vLLM's custom (JSONL {"prompt": ...}) dataset
    # "codebase_qa": one long shared document (a user's file or folder, else ShareGPT text) of
    # document_len tokens, then a different ShareGPT question per request.
    document_path: str | None = None
    document_len: int = 4096
    # "trace": a recorded trace at ``path`` (Mooncake JSON Lines or BurstGPT CSV) replayed: its arrival times
    # (times trace_time_scale) and lengths, prompts of ShareGPT text (backends/bench/traces.py).
    trace_format: str | None = None  # "mooncake" | "burstgpt"; None: from the file's suffix
    trace_time_scale: float = 1.0
    # "multi_turn": ShareGPT conversations (bundled, or a user's file at ``path``) replayed turn by turn,
    # one session per conversation; history = earlier turns and the model's own answers (or the dataset's).
    turns: int = 4
    dataset_answers: bool = False
    think_time_s: float = 0.0
    think_time_dist: str = "fixed"  # "fixed" | "exponential" (mean think_time_s)
    max_context_len: int = 2048


class SweepConfig(BaseModel):
    target: Target
    dataset: DatasetSpec = Field(default_factory=DatasetSpec)
    axis: Axis
    levels: list[float]
    num_prompts: int = 100
    output_len: int | None = None
    ignore_eos: bool = False
    seed: int = 0
    same_prompts: bool = Field(
        default=False,
        description="send the same prompts at every level (vLLM's behaviour); default: each level its own",
    )
    burstiness: float = 1.0
    max_concurrency: int | None = None
    ramp_up_strategy: str | None = Field(default=None, description="linear | exponential (vLLM's ramp-up)")
    ramp_up_start_rps: float | None = None
    ramp_up_end_rps: float | None = None
    goodput_slos_ms: dict[str, float] = Field(default_factory=dict)
    percentiles: list[float] = Field(default_factory=lambda: [99.0])
    endpoint: str = "chat"  # "chat" -> /v1/chat/completions, "completions" -> /v1/completions
    temperature: float = 0.0
    label: str | None = None
    search: SearchRecord | None = Field(
        default=None, description="set on the run of an SLO search (bench --find-max): its verdicts"
    )
    usd_per_hour: float | None = Field(
        default=None, gt=0, description="the hardware's price when the run was planned ($ per hour)"
    )
    price_source: str | None = Field(default=None, description="where usd_per_hour came from")
    gpu_metrics_url: str | None = Field(
        default=None,
        description="dcgm-exporter /metrics to read GPU telemetry from; None: a twin's own /dcgm, else none",
    )
    gpu_metrics_pods: list[str] | None = Field(
        default=None, description="keep only these pods' GPUs (the target deployment's); None: every GPU"
    )
    workers: int = 1
    request_timeout_s: float = 600.0
    idle_timeout_s: float = 60.0

    @model_validator(mode="wrap")
    @classmethod
    def _within_limits(cls, data: Any, handler: ValidatorFunctionWrapHandler, info: ValidationInfo) -> Self:
        if isinstance(data, cls):  # a config passed on (into a result, an event): checked when it was built
            return data
        config: Self = handler(data)
        if not (info.context or {}).get("stored"):
            config.check_limits()
        return config

    def check_limits(self) -> None:
        """ConfigError (one line) for a field outside what a sweep can run. ``sweep.validate_config`` checks
        the rest before a run: the endpoint (an export names a stored one it cannot write), and what needs
        the dataset and the target."""
        check_levels(self.axis, self.levels)
        check_percentiles(self.percentiles)
        check_goodput(self.goodput_slos_ms)
        if self.num_prompts < 1:
            raise ConfigError(f"--num-prompts must be >= 1, got {self.num_prompts}")
        if self.output_len is not None and self.output_len < 1:
            raise ConfigError(f"--output-len must be >= 1, got {self.output_len}")
        if not (math.isfinite(self.temperature) and self.temperature >= 0):
            raise ConfigError(f"--temperature must be a finite number >= 0, got {self.temperature}")
        if not self.burstiness > 0:
            raise ConfigError(f"--burstiness must be > 0 (1 = Poisson), got {self.burstiness:g}")
        for flag, seconds in (
            ("--request-timeout", self.request_timeout_s),
            ("--idle-timeout", self.idle_timeout_s),
        ):
            if not (math.isfinite(seconds) and seconds > 0):
                raise ConfigError(f"{flag} must be a number of seconds > 0, got {seconds:g}")
        if self.max_concurrency is not None and self.max_concurrency < 1:
            raise ConfigError(f"--max-concurrency must be >= 1, got {self.max_concurrency}")
        if self.workers < 1:
            raise ConfigError(f"--workers must be >= 1, got {self.workers}")

    def load_levels(self) -> list[LoadLevel]:
        return [
            LoadLevel(
                axis=self.axis,
                value=value,
                burstiness=self.burstiness,
                max_concurrency=self.max_concurrency,
                ramp_up_strategy=self.ramp_up_strategy,
                ramp_up_start_rps=self.ramp_up_start_rps,
                ramp_up_end_rps=self.ramp_up_end_rps,
            )
            for value in self.levels
        ]


class LevelResult(BaseModel):
    index: int
    level: LoadLevel
    started_at: datetime
    status: RunStatus
    metrics: BenchmarkMetrics
    client: ClientStats
    records: list[RequestRecord]
    server_snapshots: list[ServerSnapshot] = Field(default_factory=list)
    message: str | None = None
    prompt_sampling: PromptSampling | None = Field(default=None, description="None: not known")
    gpu: LevelGpuTelemetry | None = Field(default=None, description="None: no GPU telemetry was read")
    turns: list[TurnMetrics] | None = Field(default=None, description="multi-turn: TTFT by turn index")


class SweepResult(BaseModel):
    run_id: str
    config: SweepConfig
    started_at: datetime
    finished_at: datetime | None = None
    status: RunStatus = RunStatus.RUNNING
    levels: list[LevelResult] = Field(default_factory=list)
    message: str | None = None
