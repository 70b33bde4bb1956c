"""Cost per 1M tokens for the sweep chart: the target's $/h at a level's total token throughput.

The price comes from the target's hardware in the catalog (the Deployments table's $/h, which the
app's target registry computes from ``manifests``), or from a $/h the user types, or nowhere ("-").
"""

from __future__ import annotations

from enum import StrEnum

from backends.target_registry import TargetRegistry


class PriceSource(StrEnum):
    CATALOG = "catalog"
    CUSTOM = "custom"
    NONE = "none"


PRICE_SOURCE_LABELS: dict[PriceSource, str] = {
    PriceSource.CATALOG: "target's hardware (catalog)",
    PriceSource.CUSTOM: "custom $/h",
    PriceSource.NONE: "none",
}


def catalog_price_per_hour(registry: TargetRegistry | None, target_name: str) -> float | None:
    """The $/h the target registry shows for ``target_name``; None when unpriced, unknown or no registry."""
    if registry is None:
        return None
    for row in registry.rows():
        if row.target is not None and row.target.name == target_name:
            return row.price_per_hour
    return None


def format_usd(value: float | None) -> str:
    if value is None:
        return "-"
    if value >= 100:
        return f"${value:,.0f}"
    if value >= 1:
        return f"${value:.2f}"
    return f"${value:.3f}"
