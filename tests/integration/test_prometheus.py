"""Prometheus parsing, server snapshots (vLLM V1/V0, llama.cpp, twin) and the metrics scraper."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Iterator

import pytest

from backends.errors import TargetError
from backends.prometheus import (
    MetricsFormatError,
    MetricsScraper,
    MetricType,
    kv_usage_from_slots,
    parse_exposition,
    snapshot_from_metrics,
)
from backends.target_types import ServerSnapshot
from tests.fakes.openai_like_server import (
    LLAMACPP_METRICS,
    VLLM_V0_METRICS,
    VLLM_V1_METRICS,
    FakeServer,
    FakeServerConfig,
    Flavor,
    default_llamacpp_slots,
    llamacpp_slot,
)

pytestmark = pytest.mark.timeout(30)


# --- parser ----------------------------------------------------------------------------------------


def test_parser_reads_help_type_and_labels_with_escapes() -> None:
    text = (
        "# HELP http_requests_total The total number of HTTP requests.\n"
        "# TYPE http_requests_total counter\n"
        'http_requests_total{method="post",code="200"} 1027 1395066363000\n'
        'http_requests_total{method="post", code="400" } 3\n'
        'msdos_file_access_time_seconds{path="C:\\\\DIR\\\\FILE.TXT",'
        'error="Cannot find file:\\n\\"FILE.TXT\\""} 1.458255915e9\n'
        "metric_without_labels 12.47\n"
    )
    exposition = parse_exposition(text)

    assert exposition.malformed == []
    assert exposition.types["http_requests_total"] is MetricType.COUNTER
    assert exposition.help["http_requests_total"] == "The total number of HTTP requests."
    first, second, path_sample, bare = exposition.samples
    assert first.labels == {"method": "post", "code": "200"}
    assert first.value == 1027
    assert first.timestamp_ms == 1395066363000
    assert first.type is MetricType.COUNTER
    assert second.labels == {"method": "post", "code": "400"}
    assert path_sample.labels == {"path": "C:\\DIR\\FILE.TXT", "error": 'Cannot find file:\n"FILE.TXT"'}
    assert path_sample.value == pytest.approx(1.458255915e9)
    assert bare.labels == {} and bare.value == pytest.approx(12.47)
    assert bare.type is MetricType.UNTYPED
    assert exposition.total("http_requests_total") == 1030


def test_parser_reads_nan_infinities_and_skips_exemplars() -> None:
    text = 'a NaN\nb +Inf\nc -Inf\nd{x="a # not an exemplar"} 5 # {trace_id="abc"} 1.0\n'
    samples = {s.name: s for s in parse_exposition(text).samples}

    assert math.isnan(samples["a"].value)
    assert samples["b"].value == math.inf
    assert samples["c"].value == -math.inf
    assert samples["d"].value == 5
    assert samples["d"].labels == {"x": "a # not an exemplar"}


def test_parser_groups_histogram_buckets_sum_and_count() -> None:
    exposition = parse_exposition(VLLM_V1_METRICS)
    bucket = exposition.by_name("vllm:time_to_first_token_seconds_bucket")[0]
    assert bucket.family == "vllm:time_to_first_token_seconds"
    assert bucket.type is MetricType.HISTOGRAM

    (series,) = exposition.histograms("vllm:time_to_first_token_seconds")
    assert series.labels == {"engine": "0", "model_name": "google/gemma-3-27b-it"}
    assert series.buckets == [(0.1, 140.0), (0.25, 812.0), (math.inf, 900.0)]
    assert series.sum == pytest.approx(123.5)
    assert series.count == 900.0


def test_parser_sets_unreadable_lines_aside() -> None:
    text = 'good 1\nbad{x="unterminated} 2\nno_value\nalso_good{a="b"} 3\nworse 1 2 3\n'
    exposition = parse_exposition(text)

    assert [s.name for s in exposition.samples] == ["good", "also_good"]
    assert [number for number, _ in exposition.malformed] == [2, 3, 5]


# --- snapshots -------------------------------------------------------------------------------------


def test_vllm_v1_snapshot_sums_over_engines_and_averages_kv() -> None:
    snapshot = snapshot_from_metrics(VLLM_V1_METRICS, t=1.5)

    assert snapshot.t == 1.5
    assert snapshot.source == "vllm-v1"
    assert snapshot.running == 42
    assert snapshot.waiting == 3
    assert snapshot.kv_cache_usage == pytest.approx(0.375)
    assert snapshot.prompt_tokens_total == pytest.approx(1_235_000)
    assert snapshot.generation_tokens_total == 456_800
    assert snapshot.preemptions_total == 4
    assert snapshot.prefix_cache_hits_total == pytest.approx(310_000)
    assert snapshot.prefix_cache_queries_total == pytest.approx(1_200_000)


def test_vllm_v1_snapshot_sums_over_several_models() -> None:
    text = (
        'vllm:num_requests_running{engine="0",model_name="a"} 2\n'
        'vllm:num_requests_running{engine="0",model_name="b"} 3\n'
        'vllm:kv_cache_usage_perc{engine="0",model_name="a"} 0.2\n'
        'vllm:kv_cache_usage_perc{engine="0",model_name="b"} 0.4\n'
        'vllm:generation_tokens_total{engine="0",model_name="a"} 10\n'
        'vllm:generation_tokens_total{engine="0",model_name="b"} 15\n'
    )
    snapshot = snapshot_from_metrics(text, t=0.0)

    assert snapshot.running == 5
    assert snapshot.generation_tokens_total == 25
    assert snapshot.kv_cache_usage == pytest.approx(0.3)
    assert snapshot.waiting is None


def test_vllm_v0_snapshot_uses_gpu_cache_usage() -> None:
    snapshot = snapshot_from_metrics(VLLM_V0_METRICS, t=2.0)

    assert snapshot.source == "vllm-v0"
    assert snapshot.running == 8
    assert snapshot.waiting == 4
    assert snapshot.kv_cache_usage == pytest.approx(0.875)
    assert snapshot.preemptions_total == 12
    assert snapshot.prompt_tokens_total == 20480
    assert snapshot.generation_tokens_total == 27453
    assert snapshot.prefix_cache_hits_total is None
    assert snapshot.prefix_cache_queries_total is None


def test_early_v1_with_deprecated_names_is_recognised_by_engine_label() -> None:
    text = (
        'vllm:gpu_cache_usage_perc{engine="0",model_name="m"} 0.6\n'
        'vllm:gpu_prefix_cache_queries_total{engine="0",model_name="m"} 100\n'
        'vllm:gpu_prefix_cache_hits_total{engine="0",model_name="m"} 40\n'
    )
    snapshot = snapshot_from_metrics(text, t=0.0)

    assert snapshot.source == "vllm-v1"
    assert snapshot.kv_cache_usage == pytest.approx(0.6)
    assert snapshot.prefix_cache_queries_total == 100
    assert snapshot.prefix_cache_hits_total == 40


def test_v1_prefers_kv_cache_usage_over_its_deprecated_alias() -> None:
    text = (
        'vllm:kv_cache_usage_perc{engine="0",model_name="m"} 0.5\n'
        'vllm:gpu_cache_usage_perc{engine="0",model_name="m"} 0.9\n'
    )
    assert snapshot_from_metrics(text, t=0.0).kv_cache_usage == pytest.approx(0.5)


def test_twin_marker_sets_source() -> None:
    text = VLLM_V1_METRICS + "servedeck:simulated 1\n"
    snapshot = snapshot_from_metrics(text, t=0.0)

    assert snapshot.source == "twin"
    assert snapshot.running == 42


def test_llamacpp_snapshot_derives_kv_from_slots() -> None:
    snapshot = snapshot_from_metrics(LLAMACPP_METRICS, t=3.0, slots_json=default_llamacpp_slots())

    assert snapshot.source == "llamacpp"
    assert snapshot.running == 2
    assert snapshot.waiting == 1
    # busy slots hold 512 + 256 of 4 x 1024 tokens; the idle slot's cached prompt does not count
    assert snapshot.kv_cache_usage == pytest.approx(768 / 4096)
    assert snapshot.prompt_tokens_total == 1500  # 1200 processed + 300 reused from cache
    assert snapshot.generation_tokens_total == 640
    assert snapshot.prefix_cache_hits_total == 300
    assert snapshot.prefix_cache_queries_total == 1500
    assert snapshot.preemptions_total is None


def test_llamacpp_snapshot_prefers_kv_metric_when_present() -> None:
    older_build = (
        "llamacpp:prompt_tokens_total 10\n"
        "llamacpp:tokens_predicted_total 20\n"
        "llamacpp:kv_cache_usage_ratio 0.42\n"
        "llamacpp:requests_processing 1\n"
        "llamacpp:requests_deferred 0\n"
    )
    snapshot = snapshot_from_metrics(older_build, t=0.0, slots_json=default_llamacpp_slots())

    assert snapshot.kv_cache_usage == pytest.approx(0.42)
    assert snapshot.prompt_tokens_total == 10
    assert snapshot.prefix_cache_hits_total is None
    assert snapshot.prefix_cache_queries_total is None


def test_llamacpp_without_kv_or_slots_leaves_kv_unknown() -> None:
    snapshot = snapshot_from_metrics(LLAMACPP_METRICS, t=0.0)
    assert snapshot.source == "llamacpp"
    assert snapshot.kv_cache_usage is None


def test_slots_only_snapshot_counts_busy_slots() -> None:
    snapshot = snapshot_from_metrics("", t=0.0, slots_json=default_llamacpp_slots())
    assert snapshot.source == "llamacpp"
    assert snapshot.running == 2
    assert snapshot.kv_cache_usage == pytest.approx(768 / 4096)


def test_kv_from_slots_reads_older_shapes() -> None:
    with_n_past = [
        {"id": 0, "n_ctx": 2048, "is_processing": True, "n_past": 1024, "next_token": {"n_decoded": 5}},
        {"id": 1, "n_ctx": 2048, "is_processing": False, "n_past": 2000},
    ]
    with_state = [
        {"id": 0, "n_ctx": 1000, "state": 1, "tokens_cached": 250},
        {"id": 1, "n_ctx": 1000, "state": 0, "tokens_cached": 900},
    ]
    assert kv_usage_from_slots(with_n_past) == pytest.approx(0.25)
    assert kv_usage_from_slots(with_state) == pytest.approx(0.125)


def test_kv_from_slots_is_none_when_shape_lacks_counts() -> None:
    no_tokens = [{"id": 0, "n_ctx": 1024, "is_processing": True, "next_token": [{"n_decoded": 3}]}]
    no_ctx = [llamacpp_slot(0, n_ctx=0, processing=True, n_prompt_tokens=5, n_decoded=1)]
    assert kv_usage_from_slots(no_tokens) is None
    assert kv_usage_from_slots(no_ctx) is None
    assert kv_usage_from_slots({"error": {"message": "This server does not support slots endpoint."}}) is None
    assert kv_usage_from_slots([]) is None


def test_unrecognised_metrics_give_an_unknown_snapshot() -> None:
    snapshot = snapshot_from_metrics(
        'process_cpu_seconds_total 1.5\nhttp_requests_total{code="200"} 4\n', t=9.0
    )
    assert snapshot == ServerSnapshot(t=9.0, source="unknown")


def test_html_instead_of_metrics_is_one_clear_error() -> None:
    with pytest.raises(MetricsFormatError, match="did not return Prometheus text"):
        snapshot_from_metrics("<html>\n<body>Not here</body>\n</html>\n", t=0.0)


# --- scraper ---------------------------------------------------------------------------------------


@pytest.fixture
def vllm_server() -> Iterator[FakeServer]:
    with FakeServer(FakeServerConfig(flavor=Flavor.VLLM)) as server:
        yield server


def test_scraper_reads_a_vllm_server(vllm_server: FakeServer) -> None:
    async def scenario() -> ServerSnapshot | None:
        async with MetricsScraper(vllm_server.url + "/v1") as scraper:
            return await scraper.scrape(t=4.0)

    snapshot = asyncio.run(scenario())

    assert snapshot is not None
    assert snapshot.t == 4.0
    assert snapshot.source == "vllm-v1"
    assert snapshot.running == 42
    assert ("GET", "/slots", None) not in vllm_server.requests


def test_scraper_fetches_slots_for_llamacpp_kv() -> None:
    async def scenario(url: str) -> ServerSnapshot | None:
        async with MetricsScraper(url) as scraper:
            return await scraper.scrape(t=0.0)

    with FakeServer(FakeServerConfig(flavor=Flavor.LLAMACPP)) as server:
        snapshot = asyncio.run(scenario(server.url))
        paths = [path for _, path, _ in server.requests]

    assert snapshot is not None
    assert snapshot.kv_cache_usage == pytest.approx(768 / 4096)
    assert paths == ["/metrics", "/slots"]


def test_scraper_keeps_working_when_slots_are_disabled() -> None:
    async def scenario(url: str) -> list[ServerSnapshot | None]:
        async with MetricsScraper(url) as scraper:
            return [await scraper.scrape(t=float(i)) for i in range(2)]

    # PLAIN answers 404 on /slots, like llama-server started with --no-slots answers 501
    with FakeServer(FakeServerConfig(flavor=Flavor.PLAIN, metrics_text=LLAMACPP_METRICS)) as server:
        snapshots = asyncio.run(scenario(server.url))
        slot_requests = [path for _, path, _ in server.requests if path == "/slots"]

    assert all(s is not None and s.running == 2 and s.kv_cache_usage is None for s in snapshots)
    assert slot_requests == ["/slots"]  # asked once, then never again


def test_scraper_sends_the_api_key() -> None:
    async def scenario(url: str, key: str | None) -> ServerSnapshot | None:
        async with MetricsScraper(url, api_key=key) as scraper:
            return await scraper.scrape(t=0.0)

    with FakeServer(FakeServerConfig(flavor=Flavor.VLLM, api_key="sk-scrape")) as server:
        assert asyncio.run(scenario(server.url, "sk-scrape")) is not None
        scraper_without_key = asyncio.run(scenario(server.url, None))

    assert scraper_without_key is None


def test_scraper_reports_http_errors_without_raising() -> None:
    async def scenario(url: str) -> tuple[ServerSnapshot | None, MetricsScraper]:
        scraper = MetricsScraper(url)
        async with scraper:
            return await scraper.scrape(t=0.0), scraper

    with FakeServer(FakeServerConfig(flavor=Flavor.VLLM, metrics_status=503)) as server:
        snapshot, scraper = asyncio.run(scenario(server.url))

    assert snapshot is None
    assert scraper.last_error is not None and "HTTP 503" in scraper.last_error
    assert scraper.failures == 1


def test_scraper_reports_non_prometheus_body() -> None:
    async def scenario(url: str) -> tuple[ServerSnapshot | None, str | None]:
        async with MetricsScraper(url) as scraper:
            return await scraper.scrape(t=0.0), scraper.last_error

    config = FakeServerConfig(flavor=Flavor.VLLM, metrics_text="<html>\n<p>login</p>\n</html>\n")
    with FakeServer(config) as server:
        snapshot, error = asyncio.run(scenario(server.url))

    assert snapshot is None
    assert error is not None and "did not return Prometheus text" in error


def test_scraper_survives_server_death() -> None:
    server = FakeServer(FakeServerConfig(flavor=Flavor.VLLM))
    server.start()
    received: list[ServerSnapshot] = []

    async def scenario() -> MetricsScraper:
        stop = asyncio.Event()
        scraper = MetricsScraper(server.url, interval_s=0.05, timeout_s=1.0)

        async def on_snapshot(snapshot: ServerSnapshot) -> None:
            received.append(snapshot)
            if len(received) == 2:
                await asyncio.to_thread(server.stop)

        async def stop_after_failures() -> None:
            while scraper.failures < 3:
                await asyncio.sleep(0.02)
            stop.set()

        async with scraper:
            await asyncio.wait_for(
                asyncio.gather(scraper.run(on_snapshot, stop), stop_after_failures()), timeout=15
            )
        return scraper

    try:
        scraper = asyncio.run(scenario())
    finally:
        server.stop()

    assert len(received) == 2
    assert received[0].t <= received[1].t
    assert scraper.failures >= 3
    assert scraper.last_error is not None and "unreachable" in scraper.last_error


def test_scraper_run_stops_when_told_even_mid_interval(vllm_server: FakeServer) -> None:
    received: list[float] = []

    async def scenario() -> None:
        stop = asyncio.Event()

        def on_snapshot(snapshot: ServerSnapshot) -> None:  # a plain (not async) callback
            received.append(snapshot.t)
            stop.set()

        # The next scrape is 60 s away: run() must notice the stop event while it waits.
        async with MetricsScraper(vllm_server.url, interval_s=60.0) as scraper:
            await asyncio.wait_for(scraper.run(on_snapshot, stop), timeout=10)

    asyncio.run(scenario())

    assert len(received) == 1


@pytest.mark.parametrize("bad", ["localhost:9000", "http://", "http://host:port", "ftp://host"])
def test_scraper_refuses_a_bad_url_with_one_message(bad: str) -> None:
    with pytest.raises(TargetError, match="is not an http\\(s\\) URL"):
        MetricsScraper(bad)
