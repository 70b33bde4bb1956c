"""The Bench form's values, checked and turned into one ``SweepConfig`` per selected target.

Pure functions (no widgets, no I/O): every bad field raises one ``ConfigError`` that names the field
and says what to type instead. ``values_from_config`` goes the other way, for re-running a saved run.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

from backends.bench.input_grammar import parse_count, parse_goodput, parse_levels, parse_number
from backends.bench.loadgen.arrivals import check_ramp_up
from backends.bench.models import Axis
from backends.bench.results import DatasetSpec, SweepConfig
from backends.bench.sweep import validate_config
from backends.errors import ConfigError, ServeDeckError
from backends.target_types import Target
from backends.telemetry.scrape import metrics_urls
from tui.services.bench_cost import PRICE_SOURCE_LABELS, PriceSource

DatasetKind = Literal["sharegpt", "random", "file", "multi_turn", "prefix_repetition", "trace"]
RampUp = Literal["", "linear", "exponential"]


class BenchFormValues(BaseModel):
    """What the form holds, as typed (text fields stay text until ``build_runs`` checks them)."""

    targets: list[str] = Field(default_factory=list)
    dataset: DatasetKind = "sharegpt"
    dataset_path: str = ""
    random_input_len: str = "1024"
    random_output_len: str = "128"
    # multi-turn conversations (the CLI's --turns, --think-time, --think-time-dist, --use-dataset-answers)
    turns: str = "4"
    think_time: str = "0"
    think_exponential: bool = False
    dataset_answers: bool = False
    # shared prefixes (vLLM's prefix_repetition: K prefixes of P tokens, each before its own suffixes)
    num_prefixes: str = "10"
    prefix_len: str = "256"
    suffix_len: str = "256"
    # trace replay (the CLI's --trace, --trace-time-scale)
    trace_path: str = ""
    trace_time_scale: str = "1"
    # ramp-up of the request rate within the level (vLLM's --ramp-up-strategy/-start-rps/-end-rps)
    ramp_up: RampUp = ""
    ramp_start_rps: str = ""
    ramp_end_rps: str = ""
    axis: Axis = Axis.CONCURRENCY
    levels: str = "1,4,16"
    num_prompts: str = "100"
    output_len: str = "256"
    ignore_eos: bool = False
    same_prompts: bool = False
    slos: str = ""
    price_source: PriceSource = PriceSource.CATALOG
    usd_per_hour: str = ""
    # dcgm-exporter /metrics (the CLI's --gpu-metrics); blank: a twin's own /dcgm, a deployment's exporter
    gpu_metrics: str = ""
    label: str = ""


class PlannedRun(BaseModel):
    """One target's sweep, as the Bench form planned it."""

    config: SweepConfig

    @property
    def usd_per_hour(self) -> float | None:
        """The price its $ per 1M tokens line uses (None: no price); saved with the run's config."""
        return self.config.usd_per_hour


def _whole(field: str, text: str, *, blank_ok: bool = False, example: str = "100") -> int | None:
    if blank_ok and not text.strip():
        return None
    return parse_count(field, text, example=example)


def parse_price(text: str) -> float:
    value = text.strip().lstrip("$")
    try:
        price = float(value)
    except ValueError:
        raise ConfigError(
            f"custom $/h: {text.strip()!r} is not a price; type dollars per hour, e.g. 4.00"
        ) from None
    if not math.isfinite(price) or price <= 0:
        raise ConfigError(f"custom $/h must be more than 0, got {text.strip()}")
    return price


def parse_gpu_metrics(text: str) -> str | None:
    """The GPU metrics field: blank (automatic) or dcgm-exporter URLs, comma-separated as --gpu-metrics."""
    if not text.strip():
        return None
    try:
        metrics_urls(text)
    except ServeDeckError as err:
        raise ConfigError(f"GPU metrics: {err}; or leave it blank for automatic") from None
    return text.strip()


def _dataset(values: BenchFormValues) -> DatasetSpec:
    if values.dataset == "file":
        path = values.dataset_path.strip()
        if not path:
            raise ConfigError("dataset file: type the path of a ShareGPT-format JSON file")
        return DatasetSpec(kind="file", path=path)
    if values.dataset == "multi_turn":
        return DatasetSpec(
            kind="multi_turn",
            turns=parse_count("turns", values.turns, example="4"),
            think_time_s=parse_number("think time", values.think_time, example="2.5"),
            think_time_dist="exponential" if values.think_exponential else "fixed",
            dataset_answers=values.dataset_answers,
        )
    if values.dataset == "prefix_repetition":
        return DatasetSpec(
            kind="prefix_repetition",
            num_prefixes=parse_count("prefixes", values.num_prefixes, example="10"),
            prefix_len=parse_count("prefix tokens", values.prefix_len, example="256"),
            suffix_len=parse_count("suffix tokens", values.suffix_len, example="256"),
        )
    if values.dataset == "trace":
        path = values.trace_path.strip()
        if not path:
            raise ConfigError("trace file: type the path of a Mooncake .jsonl or BurstGPT .csv trace")
        if not Path(path).expanduser().is_file():
            raise ConfigError(f"trace file: no such file {path!r}")
        scale = parse_number("time scale", values.trace_time_scale, example="0.5", positive=True)
        return DatasetSpec(kind="trace", path=path, trace_time_scale=scale)
    if values.dataset == "random":
        input_len = _whole("random input length", values.random_input_len, example="1024")
        output_len = _whole("random output length", values.random_output_len, example="128")
        assert input_len is not None and output_len is not None
        return DatasetSpec(kind="random", random_input_len=input_len, random_output_len=output_len)
    return DatasetSpec(kind="sharegpt")


def _ramp_up(values: BenchFormValues) -> dict[str, object]:
    """The SweepConfig's ramp-up fields (none unless a strategy is picked)."""
    if not values.ramp_up:
        return {}
    if values.axis is not Axis.REQUEST_RATE:
        raise ConfigError("ramp-up ramps the request rate: pick the request rate axis")
    start = parse_number("ramp start req/s", values.ramp_start_rps, example="1")
    end = parse_number("ramp end req/s", values.ramp_end_rps, example="20")
    check_ramp_up(values.ramp_up, start, end)
    return {"ramp_up_strategy": values.ramp_up, "ramp_up_start_rps": start, "ramp_up_end_rps": end}


def _targets(values: BenchFormValues, available: Sequence[Target]) -> list[Target]:
    if not values.targets:
        raise ConfigError(
            "pick at least one target in Targets (space toggles); "
            "the Deployments view adds and starts targets"
        )
    by_name = {target.name: target for target in available}
    chosen = []
    for name in values.targets:
        target = by_name.get(name)
        if target is None:
            raise ConfigError(f"target {name!r} is not available any more; pick another in Targets")
        chosen.append(target)
    return chosen


def build_runs(
    values: BenchFormValues,
    available: Sequence[Target],
    catalog_price: Callable[[str], float | None],
    base: SweepConfig | None = None,
) -> list[PlannedRun]:
    """One planned sweep per selected target, in the order they were picked.

    ``base`` is the saved config being re-run: settings the form does not show (seed, percentiles,
    endpoint, temperature, burstiness, timeouts, workers) are kept from it.
    """
    targets = _targets(values, available)
    dataset = _dataset(values)
    ramp = _ramp_up(values)
    # A ramp sets the rate within one level, as vLLM's; a trace sets its own arrival times.
    levels = [math.inf] if ramp else parse_levels(values.axis, values.levels)
    num_prompts = _whole("prompts per level", values.num_prompts, example="100")
    assert num_prompts is not None
    output_len = _whole("output length", values.output_len, blank_ok=True, example="256")
    slos = parse_goodput(values.slos)
    custom_price = parse_price(values.usd_per_hour) if values.price_source is PriceSource.CUSTOM else None
    label = values.label.strip() or None
    gpu_metrics_url = parse_gpu_metrics(values.gpu_metrics)
    runs = []
    for target in targets:
        fields = {
            "target": target,
            "dataset": dataset,
            "axis": values.axis,
            "levels": levels,
            "num_prompts": num_prompts,
            "output_len": output_len,
            "ignore_eos": values.ignore_eos,
            "same_prompts": values.same_prompts,
            "goodput_slos_ms": slos,
            "label": label,
            "gpu_metrics_url": gpu_metrics_url,
            "gpu_metrics_pods": None,
            **ramp,
        }
        if values.price_source is PriceSource.CUSTOM:
            price = custom_price
        elif values.price_source is PriceSource.CATALOG:
            price = catalog_price(target.name)
        else:
            price = None
        fields["usd_per_hour"] = price
        fields["price_source"] = None if price is None else PRICE_SOURCE_LABELS[values.price_source]
        config = base.model_copy(update=fields) if base is not None else SweepConfig.model_validate(fields)
        validate_config(config)
        runs.append(PlannedRun(config=config))
    return runs


def format_level(axis: Axis | str, value: float) -> str:
    return f"{int(value)}" if Axis(axis) is Axis.CONCURRENCY else f"{value:g}"


def axis_title(axis: Axis | str) -> str:
    """The honest name of the swept quantity, for chart axes and tables."""
    if Axis(axis) is Axis.CONCURRENCY:
        return "concurrency (requests in flight, closed loop)"
    return "request rate (req/s, open loop)"


def values_from_config(config: SweepConfig, available: Sequence[Target]) -> BenchFormValues:
    """The form filled from a saved run; the target is matched by name, then by URL and model."""
    target = config.target
    names = [t.name for t in available if t.name == target.name]
    if not names:
        names = [t.name for t in available if t.base_url == target.base_url and t.model == target.model][:1]
    dataset = config.dataset
    kinds: tuple[DatasetKind, ...] = ("file", "random", "multi_turn", "prefix_repetition", "trace")
    kind: DatasetKind = next((k for k in kinds if k == dataset.kind), "sharegpt")
    ramp: RampUp = (
        config.ramp_up_strategy if config.ramp_up_strategy in ("linear", "exponential") else ""  # type: ignore[assignment]
    )
    slos = ",".join(f"{key}:{value:g}" for key, value in config.goodput_slos_ms.items())
    return BenchFormValues(
        targets=names,
        dataset=kind,
        dataset_path=dataset.path or "" if kind == "file" else "",
        random_input_len=str(dataset.random_input_len),
        random_output_len=str(dataset.random_output_len),
        turns=str(dataset.turns),
        think_time=f"{dataset.think_time_s:g}",
        think_exponential=dataset.think_time_dist == "exponential",
        dataset_answers=dataset.dataset_answers,
        num_prefixes=str(dataset.num_prefixes),
        prefix_len=str(dataset.prefix_len),
        suffix_len=str(dataset.suffix_len),
        trace_path=dataset.path or "" if kind == "trace" else "",
        trace_time_scale=f"{dataset.trace_time_scale:g}",
        ramp_up=ramp,
        ramp_start_rps="" if config.ramp_up_start_rps is None else f"{config.ramp_up_start_rps:g}",
        ramp_end_rps="" if config.ramp_up_end_rps is None else f"{config.ramp_up_end_rps:g}",
        axis=config.axis,
        levels=",".join(format_level(config.axis, value) for value in config.levels),
        num_prompts=str(config.num_prompts),
        output_len="" if config.output_len is None else str(config.output_len),
        ignore_eos=config.ignore_eos,
        same_prompts=config.same_prompts,
        slos=slos,
        # A URL found for a deployment was a port-forward of that session (pods given): found again.
        gpu_metrics=config.gpu_metrics_url or "" if config.gpu_metrics_pods is None else "",
        label=config.label or "",
    )
