"""`servedeck cost`: node $/h + GKE cluster fee + Hyperdisk ML storage -> $/s -> $ per 1M tokens.

`servedeck cost --gpu l4 --count 4 --tokens-per-s 411.81` reproduces the article's worked example;
`servedeck cost --article` recomputes both of its published per-token figures beside the article's.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from backends.errors import ConfigError
from manifests.catalog import Catalog, load_catalog
from manifests.cost import CostBreakdown, compare_with_article, estimate_cost
from manifests.gpus import GpuType
from manifests.spec import short_gpu_name
from tui.cli.arg_types import positive
from tui.cli.deploy_render import manifest_errors


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    cost = subparsers.add_parser(
        "cost",
        help="what a GPU shape costs per hour, per month and per 1M tokens",
        description="Node $/h + GKE cluster fee + Hyperdisk ML storage -> $/s -> $ per 1M tokens at a "
        "throughput. Prices come from the built-in catalog (sources shown) or a --price-file.",
    )
    cost.add_argument("--gpu", choices=[g.value for g in GpuType], help="accelerator")
    cost.add_argument(
        "--count", type=positive(int, "--count"), default=1, help="GPUs per replica (default 1)"
    )
    cost.add_argument("--replicas", type=positive(int, "--replicas"), default=1, help="replicas (default 1)")
    cost.add_argument("--machine-type", help="GCE machine type (default: the catalog's for the GPU count)")
    cost.add_argument(
        "--spot", action="store_true", help="Spot price (needs one in the catalog or price file)"
    )
    cost.add_argument(
        "--tokens-per-s", type=positive(float, "--tokens-per-s"), help="throughput for $/1M tokens"
    )
    cost.add_argument(
        "--storage-gib", type=positive(float, "--storage-gib"), default=100.0, help="default 100"
    )
    cost.add_argument(
        "--storage-throughput",
        type=positive(float, "--storage-throughput"),
        default=2000.0,
        help="MiB/s (2000)",
    )
    cost.add_argument("--no-storage", action="store_true", help="leave out the HF-cache disk")
    cost.add_argument("--no-cluster-fee", action="store_true", help="leave out the GKE cluster fee")
    cost.add_argument("--price-file", type=Path, help="YAML/JSON price overrides (see CAPACITY.md)")
    cost.add_argument("--article", action="store_true", help="recompute the article's $/1M figures")
    cost.add_argument("--json", action="store_true", help="JSON instead of text")
    cost.set_defaults(handler=_cost)


def _cost(args: argparse.Namespace) -> int:
    with manifest_errors():
        catalog = load_catalog(args.price_file)
        if args.article:
            return _print_article(catalog, as_json=args.json)
        if args.gpu is None:
            raise ConfigError("--gpu is required (or use --article)")
        breakdown = estimate_cost(
            catalog,
            GpuType(args.gpu),
            args.count,
            replicas=args.replicas,
            machine_type=args.machine_type,
            spot=args.spot,
            storage_gib=args.storage_gib,
            storage_throughput_mib_s=args.storage_throughput,
            storage_volumes=0 if args.no_storage else 1,
            include_cluster_fee=not args.no_cluster_fee,
        )
    if args.json:
        print(json.dumps(_as_json(breakdown, args.tokens_per_s), indent=2))
    else:
        print(_as_text(breakdown, args, catalog))
    return 0


def _as_json(cost: CostBreakdown, tokens_per_s: float | None) -> dict[str, Any]:
    data: dict[str, Any] = cost.model_dump(mode="json")
    data.update(
        nodes_usd_per_month=cost.nodes_usd_per_month,
        cluster_fee_usd_per_month=cost.cluster_fee_usd_per_month,
        total_usd_per_hour=cost.total_usd_per_hour,
        total_usd_per_month=cost.total_usd_per_month,
        usd_per_second=cost.usd_per_second,
    )
    if tokens_per_s is not None:
        data.update(
            tokens_per_s=tokens_per_s, usd_per_million_tokens=cost.usd_per_million_tokens(tokens_per_s)
        )
    return data


def _as_text(cost: CostBreakdown, args: argparse.Namespace, catalog: Catalog) -> str:
    machine = catalog.machine(cost.machine)
    pricing = "spot" if cost.spot else "on-demand"
    gpu = GpuType(args.gpu)
    shape = (
        machine.accelerator.display_name
        if machine.accelerator.is_cpu
        else f"{args.count}x{short_gpu_name(gpu)}"
    )
    month = f"per month ({cost.hours_per_month:.0f} h)"
    rows = [
        (f"nodes ({cost.nodes} x {cost.machine})", cost.nodes_usd_per_hour, cost.nodes_usd_per_month),
        ("GKE cluster fee", cost.cluster_fee_usd_per_hour, cost.cluster_fee_usd_per_month),
        (
            f"Hyperdisk ML {args.storage_gib:g} GiB @ {args.storage_throughput:g} MiB/s",
            cost.storage_usd_per_hour,
            cost.storage_usd_per_month,
        ),
        ("total", cost.total_usd_per_hour, cost.total_usd_per_month),
    ]
    width = max(len(label) for label, _, _ in rows)
    lines = [
        f"{shape} on {cost.machine} ({machine.region}, {pricing})",
        f"  {'':<{width}}  {'per hour':>10}  {month}",
    ]
    lines += [
        f"  {label:<{width}}  {f'${hourly:,.4f}':>10}  ${monthly:,.2f}" for label, hourly, monthly in rows
    ]
    lines.append(f"  per second: ${cost.usd_per_second:.6f}")
    if args.tokens_per_s is not None:
        per_million = cost.usd_per_million_tokens(args.tokens_per_s)
        lines.append(f"  at {args.tokens_per_s:,g} tok/s: ${per_million:.2f} per 1M tokens")
    if cost.estimate:
        lines.append(f"  note: the {cost.machine} price is an estimate; override it with --price-file")
    lines.append("sources:")
    lines += [f"  {source}" for source in cost.price_sources]
    return "\n".join(lines)


def _print_article(catalog: Catalog, *, as_json: bool) -> int:
    rows = compare_with_article(catalog)
    if as_json:
        payload = [
            {
                "label": row.example.label,
                "tokens_per_s": row.example.tokens_per_s,
                "usd_per_million_tokens": row.usd_per_million,
                "article_usd_per_million_tokens": row.example.article_usd_per_million,
                "machine": row.cost.machine,
                "total_usd_per_hour": row.cost.total_usd_per_hour,
            }
            for row in rows
        ]
        print(json.dumps(payload, indent=2))
        return 0
    print("article's examples, recomputed from its inputs (nodes + cluster fee + 100 GiB Hyperdisk ML):")
    for row in rows:
        print(
            f"  {row.example.label:<36} {row.example.tokens_per_s:>9,.2f} tok/s  "
            f"ours ${row.usd_per_million:.2f}  article ${row.example.article_usd_per_million:.2f} "
            "per 1M tokens"
            f"  ({row.cost.machine} ${row.cost.total_usd_per_hour:.2f}/h)"
        )
    return 0
