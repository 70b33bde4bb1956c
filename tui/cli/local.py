"""`servedeck local serve`: run the built-in local engine (Gemma 3 270M on llama.cpp) in the foreground."""

from __future__ import annotations

import argparse
import sys

from backends.engines.local import LocalEngine, LocalEngineConfig
from tui.cli.arg_types import int_in_range
from tui.cli.foreground import sigterm_as_ctrl_c

STARTUP_DEADLINE_S = 180.0


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    local = subparsers.add_parser(
        "local", help="run the built-in local engine (Gemma 3 270M on llama.cpp's llama-server)"
    )
    actions = local.add_subparsers(dest="local_command", metavar="ACTION")
    serve = actions.add_parser(
        "serve",
        help="start llama-server on 127.0.0.1 and keep it running until ctrl-c",
        description="Start Gemma 3 270M on llama.cpp's llama-server (OpenAI API, /metrics, /slots) on "
        "127.0.0.1 and keep it in the foreground until ctrl-c.",
    )
    serve.add_argument(
        "--port", type=int_in_range(0, 65535, "--port"), default=0, help="port to listen on (0 = a free one)"
    )
    serve.add_argument(
        "--parallel", type=int_in_range(1, 256, "--parallel"), default=8, help="concurrent slots (default 8)"
    )
    serve.add_argument(
        "--ctx-per-slot",
        type=int_in_range(64, 32768, "--ctx-per-slot"),
        default=2048,
        help="context tokens per slot (default 2048)",
    )
    serve.add_argument(
        "--threads",
        type=int_in_range(1, 1024, "--threads"),
        default=None,
        help="CPU threads (default: all cores)",
    )
    serve.set_defaults(handler=_serve)

    def _local_help(_: argparse.Namespace) -> int:
        local.print_help()
        return 2

    local.set_defaults(handler=_local_help)


def _serve(args: argparse.Namespace) -> int:
    config = LocalEngineConfig(
        port=args.port, parallel=args.parallel, ctx_per_slot=args.ctx_per_slot, threads=args.threads
    )
    engine = LocalEngine(config)
    print(
        f"starting llama-server: Gemma 3 270M, {config.parallel} slots x {config.ctx_per_slot} tokens, "
        f"{config.thread_count} threads ...",
        flush=True,
    )
    with sigterm_as_ctrl_c(), engine.start(deadline_s=STARTUP_DEADLINE_S):
        try:
            print(
                f"local engine ready at {engine.openai_base_url}  (OpenAI API; /metrics, /slots, /tokenize)"
            )
            print(f"model id: {engine.model_id}")
            print(f"log: {engine.log_path}")
            print(f"llama-server pid: {engine.pid}; press ctrl-c to stop", flush=True)
            while engine.wait(0.5) is None:
                pass
        except KeyboardInterrupt:
            print("stopping llama-server ...", file=sys.stderr, flush=True)
            engine.stop()
            print("stopped", file=sys.stderr, flush=True)
            return 0
        raise engine.unexpected_exit_error()
