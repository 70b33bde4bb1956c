"""What an SLO search (`bench --find-max`) decided, kept with its run so History lists it as a search and
charts it: every level tried with its verdict, the start and the knee (``SweepConfig.search``)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict

Verdict = Literal["pass", "fail", "client-limited"]


class SearchLevel(BaseModel):
    model_config = ConfigDict(frozen=True)

    value: float
    verdict: Verdict
    reasons: tuple[str, ...] = ()
    stopped_by: str | None = None
    p99_ttft_ms: float = 0.0
    p99_tpot_ms: float = 0.0
    request_throughput: float = 0.0


class SearchRecord(BaseModel):
    """``levels``: one per level of the run, in the order tried; ``knee``: the highest passing value."""

    model_config = ConfigDict(frozen=True)

    slo: str
    start: float
    start_source: str
    knee: float | None
    levels: tuple[SearchLevel, ...]
    note: str | None = None
