"""Cost: the article's worked example reproduced exactly from its inputs, the 4xH100 figure beside the
article's $0.55, the catalog's shapes, and user price files (good and bad)."""

from __future__ import annotations

from pathlib import Path

import pytest

from manifests.catalog import default_catalog, load_catalog
from manifests.cost import compare_with_article, cost_for_spec, estimate_cost
from manifests.errors import CatalogError, PriceFileError
from manifests.gpus import GpuType
from manifests.spec import build_spec


def test_article_worked_example_4xl4_g2_standard_48() -> None:
    cost = estimate_cost(default_catalog(), GpuType.L4, 4)
    assert cost.machine == "g2-standard-48"
    assert round(cost.cluster_fee_usd_per_month, 2) == 73.00
    assert round(cost.storage_usd_per_month, 2) == 82.40
    assert round(cost.nodes_usd_per_month, 2) == 2921.21
    assert round(cost.total_usd_per_month, 2) == 3076.61  # the article prints $3,076.62 (its own rounding)
    assert round(cost.usd_per_second, 6) == 0.001171
    assert round(cost.usd_per_million_tokens(411.81), 2) == 2.84


def test_4xh100_at_22000_tokens_per_second_beside_the_article() -> None:
    rows = {row.example.gpu: row for row in compare_with_article()}
    h100 = rows[GpuType.H100]
    assert h100.cost.machine == "a3-highgpu-4g"
    assert h100.example.article_usd_per_million == 0.55
    assert h100.usd_per_million == pytest.approx(0.55, rel=0.05)
    assert round(rows[GpuType.L4].usd_per_million, 2) == rows[GpuType.L4].example.article_usd_per_million


def test_every_default_shape_has_a_priced_machine_with_a_source() -> None:
    catalog = default_catalog()
    for gpu in GpuType:
        for count in catalog.node_gpu_counts(gpu):
            machine = catalog.default_machine(gpu, count)
            assert machine.gpu == gpu
            assert machine.on_demand_usd_per_hour > 0 and machine.price_source and machine.price_date


def test_multi_node_and_replicas_multiply_nodes() -> None:
    cost = estimate_cost(default_catalog(), GpuType.H100, 16, replicas=2)
    assert cost.machine == "a3-highgpu-8g" and cost.nodes == 4
    spec = build_spec(model="google/gemma-3-27b-it", gpu="l4", gpu_count=4, replicas=3)
    spec_cost = cost_for_spec(spec)
    assert spec_cost.nodes == 3
    # three replicas keep three cache volumes (one ephemeral disk per pod)
    assert spec_cost.storage_usd_per_month == pytest.approx(3 * 82.40)


def test_bad_shapes_and_missing_spot_prices_are_one_clear_line() -> None:
    catalog = default_catalog()
    with pytest.raises(CatalogError, match="no machine type carries 3x"):
        estimate_cost(catalog, GpuType.L4, 3)
    with pytest.raises(CatalogError, match="carries 1xh100, not 4xl4"):
        estimate_cost(catalog, GpuType.L4, 4, machine_type="a3-highgpu-1g")
    with pytest.raises(CatalogError, match="unknown machine type 'n9-huge'"):
        estimate_cost(catalog, GpuType.L4, 4, machine_type="n9-huge")
    with pytest.raises(CatalogError, match="no spot price for g2-standard-48"):
        estimate_cost(catalog, GpuType.L4, 4, spot=True)


def test_yaml_price_file_overrides_prices_and_sources(tmp_path: Path) -> None:
    prices = tmp_path / "prices.yaml"
    prices.write_text(
        "source: negotiated 2025\n"
        "cluster_fee_usd_per_hour: 0\n"
        "machines:\n"
        "  g2-standard-48:\n"
        "    on_demand_usd_per_hour: 3.0\n"
        "    spot_usd_per_hour: 1.2\n",
        encoding="utf-8",
    )
    catalog = load_catalog(prices)
    cost = estimate_cost(catalog, GpuType.L4, 4, spot=True)
    assert cost.node_usd_per_hour == 1.2 and cost.cluster_fee_usd_per_hour == 0
    assert any("negotiated 2025" in source for source in cost.price_sources)
    assert estimate_cost(catalog, GpuType.L4, 4).node_usd_per_hour == 3.0
    assert catalog.price_file == str(prices)


def test_json_price_file(tmp_path: Path) -> None:
    prices = tmp_path / "prices.json"
    prices.write_text('{"storage": {"hyperdisk_ml_usd_per_gib_month": 0.1}}', encoding="utf-8")
    cost = estimate_cost(load_catalog(prices), GpuType.L4, 4, storage_throughput_mib_s=0)
    assert cost.storage_usd_per_month == pytest.approx(10.0)


@pytest.mark.parametrize(
    ("name", "text", "expected"),
    [
        ("bad.yaml", "machines:\n  g2-standard-48: [1, 2\n", "is not valid YAML: line 3 column 1"),
        ("bad.json", '{"machines": ', "is not valid JSON: line 1"),
        ("list.yaml", "- 1\n- 2\n", "must be a mapping"),
        ("empty.yaml", "", "is empty"),
        (
            "typo.yaml",
            "cluster_fee_usd_per_hr: 0.1\n",
            "cluster_fee_usd_per_hr: Extra inputs are not permitted",
        ),
        (
            "unknown.yaml",
            "machines:\n  n9-huge:\n    on_demand_usd_per_hour: 1\n",
            "unknown machine type 'n9-huge'",
        ),
        ("negative.yaml", "machines:\n  g2-standard-4:\n    on_demand_usd_per_hour: -1\n", "greater than 0"),
        (
            "word.yaml",
            "cluster_fee_usd_per_hour: cheap\n",
            "cluster_fee_usd_per_hour: Input should be a valid",
        ),
    ],
)
def test_bad_price_files_give_one_clear_line(tmp_path: Path, name: str, text: str, expected: str) -> None:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    with pytest.raises(PriceFileError) as caught:
        load_catalog(path)
    message = str(caught.value)
    assert expected in message and "\n" not in message and str(path) in message


def test_missing_price_file(tmp_path: Path) -> None:
    with pytest.raises(PriceFileError, match="does not exist"):
        load_catalog(tmp_path / "nope.yaml")
