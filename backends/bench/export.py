"""Result exports: vLLM ``--save-result`` JSON per level, a per-level CSV, and the ``--out`` sweep file.

The per-level dict uses vLLM's own key names and order (``vllm/benchmarks/serve.py``, ``main_async`` +
``benchmark()``), so tools that read vLLM result files read ours. Everything ServeDeck adds lives under the
single key ``"servedeck"``. Differences from a vLLM file, all deliberate:

- ``date`` is when the level started (vLLM stamps when it saves).
- ``generated_texts`` (``--save-detailed`` only, as in vLLM) holds ``null`` per request: the load
  generator does not keep response text. ``rtfx`` is 0.0, what vLLM writes for text (it is ASR only).
- ``total_input_tokens`` sums the dataset's prompt lengths as vLLM's client does; the server's own count
  (chat template included) is ``servedeck.server_input_tokens``.
- ``start_times`` are seconds from the level start (vLLM: raw ``perf_counter`` values); only differences
  between them mean anything in either tool.
- ``client_queue_time`` statistics go under ``servedeck`` (vLLM only prints them when asked for).

The ``--out`` file (``write_level_results``) is one JSON object::

    {"servedeck_sweep": {"format_version": 1, "run_id": ..., "status": ..., "config": {...}, ...},
     "levels": [<vLLM result dict of level 0>, <level 1>, ...]}
"""

from __future__ import annotations

import csv
import io
import json
import os
import tempfile
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from backends.bench.metrics import (
    LATENCY_METRICS,
    BenchmarkMetrics,
    Distribution,
    is_completed,
    percentile_key,
    request_latency,
    resolve_output_len,
    summarize,
    validate_percentiles,
)
from backends.bench.models import Axis, RequestRecord
from backends.bench.results import STORED, LevelResult, RunStatus, SweepConfig, SweepResult
from backends.errors import ConfigError
from backends.prometheus import prefix_cache_hit_rate, prefix_cache_warning
from backends.target_types import ServerSnapshot

SWEEP_FILE_FORMAT_VERSION = 1

ENDPOINT_BACKENDS = {"chat": "openai-chat", "completions": "openai"}
DETAILED_KEYS = ("input_lens", "output_lens", "ttfts", "itls", "start_times", "generated_texts", "errors")
# vLLM's --percentile-metrics: the default and every name it takes.
DEFAULT_PERCENTILE_METRICS = ("ttft", "tpot", "itl")
PERCENTILE_METRICS = (*LATENCY_METRICS, "client_queue_time", "e2el_including_client_queue")
VLLM_BACKENDS = ("openai", "openai-chat", "vllm")
NO_CHUNK_ERROR = "Never received a valid chunk to calculate TTFT."

CSV_COLUMNS_HEAD = (
    "axis",
    "value",
    "status",
    "completed",
    "failed",
    "duration_s",
    "request_throughput",
    "output_throughput",
    "total_token_throughput",
    "request_goodput",
)
CSV_COLUMNS_TAIL = ("max_output_tokens_per_s", "max_concurrent_requests", "client_limited")


class ServerSummary(BaseModel):
    """What the server's /metrics said during one level: gauges as max/mean, counters as increases."""

    samples: int
    source: str | None = None
    running_max: float | None = None
    running_mean: float | None = None
    waiting_max: float | None = None
    waiting_mean: float | None = None
    kv_cache_usage_max: float | None = None
    kv_cache_usage_mean: float | None = None
    prompt_tokens: float | None = None
    generation_tokens: float | None = None
    preemptions: float | None = None
    prefix_cache_hit_rate: float | None = None


class SweepFileHeader(BaseModel):
    format_version: int
    run_id: str
    status: RunStatus
    message: str | None = None
    started_at: datetime
    finished_at: datetime | None = None
    axis: Axis
    level_values: list[float]
    levels_saved: int
    config: SweepConfig


class SavedSweep(BaseModel):
    """The ``--out`` file read back: the sweep header and one vLLM result dict per finished level."""

    servedeck_sweep: SweepFileHeader
    levels: list[dict[str, Any]]


def backend_name(endpoint: str) -> str:
    try:
        return ENDPOINT_BACKENDS[endpoint]
    except KeyError:
        raise ConfigError(
            f"unknown endpoint {endpoint!r}: use 'chat' (/v1/chat/completions) "
            "or 'completions' (/v1/completions)"
        ) from None


def distribution_keys(metric: str, dist: Distribution) -> dict[str, float]:
    """vLLM's keys for one metric: mean_/median_/std_<m>_ms then p<P>_<m>_ms in the asked order."""
    keys = {
        f"mean_{metric}_ms": dist.mean,
        f"median_{metric}_ms": dist.median,
        f"std_{metric}_ms": dist.std,
    }
    for p_word, value in dist.percentiles.items():
        keys[f"p{p_word}_{metric}_ms"] = value
    return keys


def summarize_server(snapshots: Sequence[ServerSnapshot]) -> ServerSummary:
    def gauge(values: list[float | None]) -> tuple[float | None, float | None]:
        present = [v for v in values if v is not None]
        if not present:
            return None, None
        return max(present), sum(present) / len(present)

    def increase(values: list[float | None]) -> float | None:
        present = [v for v in values if v is not None]
        return present[-1] - present[0] if len(present) >= 2 else None

    ordered = sorted(snapshots, key=lambda s: s.t)
    running_max, running_mean = gauge([s.running for s in ordered])
    waiting_max, waiting_mean = gauge([s.waiting for s in ordered])
    kv_max, kv_mean = gauge([s.kv_cache_usage for s in ordered])
    return ServerSummary(
        samples=len(ordered),
        source=ordered[-1].source if ordered else None,
        running_max=running_max,
        running_mean=running_mean,
        waiting_max=waiting_max,
        waiting_mean=waiting_mean,
        kv_cache_usage_max=kv_max,
        kv_cache_usage_mean=kv_mean,
        prompt_tokens=increase([s.prompt_tokens_total for s in ordered]),
        generation_tokens=increase([s.generation_tokens_total for s in ordered]),
        preemptions=increase([s.preemptions_total for s in ordered]),
        prefix_cache_hit_rate=prefix_cache_hit_rate(ordered),
    )


def _local_date(moment: datetime) -> str:
    local = moment.astimezone() if moment.tzinfo is not None else moment
    return local.strftime("%Y%m%d-%H%M%S")


def _tokenizer_id(config: SweepConfig) -> str:
    # Token counts come from the target's own /tokenize when it has one, else tiktoken cl100k_base.
    return config.target.model if config.target.capabilities.tokenize else "cl100k_base"


def _error_text(record: RequestRecord) -> str:
    if is_completed(record):
        return ""
    return record.error or NO_CHUNK_ERROR


def check_percentile_metrics(names: Sequence[str]) -> list[str]:
    """vLLM's --percentile-metrics names, order kept; anything else is a ConfigError."""
    chosen: list[str] = []
    for name in names:
        if name not in PERCENTILE_METRICS:
            raise ConfigError(
                f"unknown percentile metric {name!r}: use a comma list of {', '.join(PERCENTILE_METRICS)}"
            )
        if name not in chosen:
            chosen.append(name)
    if not chosen:
        raise ConfigError(f"--percentile-metrics needs at least one of {', '.join(PERCENTILE_METRICS)}")
    return chosen


def _queue_inclusive_e2els(records: Sequence[RequestRecord]) -> list[float]:
    return [latency + (r.queue_time or 0.0) for r in records if (latency := request_latency(r)) is not None]


def _metric_distribution(
    metric: str, metrics: BenchmarkMetrics, records: Sequence[RequestRecord], percentiles: Sequence[float]
) -> Distribution:
    if metric == "client_queue_time":
        return metrics.client_queue_time
    if metric == "e2el_including_client_queue":
        return summarize(_queue_inclusive_e2els(records), percentiles)
    dist: Distribution = getattr(metrics, metric)
    return dist


def to_vllm_result(
    level_result: LevelResult,
    config: SweepConfig,
    *,
    detailed: bool = False,
    backend: str | None = None,
    tokenizer_id: str | None = None,
    percentile_metrics: Sequence[str] | None = None,
) -> dict[str, Any]:
    """One level as vLLM's ``--save-result`` JSON (``--save-detailed`` when ``detailed``).

    ``backend``: vLLM's --backend name to write (default: the one the endpoint implies);
    ``tokenizer_id``: the --tokenizer asked for; ``percentile_metrics``: vLLM's --percentile-metrics
    (default: all four of ttft, tpot, itl, e2el).
    """
    level = level_result.level
    metrics = level_result.metrics
    records = sorted(level_result.records, key=lambda r: r.index)
    rate = level.request_rate
    backend = backend or backend_name(config.endpoint)

    result: dict[str, Any] = {
        "date": _local_date(level_result.started_at),
        "endpoint_type": backend,
        "backend": backend,
        "label": config.label,
        "model_id": config.target.model,
        "tokenizer_id": tokenizer_id or _tokenizer_id(config),
        "num_prompts": config.num_prompts,
        "request_rate": rate if rate < float("inf") and level.ramp_up is None else "inf",
        "burstiness": level.burstiness,
        "max_concurrency": level.concurrency_cap,
    }
    if level.ramp_up is not None:
        strategy, start_rps, end_rps = level.ramp_up
        result["ramp_up_strategy"] = strategy
        result["ramp_up_start_rps"] = start_rps
        result["ramp_up_end_rps"] = end_rps
    result |= {
        "duration": metrics.duration,
        "completed": metrics.completed,
        "failed": metrics.failed,
        "total_input_tokens": metrics.total_input_tokens,
        "total_output_tokens": metrics.total_output_tokens,
        "request_throughput": metrics.request_throughput,
        "request_goodput": metrics.request_goodput,
        "output_throughput": metrics.output_throughput,
        "total_token_throughput": metrics.total_token_throughput,
    }
    if detailed:
        result["input_lens"] = [r.prompt_len for r in records]
        result["output_lens"] = [resolve_output_len(r)[0] if is_completed(r) else 0 for r in records]
        result["ttfts"] = [r.ttft if r.ttft is not None else 0.0 for r in records]
        result["itls"] = [r.itls for r in records]
    result["latencies"] = [request_latency(r) or 0.0 for r in records]
    if detailed:
        result["start_times"] = [r.sent_at if r.sent_at is not None else r.queued_at for r in records]
    result["queue_times"] = [r.queue_time if r.queue_time is not None else 0.0 for r in records]
    if detailed:
        result["generated_texts"] = [None for _ in records]
        result["errors"] = [_error_text(r) for r in records]
    result["max_output_tokens_per_s"] = metrics.max_output_tokens_per_s
    result["max_concurrent_requests"] = metrics.max_concurrent_requests
    result["rtfx"] = 0.0
    chosen = LATENCY_METRICS if percentile_metrics is None else check_percentile_metrics(percentile_metrics)
    for metric in chosen:
        result.update(
            distribution_keys(metric, _metric_distribution(metric, metrics, records, config.percentiles))
        )

    result["servedeck"] = {
        "level_index": level_result.index,
        "axis": level.axis.value,
        "level_value": level.value if level.value < float("inf") else "inf",
        "level_label": level.label,
        "status": level_result.status.value,
        "message": level_result.message,
        "started_at": level_result.started_at.isoformat(),
        "target": {
            "name": config.target.name,
            "kind": config.target.kind.value,
            "base_url": config.target.base_url,
        },
        "percentiles": config.percentiles,
        "goodput_slos_ms": config.goodput_slos_ms,
        "good_completed": metrics.good_completed,
        "server_input_tokens": metrics.server_input_tokens,
        "client_queue_time": distribution_keys("client_queue_time", metrics.client_queue_time),
        "output_len_sources": metrics.output_len_sources,
        "notes": metrics.notes,
        "client_limited": level_result.client.client_limited,
        "client": level_result.client.model_dump(mode="json"),
        "server": summarize_server(level_result.server_snapshots).model_dump(mode="json"),
        # "same": vLLM's behaviour (--same-prompts), "own": a disjoint sample per level, "overlap": the
        # dataset was too small for disjoint samples.
        "prompt_sampling": level_result.prompt_sampling.value if level_result.prompt_sampling else None,
        "same_prompts": config.same_prompts,
        "prefix_cache_warning": prefix_cache_warning(
            prefix_cache_hit_rate(level_result.server_snapshots), level_result.prompt_sampling
        )
        if level_result.turns is None  # multi-turn resends its history: hits are the point
        else None,
    }
    if level_result.gpu is not None:
        result["servedeck"]["gpu"] = level_result.gpu.model_dump(mode="json")
    if level_result.turns is not None:
        # Multi-turn: TTFT by turn index (ms) and each turn's cached share of its prompts where known.
        result["servedeck"]["turns"] = [turn.model_dump(mode="json") for turn in level_result.turns]
    if metrics.ttft_minus_server_prompt is not None:
        result["servedeck"]["ttft_minus_server_prompt"] = distribution_keys(
            "ttft_minus_server_prompt", metrics.ttft_minus_server_prompt
        )
    return result


def _csv_columns(percentile_words: Sequence[str]) -> list[str]:
    columns = list(CSV_COLUMNS_HEAD)
    for metric in LATENCY_METRICS:
        columns += [f"mean_{metric}_ms", f"median_{metric}_ms"]
        columns += [f"p{word}_{metric}_ms" for word in percentile_words]
    return columns + list(CSV_COLUMNS_TAIL)


# Appended only when some level read GPU telemetry (a sweep without it keeps vLLM-like columns).
CSV_GPU_COLUMNS = (
    "gpu_state",
    "gpus",
    "gpu_util_mean",
    "dram_active_mean",
    "gpu_power_w_mean",
    "gpu_energy_kj",
    "kj_per_1m_output_tokens",
    "usd_per_1m_output_tokens",
)


def _gpu_cells(level: LevelResult) -> list[object]:
    gpu = level.gpu
    if gpu is None:
        return [""] * len(CSV_GPU_COLUMNS)

    def cell(value: float | None) -> object:
        return "" if value is None else value

    energy_kj = None if gpu.energy_j is None else gpu.energy_j / 1000.0
    return [
        gpu.state,
        gpu.gpus,
        cell(gpu.gpu_util_mean),
        cell(gpu.dram_active_mean),
        cell(gpu.power_w_mean),
        cell(energy_kj),
        cell(gpu.kj_per_1m_output_tokens),
        cell(gpu.usd_per_1m_output_tokens),
    ]


# Multi-turn sweeps only: the level's prefix-cache hit rate, then these per turn index k.
CSV_TURN_FIELDS = ("median_ttft_ms", "p99_ttft_ms", "prefix_cache_hit_rate")


def _turn_columns(turn_count: int) -> list[str]:
    if not turn_count:
        return []
    return ["prefix_cache_hit_rate"] + [
        f"turn{k}_{field}" for k in range(turn_count) for field in CSV_TURN_FIELDS
    ]


def _turn_cells(level: LevelResult, turn_count: int) -> list[object]:
    rate = prefix_cache_hit_rate(level.server_snapshots)
    cells: list[object] = ["" if rate is None else rate]
    by_index = {turn.turn: turn for turn in level.turns or []}
    for k in range(turn_count):
        turn = by_index.get(k)
        for field in CSV_TURN_FIELDS:
            value = None if turn is None else getattr(turn, field)
            cells.append("" if value is None else value)
    return cells


def sweep_to_csv(sweep: SweepResult) -> str:
    """One row per level; percentile columns are the sweep's configured percentiles (default p99)."""
    words = [percentile_key(p) for p in validate_percentiles(sweep.config.percentiles)]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    with_gpu = any(level.gpu is not None for level in sweep.levels)
    turn_count = max((len(level.turns or []) for level in sweep.levels), default=0)
    writer.writerow(
        _csv_columns(words) + (list(CSV_GPU_COLUMNS) if with_gpu else []) + _turn_columns(turn_count)
    )
    for level_result in sweep.levels:
        metrics = level_result.metrics
        row: list[object] = [
            level_result.level.axis.value,
            f"{level_result.level.value:g}",
            level_result.status.value,
            metrics.completed,
            metrics.failed,
            metrics.duration,
            metrics.request_throughput,
            metrics.output_throughput,
            metrics.total_token_throughput,
            "" if metrics.request_goodput is None else metrics.request_goodput,
        ]
        for metric in LATENCY_METRICS:
            dist: Distribution = getattr(metrics, metric)
            row += [dist.mean, dist.median]
            row += [dist.percentiles.get(word, "") for word in words]
        row += [
            metrics.max_output_tokens_per_s,
            metrics.max_concurrent_requests,
            level_result.client.client_limited,
        ]
        if with_gpu:
            row += _gpu_cells(level_result)
        if turn_count:
            row += _turn_cells(level_result, turn_count)
        writer.writerow(row)
    return buffer.getvalue()


def sweep_file_content(sweep: SweepResult, *, detailed: bool = False) -> dict[str, Any]:
    header = SweepFileHeader(
        format_version=SWEEP_FILE_FORMAT_VERSION,
        run_id=sweep.run_id,
        status=sweep.status,
        message=sweep.message,
        started_at=sweep.started_at,
        finished_at=sweep.finished_at,
        axis=sweep.config.axis,
        level_values=sweep.config.levels,
        levels_saved=len(sweep.levels),
        config=sweep.config,
    )
    return {
        "servedeck_sweep": header.model_dump(mode="json"),
        "levels": [to_vllm_result(level, sweep.config, detailed=detailed) for level in sweep.levels],
    }


def write_level_results(sweep: SweepResult, out_path: Path | str, *, detailed: bool = False) -> Path:
    """Write the ``--out`` JSON atomically (a crash never leaves half a file); returns the path."""
    return write_json_atomically(sweep_file_content(sweep, detailed=detailed), out_path)


def vllm_result_filename(
    *,
    label: str | None,
    backend: str,
    request_rate: float,
    max_concurrency: int | None,
    model_id: str,
    date: str,
    ramp_up: tuple[str, float, float] | None = None,
) -> str:
    """vLLM's ``compute_result_filename``: ``{label or backend}-{rate}qps[-concurrency{N}]-{model}-{date}``.

    The rate is written as Python writes vLLM's float argument (``500.0``, ``inf``); a ramp-up's as
    ``ramp-up-{strategy}-{start}qps-{end}qps``.
    """
    concurrency = f"-concurrency{max_concurrency}" if max_concurrency is not None else ""
    base_model = model_id.split("/")[-1]
    head = label or backend
    if ramp_up is not None:
        strategy, start, end = ramp_up
        rates = f"ramp-up-{strategy}-{_rps_word(start)}qps-{_rps_word(end)}qps"
        return f"{head}-{rates}{concurrency}-{base_model}-{date}.json"
    return f"{head}-{float(request_rate)}qps{concurrency}-{base_model}-{date}.json"


def _rps_word(value: float) -> str:
    # vLLM's ramp-up rates are ints on its command line.
    return str(int(value)) if float(value).is_integer() else str(value)


def write_json_atomically(data: Any, out_path: Path | str) -> Path:
    """Write ``data`` as indented JSON; a crash never leaves half a file. Returns the path."""
    path = Path(out_path).expanduser()
    text = json.dumps(data, indent=2)
    directory = path.parent
    if not directory.is_dir():
        raise ConfigError(
            f"cannot write results to {path}: folder {directory} does not exist; create it first"
        )
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    except OSError as err:
        raise ConfigError(f"cannot write results to {path}: {err.strerror}; choose a writable path") from err
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.write("\n")
        os.chmod(tmp_name, 0o644)  # mkstemp makes 0600; a results file is meant to be shared
        os.replace(tmp_name, path)
    except OSError as err:
        Path(tmp_name).unlink(missing_ok=True)
        raise ConfigError(f"cannot write results to {path}: {err.strerror}; choose a writable path") from err
    return path


def read_level_results(path: Path | str) -> SavedSweep:
    """Read an ``--out`` file written by ``write_level_results``."""
    source = Path(path).expanduser()
    try:
        raw = source.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"results file {source} does not exist") from None
    except OSError as err:
        raise ConfigError(f"cannot read results file {source}: {err.strerror}") from err
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as err:
        raise ConfigError(
            f"results file {source} is not valid JSON (line {err.lineno}): was it cut short?"
        ) from err
    if not isinstance(data, dict) or "servedeck_sweep" not in data:
        raise ConfigError(
            f"{source} is not a ServeDeck sweep results file (no 'servedeck_sweep' key); "
            "a single vLLM result file cannot be read as a sweep"
        )
    version = (
        data["servedeck_sweep"].get("format_version") if isinstance(data["servedeck_sweep"], dict) else None
    )
    if version != SWEEP_FILE_FORMAT_VERSION:
        raise ConfigError(
            f"{source} has results format version {version!r}; this ServeDeck reads version "
            f"{SWEEP_FILE_FORMAT_VERSION}"
        )
    try:
        return SavedSweep.model_validate(data, context=STORED)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise ConfigError(f"{source} is a damaged ServeDeck results file: {where}: {first['msg']}") from err
