"""dcgm-exporter telemetry: recorded real expositions, the scraper over real HTTP, the twin's GPUs."""

from __future__ import annotations

import asyncio
import socket
import time
from pathlib import Path

import httpx
import pytest

from backends.telemetry.dcgm import gpus_of_pods, parse_dcgm
from backends.telemetry.scrape import (
    DcgmReading,
    DcgmScraper,
    DcgmState,
    level_telemetry,
    read_once,
    telemetry_url,
)
from backends.twin.engine_config import TwinConfig
from backends.twin.server import TwinServer
from tests.fakes.dcgm_exporter import FakeDcgmExporter

DATA = Path(__file__).parent.parent / "data" / "dcgm"
EKS = (DATA / "gpu_operator_h100x8_eks.txt").read_text()
README = (DATA / "dcgm_exporter_readme_k8s.txt").read_text()
VLLM_POD = "vllm-agg-0-vllmdecodeworker-s65j5"


# ---- the recorded expositions ------------------------------------------------------------------------


def test_recorded_gpu_operator_exposition_gives_eight_typed_gpus() -> None:
    scrape = parse_dcgm(EKS)
    assert [g.gpu for g in scrape.gpus] == [str(i) for i in range(8)]
    assert scrape.malformed == 0 and scrape.unknown_fields == [] and not scrape.simulated
    first = scrape.gpus[0]
    assert first.uuid == "GPU-c4529c8d-69c4-b61d-e0bc-7b2460096005"
    assert first.model_name == "NVIDIA H100 80GB HBM3"
    assert first.hostname == "gpu-node-1"
    assert (first.pod, first.namespace, first.container) == (VLLM_POD, "dynamo-workload", "main")
    assert first.power_w == pytest.approx(113.611)
    assert first.gpu_util == 0.0 and first.gpu_temp_c == 30.0
    # Free GPUs carry no pod labels; the evidence sampled MEM_COPY_UTIL only for GPUs 0-5.
    assert all(g.pod is None for g in scrape.gpus[1:])
    assert scrape.gpus[6].mem_copy_util is None and scrape.gpus[5].mem_copy_util == 0.0
    assert scrape.gpus[7].power_w == pytest.approx(66.997)
    # Labels not modelled here are kept, never an error.
    assert first.labels["DCGM_FI_DRIVER_VERSION"] == "580.105.08"


def test_only_the_target_pods_gpus_are_kept() -> None:
    gpus = parse_dcgm(EKS).gpus
    kept = gpus_of_pods(gpus, [VLLM_POD], "dynamo-workload")
    assert [g.gpu for g in kept] == ["0"]
    assert gpus_of_pods(gpus, [VLLM_POD], "other-namespace") == []
    assert gpus_of_pods(gpus, ["someone-else"]) == []


def test_readme_exposition_blank_sentinel_and_empty_pod_labels() -> None:
    scrape = parse_dcgm(README)
    (gpu,) = scrape.gpus
    assert gpu.uuid == "GPU-604ac76c-d9cf-fef3-62e9-d92044ab6e52"
    assert gpu.sm_clock_mhz == 139.0 and gpu.mem_clock_mhz == 405.0
    assert gpu.memory_temp_c is None  # 9223372036854775794 is DCGM's "not supported", not 9e18 °C
    assert gpu.pod is None and gpu.namespace is None  # empty labels: pod mapping on, GPU free


def test_unknown_fields_labels_and_garbage_are_set_aside() -> None:
    text = (
        EKS
        + 'DCGM_FI_DEV_XID_ERRORS{gpu="0",UUID="GPU-c4529c8d-69c4-b61d-e0bc-7b2460096005",new_label="x"} 0\n'
        + 'DCGM_FI_DEV_COUNT{Hostname="gpu-node-1"} 8\n'
        + "this is not exposition\n"
        + 'vllm:num_requests_running{engine="0"} 3\n'
    )
    scrape = parse_dcgm(text)
    assert len(scrape.gpus) == 8
    assert scrape.unknown_fields == ["DCGM_FI_DEV_COUNT", "DCGM_FI_DEV_XID_ERRORS"]
    assert scrape.malformed == 1 and scrape.other_samples == 1
    assert scrape.gpus[0].power_w == pytest.approx(113.611)


def test_energy_counter_with_prometheus_total_suffix_is_read_in_joules() -> None:
    text = 'DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION_total{gpu="0",UUID="GPU-a"} 2000000\n'
    assert parse_dcgm(text).gpus[0].energy_j == pytest.approx(2000.0)


# ---- the scraper's states over real HTTP ---------------------------------------------------------------


def _read(url: str, **kwargs: object) -> DcgmReading:
    async def go() -> DcgmReading:
        async with DcgmScraper(url, **kwargs) as scraper:  # type: ignore[arg-type]
            return await scraper.read(0.0)

    return asyncio.run(go())


def test_scraper_reads_a_served_exposition_and_filters_by_pod() -> None:
    with FakeDcgmExporter(EKS) as exporter:
        reading = read_once(exporter.url)
        assert reading.state is DcgmState.OK and len(reading.gpus) == 8
        assert reading.summary is not None
        assert reading.summary.power_w == pytest.approx(sum(g.power_w or 0 for g in reading.gpus))
        mine = _read(exporter.url + "/metrics", pods=[VLLM_POD])
        assert mine.state is DcgmState.OK and [g.gpu for g in mine.gpus] == ["0"]
        other = _read(exporter.url, pods=["vllm-gemma-abc"])
        assert other.state is DcgmState.NO_MATCHING_GPU
        assert other.message is not None and VLLM_POD in other.message


def test_no_exporter_is_one_clear_state_with_the_gke_hint() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    reading = read_once(f"http://127.0.0.1:{port}")
    assert reading.state is DcgmState.UNREACHABLE
    assert reading.message is not None and "--monitoring=SYSTEM,DCGM" in reading.message
    with FakeDcgmExporter("", status=404) as exporter:
        assert read_once(exporter.url).state is DcgmState.NOT_FOUND
    with FakeDcgmExporter('vllm:num_requests_running{engine="0"} 1\n') as exporter:
        not_dcgm = read_once(exporter.url)
        assert not_dcgm.state is DcgmState.NOT_FOUND and "DCGM_FI_" in (not_dcgm.message or "")


def test_a_hung_exporter_times_out_as_a_state() -> None:
    with FakeDcgmExporter(EKS, delay_s=2.0) as exporter:
        reading = _read(exporter.url, timeout_s=0.2)
    assert reading.state is DcgmState.TIMEOUT and "timed out" in (reading.message or "")


def test_level_telemetry_from_readings_without_good_ones_keeps_the_state() -> None:
    bad = DcgmReading(t=1.0, state=DcgmState.TIMEOUT, message="GPU metrics: x timed out")
    level = level_telemetry([bad], output_tokens=100, duration_s=1.0)
    assert level is not None and level.state == "timeout" and level.gpu_util_mean is None
    assert level_telemetry([], output_tokens=100, duration_s=1.0) is None


def test_telemetry_url_defaults_to_the_twins_own() -> None:
    assert telemetry_url(None, "twin", "http://127.0.0.1:9") == "http://127.0.0.1:9/dcgm"
    assert telemetry_url(None, "vllm", "http://127.0.0.1:9") is None
    assert telemetry_url("http://127.0.0.1:9400", "vllm", "http://x") == "http://127.0.0.1:9400"


# ---- the twin's simulated GPUs ------------------------------------------------------------------------


def test_twin_serves_dcgm_for_each_tensor_parallel_gpu() -> None:
    config = TwinConfig.build("gemma-3-12b-it", "h100", 2, max_model_len=4096)
    with TwinServer(config, log_sink=lambda line: None) as twin:
        body = httpx.get(twin.base_url + "/dcgm", timeout=5).text
        reading = read_once(twin.base_url + "/dcgm")
    scrape = parse_dcgm(body)
    assert scrape.simulated and len(scrape.gpus) == 2
    for gpu in scrape.gpus:
        assert gpu.model_name == "NVIDIA H100 80GB"
        assert gpu.fb_used_mib is not None and gpu.fb_free_mib is not None
        assert 60_000 < gpu.fb_used_mib < 81_101  # vLLM's 0.9 of the card, allocated at start-up
        assert gpu.utilisation == 0.0 and gpu.dram_active == 0.0
        assert gpu.power_w is not None and gpu.energy_j is not None and gpu.energy_j > 0
    assert reading.state is DcgmState.OK and reading.simulated


def test_cpu_twin_has_no_gpus() -> None:
    config = TwinConfig.build("gemma-3-1b-it", "cpu-c4", 1, max_model_len=2048)
    with TwinServer(config, log_sink=lambda line: None) as twin:
        reading = read_once(twin.base_url + "/dcgm")
    assert reading.state is DcgmState.NOT_FOUND


def test_twin_energy_counter_only_grows_and_power_rises_under_load() -> None:
    config = TwinConfig.build("gemma-3-12b-it", "h100", 1, max_model_len=4096)
    with TwinServer(config, log_sink=lambda line: None) as twin:
        idle = parse_dcgm(httpx.get(twin.base_url + "/dcgm", timeout=5).text).gpus[0]
        model = httpx.get(twin.base_url + "/v1/models", timeout=5).json()["data"][0]["id"]

        async def load() -> float:
            async with httpx.AsyncClient(base_url=twin.base_url, timeout=30) as client:
                body = {"model": model, "prompt": "hi " * 200, "max_tokens": 150, "ignore_eos": True}
                tasks = [asyncio.create_task(client.post("/v1/completions", json=body)) for _ in range(16)]
                await asyncio.sleep(0.8)
                text = (await client.get("/dcgm")).text
                await asyncio.gather(*tasks)
                power = parse_dcgm(text).gpus[0].power_w
                assert power is not None
                return power

        busy_power = asyncio.run(load())
        time.sleep(0.05)
        after = parse_dcgm(httpx.get(twin.base_url + "/dcgm", timeout=5).text).gpus[0]
    assert idle.power_w is not None and after.energy_j is not None and idle.energy_j is not None
    assert busy_power > idle.power_w + 50
    assert after.energy_j > idle.energy_j
