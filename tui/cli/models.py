"""`servedeck models list` / `servedeck models show`: the model profiles fit, plan, the twin and deploy use.

``list`` prints the built-in profiles (Gemma 3 and the catalog); ``show NAME|PATH`` prints one profile,
built in or read from a Hugging Face config.json (what ``--model-config PATH`` would use).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from backends.errors import ConfigError
from manifests.errors import ManifestError
from manifests.gpus import GIB
from manifests.model_catalog import all_profiles, load_custom_profile, resolve_profile
from manifests.model_profiles import ModelProfile


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    models = subparsers.add_parser("models", help="list the model profiles servedeck can size and simulate")
    actions = models.add_subparsers(dest="models_command", metavar="ACTION")
    listing = actions.add_parser("list", help="built-in model profiles (config facts and their sources)")
    listing.add_argument("--json", action="store_true", help="one JSON list instead of a table")
    listing.set_defaults(handler=_list)
    show = actions.add_parser("show", help="one profile: a built-in name, or a config.json file/directory")
    show.add_argument("model", help="built-in name or repo id, or a path to config.json / its directory")
    show.add_argument("--generic-profile", action="store_true", help="size an unknown architecture as dense")
    show.add_argument("--json", action="store_true")
    show.set_defaults(handler=_show)

    def _help(_: argparse.Namespace) -> int:
        models.print_help()
        return 2

    models.set_defaults(handler=_help)


def _kind(profile: ModelProfile) -> str:
    parts = []
    if profile.is_moe:
        parts.append(f"MoE {profile.experts_per_token}/{profile.num_experts}")
    if profile.is_mla:
        parts.append("MLA")
    if profile.num_sliding_layers:
        parts.append(f"SWA {profile.num_sliding_layers}/{profile.num_layers}")
    return ", ".join(parts) or "dense"


def _row(profile: ModelProfile) -> dict[str, object]:
    kv_per_token = profile.kv_bytes_per_token_per_layer * profile.num_layers
    return {
        "name": profile.name,
        "hf_id": profile.hf_id,
        "architecture": profile.architecture,
        "kind": _kind(profile),
        "params": profile.params,
        "active_params": profile.active_params,
        "weight_gib": profile.weight_bytes / GIB,
        "weight_format": profile.weight_format,
        "kv_kib_per_token_bf16": kv_per_token / 1024,
        "max_position_embeddings": profile.max_position_embeddings,
        "gated": profile.gated,
        "source": profile.source,
        "caveat": profile.caveat,
    }


def _table(rows: list[dict[str, object]]) -> None:
    headers = [
        "name",
        "repo",
        "kind",
        "params B",
        "active B",
        "weights GiB",
        "format",
        "KV KiB/tok",
        "max ctx",
    ]
    cells = [
        [
            str(r["name"]),
            str(r["hf_id"]) + (" (gated)" if r["gated"] else ""),
            str(r["kind"]),
            f"{float(str(r['params'])) / 1e9:.1f}",
            f"{float(str(r['active_params'])) / 1e9:.1f}",
            f"{float(str(r['weight_gib'])):.1f}",
            str(r["weight_format"]),
            f"{float(str(r['kv_kib_per_token_bf16'])):.1f}",
            f"{int(str(r['max_position_embeddings'])):,}",
        ]
        for r in rows
    ]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(headers)]
    out = sys.stdout.write
    out("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip() + "\n")
    for row in cells:
        out("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() + "\n")


def _list(args: argparse.Namespace) -> int:
    rows = [_row(p) for p in all_profiles().values()]
    if args.json:
        sys.stdout.write(json.dumps(rows, indent=1) + "\n")
        return 0
    _table(rows)
    print("KV per token is bf16 over all layers (fp8 KV halves it). Any other model: --model-config PATH.")
    return 0


def _show(args: argparse.Namespace) -> int:
    path = Path(args.model)
    try:
        if path.exists():
            profile = load_custom_profile(path, allow_generic=args.generic_profile)
        else:
            profile = resolve_profile(args.model)
    except ManifestError as err:
        raise ConfigError(str(err)) from None
    row = _row(profile)
    if args.json:
        sys.stdout.write(json.dumps(row, indent=1) + "\n")
        return 0
    _table([row])
    print(f"source: {profile.source}")
    if profile.caveat:
        print(f"caveat: {profile.caveat}")
    return 0
