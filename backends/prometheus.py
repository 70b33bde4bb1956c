"""Server-side metrics: a Prometheus text parser, vLLM / llama.cpp snapshots and a ~1 Hz scraper.

The parser follows the text exposition format 0.0.4 (and the OpenMetrics subset servers emit):
``# HELP`` / ``# TYPE`` lines, labels with ``\\"``, ``\\\\`` and ``\\n`` escapes, optional timestamps
and exemplars, ``NaN`` / ``+Inf``. Lines it cannot read are kept aside (with their line number)
rather than failing the whole scrape: one odd line must not blank the KV-cache chart.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import math
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from enum import StrEnum
from typing import Any, Literal
from urllib.parse import urlsplit

import httpx
from pydantic import BaseModel, ConfigDict, Field

from backends.bench.results import PromptSampling
from backends.errors import TargetError
from backends.target_types import ServerSnapshot

logger = logging.getLogger(__name__)


class MetricsFormatError(TargetError):
    """A /metrics body is not Prometheus text at all."""


class MetricType(StrEnum):
    COUNTER = "counter"
    GAUGE = "gauge"
    HISTOGRAM = "histogram"
    SUMMARY = "summary"
    UNTYPED = "untyped"


class Sample(BaseModel):
    """One line of exposition: ``name{labels} value``.

    ``family`` is the metric the sample belongs to (``x`` for ``x_bucket`` / ``x_sum`` / ``x_count`` of
    a histogram ``x``), ``type`` that family's declared type.
    """

    model_config = ConfigDict(frozen=True)

    name: str
    labels: dict[str, str] = Field(default_factory=dict)
    value: float
    family: str
    type: MetricType = MetricType.UNTYPED
    timestamp_ms: int | None = None


class HistogramSeries(BaseModel):
    """One label set of a histogram family, buckets sorted by upper bound (cumulative counts)."""

    family: str
    labels: dict[str, str]
    buckets: list[tuple[float, float]] = Field(default_factory=list)
    sum: float | None = None
    count: float | None = None


class Exposition(BaseModel):
    """A parsed /metrics body."""

    samples: list[Sample] = Field(default_factory=list)
    types: dict[str, MetricType] = Field(default_factory=dict)
    help: dict[str, str] = Field(default_factory=dict)
    malformed: list[tuple[int, str]] = Field(default_factory=list, description="(line number, line)")

    def by_name(self, name: str) -> list[Sample]:
        return [sample for sample in self.samples if sample.name == name]

    def has(self, name: str) -> bool:
        return any(sample.name == name for sample in self.samples)

    def total(self, name: str) -> float | None:
        """Sum over every label set (several models or engines), or None when the metric is absent."""
        values = [sample.value for sample in self.samples if sample.name == name]
        return math.fsum(values) if values else None

    def mean(self, name: str) -> float | None:
        values = [sample.value for sample in self.samples if sample.name == name]
        return math.fsum(values) / len(values) if values else None

    def names(self) -> set[str]:
        return {sample.name for sample in self.samples}

    def histograms(self, family: str) -> list[HistogramSeries]:
        series: dict[tuple[tuple[str, str], ...], HistogramSeries] = {}
        for sample in self.samples:
            if sample.family != family:
                continue
            labels = {k: v for k, v in sample.labels.items() if k != "le"}
            key = tuple(sorted(labels.items()))
            entry = series.setdefault(key, HistogramSeries(family=family, labels=labels))
            if sample.name == f"{family}_bucket" and "le" in sample.labels:
                entry.buckets.append((parse_value(sample.labels["le"]), sample.value))
            elif sample.name == f"{family}_sum":
                entry.sum = sample.value
            elif sample.name == f"{family}_count":
                entry.count = sample.value
        for entry in series.values():
            entry.buckets.sort(key=lambda bucket: bucket[0])
        return list(series.values())


_SPECIAL_VALUES = {
    "nan": math.nan,
    "+inf": math.inf,
    "inf": math.inf,
    "-inf": -math.inf,
}

_TYPED_SUFFIXES: dict[MetricType, tuple[str, ...]] = {
    MetricType.HISTOGRAM: ("_bucket", "_sum", "_count", "_created"),
    MetricType.SUMMARY: ("_sum", "_count", "_created"),
    MetricType.COUNTER: ("_total", "_created"),
}


def parse_value(text: str) -> float:
    special = _SPECIAL_VALUES.get(text.lower())
    if special is not None:
        return special
    return float(text)


def _family_of(name: str, types: Mapping[str, MetricType]) -> tuple[str, MetricType]:
    declared = types.get(name)
    if declared is not None:
        return name, declared
    for metric_type, suffixes in _TYPED_SUFFIXES.items():
        for suffix in suffixes:
            if name.endswith(suffix):
                base = name[: -len(suffix)]
                if types.get(base) is metric_type:
                    return base, metric_type
    return name, MetricType.UNTYPED


def _parse_labels(line: str, start: int) -> tuple[dict[str, str], int]:
    """Parse ``{a="x",b="y"}`` beginning at ``line[start] == "{"``; return labels and index after ``}``."""
    labels: dict[str, str] = {}
    i = start + 1
    n = len(line)
    while True:
        while i < n and line[i] in " \t":
            i += 1
        if i >= n:
            raise ValueError("unterminated label set")
        if line[i] == "}":
            return labels, i + 1
        eq = line.find("=", i)
        if eq < 0:
            raise ValueError("label without '='")
        key = line[i:eq].strip()
        if not key:
            raise ValueError("empty label name")
        i = eq + 1
        while i < n and line[i] in " \t":
            i += 1
        if i >= n or line[i] != '"':
            raise ValueError("label value is not quoted")
        i += 1
        chars: list[str] = []
        while True:
            if i >= n:
                raise ValueError("unterminated label value")
            ch = line[i]
            if ch == "\\" and i + 1 < n:
                nxt = line[i + 1]
                chars.append("\n" if nxt == "n" else nxt)
                i += 2
                continue
            if ch == '"':
                i += 1
                break
            chars.append(ch)
            i += 1
        labels[key] = "".join(chars)
        while i < n and line[i] in " \t":
            i += 1
        if i < n and line[i] == ",":
            i += 1


def _parse_sample_line(line: str, types: Mapping[str, MetricType]) -> Sample:
    brace = line.find("{")
    space = min((p for p in (line.find(" "), line.find("\t")) if p >= 0), default=-1)
    if brace >= 0 and (space < 0 or brace < space):
        name = line[:brace]
        labels, rest_at = _parse_labels(line, brace)
        rest = line[rest_at:]
    else:
        if space < 0:
            raise ValueError("no value")
        name = line[:space]
        labels = {}
        rest = line[space:]
    if not name:
        raise ValueError("no metric name")
    # OpenMetrics exemplars follow " # "; they are not part of the value.
    exemplar_at = rest.find(" # ")
    if exemplar_at >= 0:
        rest = rest[:exemplar_at]
    fields = rest.split()
    if not fields or len(fields) > 2:
        raise ValueError("expected a value and an optional timestamp")
    value = parse_value(fields[0])
    timestamp = int(float(fields[1])) if len(fields) == 2 else None
    family, metric_type = _family_of(name, types)
    return Sample(
        name=name, labels=labels, value=value, family=family, type=metric_type, timestamp_ms=timestamp
    )


def parse_exposition(text: str) -> Exposition:
    """Parse Prometheus text exposition into typed samples; unreadable lines go to ``malformed``."""
    exposition = Exposition()
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line:
            continue
        if line.startswith("#"):
            parts = line.split(None, 3)
            if len(parts) >= 3 and parts[1] == "TYPE":
                try:
                    exposition.types[parts[2]] = MetricType(
                        parts[3].strip().lower() if len(parts) > 3 else ""
                    )
                except ValueError:
                    exposition.types[parts[2]] = MetricType.UNTYPED
            elif len(parts) >= 3 and parts[1] == "HELP":
                exposition.help[parts[2]] = parts[3] if len(parts) > 3 else ""
            continue
        try:
            exposition.samples.append(_parse_sample_line(line, exposition.types))
        except ValueError:
            exposition.malformed.append((number, raw))
    return exposition


# --- snapshots -------------------------------------------------------------------------------------

SnapshotSource = Literal["vllm-v1", "vllm-v0", "llamacpp", "twin", "unknown"]

# The twin emits vLLM's names; a ``servedeck:`` metric (e.g. ``servedeck:simulated 1``) marks it.
TWIN_METRIC_PREFIX = "servedeck:"


def _first_present(exposition: Exposition, names: Iterable[str], reduce: str = "sum") -> float | None:
    for name in names:
        value = exposition.total(name) if reduce == "sum" else exposition.mean(name)
        if value is not None:
            return value
    return None


def _vllm_source(exposition: Exposition, names: set[str]) -> SnapshotSource:
    if any(name.startswith(TWIN_METRIC_PREFIX) for name in names):
        return "twin"
    if "vllm:kv_cache_usage_perc" in names or "vllm:prefix_cache_queries_total" in names:
        return "vllm-v1"
    # V1 before the 0.9 renames still used gpu_cache_usage_perc, but always with an ``engine`` label.
    if any(s.name.startswith("vllm:") and "engine" in s.labels for s in exposition.samples):
        return "vllm-v1"
    return "vllm-v0"


def _vllm_snapshot(exposition: Exposition, t: float, source: SnapshotSource) -> ServerSnapshot:
    return ServerSnapshot(
        t=t,
        source=source,
        running=exposition.total("vllm:num_requests_running"),
        waiting=exposition.total("vllm:num_requests_waiting"),
        # A ratio: several engines are averaged, not summed.
        kv_cache_usage=_first_present(
            exposition, ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc"), reduce="mean"
        ),
        prompt_tokens_total=exposition.total("vllm:prompt_tokens_total"),
        generation_tokens_total=exposition.total("vllm:generation_tokens_total"),
        preemptions_total=exposition.total("vllm:num_preemptions_total"),
        prefix_cache_hits_total=_first_present(
            exposition, ("vllm:prefix_cache_hits_total", "vllm:gpu_prefix_cache_hits_total")
        ),
        prefix_cache_queries_total=_first_present(
            exposition, ("vllm:prefix_cache_queries_total", "vllm:gpu_prefix_cache_queries_total")
        ),
    )


def _as_number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _slot_tokens_in_use(slot: Mapping[str, Any]) -> float | None:
    """Tokens a busy llama.cpp slot holds in its KV cache; the field differs across versions.

    Recent builds report ``n_prompt_tokens`` (the slot's token list, which grows with each generated
    token); older ones ``n_past`` or ``tokens_cached``.
    """
    for key in ("n_prompt_tokens", "n_past", "tokens_cached"):
        number = _as_number(slot.get(key))
        if number is not None:
            return number
    return None


def kv_usage_from_slots(slots_json: Any) -> float | None:
    """KV-cache usage (0..1) from llama-server's /slots: tokens held by busy slots / total slot context.

    Idle slots keep their last prompt for reuse, but like vLLM's freed-yet-cached blocks that memory
    is available, so only processing slots count. None when the shape lacks what is needed.
    """
    if not isinstance(slots_json, list) or not slots_json:
        return None
    capacity = 0.0
    used = 0.0
    for slot in slots_json:
        if not isinstance(slot, dict):
            return None
        n_ctx = _as_number(slot.get("n_ctx"))
        if n_ctx is None or n_ctx <= 0:
            return None
        capacity += n_ctx
        processing = slot.get("is_processing")
        if processing is None:
            state = _as_number(slot.get("state"))  # very old builds: 0 idle, 1 processing
            processing = state is not None and state != 0
        if processing:
            tokens = _slot_tokens_in_use(slot)
            if tokens is None:
                return None
            used += min(tokens, n_ctx)
    return used / capacity


def busy_slots(slots_json: Any) -> float | None:
    if not isinstance(slots_json, list):
        return None
    return float(sum(1 for slot in slots_json if isinstance(slot, dict) and slot.get("is_processing")))


def _llamacpp_snapshot(exposition: Exposition, t: float, slots_json: Any) -> ServerSnapshot:
    processed = exposition.total("llamacpp:prompt_tokens_total")
    cached = exposition.total("llamacpp:prompt_tokens_cached_total")
    # vLLM counts every prompt token (cached or not); llama.cpp's counter excludes cached ones.
    prompt_total = processed + cached if processed is not None and cached is not None else processed
    kv = exposition.mean("llamacpp:kv_cache_usage_ratio")
    if kv is None:
        kv = kv_usage_from_slots(slots_json)
    running = exposition.total("llamacpp:requests_processing")
    if running is None:
        running = busy_slots(slots_json)
    return ServerSnapshot(
        t=t,
        source="llamacpp",
        running=running,
        waiting=exposition.total("llamacpp:requests_deferred"),
        kv_cache_usage=kv,
        prompt_tokens_total=prompt_total,
        generation_tokens_total=exposition.total("llamacpp:tokens_predicted_total"),
        prefix_cache_hits_total=cached,
        prefix_cache_queries_total=prompt_total if cached is not None else None,
    )


def snapshot_from_exposition(exposition: Exposition, t: float, slots_json: Any = None) -> ServerSnapshot:
    names = exposition.names()
    if any(name.startswith("vllm:") for name in names):
        return _vllm_snapshot(exposition, t, _vllm_source(exposition, names))
    if any(name.startswith("llamacpp:") for name in names) or slots_json is not None:
        return _llamacpp_snapshot(exposition, t, slots_json)
    return ServerSnapshot(t=t, source="unknown")


def snapshot_from_metrics(text: str, t: float, slots_json: Any = None) -> ServerSnapshot:
    """Build a ServerSnapshot from /metrics text (and llama.cpp's /slots JSON when given).

    Counters and request gauges are summed over label sets; KV usage is averaged.
    Raises MetricsFormatError when the body holds no sample at all but unreadable lines.
    """
    exposition = parse_exposition(text)
    if not exposition.samples and exposition.malformed:
        number, line = exposition.malformed[0]
        raise MetricsFormatError(
            f"/metrics did not return Prometheus text (line {number}: {line[:60]!r}); "
            "check that the URL points at the model server"
        )
    return snapshot_from_exposition(exposition, t, slots_json)


# --- per-level figures -----------------------------------------------------------------------------

# A level whose prompts are not meant to share prefixes should find next to nothing in the prefix cache
# (a chat template's few leading tokens); above this, repeated prompts flatter its TTFT.
PREFIX_HIT_WARN = 0.20


def prefix_cache_hit_rate(snapshots: Sequence[ServerSnapshot]) -> float | None:
    """Prefix-cache hits / queries (tokens) over a level: the increase of both counters from its first to
    its last scrape. None when the server has no such counters (or they did not move, or were reset)."""
    pairs = [
        (s.prefix_cache_hits_total, s.prefix_cache_queries_total)
        for s in sorted(snapshots, key=lambda s: s.t)
        if s.prefix_cache_hits_total is not None and s.prefix_cache_queries_total is not None
    ]
    if len(pairs) < 2:
        return None
    hits = pairs[-1][0] - pairs[0][0]
    queries = pairs[-1][1] - pairs[0][1]
    if queries <= 0 or hits < 0:
        return None
    return min(1.0, hits / queries)


def prefix_cache_warning(rate: float | None, sampling: PromptSampling | None) -> str | None:
    """A warning when a level whose prompts were not meant to repeat found them in the prefix cache."""
    if rate is None or rate <= PREFIX_HIT_WARN or sampling is PromptSampling.SAME:
        return None
    why = (
        "the dataset is too small for each level to get its own prompts"
        if sampling is PromptSampling.OVERLAP
        else "the prompts share prefixes or repeat"
    )
    return (
        f"prefix cache answered {rate:.0%} of prompt tokens (> {PREFIX_HIT_WARN:.0%}): {why}, "
        "so TTFT is lower than fresh prompts would see"
    )


# --- scraper ---------------------------------------------------------------------------------------

SnapshotCallback = Callable[[ServerSnapshot], Awaitable[None] | None]


class MetricsScraper:
    """Polls ``/metrics`` (and llama.cpp's ``/slots`` when KV usage needs it) about once a second.

    A failed scrape never raises: ``scrape`` returns None, ``last_error`` keeps the message, and
    each new kind of failure is logged once.
    """

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        interval_s: float = 1.0,
        *,
        timeout_s: float = 2.0,
        fetch_slots: bool | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/").removesuffix("/v1")
        self.interval_s = interval_s
        self.last_error: str | None = None
        self.failures = 0
        self.scrapes = 0
        # None: decide from the first body (llama.cpp without a KV metric); False once /slots fails.
        self._fetch_slots = fetch_slots
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        try:
            parts = urlsplit(self.base_url)
            valid = parts.scheme in ("http", "https") and bool(parts.hostname) and parts.port != 0
            if valid:
                self._client = httpx.AsyncClient(
                    base_url=self.base_url, headers=headers, timeout=httpx.Timeout(timeout_s)
                )
        except (httpx.InvalidURL, ValueError):
            valid = False
        if not valid:
            raise TargetError(f"{base_url!r} is not an http(s) URL; give one like http://127.0.0.1:8000")
        self._logged: set[str] = set()

    async def __aenter__(self) -> MetricsScraper:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._client.aclose()

    def _fail(self, message: str) -> None:
        self.failures += 1
        self.last_error = message
        if message not in self._logged:
            self._logged.add(message)
            logger.warning("server metrics: %s", message)

    async def _get_slots(self) -> Any:
        try:
            response = await self._client.get("/slots")
        except httpx.HTTPError:
            return None
        if response.status_code != 200:
            # Disabled (--no-slots answers 501) or not a llama.cpp server: stop asking.
            self._fetch_slots = False
            return None
        try:
            return response.json()
        except ValueError:
            self._fetch_slots = False
            return None

    async def scrape(self, t: float) -> ServerSnapshot | None:
        """One scrape stamped ``t``; None (and ``last_error`` set) when the server could not be read."""
        self.scrapes += 1
        try:
            return await self._scrape(t)
        except httpx.TimeoutException:
            self._fail(f"{self.base_url}/metrics timed out")
        except httpx.ConnectError:
            self._fail(f"{self.base_url}/metrics unreachable: cannot connect")
        except httpx.HTTPError as exc:
            self._fail(f"{self.base_url}/metrics unreachable: {type(exc).__name__}")
        except MetricsFormatError as exc:
            self._fail(str(exc))
        except Exception as exc:  # the bench must outlive any server oddity; the message is kept
            self._fail(f"{self.base_url}/metrics could not be read: {type(exc).__name__}: {exc}")
        return None

    async def _scrape(self, t: float) -> ServerSnapshot:
        response = await self._client.get("/metrics")
        if response.status_code != 200:
            raise MetricsFormatError(f"{self.base_url}/metrics answered HTTP {response.status_code}")
        exposition = parse_exposition(response.text)
        if not exposition.samples and exposition.malformed:
            raise MetricsFormatError(f"{self.base_url}/metrics did not return Prometheus text")
        if self._fetch_slots is None:
            names = exposition.names()
            self._fetch_slots = any(n.startswith("llamacpp:") for n in names) and not exposition.has(
                "llamacpp:kv_cache_usage_ratio"
            )
        slots_json = await self._get_slots() if self._fetch_slots else None
        return snapshot_from_exposition(exposition, t, slots_json)

    async def run(
        self,
        callback: SnapshotCallback,
        stop_event: asyncio.Event,
        *,
        time_origin: float | None = None,
    ) -> None:
        """Scrape every ``interval_s`` until ``stop_event`` is set, passing each snapshot to ``callback``.

        Snapshot times are ``time.perf_counter() - time_origin`` (default: when ``run`` starts), the
        clock the bench's records use. Failed scrapes are skipped, never raised.
        """
        origin = time.perf_counter() if time_origin is None else time_origin
        next_at = time.perf_counter()
        while not stop_event.is_set():
            snapshot = await self.scrape(time.perf_counter() - origin)
            if snapshot is not None:
                result = callback(snapshot)
                if inspect.isawaitable(result):
                    await result
            next_at += self.interval_s
            delay = next_at - time.perf_counter()
            if delay < 0:  # a slow scrape: restart the cadence instead of bursting to catch up
                next_at = time.perf_counter()
                delay = 0.0
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop_event.wait(), timeout=delay)
