"""vLLM's periodic stats log line, parsed into the same ``ServerSnapshot`` type as /metrics.

vLLM logs one INFO line about every 5 s while it has traffic (reference: vllm_k8s_facts.md §2):

- V1, v0.8 to v0.10: ``Engine 000: Avg prompt throughput: 1523.4 tokens/s, Avg generation throughput:
  812.7 tokens/s, Running: 37 reqs, Waiting: 0 reqs, GPU KV cache usage: 43.1%, Prefix cache hit rate: 26.0%``
- V1, v0.11 and later: the same, with optional ``Preemptions: N``, ``Corrupted: N reqs``, ``External prefix
  cache hit rate: X%``, ``MM cache hit rate: X%``; under data parallelism the prefix may be ``N Engines
  Aggregated:``.
- early V1 (v0.7): ``Avg prompt throughput: ..., Running: N reqs, Waiting: N reqs`` and nothing more.
- V0: ``Avg prompt throughput: ..., Running: N reqs, Swapped: N reqs, Pending: N reqs, GPU KV cache usage:
  X%, CPU KV cache usage: Y%.``

The line carries the logger's prefix (``INFO 05-12 10:23:45 [loggers.py:116]``, and from v0.10.2 a
``(APIServer pid=1)`` before it); the parser looks for the stats wherever they start. Parts are read as
``key: value`` pairs, so their order and the optional ones do not matter.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict

from backends.target_types import ServerSnapshot

_STATS_START = "Avg prompt throughput:"
_ENGINE_PREFIX = re.compile(r"(?:Engine\s+(?P<engine>\d+)|(?P<aggregated>\d+)\s+Engines\s+Aggregated):\s*$")
_NUMBER = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?|nan|inf"
_PART = re.compile(
    rf"^(?P<key>[A-Za-z][A-Za-z ]*?):\s*(?P<value>{_NUMBER})\s*(?P<unit>tokens/s|reqs|%)?\s*\.?\s*$",
    re.IGNORECASE,
)


class VllmStatsLine(BaseModel):
    """One periodic stats line. Rates are tokens/s over vLLM's log interval; fractions are 0..1."""

    model_config = ConfigDict(frozen=True)

    source: Literal["vllm-v1", "vllm-v0"]
    engine: int | None = None
    engines_aggregated: int | None = None
    prompt_tokens_per_s: float
    generation_tokens_per_s: float
    running: int
    waiting: int
    swapped: int | None = None
    preemptions: int | None = None
    corrupted: int | None = None
    gpu_kv_cache_usage: float | None = None
    cpu_kv_cache_usage: float | None = None
    prefix_cache_hit_rate: float | None = None
    external_prefix_cache_hit_rate: float | None = None
    mm_cache_hit_rate: float | None = None

    def to_snapshot(self, t: float) -> ServerSnapshot:
        """The /metrics-shaped snapshot at time ``t`` (counters are not in the line, so they stay None)."""
        return ServerSnapshot(
            t=t,
            source=self.source,
            running=float(self.running),
            waiting=float(self.waiting),
            kv_cache_usage=self.gpu_kv_cache_usage,
            prompt_tokens_per_s=self.prompt_tokens_per_s,
            generation_tokens_per_s=self.generation_tokens_per_s,
            prefix_cache_hit_rate=self.prefix_cache_hit_rate,
        )


def _engine_fields(prefix: str) -> tuple[int | None, int | None]:
    match = _ENGINE_PREFIX.search(prefix)
    if match is None:
        return None, None
    if match.group("engine") is not None:
        return int(match.group("engine")), None
    return None, int(match.group("aggregated"))


def _parts(stats: str) -> dict[str, float] | None:
    values: dict[str, float] = {}
    for raw in stats.split(","):
        part = raw.strip()
        if not part:
            continue
        match = _PART.match(part)
        if match is None:
            return None
        key = " ".join(match.group("key").lower().split())
        value = float(match.group("value"))
        values[key] = value / 100.0 if match.group("unit") == "%" else value
    return values


def parse_vllm_stats_line(line: str) -> VllmStatsLine | None:
    """The stats in one log line, or None when the line is not vLLM's periodic stats line."""
    start = line.find(_STATS_START)
    if start < 0:
        return None
    values = _parts(line[start:])
    if values is None:
        return None
    try:
        prompt = values["avg prompt throughput"]
        generation = values["avg generation throughput"]
        running = int(values["running"])
    except KeyError:
        return None
    engine, aggregated = _engine_fields(line[:start])
    is_v0 = "pending" in values or "swapped" in values
    waiting = values.get("pending" if is_v0 else "waiting")
    if waiting is None:
        return None

    def optional_int(key: str) -> int | None:
        return int(values[key]) if key in values else None

    return VllmStatsLine(
        source="vllm-v0" if is_v0 else "vllm-v1",
        engine=engine,
        engines_aggregated=aggregated,
        prompt_tokens_per_s=prompt,
        generation_tokens_per_s=generation,
        running=running,
        waiting=int(waiting),
        swapped=optional_int("swapped"),
        preemptions=optional_int("preemptions"),
        corrupted=optional_int("corrupted"),
        gpu_kv_cache_usage=values.get("gpu kv cache usage"),
        cpu_kv_cache_usage=values.get("cpu kv cache usage"),
        prefix_cache_hit_rate=values.get("prefix cache hit rate"),
        external_prefix_cache_hit_rate=values.get("external prefix cache hit rate"),
        mm_cache_hit_rate=values.get("mm cache hit rate"),
    )
