"""Service-level objectives for a search: ``p99_ttft:2000,p99_tpot:100[,e2el:30000,goodput:0.95]``.

Keys follow vLLM's ``--goodput`` names (ttft, tpot, e2el; itl too) with a statistic prefix as in its result
keys (``p99_ttft_ms``, ``mean_tpot_ms``, ``median_e2el_ms``); a trailing ``_ms`` is accepted. A bare key
(``ttft:500``) is a per-request target as with ``--goodput``: the level passes when at least the
``goodput`` fraction of its requests (default 1.0, every request) meets every bare target at once.
Values are milliseconds, ``goodput`` a fraction in (0, 1].
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

from pydantic import BaseModel, ConfigDict

from backends.bench.metrics import LATENCY_METRICS, SLO_KEYS, BenchmarkMetrics, Distribution, percentile_key
from backends.errors import ConfigError

_KEY = re.compile(r"^(?:(?P<stat>mean|median|p\d+(?:\.\d+)?)_)?(?P<metric>[a-z][a-z0-9]*?)(?:_ms)?$")
EXAMPLE = "p99_ttft:2000,p99_tpot:100"


class SloTarget(BaseModel):
    """One bound: ``stat`` is 'mean', 'median', a percentile like '99', or 'each' (a per-request target)."""

    model_config = ConfigDict(frozen=True)

    metric: str
    stat: str
    limit_ms: float

    @property
    def key(self) -> str:
        if self.stat == "each":
            return self.metric
        prefix = self.stat if self.stat in ("mean", "median") else f"p{self.stat}"
        return f"{prefix}_{self.metric}"

    @property
    def percentile(self) -> float | None:
        return None if self.stat in ("each", "mean", "median") else float(self.stat)

    def value(self, metrics: BenchmarkMetrics) -> float:
        dist: Distribution = getattr(metrics, self.metric)
        if self.stat == "mean":
            return dist.mean
        if self.stat == "median":
            return dist.median
        return dist.percentiles[self.stat]

    @property
    def label(self) -> str:
        names = {"ttft": "TTFT", "tpot": "TPOT", "itl": "ITL", "e2el": "E2EL"}
        stat = {"mean": "mean ", "median": "median ", "each": "per-request "}.get(self.stat, f"p{self.stat} ")
        return f"{stat}{names[self.metric]}"


class SloCheck(BaseModel):
    model_config = ConfigDict(frozen=True)

    passed: bool
    failures: tuple[str, ...] = ()


class Slo(BaseModel):
    model_config = ConfigDict(frozen=True)

    targets: tuple[SloTarget, ...]
    goodput: float = 1.0

    @property
    def text(self) -> str:
        parts = [f"{t.key}:{t.limit_ms:g}" for t in self.targets]
        if any(t.stat == "each" for t in self.targets) and self.goodput < 1.0:
            parts.append(f"goodput:{self.goodput:g}")
        return ",".join(parts)

    @property
    def percentiles(self) -> list[float]:
        """Percentiles the metrics must carry to judge this SLO (always 99, for the tables)."""
        wanted = [99.0]
        for target in self.targets:
            p = target.percentile
            if p is not None and p not in wanted:
                wanted.append(p)
        return wanted

    @property
    def per_request_ms(self) -> dict[str, float]:
        """Bare targets as ``compute_metrics``' goodput SLOs (ttft/tpot/e2el)."""
        return {t.metric: t.limit_ms for t in self.targets if t.stat == "each"}

    def target(self, metric: str) -> SloTarget | None:
        """The tightest percentile-or-each bound on ``metric`` (what an early stop can watch)."""
        found = [t for t in self.targets if t.metric == metric and t.stat not in ("mean", "median")]
        return min(found, key=lambda t: t.limit_ms) if found else None

    def allowed_violations(self, target: SloTarget, n: int) -> int:
        """How many of ``n`` requests may exceed ``target`` before the level fails whatever the rest do.

        numpy's linear percentile at p lies above the limit once the sample at floor(p/100 (n-1)) does,
        that is once more than n - 1 - floor(p/100 (n-1)) exceed it; a per-request target allows
        (1 - goodput) n.
        """
        if n <= 0:
            return 0
        if target.stat == "each":
            return math.floor((1.0 - self.goodput) * n + 1e-9)
        p = target.percentile
        assert p is not None
        return n - 1 - math.floor(p / 100.0 * (n - 1))

    def check(self, metrics: BenchmarkMetrics) -> SloCheck:
        failures: list[str] = []
        for target in self.targets:
            if target.stat == "each":
                continue
            value = target.value(metrics)
            if value > target.limit_ms:
                failures.append(f"{target.label} {value:,.0f} ms > {target.limit_ms:,.0f} ms")
        each = self.per_request_ms
        if each:
            good = metrics.good_completed or 0
            share = good / metrics.completed if metrics.completed else 0.0
            if share < self.goodput:
                failures.append(
                    f"{share:.1%} of requests meet {', '.join(f'{k} {v:g} ms' for k, v in each.items())} "
                    f"(< {self.goodput:.0%})"
                )
        if metrics.completed == 0:
            failures.append("no request completed")
        return SloCheck(passed=not failures, failures=tuple(failures))


def parse_slo(text: str) -> Slo:
    """``p99_ttft:2000,p99_tpot:100``; an unknown key or a value that is not a number is one clear line."""
    targets: list[SloTarget] = []
    goodput: float | None = None
    items = [part.strip() for part in text.replace(" ", ",").split(",") if part.strip()]
    if not items:
        raise ConfigError(f"--slo needs at least one target, e.g. {EXAMPLE}")
    for item in items:
        key, sep, raw = item.partition(":")
        key = key.strip().lower()
        if not sep:
            raise ConfigError(f"bad --slo item {item!r}: use KEY:VALUE, e.g. {EXAMPLE}")
        try:
            value = float(raw)
        except ValueError:
            raise ConfigError(f"bad --slo value in {item!r}: {raw.strip()!r} is not a number") from None
        if not math.isfinite(value) or value <= 0:
            raise ConfigError(f"bad --slo value in {item!r}: must be a number > 0")
        if key == "goodput":
            if value > 1.0:
                raise ConfigError(f"bad --slo value in {item!r}: goodput is a fraction in (0, 1], e.g. 0.95")
            goodput = value
            continue
        match = _KEY.match(key)
        metric = match.group("metric") if match else ""
        stat_text = match.group("stat") if match else None
        if match is None or metric not in LATENCY_METRICS or (stat_text is None and metric not in SLO_KEYS):
            raise ConfigError(
                f"unknown --slo key {key!r}: use ttft, tpot or e2el, optionally prefixed mean_, median_ or "
                f"pNN_ (itl only with a prefix), or goodput; e.g. {EXAMPLE}"
            )
        if stat_text is None:
            stat = "each"
        elif stat_text in ("mean", "median"):
            stat = stat_text
        else:
            p = float(stat_text[1:])
            if not 0 < p < 100:
                raise ConfigError(f"unknown --slo key {key!r}: the percentile must be in (0, 100)")
            stat = percentile_key(p)
        targets.append(SloTarget(metric=metric, stat=stat, limit_ms=value))
    if not targets:
        raise ConfigError(f"--slo needs a latency target besides goodput, e.g. {EXAMPLE}")
    if goodput is not None and not any(t.stat == "each" for t in targets):
        raise ConfigError("--slo goodput:F needs a per-request target (ttft:MS, tpot:MS or e2el:MS) to count")
    keys = [t.key for t in targets]
    duplicates = sorted({k for k in keys if keys.count(k) > 1})
    if duplicates:
        raise ConfigError(f"--slo names {', '.join(duplicates)} twice")
    return Slo(targets=tuple(targets), goodput=1.0 if goodput is None else goodput)


def describe(slo: Slo, values: Sequence[SloTarget] | None = None) -> str:
    """``p99 TTFT <= 2,000 ms, p99 TPOT <= 100 ms``."""
    return ", ".join(f"{t.label} <= {t.limit_ms:,.0f} ms" for t in (values or slo.targets))
