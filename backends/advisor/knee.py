"""The highest request rate one twin replica serves within an SLO, found on the fast-forward clock.

Three parts, cheapest first:

- **Floors.** The request at the SLO's percentile, alone on an idle engine: its TTFT is one prefill and
  its TPOT one decode step per token. A floor over the target means no rate meets the SLO.
- **Saturation.** Every request queued at once: the replica's request throughput at full load. No
  higher rate is sustainable (a burst of 1000 prompts at 140 req/s can fit in the KV cache of 4xH100 and
  pass a TTFT target, yet the replica drains 40 req/s), so it caps the search.
- **Bracket and bisect.** Levels at the same prompts (a fresh engine each, so no level warms the prefix
  cache of the next) from 0.9 x saturation, stepping down to a passing level, then geometric bisection
  until the bracket is within ``tolerance``. A level stops as soon as enough requests have waited longer
  than the TTFT target for its percentile to be over it (waiting counts: a request still without its
  first token already exceeded the target once it has waited that long).

Multi-turn (``sessions``): the rate is new sessions/s and every level replays the sessions turn by turn
(``fastforward_sessions``, the prefix cache carrying each history); the SLO applies to every turn's
request, saturation is every session started at once (its throughput in sessions/s), and the floors are
the first turns' (nothing cached yet, the shortest context: a lower bound for every later turn too).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from pydantic import BaseModel, ConfigDict

from backends.bench.models import Axis, LoadLevel, SampledConversation, SampledRequest
from backends.bench.results import DatasetSpec, LevelResult
from backends.bench.slo import Slo, SloTarget
from backends.prometheus import prefix_cache_hit_rate
from backends.twin.engine import TwinConfig, TwinEngine
from backends.twin.fastforward import EarlyStop, run_level
from backends.twin.fastforward_sessions import run_sessions_level

DEFAULT_TOLERANCE = 0.1
DEFAULT_MAX_LEVELS = 10
LOWEST_RATE = 1e-3  # req/s: below it a shape is called unable to meet the SLO
# The first open-loop level is at this fraction of the saturation throughput (knees of the catalog's
# shapes for ShareGPT lie at 0.75-0.95 of it); after a failure the next is FIRST_STEP_DOWN lower, then
# each half the last.
START_FRACTION = 0.9
FIRST_STEP_DOWN = 0.8


class Floor(BaseModel):
    """What one request alone on the engine takes, for the SLO target it bounds."""

    model_config = ConfigDict(frozen=True)

    target: str
    floor_ms: float
    limit_ms: float
    reason: str

    @property
    def met(self) -> bool:
        return self.floor_ms <= self.limit_ms


class Trial(BaseModel):
    """One fast-forward level of the search."""

    model_config = ConfigDict(frozen=True)

    rate: float
    passed: bool
    reasons: tuple[str, ...] = ()
    stopped_early: bool = False
    p99_ttft_ms: float
    p99_tpot_ms: float
    request_throughput: float
    """requests/s (multi-turn: every turn's request counts)"""
    total_token_throughput: float
    prefix_cache_hit_rate: float | None = None


class Sessions(BaseModel):
    """A multi-turn workload for the search: the sessions and how they are replayed."""

    model_config = ConfigDict(frozen=True)

    conversations: tuple[SampledConversation, ...]
    spec: DatasetSpec

    @property
    def turns(self) -> int:
        return sum(len(c.turns) for c in self.conversations)

    @property
    def tokens_per_session(self) -> float:
        """Prompt (the whole history resent, as vLLM counts it) + output tokens of a session, on average."""
        total = 0
        for conversation in self.conversations:
            context = 0
            for turn in conversation.turns:
                context += turn.user_len
                total += context + turn.expected_output_len
                own = not (self.spec.dataset_answers and turn.answer)
                context += turn.expected_output_len if own else turn.answer_len
        return total / max(1, len(self.conversations))


def _play(
    config: TwinConfig,
    requests: Sequence[SampledRequest],
    sessions: Sessions | None,
    level: LoadLevel,
    *,
    seed: int,
    ignore_eos: bool,
    percentiles: Sequence[float],
    goodput_slos_ms: dict[str, float] | None = None,
    early_stop: EarlyStop | None = None,
) -> LevelResult:
    if sessions is None:
        return run_level(
            TwinEngine(config),
            level,
            requests,
            seed=seed,
            ignore_eos=ignore_eos,
            percentiles=percentiles,
            goodput_slos_ms=goodput_slos_ms,
            early_stop=early_stop,
        )
    return run_sessions_level(
        TwinEngine(config),
        level,
        sessions.conversations,
        sessions.spec,
        seed=seed,
        ignore_eos=ignore_eos,
        percentiles=percentiles,
        goodput_slos_ms=goodput_slos_ms,
        early_stop=early_stop,
    )


class Knee(BaseModel):
    """``rate``: the highest passing rate tried (None: none passed); ``saturation``: the replica's request
    throughput with every request queued at once, the highest sustainable rate (0 when never measured)."""

    model_config = ConfigDict(frozen=True)

    rate: float | None
    saturation: float = 0.0
    floors: tuple[Floor, ...] = ()
    trials: tuple[Trial, ...] = ()
    reason: str | None = None  # why no rate meets the SLO

    @property
    def met(self) -> bool:
        return self.rate is not None


def _percentile_request(requests: Sequence[SampledRequest], target: SloTarget, slo: Slo) -> SampledRequest:
    if target.stat == "each":
        q = slo.goodput * 100.0
    elif target.stat in ("mean", "median"):
        q = 50.0
    else:
        q = float(target.stat)
    if target.metric == "ttft":
        ordered = sorted(requests, key=lambda r: r.prompt_len)
    else:
        ordered = sorted(requests, key=lambda r: (r.prompt_len + r.expected_output_len, r.prompt_len))
    index = min(len(ordered) - 1, max(0, math.ceil(q / 100.0 * len(ordered)) - 1))
    return ordered[index]


def _alone(config: TwinConfig, request: SampledRequest) -> tuple[float, float, float]:
    """(TTFT, TPOT, E2E) in seconds of ``request`` alone on a fresh engine."""
    engine = TwinEngine(config)
    engine.add_request("floor", request.prompt_len, request.expected_output_len, True, 0.0)
    now = 0.0
    first: float | None = None
    while engine.has_work():
        burst = engine.decode_burst(now, math.inf, 1 << 30) if first is not None else None
        if burst is not None:
            now = burst.step_ends[-1]
            continue
        step = engine.step(now)
        now += step.duration_s
        if first is None and step.outputs:
            first = now
    assert first is not None
    tokens = request.expected_output_len
    tpot = (now - first) / (tokens - 1) if tokens > 1 else 0.0
    return first, tpot, now


def slo_floors(config: TwinConfig, requests: Sequence[SampledRequest], slo: Slo) -> list[Floor]:
    floors: list[Floor] = []
    for target in slo.targets:
        # one decode step is also the floor of an inter-token gap
        metric = "tpot" if target.metric == "itl" else target.metric
        request = _percentile_request(requests, target.model_copy(update={"metric": metric}), slo)
        ttft, tpot, e2e = _alone(config, request)
        value = {"ttft": ttft, "tpot": tpot, "e2el": e2e}[metric] * 1000.0
        context = request.prompt_len + request.expected_output_len
        why = {
            "ttft": f"one prefill of a {request.prompt_len:,}-token prompt alone takes {value:,.0f} ms",
            "tpot": f"one decode step alone (batch 1, up to {context:,} tokens of context) takes "
            f"{value:,.1f} ms",
            "e2el": f"a {request.prompt_len:,}+{request.expected_output_len:,}-token request alone takes "
            f"{value:,.0f} ms",
        }[metric]
        floors.append(
            Floor(
                target=target.key,
                floor_ms=value,
                limit_ms=target.limit_ms,
                reason=f"{target.label} floor {value:,.1f} ms > {target.limit_ms:,.0f} ms: {why}",
            )
        )
    return floors


class _TtftWatch:
    """Early stop: more requests past the TTFT target than the percentile allows."""

    def __init__(self, target: SloTarget, allowed: int) -> None:
        self.limit_s = target.limit_ms / 1000.0
        self.allowed = allowed
        self.label = target.label
        self.limit_ms = target.limit_ms
        self.late = 0
        self.seen = 0
        self.pending: list[int] = []
        self.reason: str | None = None

    def __call__(
        self, now: float, sent_at: Sequence[float], admitted: int, first_token: Sequence[float | None]
    ) -> str | None:
        self.pending.extend(range(self.seen, admitted))
        self.seen = admitted
        still: list[int] = []
        limit = self.limit_s
        for i in self.pending:
            first = first_token[i]
            if first is None:
                if now - sent_at[i] > limit:
                    self.late += 1
                else:
                    still.append(i)
            elif first - sent_at[i] > limit:
                self.late += 1
        self.pending = still
        if self.late > self.allowed:
            self.reason = (
                f"{self.label} over {self.limit_ms:,.0f} ms on {self.late:,} requests already "
                f"(at {now:,.0f} s of the level)"
            )
        return self.reason


def run_trial(
    config: TwinConfig,
    requests: Sequence[SampledRequest],
    rate: float,
    slo: Slo,
    *,
    seed: int = 0,
    burstiness: float = 1.0,
    ignore_eos: bool = True,
    watch: bool = True,
    sessions: Sessions | None = None,
) -> Trial:
    """One level at ``rate`` (inf: every request at once; multi-turn: sessions/s); ``watch`` stops it once
    its TTFT target fails."""
    level = LoadLevel(axis=Axis.REQUEST_RATE, value=rate, burstiness=burstiness)
    target = slo.target("ttft") if watch else None
    total = len(requests) if sessions is None else sessions.turns
    ttft_watch = _TtftWatch(target, slo.allowed_violations(target, total)) if target else None
    result = _play(
        config,
        requests,
        sessions,
        level,
        seed=seed,
        ignore_eos=ignore_eos,
        percentiles=slo.percentiles,
        goodput_slos_ms=slo.per_request_ms or None,
        early_stop=ttft_watch,
    )
    metrics = result.metrics
    reasons: tuple[str, ...]
    if ttft_watch is not None and ttft_watch.reason is not None:
        passed, reasons, stopped = False, (ttft_watch.reason,), True
    else:
        check = slo.check(metrics)
        passed, reasons, stopped = check.passed, check.failures, False
    return Trial(
        rate=rate,
        passed=passed,
        reasons=reasons,
        stopped_early=stopped,
        p99_ttft_ms=metrics.ttft.percentiles.get("99", 0.0),
        p99_tpot_ms=metrics.tpot.percentiles.get("99", 0.0),
        request_throughput=metrics.request_throughput,
        total_token_throughput=metrics.total_token_throughput,
        prefix_cache_hit_rate=prefix_cache_hit_rate(result.server_snapshots),
    )


def measure_saturation(
    config: TwinConfig,
    requests: Sequence[SampledRequest],
    *,
    seed: int = 0,
    ignore_eos: bool = True,
    sessions: Sessions | None = None,
) -> Trial:
    """Every request queued at once, to the last: its request throughput is what the replica drains at
    full load. (Stopping at half done underestimates it: with equal output lengths requests finish in
    waves, and 2xH100 read 15 req/s at half against 23 over the level, 22 of which pass an SLO.)"""
    result = _play(
        config,
        requests,
        sessions,
        LoadLevel(axis=Axis.REQUEST_RATE, value=math.inf),
        seed=seed,
        ignore_eos=ignore_eos,
        percentiles=[99.0],
    )
    metrics = result.metrics
    return Trial(
        rate=math.inf,
        passed=False,
        reasons=("saturation: every request at once",),
        p99_ttft_ms=metrics.ttft.percentiles.get("99", 0.0),
        p99_tpot_ms=metrics.tpot.percentiles.get("99", 0.0),
        request_throughput=metrics.request_throughput,
        total_token_throughput=metrics.total_token_throughput,
        prefix_cache_hit_rate=prefix_cache_hit_rate(result.server_snapshots),
    )


def find_knee(
    config: TwinConfig,
    requests: Sequence[SampledRequest],
    slo: Slo,
    *,
    tolerance: float = DEFAULT_TOLERANCE,
    max_levels: int = DEFAULT_MAX_LEVELS,
    seed: int = 0,
    burstiness: float = 1.0,
    ignore_eos: bool = True,
    sessions: Sessions | None = None,
) -> Knee:
    """Bracket and bisect the highest rate whose level meets ``slo`` (``tolerance``: relative width).
    With ``sessions`` the rate is sessions/s and ``requests`` are their first turns (for the floors)."""
    if not requests:
        raise ValueError("the search needs at least one request")
    floors = slo_floors(config, requests, slo)
    missed = [f for f in floors if not f.met]
    if missed:
        return Knee(rate=None, floors=tuple(floors), reason="; ".join(f.reason for f in missed))
    trials: list[Trial] = []

    def trial(rate: float) -> Trial:
        t = run_trial(
            config,
            requests,
            rate,
            slo,
            seed=seed,
            burstiness=burstiness,
            ignore_eos=ignore_eos,
            sessions=sessions,
        )
        trials.append(t)
        return t

    # Every request at once: the replica's saturation throughput. No rate above it is sustainable, however
    # well a burst of len(requests) prompts at that rate fares, so it caps the search.
    saturation = measure_saturation(config, requests, seed=seed, ignore_eos=ignore_eos, sessions=sessions)
    trials.append(saturation)
    ceiling = saturation.request_throughput
    if sessions is not None:  # turns/s -> sessions/s
        ceiling *= len(sessions.conversations) / sessions.turns
    lo: float | None = None
    hi = ceiling
    rate = ceiling * START_FRACTION
    while len(trials) < max_levels:
        if trial(rate).passed:
            lo = rate
            break
        hi = rate
        if rate / 2.0 < LOWEST_RATE:
            break
        rate *= FIRST_STEP_DOWN if len(trials) == 2 else 0.5
    while lo is not None and hi / lo > 1.0 + tolerance and len(trials) < max_levels:
        mid = math.sqrt(lo * hi)
        if trial(mid).passed:
            lo = mid
        else:
            hi = mid
    reason = None
    if lo is None:
        last = trials[-1]
        unit = "req/s" if sessions is None else "sessions/s"
        reason = f"fails even at {last.rate:.3g} {unit}: {'; '.join(last.reasons)}"
    return Knee(rate=lo, floors=tuple(floors), trials=tuple(trials), saturation=ceiling, reason=reason)
