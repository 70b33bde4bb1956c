"""`servedeck twin serve|calibrate`: a simulated vLLM server (the twin) for a GPU profile, in the foreground.

``servedeck twin serve --gpu h100 --count 2 --model gemma-3-27b-it [--port P] [--calibration NAME]`` serves
vLLM's OpenAI API, /metrics and stats log line on 127.0.0.1 in real time, timed by the twin's roofline of
that hardware (with a saved calibration profile's constants). ``twin calibrate`` is in twin_calibrate.py.
"""

from __future__ import annotations

import argparse
import sys

from backends.errors import ConfigError
from backends.twin.engine_config import TwinConfig
from backends.twin.logline import DEFAULT_INTERVAL_S
from backends.twin.server import TwinServer
from manifests.gpus import GpuType
from manifests.model_catalog import all_profiles
from tui.cli.arg_types import int_in_range, positive
from tui.cli.deploy_render import add_model_config_arguments, custom_profile_from_args
from tui.cli.foreground import sigterm_as_ctrl_c
from tui.cli.twin_calibrate import (
    add_calibrate_parser,
    add_calibration_argument,
    apply_calibration,
    calibration_note,
    load_calibration,
)

DEFAULT_PORT = 8000


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    twin = subparsers.add_parser("twin", help="run a simulated vLLM server (the twin) for a GPU profile")
    actions = twin.add_subparsers(dest="twin_command", metavar="ACTION")
    serve = actions.add_parser(
        "serve",
        help="serve a simulated vLLM (OpenAI API, /metrics, stats log) until ctrl-c",
        description="Serve a simulated vLLM server in real time: the model on the chosen GPUs, timed by the "
        "twin's roofline. Every response is marked simulated (model id suffix -twin, header "
        "x-servedeck-simulated: 1).",
    )
    serve.add_argument(
        "--gpu",
        required=True,
        help=f"GPU type: {', '.join(g.value for g in GpuType)}",
    )
    serve.add_argument(
        "--count",
        type=int_in_range(1, 64, "--count"),
        default=1,
        help="GPUs (tensor-parallel size; default 1)",
    )
    serve.add_argument(
        "--model", help=f"model: {', '.join(all_profiles())} (or the repo id with --model-config)"
    )
    add_model_config_arguments(serve)
    serve.add_argument(
        "--kv-cache-dtype",
        choices=["auto", "fp8", "fp8_e4m3", "fp8_e5m2"],
        default="auto",
        help="default auto",
    )
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    serve.add_argument(
        "--port",
        type=int_in_range(0, 65535, "--port"),
        default=DEFAULT_PORT,
        help=f"port (default {DEFAULT_PORT}, vLLM's; 0 = a free one)",
    )
    serve.add_argument("--max-model-len", type=int_in_range(16, 10_000_000, "--max-model-len"), default=None)
    serve.add_argument(
        "--gpu-memory-utilization",
        type=positive(float, "--gpu-memory-utilization"),
        default=None,
        help="fraction of GPU memory vLLM may use (default 0.9)",
    )
    serve.add_argument("--max-num-seqs", type=int_in_range(1, 1_000_000, "--max-num-seqs"), default=None)
    serve.add_argument(
        "--max-num-batched-tokens",
        type=int_in_range(1, 10_000_000, "--max-num-batched-tokens"),
        default=None,
    )
    serve.add_argument(
        "--no-chunked-prefill", action="store_true", help="disable chunked prefill (on by default in vLLM V1)"
    )
    serve.add_argument(
        "--no-prefix-caching", action="store_true", help="disable prefix caching (on by default in vLLM V1)"
    )
    serve.add_argument(
        "--log-stats-interval",
        type=positive(float, "--log-stats-interval"),
        default=DEFAULT_INTERVAL_S,
        help=f"seconds between vLLM stats log lines (default {DEFAULT_INTERVAL_S:g})",
    )
    add_calibration_argument(serve)
    serve.set_defaults(handler=_serve)
    add_calibrate_parser(actions)

    def _twin_help(_: argparse.Namespace) -> int:
        twin.print_help()
        return 2

    twin.set_defaults(handler=_twin_help)


def build_config(args: argparse.Namespace) -> TwinConfig:
    """The twin's config from the flags; unknown names and impossible values raise one-line ConfigErrors."""
    engine_args: dict[str, object] = {
        "enable_chunked_prefill": not args.no_chunked_prefill,
        "enable_prefix_caching": not args.no_prefix_caching,
        "kv_cache_dtype": args.kv_cache_dtype,
    }
    for key in ("max_model_len", "gpu_memory_utilization", "max_num_seqs", "max_num_batched_tokens"):
        value = getattr(args, key)
        if value is not None:
            engine_args[key] = value
    profile = custom_profile_from_args(args, args.model)
    if profile is None and not args.model:
        raise ConfigError("give --model NAME (servedeck models list) or --model-config PATH")
    return TwinConfig.build(profile or args.model, args.gpu, args.count, **engine_args)


def _announce(server: TwinServer, note: str) -> None:
    config = server.config
    plan = server.memory
    print(
        f"twin: simulating vLLM serving {config.model.hf_id} on {config.label} "
        f"(max-model-len {plan.max_model_len:,}, max-num-seqs {config.resolved_max_num_seqs}, "
        f"max-num-batched-tokens {config.resolved_max_num_batched_tokens})"
    )
    if config.model.caveat:
        print(f"model profile: {config.model.caveat}")
    print(f"timing: {note}")
    print(f"GPU KV cache size: {plan.kv_cache_tokens:,} tokens")
    print(f"Maximum concurrency for {plan.max_model_len:,} tokens per request: {plan.max_concurrency:.2f}x")
    print(f"twin ready at {server.base_url}/v1  (OpenAI API; /metrics, /tokenize, /health)")
    print(f"model id: {server.model_id}  (responses carry x-servedeck-simulated: 1); press ctrl-c to stop")
    sys.stdout.flush()


def _serve(args: argparse.Namespace) -> int:
    calibrated = load_calibration(args)
    config = apply_calibration(build_config(args), calibrated)
    note = calibration_note(calibrated)
    server = TwinServer(config, args.host, args.port, log_interval_s=args.log_stats_interval)
    with sigterm_as_ctrl_c():
        server.serve_forever(on_ready=lambda ready: _announce(ready, note))
    print("twin stopped", file=sys.stderr, flush=True)
    return 0
