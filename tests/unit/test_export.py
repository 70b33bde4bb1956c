"""vLLM --save-result JSON, the per-level CSV and the --out sweep file."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from backends.bench.export import (
    read_level_results,
    summarize_server,
    sweep_file_content,
    sweep_to_csv,
    to_vllm_result,
    write_level_results,
)
from backends.bench.metrics import compute_metrics
from backends.bench.models import Axis, ClientStats, LoadLevel, RequestRecord
from backends.bench.results import LevelResult, RunStatus, SweepConfig, SweepResult
from backends.errors import ConfigError
from backends.target_types import ServerSnapshot, Target, TargetCapabilities, TargetKind

LATENCY_KEYS = [
    f"{stat}_{metric}_ms"
    for metric in ("ttft", "tpot", "itl", "e2el")
    for stat in ("mean", "median", "std", "p99")
]

# vLLM's order: setup, traffic, benchmark() result, then per-metric statistics; ServeDeck's one extra key.
NON_DETAILED_KEYS = [
    "date",
    "endpoint_type",
    "backend",
    "label",
    "model_id",
    "tokenizer_id",
    "num_prompts",
    "request_rate",
    "burstiness",
    "max_concurrency",
    "duration",
    "completed",
    "failed",
    "total_input_tokens",
    "total_output_tokens",
    "request_throughput",
    "request_goodput",
    "output_throughput",
    "total_token_throughput",
    "latencies",
    "queue_times",
    "max_output_tokens_per_s",
    "max_concurrent_requests",
    "rtfx",
    *LATENCY_KEYS,
    "servedeck",
]


def make_config(**overrides: object) -> SweepConfig:
    values: dict[str, object] = {
        "target": Target(
            name="twin-h100",
            base_url="http://127.0.0.1:8000/v1",
            model="google/gemma-3-27b-it",
            kind=TargetKind.TWIN,
            capabilities=TargetCapabilities(tokenize=True, metrics=True),
        ),
        "axis": Axis.CONCURRENCY,
        "levels": [1.0, 8.0],
        "num_prompts": 3,
        "label": "h100-run",
    }
    values.update(overrides)
    return SweepConfig.model_validate(values)


def make_records() -> list[RequestRecord]:
    return [
        # completed: queued 0, sent 0.1, chunks 0.3 / 0.5 / 0.9, usage 3 out / 12 in
        RequestRecord(
            index=0,
            prompt_len=10,
            expected_output_len=3,
            queued_at=0.0,
            sent_at=0.1,
            first_token_at=0.3,
            chunk_times=[0.3, 0.5, 0.9],
            chunk_tokens=[1, 1, 1],
            input_tokens=12,
            output_tokens=3,
            success=True,
        ),
        # failed before any token
        RequestRecord(
            index=2,
            prompt_len=7,
            expected_output_len=3,
            queued_at=0.0,
            sent_at=0.2,
            error="HTTP 500: engine died",
            http_status=500,
        ),
        # completed without usage: 2 chunk tokens
        RequestRecord(
            index=1,
            prompt_len=8,
            expected_output_len=3,
            queued_at=0.0,
            sent_at=0.0,
            first_token_at=0.4,
            chunk_times=[0.4, 0.6],
            chunk_tokens=[1, 1],
            success=True,
        ),
    ]


def make_level(
    config: SweepConfig, *, value: float = 8.0, status: RunStatus = RunStatus.COMPLETE, index: int = 0
) -> LevelResult:
    records = make_records()
    metrics = compute_metrics(
        records, 2.0, goodput_slos_ms=config.goodput_slos_ms or None, percentiles=config.percentiles
    )
    return LevelResult(
        index=index,
        level=LoadLevel(
            axis=config.axis,
            value=value,
            burstiness=config.burstiness,
            max_concurrency=config.max_concurrency,
        ),
        started_at=datetime(2025, 3, 4, 5, 6, 7),
        status=status,
        metrics=metrics,
        client=ClientStats(loop_lag_p99_ms=12.5, client_limited=True, reason="event loop lag"),
        records=records,
        server_snapshots=[
            ServerSnapshot(t=0.0, source="vllm-v1", running=2, waiting=0, kv_cache_usage=0.1,
                           prefix_cache_hits_total=10, prefix_cache_queries_total=100,
                           generation_tokens_total=1000),
            ServerSnapshot(t=1.0, source="vllm-v1", running=4, waiting=2, kv_cache_usage=0.3,
                           prefix_cache_hits_total=40, prefix_cache_queries_total=160,
                           generation_tokens_total=1005),
        ],
    )  # fmt: skip


def make_sweep(config: SweepConfig) -> SweepResult:
    return SweepResult(
        run_id="run-42",
        config=config,
        started_at=datetime(2025, 3, 4, 5, 6, 0, tzinfo=UTC),
        finished_at=datetime(2025, 3, 4, 5, 9, 0, tzinfo=UTC),
        status=RunStatus.PARTIAL,
        message="cancelled by the user after level 2",
        levels=[
            make_level(config, value=1.0, index=0),
            make_level(config, value=8.0, status=RunStatus.PARTIAL, index=1),
        ],
    )


def test_non_detailed_export_has_exactly_vllms_keys_in_vllms_order() -> None:
    config = make_config()
    result = to_vllm_result(make_level(config), config)
    assert list(result) == NON_DETAILED_KEYS


def test_export_values_follow_vllm_conventions() -> None:
    config = make_config()
    result = to_vllm_result(make_level(config), config)
    assert result["date"] == "20250304-050607"
    assert result["endpoint_type"] == result["backend"] == "openai-chat"
    assert result["label"] == "h100-run"
    assert result["model_id"] == result["tokenizer_id"] == "google/gemma-3-27b-it"
    assert result["num_prompts"] == 3
    assert result["request_rate"] == "inf"  # closed loop: all released at once, capped at 8 in flight
    assert result["max_concurrency"] == 8
    assert result["burstiness"] == 1.0
    assert (result["completed"], result["failed"]) == (2, 1)
    assert result["total_input_tokens"] == 18  # the dataset's prompt lengths, 10 + 8, as vLLM's client
    assert result["servedeck"]["server_input_tokens"] is None  # the second request reported no usage
    assert result["total_output_tokens"] == 5  # 3 (usage) + 2 (chunks)
    assert result["request_goodput"] is None  # no SLOs
    # per request, sorted by index: e2el 0.9-0.1 = 0.8, 0.6-0.0 = 0.6, failed -> 0.0 (vLLM's default)
    assert result["latencies"] == pytest.approx([0.8, 0.6, 0.0])
    assert result["queue_times"] == pytest.approx([0.1, 0.0, 0.2])
    # ttft 0.2 and 0.4 -> mean 300 ms; e2el 0.8 and 0.6 -> mean 700 ms
    assert result["mean_ttft_ms"] == pytest.approx(300.0)
    assert result["mean_e2el_ms"] == pytest.approx(700.0)
    json.dumps(result, allow_nan=False)  # plain JSON, no NaN/Infinity


def test_servedeck_extras_are_under_one_key() -> None:
    config = make_config()
    extras = to_vllm_result(make_level(config, status=RunStatus.PARTIAL), config)["servedeck"]
    assert extras["axis"] == "concurrency"
    assert extras["level_value"] == 8.0
    assert extras["status"] == "partial"
    assert extras["client_limited"] is True
    assert extras["client"]["reason"] == "event loop lag"
    assert extras["target"] == {"name": "twin-h100", "kind": "twin", "base_url": "http://127.0.0.1:8000"}
    assert extras["output_len_sources"] == {"usage": 1, "chunks": 1}
    # queue times of completed requests 0.1 and 0.0 -> mean 50 ms
    assert extras["client_queue_time"]["mean_client_queue_time_ms"] == pytest.approx(50.0)
    server = extras["server"]
    assert server["samples"] == 2
    assert server["running_max"] == 4 and server["waiting_mean"] == 1.0
    assert server["kv_cache_usage_max"] == pytest.approx(0.3)
    assert server["generation_tokens"] == 5.0  # 1005 - 1000
    assert server["prefix_cache_hit_rate"] == pytest.approx(0.5)  # (40-10) / (160-100)


def test_detailed_export_adds_vllms_per_request_arrays() -> None:
    config = make_config()
    level = make_level(config)
    plain = to_vllm_result(level, config)
    detailed = to_vllm_result(level, config, detailed=True)
    assert set(detailed) - set(plain) == {
        "input_lens",
        "output_lens",
        "ttfts",
        "itls",
        "start_times",
        "generated_texts",
        "errors",
    }
    assert detailed["input_lens"] == [10, 8, 7]  # the dataset's prompt lengths (vLLM: output.prompt_len)
    assert detailed["generated_texts"] == [None, None, None]  # the load generator keeps no text
    assert detailed["output_lens"] == [3, 2, 0]
    assert detailed["ttfts"] == pytest.approx([0.2, 0.4, 0.0])
    assert [pytest.approx(gaps) for gaps in detailed["itls"]] == [[0.2, 0.4], [0.2], []]
    assert detailed["start_times"] == [0.1, 0.0, 0.2]
    assert detailed["errors"] == ["", "", "HTTP 500: engine died"]


def test_open_loop_level_and_fractional_percentile_keys() -> None:
    config = make_config(
        axis=Axis.REQUEST_RATE,
        levels=[2.5],
        burstiness=0.5,
        max_concurrency=64,
        percentiles=[50, 99.9],
        goodput_slos_ms={"ttft": 250},
        endpoint="completions",
    )
    result = to_vllm_result(make_level(config, value=2.5), config)
    assert result["request_rate"] == 2.5
    assert result["burstiness"] == 0.5
    assert result["max_concurrency"] == 64
    assert result["backend"] == "openai"
    assert "p50_ttft_ms" in result and "p99.9_itl_ms" in result and "p99_ttft_ms" not in result
    # ttft 0.2 passes 250 ms, 0.4 does not -> 1 good / 2 s
    assert result["request_goodput"] == pytest.approx(0.5)


def test_target_without_tokenize_reports_the_tiktoken_fallback() -> None:
    config = make_config(target=Target(name="manual", base_url="http://127.0.0.1:9000", model="my-model"))
    assert to_vllm_result(make_level(config), config)["tokenizer_id"] == "cl100k_base"


def test_unknown_endpoint_is_refused() -> None:
    config = make_config(endpoint="embeddings")
    with pytest.raises(ConfigError, match="use 'chat'"):
        to_vllm_result(make_level(config), config)


def test_server_summary_without_snapshots_is_empty() -> None:
    summary = summarize_server([])
    assert (
        summary.samples == 0 and summary.kv_cache_usage_max is None and summary.prefix_cache_hit_rate is None
    )


def test_csv_has_one_row_per_level_with_the_configured_percentiles() -> None:
    sweep = make_sweep(make_config())
    lines = sweep_to_csv(sweep).splitlines()
    header = lines[0].split(",")
    assert header == [
        "axis", "value", "status", "completed", "failed", "duration_s",
        "request_throughput", "output_throughput", "total_token_throughput", "request_goodput",
        "mean_ttft_ms", "median_ttft_ms", "p99_ttft_ms",
        "mean_tpot_ms", "median_tpot_ms", "p99_tpot_ms",
        "mean_itl_ms", "median_itl_ms", "p99_itl_ms",
        "mean_e2el_ms", "median_e2el_ms", "p99_e2el_ms",
        "max_output_tokens_per_s", "max_concurrent_requests", "client_limited",
    ]  # fmt: skip
    assert len(lines) == 3
    first = dict(zip(header, lines[1].split(","), strict=True))
    second = dict(zip(header, lines[2].split(","), strict=True))
    assert (first["axis"], first["value"], first["status"]) == ("concurrency", "1", "complete")
    assert (second["value"], second["status"]) == ("8", "partial")
    assert (first["completed"], first["failed"], first["duration_s"]) == ("2", "1", "2.0")
    assert float(first["request_throughput"]) == pytest.approx(1.0)  # 2 completed / 2 s
    assert first["request_goodput"] == ""  # no SLOs: empty, not 0
    assert float(first["mean_ttft_ms"]) == pytest.approx(300.0)
    assert first["max_concurrent_requests"] == "2"  # [0.1, 0.9) and [0.0, 0.6) overlap
    assert first["client_limited"] == "True"


def test_csv_of_a_sweep_without_levels_is_just_the_header() -> None:
    sweep = make_sweep(make_config(percentiles=[90, 99.9]))
    sweep.levels = []
    lines = sweep_to_csv(sweep).splitlines()
    assert len(lines) == 1 and "p99.9_ttft_ms" in lines[0] and "p90_e2el_ms" in lines[0]


def test_out_file_round_trips(tmp_path: Path) -> None:
    sweep = make_sweep(make_config(goodput_slos_ms={"ttft": 250, "e2el": 1000}))
    path = write_level_results(sweep, tmp_path / "sweep.json")
    saved = read_level_results(path)
    header = saved.servedeck_sweep
    assert header.format_version == 1
    assert (header.run_id, header.status, header.message) == ("run-42", RunStatus.PARTIAL, sweep.message)
    assert header.config == sweep.config
    assert header.level_values == [1.0, 8.0] and header.levels_saved == 2
    assert header.started_at == sweep.started_at
    expected = json.loads(json.dumps(sweep_file_content(sweep)))
    assert saved.levels == expected["levels"]
    assert [level["servedeck"]["level_value"] for level in saved.levels] == [1.0, 8.0]
    assert not list(tmp_path.glob(".sweep.json.*"))  # no temporary file left behind


def test_out_file_can_carry_detailed_arrays(tmp_path: Path) -> None:
    sweep = make_sweep(make_config())
    saved = read_level_results(write_level_results(sweep, tmp_path / "d.json", detailed=True))
    assert saved.levels[0]["errors"] == ["", "", "HTTP 500: engine died"]


def test_writing_into_a_missing_folder_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist; create it first"):
        write_level_results(make_sweep(make_config()), tmp_path / "nope" / "sweep.json")


def test_writing_onto_a_directory_is_refused(tmp_path: Path) -> None:
    (tmp_path / "taken").mkdir()
    with pytest.raises(ConfigError, match="cannot write results"):
        write_level_results(make_sweep(make_config()), tmp_path / "taken")
    assert not [p for p in tmp_path.iterdir() if p.name != "taken"]  # temporary file removed


def test_reading_a_missing_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        read_level_results(tmp_path / "absent.json")


def test_reading_a_truncated_file_is_refused(tmp_path: Path) -> None:
    path = write_level_results(make_sweep(make_config()), tmp_path / "sweep.json")
    path.write_text(path.read_text()[:200])
    with pytest.raises(ConfigError, match="not valid JSON"):
        read_level_results(path)


def test_reading_a_plain_vllm_result_is_refused(tmp_path: Path) -> None:
    config = make_config()
    path = tmp_path / "vllm.json"
    path.write_text(json.dumps(to_vllm_result(make_level(config), config)))
    with pytest.raises(ConfigError, match="not a ServeDeck sweep results file"):
        read_level_results(path)


def test_reading_another_format_version_is_refused(tmp_path: Path) -> None:
    content = sweep_file_content(make_sweep(make_config()))
    content["servedeck_sweep"]["format_version"] = 99
    path = tmp_path / "future.json"
    path.write_text(json.dumps(content))
    with pytest.raises(ConfigError, match="format version 99"):
        read_level_results(path)


def test_reading_a_damaged_header_is_refused(tmp_path: Path) -> None:
    content = sweep_file_content(make_sweep(make_config()))
    del content["servedeck_sweep"]["run_id"]
    path = tmp_path / "damaged.json"
    path.write_text(json.dumps(content))
    with pytest.raises(ConfigError, match=r"damaged ServeDeck results file: servedeck_sweep\.run_id"):
        read_level_results(path)
