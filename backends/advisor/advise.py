"""Which hardware serves a request rate within an SLO at the lowest $ per 1M tokens (vLLM twin, fast-forward).

For every catalog shape (GPU type x GPUs of one node as tensor parallelism) that holds the model, the knee
search (``backends.advisor.knee``) finds the highest rate one replica serves within the SLO; then
``ceil(rate / knee)`` replicas serve the asked rate, their $/h comes from the machine catalog
(``manifests.cost.estimate_cost``: nodes, cluster fee, storage) and $ per 1M tokens divides it by the
tokens/s the asked rate carries (rate x mean prompt + output tokens of the dataset, as the article's
total-token figure). Headroom is the spare rate: replicas x knee / rate - 1. Multi-turn (``sessions``): the
rate is new sessions/s, the SLO holds for every turn, and tokens per request become tokens per session.

Shapes with the same accelerator figures and GPU count (H100 on A3 High and A3 Mega) are simulated once.
Every number is a twin prediction (simulated); CALIBRATION.md says how far to trust it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict

from backends.advisor.knee import DEFAULT_MAX_LEVELS, DEFAULT_TOLERANCE, Knee, Sessions, find_knee
from backends.bench.models import SampledRequest
from backends.bench.slo import Slo
from backends.errors import ConfigError, ServeDeckError
from backends.twin.engine import TwinConfig, TwinEngine
from manifests.catalog import Catalog
from manifests.cost import estimate_cost, usd_per_million_tokens
from manifests.errors import ManifestError
from manifests.gpus import ACCELERATORS, GpuType

DEFAULT_MAX_GPUS = 8
DEFAULT_MAX_REPLICAS = 16

Progress = Callable[[int, int, str], None]


class Verdict(StrEnum):
    OK = "ok"
    SLO = "cannot meet the SLO"
    REPLICAS = "too many replicas"
    PRICE = "no price"


class ShapeAdvice(BaseModel):
    model_config = ConfigDict(frozen=True)

    gpu: GpuType
    gpu_count: int
    label: str
    verdict: Verdict
    why: str = ""
    knee: Knee
    replicas: int | None = None
    machine: str | None = None
    usd_per_hour: float | None = None
    usd_per_million: float | None = None
    headroom: float | None = None
    price_estimate: bool = False
    simulated_as: str | None = None  # the shape whose simulation this one shares

    @property
    def per_replica_rate(self) -> float | None:
        return self.knee.rate


class Skipped(BaseModel):
    model_config = ConfigDict(frozen=True)

    label: str
    why: str


class Advice(BaseModel):
    model_config = ConfigDict(frozen=True)

    model: str
    rate: float
    slo: str
    spot: bool
    max_gpus: int
    max_replicas: int
    num_prompts: int
    tokens_per_request: float
    shapes: tuple[ShapeAdvice, ...]  # ranked: passing by $/1M, then the rest
    skipped: tuple[Skipped, ...]
    multi_turn: bool = False  # rate and knees in sessions/s, tokens_per_request per session

    @property
    def passing(self) -> list[ShapeAdvice]:
        return [s for s in self.shapes if s.verdict is Verdict.OK]


def shape_label(gpu: GpuType, count: int) -> str:
    acc = ACCELERATORS[gpu]
    if acc.is_cpu:
        return f"{acc.display_name}, TP {count}"
    name = acc.display_name.removeprefix("NVIDIA ")
    return f"{count}x{name}"


def catalog_shapes(catalog: Catalog, gpus: Sequence[GpuType], max_gpus: int) -> list[tuple[GpuType, int]]:
    """(GPU, count) for every single-node shape of the catalog up to ``max_gpus`` GPUs."""
    return [(gpu, count) for gpu in gpus for count in catalog.node_gpu_counts(gpu) if count <= max_gpus]


def _sim_key(gpu: GpuType, count: int) -> tuple[Any, ...]:
    acc = ACCELERATORS[gpu]
    figures = acc.model_dump(exclude={"gpu", "display_name", "gke_accelerator", "source"})
    return (tuple(sorted(figures.items())), count)


class Searched(BaseModel):
    """One shape's knee search (the part of the advice that does not depend on the asked rate)."""

    model_config = ConfigDict(frozen=True)

    gpu: GpuType
    gpu_count: int
    label: str
    knee: Knee
    simulated_as: str | None = None


class Search(BaseModel):
    model_config = ConfigDict(frozen=True)

    model: str
    slo: str
    max_gpus: int
    num_prompts: int
    tokens_per_request: float
    shapes: tuple[Searched, ...]
    skipped: tuple[Skipped, ...]
    multi_turn: bool = False


def search_shapes(
    model: Any,
    requests: Sequence[SampledRequest],
    *,
    slo: Slo,
    catalog: Catalog,
    gpus: Sequence[GpuType] | None = None,
    max_gpus: int = DEFAULT_MAX_GPUS,
    tolerance: float = DEFAULT_TOLERANCE,
    max_levels: int = DEFAULT_MAX_LEVELS,
    seed: int = 0,
    burstiness: float = 1.0,
    engine_args: dict[str, Any] | None = None,
    progress: Progress | None = None,
    sessions: Sessions | None = None,
) -> Search:
    """The knee of every catalog shape that holds ``model`` (a name or a ModelProfile); with ``sessions``
    (``requests`` = their first turns) of a multi-turn workload, in sessions/s."""
    if max_gpus < 1:
        raise ConfigError(f"--max-gpus must be at least 1, not {max_gpus}")
    if not requests:
        raise ConfigError("the advisor needs at least one prompt (--num-prompts)")
    chosen = list(gpus or GpuType)
    shapes = catalog_shapes(catalog, chosen, max_gpus)
    if not shapes:
        raise ConfigError(
            f"the catalog has no shape of {', '.join(g.value for g in chosen)} with at most {max_gpus} GPUs"
        )
    simulated: dict[tuple[Any, ...], tuple[str, Knee]] = {}
    searched: list[Searched] = []
    skipped: list[Skipped] = []
    model_name = str(getattr(model, "name", model))
    for done, (gpu, count) in enumerate(shapes):
        label = shape_label(gpu, count)
        if progress is not None:
            progress(done, len(shapes), label)
        try:
            config = TwinConfig.build(model, gpu, count, **(engine_args or {}))
            model_name = config.model.name
            TwinEngine(config)  # sizes the KV cache: a shape that cannot hold the model stops here
        except ServeDeckError as err:
            skipped.append(Skipped(label=label, why=str(err)))
            continue
        key = _sim_key(gpu, count)
        shared = simulated.get(key)
        simulated_as: str | None = None
        if shared is None:
            knee = find_knee(
                config,
                requests,
                slo,
                tolerance=tolerance,
                max_levels=max_levels,
                seed=seed,
                burstiness=burstiness,
                sessions=sessions,
            )
            simulated[key] = (label, knee)
        else:
            simulated_as, knee = shared
        searched.append(Searched(gpu=gpu, gpu_count=count, label=label, knee=knee, simulated_as=simulated_as))
    if progress is not None:
        progress(len(shapes), len(shapes), "done")
    return Search(
        model=model_name,
        slo=slo.text,
        max_gpus=max_gpus,
        num_prompts=len(requests),
        tokens_per_request=(
            sum(r.prompt_len + r.expected_output_len for r in requests) / len(requests)
            if sessions is None
            else sessions.tokens_per_session
        ),
        shapes=tuple(searched),
        skipped=tuple(skipped),
        multi_turn=sessions is not None,
    )


def _check_rate(rate: float, max_replicas: int) -> None:
    if not math.isfinite(rate) or rate <= 0:
        raise ConfigError(f"--rate must be a number of requests/s > 0, not {rate:g}")
    if max_replicas < 1:
        raise ConfigError(f"--max-replicas must be at least 1, not {max_replicas}")


def rank(
    search: Search,
    *,
    rate: float,
    catalog: Catalog,
    max_replicas: int = DEFAULT_MAX_REPLICAS,
    spot: bool = False,
) -> Advice:
    """Replicas, $/h, $ per 1M tokens and headroom of every searched shape at ``rate``; cheapest first."""
    _check_rate(rate, max_replicas)
    tokens_per_s = rate * search.tokens_per_request
    results = [
        _price(
            s.gpu,
            s.gpu_count,
            s.label,
            s.knee,
            rate,
            tokens_per_s,
            catalog,
            spot,
            max_replicas,
            s.simulated_as,
            "sessions/s" if search.multi_turn else "req/s",
        )
        for s in search.shapes
    ]
    order = list(Verdict)
    ranked = sorted(
        results,
        key=lambda s: (
            order.index(s.verdict),
            s.usd_per_million if s.usd_per_million is not None else math.inf,
            -(s.knee.rate or 0.0),
        ),
    )
    return Advice(
        model=search.model,
        rate=rate,
        slo=search.slo,
        spot=spot,
        max_gpus=search.max_gpus,
        max_replicas=max_replicas,
        num_prompts=search.num_prompts,
        tokens_per_request=search.tokens_per_request,
        shapes=tuple(ranked),
        skipped=search.skipped,
        multi_turn=search.multi_turn,
    )


def advise(
    model: Any,
    requests: Sequence[SampledRequest],
    *,
    rate: float,
    slo: Slo,
    catalog: Catalog,
    gpus: Sequence[GpuType] | None = None,
    max_gpus: int = DEFAULT_MAX_GPUS,
    max_replicas: int = DEFAULT_MAX_REPLICAS,
    spot: bool = False,
    tolerance: float = DEFAULT_TOLERANCE,
    max_levels: int = DEFAULT_MAX_LEVELS,
    seed: int = 0,
    burstiness: float = 1.0,
    engine_args: dict[str, Any] | None = None,
    progress: Progress | None = None,
    sessions: Sessions | None = None,
) -> Advice:
    """``search_shapes`` then ``rank``: the advice for ``rate`` req/s under ``slo``."""
    _check_rate(rate, max_replicas)  # bad input fails before the search
    search = search_shapes(
        model,
        requests,
        slo=slo,
        catalog=catalog,
        gpus=gpus,
        max_gpus=max_gpus,
        tolerance=tolerance,
        max_levels=max_levels,
        seed=seed,
        burstiness=burstiness,
        engine_args=engine_args,
        progress=progress,
        sessions=sessions,
    )
    return rank(search, rate=rate, catalog=catalog, max_replicas=max_replicas, spot=spot)


def _price(
    gpu: GpuType,
    count: int,
    label: str,
    knee: Knee,
    rate: float,
    tokens_per_s: float,
    catalog: Catalog,
    spot: bool,
    max_replicas: int,
    simulated_as: str | None,
    unit: str = "req/s",
) -> ShapeAdvice:
    base: dict[str, Any] = {
        "gpu": gpu,
        "gpu_count": count,
        "label": label,
        "knee": knee,
        "simulated_as": simulated_as,
    }
    if knee.rate is None:
        return ShapeAdvice(**base, verdict=Verdict.SLO, why=knee.reason or "no level met the SLO")
    replicas = max(1, math.ceil(rate / knee.rate - 1e-9))
    headroom = replicas * knee.rate / rate - 1.0
    base.update(replicas=replicas, headroom=headroom)
    if replicas > max_replicas:
        return ShapeAdvice(
            **base,
            verdict=Verdict.REPLICAS,
            why=f"needs {replicas:,} replicas at {knee.rate:.3g} {unit} each (--max-replicas {max_replicas})",
        )
    try:
        cost = estimate_cost(
            catalog,
            gpu,
            count,
            replicas=replicas,
            spot=spot,
            storage_volumes=1 if replicas == 1 else replicas,
        )
    except ManifestError as err:
        return ShapeAdvice(**base, verdict=Verdict.PRICE, why=str(err))
    usd_per_hour = cost.total_usd_per_hour
    return ShapeAdvice(
        **base,
        verdict=Verdict.OK,
        machine=cost.machine,
        usd_per_hour=usd_per_hour,
        usd_per_million=usd_per_million_tokens(usd_per_hour, tokens_per_s),
        price_estimate=cost.estimate,
    )


def unservable_line(advice: Advice) -> str | None:
    """One line when no shape serves the rate (None when one does)."""
    if advice.passing:
        return None
    best = max((s for s in advice.shapes if s.knee.rate), key=lambda s: s.knee.rate or 0.0, default=None)
    where = f"at most {advice.max_gpus} GPUs per replica x {advice.max_replicas} replicas"
    unit = "sessions/s" if advice.multi_turn else "req/s"
    if best is None or best.knee.rate is None:
        return f"no catalog shape meets {advice.slo} at any rate for {advice.model} ({where})"
    replicas = math.ceil(advice.rate / best.knee.rate)
    if replicas > advice.max_replicas:
        return (
            f"no catalog shape serves {advice.rate:g} {unit} within {advice.slo} with {where}: the best, "
            f"{best.label}, meets it up to {best.knee.rate:.3g} {unit} per replica and would need "
            f"{replicas:,} replicas (raise --max-replicas or --max-gpus, or loosen --slo)"
        )
    return f"no catalog shape with a price serves {advice.rate:g} {unit} within {advice.slo}: {best.why}"
