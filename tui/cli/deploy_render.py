"""`servedeck deploy render`: a DeploymentSpec from flags (or a spec file) -> YAML/JSON manifests on stdout.

``add_spec_arguments`` and ``spec_from_args`` are shared with ``deploy apply`` so both read the same flags.
The fit check runs first for models with a built-in profile; ``--skip-fit-check`` renders anyway.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from backends.errors import ConfigError
from manifests.catalog import Catalog, load_catalog
from manifests.cost import cost_for_spec
from manifests.errors import ManifestError
from manifests.fit import FitResult, size_spec
from manifests.gpus import GpuType
from manifests.model_catalog import load_custom_profile
from manifests.render import render_json, render_yaml
from manifests.spec import DeploymentSpec, build_spec

# What `servedeck plan` and `servedeck advise` size when no --model is given.
DEFAULT_MODEL = "gemma-3-27b-it"


@contextmanager
def manifest_errors() -> Iterator[None]:
    """Re-raise ``manifests`` errors as ``ConfigError`` (their text is already one user-facing line)."""
    try:
        yield
    except ManifestError as err:
        raise ConfigError(str(err)) from None


def load_prices(price_file: Path | None) -> Catalog:
    with manifest_errors():
        return load_catalog(price_file)


def add_model_config_arguments(parser: argparse.ArgumentParser) -> None:
    """``--model-config PATH`` (and ``--generic-profile``): size any model from its Hugging Face config."""
    parser.add_argument(
        "--model-config",
        type=Path,
        metavar="PATH",
        help="the model's Hugging Face config.json (or its directory, with model.safetensors.index.json)",
    )
    parser.add_argument(
        "--generic-profile",
        action="store_true",
        default=None,
        help="with --model-config: size an unknown architecture as a plain dense decoder",
    )


def custom_profile_from_args(args: argparse.Namespace, model: str | None) -> Any:
    """The profile ``--model-config`` names, or None; a bad file is one ConfigError line."""
    path = getattr(args, "model_config", None)
    if path is None:
        if getattr(args, "generic_profile", None):
            raise ConfigError("--generic-profile needs --model-config PATH")
        return None
    with manifest_errors():
        return load_custom_profile(path, model=model, allow_generic=bool(args.generic_profile))


def _count(text: str) -> int | str:
    if text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--count must be a number or 'auto', got {text!r}") from None


def _number(kind: Callable[[str], Any], what: str) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            return kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{what} must be a number, got {text!r}") from None

    return parse


def add_spec_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags that build a ``DeploymentSpec``. Unset flags stay None so a --spec file's values survive."""
    parser.add_argument(
        "--spec", type=Path, help="YAML/JSON file with DeploymentSpec fields (flags override)"
    )
    parser.add_argument("--model", help="Hugging Face model id, e.g. google/gemma-3-27b-it")
    parser.add_argument("--gpu", choices=[g.value for g in GpuType], help="accelerator (cpu-c4/cpu-c4d: CPU)")
    parser.add_argument(
        "--count",
        type=_count,
        help="GPUs per replica = tensor parallel size; 'auto': the fewest the model fits",
    )
    parser.add_argument("--name", help="Deployment/Service name (default: <model>-<count>x<gpu>)")
    parser.add_argument("--namespace", help="namespace (default vllm)")
    parser.add_argument("--replicas", type=_number(int, "--replicas"), help="replicas (default 1)")
    parser.add_argument("--max-model-len", type=_number(int, "--max-model-len"), help="context limit")
    parser.add_argument(
        "--gpu-memory-utilization", type=_number(float, "--gpu-memory-utilization"), help="default 0.90"
    )
    parser.add_argument("--max-num-seqs", type=_number(int, "--max-num-seqs"), help="default: vLLM's")
    parser.add_argument(
        "--max-num-batched-tokens", type=_number(int, "--max-num-batched-tokens"), help="default: vLLM's"
    )
    parser.add_argument(
        "--chunked-prefill", action=argparse.BooleanOptionalAction, default=None, help="default on"
    )
    parser.add_argument(
        "--prefix-caching", action=argparse.BooleanOptionalAction, default=None, help="default: vLLM's (on)"
    )
    parser.add_argument(
        "--dtype", choices=["auto", "bfloat16", "float16", "float32"], help="default bfloat16"
    )
    add_model_config_arguments(parser)
    parser.add_argument(
        "--quantization",
        choices=["fp8", "awq", "awq_marlin", "gptq", "gptq_marlin", "compressed-tensors", "bitsandbytes"],
        help="vLLM --quantization (fp8 quantizes a 16-bit checkpoint; default: what the checkpoint says)",
    )
    parser.add_argument(
        "--kv-cache-dtype", choices=["auto", "fp8", "fp8_e4m3", "fp8_e5m2"], help="default auto (= dtype)"
    )
    parser.add_argument("--trust-remote-code", action="store_true", default=None)
    parser.add_argument("--spot", action="store_true", default=None, help="run on Spot VMs")
    parser.add_argument("--zone", help="pin to a zone, e.g. us-central1-a")
    parser.add_argument("--machine-type", help="GCE machine type (default: the catalog's for the GPU count)")
    parser.add_argument("--image", help="container image (default: the pinned vLLM release)")
    token = parser.add_mutually_exclusive_group()
    token.add_argument(
        "--hf-token-env", metavar="NAME", help="env var holding the HF token (default HF_TOKEN)"
    )
    token.add_argument("--hf-token-file", type=Path, metavar="PATH", help="file holding the HF token")
    token.add_argument("--no-hf-token", action="store_true", help="public model: render no Secret")
    parser.add_argument(
        "--storage-gib", type=_number(int, "--storage-gib"), help="HF cache size (default 100)"
    )
    parser.add_argument(
        "--storage-throughput", type=_number(int, "--storage-throughput"), help="Hyperdisk ML MiB/s (2000)"
    )
    parser.add_argument("--cpu", type=_number(float, "--cpu"), help="CPU request per pod")
    parser.add_argument("--memory-gib", type=_number(int, "--memory-gib"), help="memory request per pod")
    parser.add_argument(
        "--cpu-kv-cache-gib", type=_number(int, "--cpu-kv-cache-gib"), help="VLLM_CPU_KVCACHE_SPACE (40)"
    )
    parser.add_argument(
        "--extra-arg",
        action="append",
        metavar="ARG",
        help="extra vLLM argument, e.g. --extra-arg=--swap-space=16",
    )


_FLAG_FIELDS = {
    "model": "model",
    "gpu": "gpu",
    "count": "gpu_count",
    "name": "name",
    "namespace": "namespace",
    "replicas": "replicas",
    "max_model_len": "max_model_len",
    "gpu_memory_utilization": "gpu_memory_utilization",
    "max_num_seqs": "max_num_seqs",
    "max_num_batched_tokens": "max_num_batched_tokens",
    "chunked_prefill": "enable_chunked_prefill",
    "prefix_caching": "enable_prefix_caching",
    "dtype": "dtype",
    "quantization": "quantization",
    "kv_cache_dtype": "kv_cache_dtype",
    "trust_remote_code": "trust_remote_code",
    "spot": "spot",
    "zone": "zone",
    "machine_type": "machine_type",
    "image": "image",
    "storage_gib": "storage_gib",
    "storage_throughput": "storage_throughput_mib_s",
    "cpu": "cpu_request",
    "memory_gib": "memory_gib",
    "cpu_kv_cache_gib": "cpu_kv_cache_gib",
}


def _read_spec_file(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"spec file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"cannot read spec file {path}: {err}") from None
    try:
        data = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"spec file {path} is not valid YAML/JSON{where}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"spec file {path} must be a mapping of DeploymentSpec fields")
    return data


def spec_from_args(args: argparse.Namespace) -> DeploymentSpec:
    fields: dict[str, Any] = _read_spec_file(args.spec) if args.spec else {}
    for flag, field in _FLAG_FIELDS.items():
        value = getattr(args, flag, None)
        if value is not None and not (flag == "count" and value == "auto"):
            fields[field] = value
    profile = custom_profile_from_args(args, fields.get("model"))
    if profile is not None:
        fields["custom_profile"] = profile
        fields.setdefault("model", profile.hf_id)
    if args.hf_token_env is not None:
        fields.update(hf_token_env=args.hf_token_env, hf_token_file=None)
    if args.hf_token_file is not None:
        fields.update(hf_token_file=args.hf_token_file, hf_token_env=None)
    if args.no_hf_token:
        fields.update(hf_token_env=None, hf_token_file=None)
    if args.extra_arg:
        fields["extra_args"] = tuple(args.extra_arg)
    missing = [flag for flag, field in (("--model", "model"), ("--gpu", "gpu")) if field not in fields]
    if missing:
        raise ConfigError(f"{' and '.join(missing)} required (or give them in --spec)")
    with manifest_errors():
        return build_spec(fields)


def add_render_parser(deploy_subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    render = deploy_subparsers.add_parser(
        "render",
        help="print the Kubernetes manifests for a deployment (YAML or JSON)",
        description="Render StorageClass, Namespace, Service, PVC, Secret (placeholder token) and the vLLM "
        "Deployment (or LeaderWorkerSet) for a model on a GPU shape. Checks that the model fits first.",
    )
    add_spec_arguments(render)
    render.add_argument(
        "-o", "--output", choices=["yaml", "json"], default="yaml", help="format (default yaml)"
    )
    render.add_argument("--skip-fit-check", action="store_true", help="render even if the model does not fit")
    render.set_defaults(handler=_render)


def _cost_note(spec: DeploymentSpec) -> str:
    try:
        cost = cost_for_spec(spec)
    except ManifestError as err:
        return f"cost: unknown ({err})"
    estimate = " (estimated price)" if cost.estimate else ""
    return (
        f"cost: ${cost.total_usd_per_hour:.2f}/h, ${cost.total_usd_per_month:,.2f} per "
        f"{cost.hours_per_month:.0f} h{estimate}; `servedeck cost` shows the breakdown"
    )


def sized_spec_from_args(args: argparse.Namespace) -> tuple[DeploymentSpec, FitResult | None, list[str]]:
    """The spec, sized by the fit (``--count auto``; max-model-len when unset), its fit and notes."""
    spec = spec_from_args(args)
    with manifest_errors():
        if spec.profile is None:
            if args.count == "auto":
                raise ConfigError(f"--count auto needs a size profile for {spec.model}: give --model-config")
            return spec, None, [f"fit: not checked ({spec.model} has no size profile; see --model-config)"]
        spec, fit, notes = size_spec(spec, choose_count=args.count == "auto")
    return spec, fit, [f"sized: {note}" for note in notes]


def _render(args: argparse.Namespace) -> int:
    spec, fit, notes = sized_spec_from_args(args)
    with manifest_errors():
        if fit is not None:
            if not fit.fits and not args.skip_fit_check:
                raise ConfigError(f"{fit.message} (--skip-fit-check renders anyway)")
            notes.append(f"fit: {fit.message}")
            if fit.fits and spec.profile is not None and spec.profile.caveat:
                notes.append(f"caveat: {spec.profile.caveat}")
        notes.append(_cost_note(spec))
        if args.output == "json":
            sys.stdout.write(render_json(spec))
            for note in notes:
                print(note, file=sys.stderr)
        else:
            sys.stdout.write("".join(f"# {note}\n" for note in notes) + render_yaml(spec))
    return 0
