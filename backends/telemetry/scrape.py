"""Scraping dcgm-exporter over HTTP, and a level's GPU telemetry from the readings.

``DcgmScraper.read`` never raises: every outcome is a ``DcgmReading`` with a ``state`` and, where it
is not ``ok``, one line saying what happened and what to do.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Callable, Iterable
from enum import StrEnum
from urllib.parse import urlsplit

import httpx
from pydantic import BaseModel, Field

from backends.errors import TargetError
from backends.telemetry.dcgm import DcgmScrape, GpuSample, gpus_of_pods, parse_dcgm, summarise
from backends.telemetry.models import GpuSummary, LevelGpuTelemetry

URL_HINT = "or give its URL with --gpu-metrics"
# The app says where its URL goes there (``app_hint``).
APP_URL_HINT = "or type its URL in the Bench form's GPU metrics field"
GKE_HINT = (
    "on GKE turn on managed DCGM metrics: gcloud container clusters update CLUSTER "
    "--monitoring=SYSTEM,DCGM (GPU nodes then run dcgm-exporter in gke-managed-system); "
    f"with the NVIDIA GPU operator it runs in gpu-operator; {URL_HINT}"
)


def app_hint(message: str) -> str:
    """A GPU metrics message as the app shows it: the URL goes in the Bench form, not a flag."""
    return message.replace(URL_HINT, APP_URL_HINT)


class DcgmState(StrEnum):
    OK = "ok"
    NOT_FOUND = "not-found"  # nothing answers, or the body has no DCGM_FI_* metrics
    TIMEOUT = "timeout"
    UNREACHABLE = "unreachable"
    NO_MATCHING_GPU = "no-matching-gpu"  # GPUs found, none of them held by the target's pods
    ERROR = "error"


class DcgmReading(BaseModel):
    t: float
    state: DcgmState
    message: str | None = None
    gpus: list[GpuSample] = Field(default_factory=list)
    summary: GpuSummary | None = None
    simulated: bool = False
    unknown_fields: list[str] = Field(default_factory=list)


def metrics_url(url: str) -> str:
    """A base URL gets dcgm-exporter's ``/metrics``; a URL with a path is used as given."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise TargetError(f"{url!r} is not an http(s) URL; give one like http://127.0.0.1:9400/metrics")
    return url if parts.path not in ("", "/") else url.rstrip("/") + "/metrics"


def metrics_urls(text: str) -> list[str]:
    """``--gpu-metrics``: one exporter URL or several, comma-separated (one per node)."""
    urls = [metrics_url(part.strip()) for part in text.split(",") if part.strip()]
    if not urls:
        raise TargetError("give a dcgm-exporter URL like http://127.0.0.1:9400/metrics")
    return urls


class DcgmScraper:
    """Reads one exporter, or several (one per node) as one; keeps only ``pods``' GPUs when given
    (the target deployment's)."""

    def __init__(
        self,
        url: str,
        *,
        timeout_s: float = 2.0,
        pods: Iterable[str] | None = None,
        namespace: str | None = None,
    ) -> None:
        self.urls = metrics_urls(url)
        self.url = ", ".join(self.urls)
        self.pods = set(pods) if pods is not None else None
        self.namespace = namespace
        self._client = httpx.AsyncClient(timeout=httpx.Timeout(timeout_s))

    async def aclose(self) -> None:
        await self._client.aclose()

    async def __aenter__(self) -> DcgmScraper:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def read(self, t: float) -> DcgmReading:
        if len(self.urls) == 1:
            fetched = [await self._fetch(t, self.urls[0])]
        else:
            fetched = await asyncio.gather(*(self._fetch(t, url) for url in self.urls))
        # A reading covers every exporter or none: a sum over some of the GPUs would look like a drop.
        for item in fetched:
            if isinstance(item, DcgmReading):
                return item
        scrapes = [item for item in fetched if isinstance(item, DcgmScrape)]
        if len(scrapes) == 1:
            return self._reading(t, scrapes[0])
        merged = DcgmScrape(
            gpus=[gpu for scrape in scrapes for gpu in scrape.gpus],
            unknown_fields=sorted({name for scrape in scrapes for name in scrape.unknown_fields}),
            unlabelled=sum(scrape.unlabelled for scrape in scrapes),
            malformed=sum(scrape.malformed for scrape in scrapes),
            other_samples=sum(scrape.other_samples for scrape in scrapes),
            simulated=any(scrape.simulated for scrape in scrapes),
        )
        return self._reading(t, merged)

    async def _fetch(self, t: float, url: str) -> DcgmScrape | DcgmReading:
        try:
            response = await self._client.get(url)
        except httpx.TimeoutException:
            return DcgmReading(t=t, state=DcgmState.TIMEOUT, message=f"GPU metrics: {url} timed out")
        except httpx.ConnectError:
            return DcgmReading(
                t=t,
                state=DcgmState.UNREACHABLE,
                message=f"GPU metrics: no dcgm-exporter at {url} (cannot connect); {GKE_HINT}",
            )
        except httpx.HTTPError as exc:
            return DcgmReading(
                t=t, state=DcgmState.UNREACHABLE, message=f"GPU metrics: {url}: {type(exc).__name__}"
            )
        if response.status_code != 200:
            return DcgmReading(
                t=t,
                state=DcgmState.NOT_FOUND,
                message=f"GPU metrics: {url} answered HTTP {response.status_code}; {GKE_HINT}",
            )
        try:
            return parse_dcgm(response.text)
        except Exception as exc:  # a reading must never take the bench down
            return DcgmReading(
                t=t,
                state=DcgmState.ERROR,
                message=f"GPU metrics: {url} unreadable: {type(exc).__name__}",
            )

    def _reading(self, t: float, scrape: DcgmScrape) -> DcgmReading:
        if not scrape.found:
            return DcgmReading(
                t=t,
                state=DcgmState.NOT_FOUND,
                message=f"GPU metrics: {self.url} has no DCGM_FI_* metrics per GPU; {GKE_HINT}",
                unknown_fields=scrape.unknown_fields,
            )
        gpus = scrape.gpus
        if self.pods is not None:
            gpus = gpus_of_pods(gpus, self.pods, self.namespace)
            if not gpus:
                held = sorted({g.pod for g in scrape.gpus if g.pod})
                how = f"pods holding GPUs: {', '.join(held)}" if held else "no GPU carries a pod label"
                return DcgmReading(
                    t=t,
                    state=DcgmState.NO_MATCHING_GPU,
                    message=(
                        f"GPU metrics: none of {len(scrape.gpus)} GPUs at {self.url} belongs to "
                        f"{', '.join(sorted(self.pods)) or 'the target'} ({how}; dcgm-exporter needs "
                        "Kubernetes pod mapping for pod labels)"
                    ),
                    simulated=scrape.simulated,
                )
        return DcgmReading(
            t=t,
            state=DcgmState.OK,
            gpus=gpus,
            summary=summarise(t, gpus),
            simulated=scrape.simulated,
            unknown_fields=scrape.unknown_fields,
        )

    async def run(
        self,
        on_reading: Callable[[DcgmReading], None],
        stop: asyncio.Event,
        interval_s: float = 1.0,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        """Read every ``interval_s`` until ``stop``; ``clock`` stamps each reading."""
        while not stop.is_set():
            on_reading(await self.read(clock()))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=interval_s)


def read_once(url: str, timeout_s: float = 2.0, pods: Iterable[str] | None = None) -> DcgmReading:
    """One blocking reading (CLI use)."""

    async def go() -> DcgmReading:
        async with DcgmScraper(url, timeout_s=timeout_s, pods=pods) as scraper:
            return await scraper.read(time.perf_counter())

    return asyncio.run(go())


# ---- a level's GPU telemetry ----------------------------------------------------------------------


def level_telemetry(
    readings: list[DcgmReading],
    output_tokens: int,
    duration_s: float,
    usd_per_hour: float | None = None,
    window_start: float | None = None,
) -> LevelGpuTelemetry | None:
    """A level's GPU telemetry over the load's own window ``[window_start, window_start + duration_s]``
    (the readings' clock; None: the readings' span is taken as the level).

    Energy comes from the counters: the readings just outside the window bracket it, and the idle
    stretches they add (the load generator starting and stopping, no request in flight) are taken off
    at the lowest power read. Without counters: mean power over the window x its duration. Utilisation
    and power means are over the readings inside the window (and the first after it, which covers its
    end). No good reading: the last one's state and message; no reading at all: None.
    """
    good = [r for r in readings if r.state is DcgmState.OK and r.summary is not None]
    if not good:
        if not readings:
            return None
        final = readings[-1]
        return LevelGpuTelemetry(state=final.state.value, message=final.message)
    summaries = [r.summary for r in good if r.summary is not None]
    ws = summaries[0].t if window_start is None else window_start
    we = ws + duration_s
    before = [s for s in summaries if s.t <= ws]
    after = [s for s in summaries if s.t >= we]
    inside = [s for s in summaries if ws < s.t < we] + after[:1]
    if not inside:
        inside = summaries
    utils = [s.utilisation for s in inside if s.utilisation is not None]
    drams = [s.dram_active for s in inside if s.dram_active is not None]
    powers = [s.power_w for s in inside if s.power_w is not None]
    fbs = [s.fb_used_mib for s in summaries if s.fb_used_mib is not None]
    energy: float | None = None
    source: str | None = None
    first = before[-1] if before else summaries[0]
    last = after[0] if after else summaries[-1]
    if (
        first.energy_j is not None
        and last.energy_j is not None
        and last.t > first.t
        and last.gpus == first.gpus
        and last.energy_j >= first.energy_j
    ):
        idle_w = min((s.power_w for s in summaries if s.power_w is not None), default=0.0)
        outside = max(ws - first.t, 0.0) + max(last.t - we, 0.0)
        span_j = last.energy_j - first.energy_j
        energy, source = max(span_j - idle_w * outside, 0.0), "counter"
        if not before or not after:
            # The counters do not reach round the window: their rate over what they cover, for the level.
            energy = span_j / (last.t - first.t) * duration_s
    elif powers and duration_s > 0:
        energy, source = math.fsum(powers) / len(powers) * duration_s, "power x time"
    kj_per_1m = energy / 1000.0 / output_tokens * 1e6 if energy is not None and output_tokens > 0 else None
    usd_per_1m = None
    if usd_per_hour is not None and output_tokens > 0 and duration_s > 0:
        usd_per_1m = usd_per_hour * duration_s / 3600.0 / output_tokens * 1e6
    if energy is not None and source == "counter" and duration_s > 0:
        power_mean: float | None = energy / duration_s
    else:
        power_mean = math.fsum(powers) / len(powers) if powers else None
    return LevelGpuTelemetry(
        gpus=max(s.gpus for s in summaries),
        readings=len(good),
        simulated=any(r.simulated for r in good),
        gpu_util_mean=math.fsum(utils) / len(utils) if utils else None,
        dram_active_mean=math.fsum(drams) / len(drams) if drams else None,
        power_w_mean=power_mean,
        power_w_max=max(powers) if powers else None,
        fb_used_mib_max=max(fbs) if fbs else None,
        energy_j=energy,
        energy_source=source,
        kj_per_1m_output_tokens=kj_per_1m,
        usd_per_1m_output_tokens=usd_per_1m,
    )


def telemetry_url(configured: str | None, target_kind: str, base_url: str) -> str | None:
    """Where a sweep reads GPU telemetry: the URL given, else a twin's own ``/dcgm``, else nowhere."""
    if configured:
        return configured
    if target_kind == "twin":
        return base_url.rstrip("/") + "/dcgm"
    return None


# Four readings a second: a level at high concurrency can last well under a second, and the energy
# counter must bracket it closely. A scrape is one small GET from the sweep's own event loop.
READ_INTERVAL_S = 0.25


class LevelGpuMonitor:
    """Reads GPU telemetry beside one level, in the sweep's own event loop (never the load workers')."""

    def __init__(self, url: str, pods: Iterable[str] | None, clock: Callable[[], float]) -> None:
        self.scraper = DcgmScraper(url, pods=pods)
        self.clock = clock
        self.readings: list[DcgmReading] = []
        self.latest: GpuSummary | None = None

    def on_reading(self, reading: DcgmReading) -> None:
        self.readings.append(reading)
        self.latest = reading.summary if reading.state is DcgmState.OK else None

    def start(self, stop: asyncio.Event) -> asyncio.Task[None]:
        return asyncio.create_task(
            self.scraper.run(self.on_reading, stop, interval_s=READ_INTERVAL_S, clock=self.clock)
        )

    async def finish(self) -> None:
        """A last reading at the level's end (the energy counter's end point), then close."""
        try:
            self.on_reading(await self.scraper.read(self.clock()))
        finally:
            await self.scraper.aclose()

    def result(
        self,
        output_tokens: int,
        duration_s: float,
        usd_per_hour: float | None,
        window_start: float | None = None,
    ) -> LevelGpuTelemetry | None:
        return level_telemetry(self.readings, output_tokens, duration_s, usd_per_hour, window_start)
