"""The Bench form's values, checked and turned into one ``SweepConfig`` per selected target.

Pure functions (no widgets, no I/O): every bad field raises one ``ConfigError`` that names the field
and says what to type instead. ``values_from_config`` goes the other way, for re-running a saved run.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Literal

from pydantic import BaseModel, Field

from backends.bench.input_grammar import parse_goodput, parse_levels
from backends.bench.models import Axis
from backends.bench.results import DatasetSpec, SweepConfig
from backends.bench.sweep import validate_config
from backends.errors import ConfigError
from backends.target_types import Target
from tui.services.bench_cost import PRICE_SOURCE_LABELS, PriceSource

DatasetKind = Literal["sharegpt", "random", "file"]


class BenchFormValues(BaseModel):
    """What the form holds, as typed (text fields stay text until ``build_runs`` checks them)."""

    targets: list[str] = Field(default_factory=list)
    dataset: DatasetKind = "sharegpt"
    dataset_path: str = ""
    random_input_len: str = "1024"
    random_output_len: str = "128"
    axis: Axis = Axis.CONCURRENCY
    levels: str = "1,4,16"
    num_prompts: str = "100"
    output_len: str = "256"
    ignore_eos: bool = False
    same_prompts: bool = False
    slos: str = ""
    price_source: PriceSource = PriceSource.CATALOG
    usd_per_hour: str = ""
    label: str = ""


class PlannedRun(BaseModel):
    """One target's sweep, as the Bench form planned it."""

    config: SweepConfig

    @property
    def usd_per_hour(self) -> float | None:
        """The price its $ per 1M tokens line uses (None: no price); saved with the run's config."""
        return self.config.usd_per_hour


def _whole(field: str, text: str, *, blank_ok: bool = False, example: str = "100") -> int | None:
    value = text.strip()
    if not value:
        if blank_ok:
            return None
        raise ConfigError(f"{field}: give a whole number, e.g. {example}")
    try:
        number = int(value)
    except ValueError:
        raise ConfigError(f"{field}: {value!r} is not a whole number; type e.g. {example}") from None
    if number < 1:
        raise ConfigError(f"{field} must be at least 1, got {number}")
    return number


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


def _dataset(values: BenchFormValues) -> DatasetSpec:
    if values.dataset == "file":
        path = values.dataset_path.strip()
        if not path:
            raise ConfigError("dataset file: type the path of a ShareGPT-format JSON file")
        return DatasetSpec(kind="file", path=path)
    if values.dataset == "random":
        input_len = _whole("random input length", values.random_input_len, example="1024")
        output_len = _whole("random output length", values.random_output_len, example="128")
        assert input_len is not None and output_len is not None
        return DatasetSpec(kind="random", random_input_len=input_len, random_output_len=output_len)
    return DatasetSpec(kind="sharegpt")


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
    levels = parse_levels(values.axis, values.levels)
    num_prompts = _whole("prompts per level", values.num_prompts, example="100")
    assert num_prompts is not None
    output_len = _whole("output length", values.output_len, blank_ok=True, example="256")
    slos = parse_goodput(values.slos)
    custom_price = parse_price(values.usd_per_hour) if values.price_source is PriceSource.CUSTOM else None
    label = values.label.strip() or None
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
    kind: DatasetKind = (
        "file" if dataset.kind == "file" else "random" if dataset.kind == "random" else "sharegpt"
    )
    slos = ",".join(f"{key}:{value:g}" for key, value in config.goodput_slos_ms.items())
    return BenchFormValues(
        targets=names,
        dataset=kind,
        dataset_path=dataset.path or "",
        random_input_len=str(dataset.random_input_len),
        random_output_len=str(dataset.random_output_len),
        axis=config.axis,
        levels=",".join(format_level(config.axis, value) for value in config.levels),
        num_prompts=str(config.num_prompts),
        output_len="" if config.output_len is None else str(config.output_len),
        ignore_eos=config.ignore_eos,
        same_prompts=config.same_prompts,
        slos=slos,
        label=config.label or "",
    )
