"""compute_metrics against hand-computed numbers (vLLM ``calculate_metrics`` definitions).

Times are seconds from the level start; every expectation is worked out in the comments.
"""

from __future__ import annotations

import math

import pytest

from backends.bench.metrics import (
    compute_metrics,
    percentile_key,
    resolve_output_len,
    validate_goodput_slos,
    validate_percentiles,
)
from backends.bench.models import RequestRecord
from backends.errors import ConfigError


def record(
    index: int,
    sent: float | None,
    chunks: list[float],
    *,
    tokens: list[int] | None = None,
    output_tokens: int | None = None,
    input_tokens: int | None = None,
    prompt_len: int = 10,
    queued: float | None = None,
    success: bool = True,
    error: str | None = None,
) -> RequestRecord:
    return RequestRecord(
        index=index,
        prompt_len=prompt_len,
        expected_output_len=16,
        queued_at=queued if queued is not None else (sent if sent is not None else 0.0),
        sent_at=sent,
        first_token_at=chunks[0] if chunks else None,
        chunk_times=chunks,
        chunk_tokens=tokens if tokens is not None else [1] * len(chunks),
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        success=success,
        error=error,
    )


def test_one_token_output_is_left_out_of_tpot_and_counts_as_tpot_zero_for_goodput() -> None:
    records = [
        # ttft 0.1, one token: no TPOT; for goodput its tpot is 0 -> passes tpot:100
        record(0, 0.0, [0.1], output_tokens=1),
        # ttft 0.2, e2el 0.5, tpot (0.5-0.2)/(3-1) = 0.15 s -> fails tpot:100
        record(1, 0.0, [0.2, 0.3, 0.5], output_tokens=3),
    ]
    m = compute_metrics(records, 2.0, goodput_slos_ms={"tpot": 100}, percentiles=[99])
    assert m.tpot.mean == pytest.approx(150.0)  # only request 1
    assert m.tpot.median == pytest.approx(150.0)
    assert m.tpot.std == pytest.approx(0.0)
    assert m.tpot.percentiles == {"99": pytest.approx(150.0)}
    assert m.good_completed == 1
    assert m.request_goodput == pytest.approx(0.5)  # 1 good / 2 s
    assert m.total_output_tokens == 4  # 1 + 3


def test_only_one_token_outputs_give_zero_tpot_like_vllm() -> None:
    m = compute_metrics([record(0, 0.0, [0.1], output_tokens=1)], 1.0, goodput_slos_ms=None, percentiles=[99])
    assert (m.tpot.mean, m.tpot.median, m.tpot.std, m.tpot.percentiles["99"]) == (0.0, 0.0, 0.0, 0.0)
    assert m.itl.mean == 0.0  # a single chunk has no gap
    assert m.ttft.mean == pytest.approx(100.0)


def test_failed_requests_are_counted_but_kept_out_of_latency_statistics() -> None:
    records = [
        # the only completed one: ttft 0.1, e2el 0.2, one gap 0.1, prompt_len 5 (no usage)
        record(0, 0.0, [0.1, 0.2], output_tokens=2, prompt_len=5),
        # HTTP 500, never streamed
        record(1, 0.0, [], success=False, error="HTTP 500: boom"),
        # streamed 3 chunks then the connection died: a failure, its chunks count nowhere
        record(2, 0.0, [0.05, 0.5, 3.0], output_tokens=50, success=False, error="connection reset"),
        # "success" without any token-bearing chunk: vLLM marks it failed
        record(3, 0.0, [], success=True),
    ]
    m = compute_metrics(records, 4.0, goodput_slos_ms=None, percentiles=[99])
    assert (m.completed, m.failed) == (1, 3)
    assert m.ttft.mean == pytest.approx(100.0)
    assert m.e2el.mean == pytest.approx(200.0)
    assert m.itl.mean == pytest.approx(100.0)
    assert m.itl.percentiles["99"] == pytest.approx(100.0)
    assert m.total_input_tokens == 5
    assert m.total_output_tokens == 2
    assert m.max_concurrent_requests == 1  # request 2's [0, 3.0) is not counted
    assert m.max_output_tokens_per_s == 2.0  # only request 0's two chunks
    assert m.request_throughput == pytest.approx(0.25)  # 1 / 4 s
    assert m.request_goodput is None
    assert m.good_completed is None


def test_zero_completed_gives_zeros_everywhere_like_vllms_or_zero() -> None:
    records = [
        record(0, 0.0, [], success=False, error="HTTP 503"),
        record(1, 0.1, [], success=False, error="HTTP 503"),
    ]
    m = compute_metrics(records, 1.5, goodput_slos_ms={"ttft": 100}, percentiles=[50, 99])
    assert (m.completed, m.failed) == (0, 2)
    assert (m.total_input_tokens, m.total_output_tokens) == (0, 0)
    assert (m.request_throughput, m.output_throughput, m.total_token_throughput) == (0.0, 0.0, 0.0)
    assert m.request_goodput == 0.0  # vLLM: good_completed / dur_s = 0 / 1.5 when SLOs are given
    assert (m.max_output_tokens_per_s, m.max_concurrent_requests) == (0.0, 0)
    for dist in (m.ttft, m.tpot, m.itl, m.e2el, m.client_queue_time):
        assert (dist.mean, dist.median, dist.std) == (0.0, 0.0, 0.0)
        assert dist.percentiles == {"50": 0.0, "99": 0.0}


def test_no_records_and_zero_duration_give_zero_rates() -> None:
    m = compute_metrics([], 0.0, goodput_slos_ms=None, percentiles=[99])
    assert (m.completed, m.failed, m.request_throughput, m.output_throughput) == (0, 0, 0.0, 0.0)


def test_percentiles_use_linear_interpolation_and_population_std() -> None:
    # TTFTs 10, 20, 30, 40 ms. np.percentile 'linear': position = (n-1) * p/100 = 3p/100.
    records = [record(i, 0.0, [t], output_tokens=1) for i, t in enumerate([0.010, 0.020, 0.030, 0.040])]
    m = compute_metrics(records, 1.0, goodput_slos_ms=None, percentiles=[50, 90, 99, 99.9, 100])
    ttft = m.ttft
    assert ttft.mean == pytest.approx(25.0)
    assert ttft.median == pytest.approx(25.0)
    # population std: deviations -15,-5,5,15 -> (225+25+25+225)/4 = 125 -> sqrt(125)
    assert ttft.std == pytest.approx(math.sqrt(125.0))
    assert list(ttft.percentiles) == ["50", "90", "99", "99.9", "100"]
    assert ttft.percentiles["50"] == pytest.approx(25.0)  # pos 1.5  -> 20 + 0.5*10
    assert ttft.percentiles["90"] == pytest.approx(37.0)  # pos 2.7  -> 30 + 0.7*10
    assert ttft.percentiles["99"] == pytest.approx(39.7)  # pos 2.97 -> 30 + 0.97*10
    assert ttft.percentiles["99.9"] == pytest.approx(39.97)  # pos 2.997
    assert ttft.percentiles["100"] == pytest.approx(40.0)


def test_itl_is_pooled_over_all_gaps_not_averaged_per_request() -> None:
    records = [
        record(0, 0.0, [0.1, 0.2, 0.4], output_tokens=3),  # gaps 0.1, 0.2
        record(1, 0.5, [1.0, 1.3], output_tokens=2),  # gap 0.3
    ]
    m = compute_metrics(records, 2.0, goodput_slos_ms=None, percentiles=[99])
    # pooled [0.1, 0.2, 0.3]: mean 0.2 (per-request means 0.15 and 0.3 would average to 0.225)
    assert m.itl.mean == pytest.approx(200.0)
    assert m.itl.median == pytest.approx(200.0)
    # population std: sqrt((0.01 + 0 + 0.01) / 3)
    assert m.itl.std == pytest.approx(math.sqrt(0.02 / 3) * 1000)
    assert m.itl.percentiles["99"] == pytest.approx(298.0)  # pos 1.98 -> 0.2 + 0.98*0.1
    # TPOT per request: (0.4-0.1)/2 = 0.15 and (1.3-1.0)/1 = 0.3 -> mean 225 ms
    assert m.tpot.mean == pytest.approx(225.0)
    # E2EL: 0.4 - 0.0 and 1.3 - 0.5 -> 0.4, 0.8 -> mean 600 ms
    assert m.e2el.mean == pytest.approx(600.0)


def test_goodput_with_two_slos_needs_every_slo_met_and_equality_passes() -> None:
    slos = {"ttft": 100.0, "e2el": 1000.0}
    records = [
        record(0, 0.0, [0.05, 0.8], output_tokens=2),  # ttft .05, e2el .8  -> good
        record(1, 0.0, [0.15, 0.5], output_tokens=2),  # ttft .15 > .1       -> bad
        record(2, 0.0, [0.05, 1.2], output_tokens=2),  # e2el 1.2 > 1.0      -> bad
        record(3, 0.0, [0.1, 1.0], output_tokens=2),  # ttft .1, e2el 1.0 exactly: slo >= measured -> good
    ]
    m = compute_metrics(records, 4.0, goodput_slos_ms=slos, percentiles=[99])
    assert m.good_completed == 2
    assert m.request_goodput == pytest.approx(0.5)  # 2 good / 4 s
    assert m.request_throughput == pytest.approx(1.0)  # 4 completed / 4 s


def test_max_output_tokens_per_s_buckets_from_the_earliest_send_counting_chunk_tokens() -> None:
    records = [
        # A sent 0.5; chunk offsets from 0.5: 0.2, 0.5, 0.9, 1.1 -> seconds 0, 0, 0, 1; 1 token each
        record(0, 0.5, [0.7, 1.0, 1.4, 1.6], tokens=[1, 1, 1, 1], output_tokens=4),
        # B sent 0.8; offsets 0.8, 1.5, 1.7 -> seconds 0, 1, 1; 2, 3, 4 tokens
        record(1, 0.8, [1.3, 2.0, 2.2], tokens=[2, 3, 4], output_tokens=9),
        # failed: its 100 tokens in second 0 must not count
        record(2, 0.5, [0.6], tokens=[100], success=False, error="reset"),
    ]
    m = compute_metrics(records, 3.0, goodput_slos_ms=None, percentiles=[99])
    # second 0: A 3 + B 2 = 5; second 1: A 1 + B 3 + 4 = 8.
    # (Buckets from the level start would give 1, 5, 7: vLLM's origin is the earliest send.)
    assert m.max_output_tokens_per_s == 8.0


def test_max_concurrent_requests_is_the_exact_sweep_line_peak_over_half_open_intervals() -> None:
    records = [
        record(0, 0.0, [1.0], output_tokens=1),  # [0.0, 1.0)
        record(1, 0.5, [1.5], output_tokens=1),  # [0.5, 1.5)
        record(2, 1.0, [2.0], output_tokens=1),  # [1.0, 2.0): starts as request 0 ends, no overlap
        record(3, 1.2, [1.3], output_tokens=1),  # [1.2, 1.3)
        record(4, 0.0, [2.5], success=False, error="timeout"),  # failed: excluded
    ]
    m = compute_metrics(records, 2.5, goodput_slos_ms=None, percentiles=[99])
    # at 1.2: requests 1, 2, 3 are in flight -> 3 (request 0 left at 1.0 exactly when 2 arrived)
    assert m.max_concurrent_requests == 3


def test_back_to_back_requests_do_not_overlap() -> None:
    records = [record(0, 0.0, [0.5, 1.0], output_tokens=2), record(1, 1.0, [1.5, 2.0], output_tokens=2)]
    assert compute_metrics(records, 2.0, goodput_slos_ms=None, percentiles=[99]).max_concurrent_requests == 1


def test_missing_usage_falls_back_to_chunk_tokens_and_says_so() -> None:
    records = [
        # no usage: 1 + 2 + 2 = 5 tokens from chunks; tpot (0.3 - 0.1) / (5 - 1) = 0.05 s
        record(0, 0.0, [0.1, 0.2, 0.3], tokens=[1, 2, 2], output_tokens=None),
        # usage 4 wins over the 2 chunk tokens; tpot (0.4 - 0.1) / 3 = 0.1 s
        record(1, 0.0, [0.1, 0.4], tokens=[1, 1], output_tokens=4),
    ]
    m = compute_metrics(records, 1.0, goodput_slos_ms=None, percentiles=[99])
    assert m.total_output_tokens == 9
    assert m.tpot.mean == pytest.approx(75.0)  # (50 + 100) / 2
    assert m.output_len_sources == {"chunks": 1, "usage": 1}
    assert m.notes == [
        "1 of 2 completed requests had no usage.completion_tokens; "
        "their output lengths: 1 counted from streamed chunks"
    ]


def test_output_len_resolution_order_matches_vllm_when_nothing_is_known() -> None:
    # completion_tokens 0 is "unknown" in vLLM (``if not output_len``); no chunk tokens either
    unknown = record(0, 0.0, [0.1, 0.2], tokens=[0, 0], output_tokens=0)
    assert resolve_output_len(unknown) == (1, "default")
    assert resolve_output_len(unknown, lambda r: 7) == (7, "tokenizer")
    m = compute_metrics(
        [unknown], 1.0, goodput_slos_ms=None, percentiles=[99], tokenizer_fallback=lambda r: 7
    )
    assert m.total_output_tokens == 7
    assert m.output_len_sources == {"tokenizer": 1}


def test_input_tokens_are_the_prompt_lengths_not_usage_and_throughputs_use_duration() -> None:
    records = [
        record(0, 0.0, [0.1, 0.2], output_tokens=2, prompt_len=10, input_tokens=12),
        record(1, 0.0, [0.1, 0.2], output_tokens=6, prompt_len=20),
    ]
    m = compute_metrics(records, 2.0, goodput_slos_ms=None, percentiles=[99])
    assert m.total_input_tokens == 30  # 10 + 20 (the dataset's prompt_len, as vLLM's client counts)
    assert m.server_input_tokens is None  # the second request has no usage.prompt_tokens
    assert m.total_output_tokens == 8
    assert m.request_throughput == pytest.approx(1.0)  # 2 / 2 s
    assert m.output_throughput == pytest.approx(4.0)  # 8 / 2 s
    assert m.total_token_throughput == pytest.approx(19.0)  # (30 + 8) / 2 s


def test_client_queue_time_is_send_minus_queue_over_completed_requests() -> None:
    records = [
        record(0, 0.3, [0.4], output_tokens=1, queued=0.0),  # waited 0.3 s for a slot
        record(1, 0.1, [0.2], output_tokens=1, queued=0.0),  # waited 0.1 s
        record(2, 0.9, [], queued=0.0, success=False, error="x"),  # failed: left out
    ]
    m = compute_metrics(records, 1.0, goodput_slos_ms=None, percentiles=[99])
    assert m.client_queue_time.mean == pytest.approx(200.0)
    assert m.client_queue_time.percentiles["99"] == pytest.approx(298.0)  # 100 + 0.99 * 200
    assert m.ttft.mean == pytest.approx(100.0)  # queueing is not in TTFT, as in vLLM


def test_percentile_keys_are_formatted_like_vllm() -> None:
    assert [percentile_key(p) for p in (99, 99.0, 99.9, 50, 0.5, 100)] == [
        "99",
        "99",
        "99.9",
        "50",
        "0.5",
        "100",
    ]


@pytest.mark.parametrize("bad", [0, -1, 100.5, float("nan")])
def test_percentiles_outside_zero_to_hundred_are_refused(bad: float) -> None:
    with pytest.raises(ConfigError, match=r"\(0, 100\]"):
        validate_percentiles([99, bad])
    with pytest.raises(ConfigError):
        compute_metrics([], 1.0, goodput_slos_ms=None, percentiles=[bad])


def test_duplicate_percentiles_are_dropped_keeping_order() -> None:
    assert validate_percentiles([99, 50, 99.0]) == [99.0, 50.0]


def test_unknown_slo_key_is_refused_with_the_allowed_names() -> None:
    with pytest.raises(ConfigError, match="unknown goodput SLO 'itl': use one of ttft, tpot, e2el"):
        compute_metrics([], 1.0, goodput_slos_ms={"itl": 50}, percentiles=[99])


def test_negative_slo_is_refused() -> None:
    with pytest.raises(ConfigError, match="non-negative"):
        validate_goodput_slos({"ttft": -5})


@pytest.mark.parametrize("bad", [-1.0, float("nan"), float("inf")])
def test_bad_duration_is_refused(bad: float) -> None:
    with pytest.raises(ConfigError, match="duration"):
        compute_metrics([], bad, goodput_slos_ms=None, percentiles=[99])
