"""`servedeck deploy ...`: vLLM on Kubernetes from the command line.

``contexts`` lists kubeconfig contexts; ``render`` (from ``deploy_render``) prints manifests; ``apply``
renders a spec (or reads ``-f FILE``), fills the HF token Secret and server-side applies it, then watches
the rollout; ``status``, ``logs``, ``forward``, ``scale``, ``delete`` and ``list`` act on deployments of
the chosen context. Every failure is a ``ServeDeckError`` line; the HF token is never printed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console
from rich.table import Table

from backends.errors import ConfigError
from backends.kube.client import AppliedObject, KubeClient
from backends.kube.errors import KubeError, KubeForbiddenError
from backends.kube.inventory import VllmDeployment, list_vllm_deployments
from backends.kube.kubeconfig import load_kubeconfig
from backends.kube.logs import LogLine, LogStream, pick_pod
from backends.kube.portforward import ForwardEvent, PortForwarder
from backends.kube.resources import is_managed
from backends.kube.rollout import RolloutEvent, RolloutEventKind, RolloutWatch
from backends.kube.secrets import managed_secrets, read_hf_token, with_hf_token
from backends.kube.status import DeploymentReport, deployment_report, find_namespace
from tui.cli.arg_types import int_in_range, positive

DEFAULT_NAMESPACE = "vllm"  # DeploymentSpec's default: where `deploy apply` puts deployments
ROLLOUT_TIMEOUT_S = 1200.0  # pulling a ~20 GB image and loading 54 GB of weights takes minutes
TOKEN_SOURCE_ANNOTATION = "servedeck.io/token-source"

try:  # `deploy render` and the spec flags live in their own module
    from tui.cli import deploy_render
except ImportError:  # pragma: no cover - only while that module is being written
    deploy_render = None  # type: ignore[assignment]


def _cluster_options() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument(
        "--kubeconfig", metavar="PATH", help="kubeconfig file (default: $KUBECONFIG or ~/.kube/config)"
    )
    parent.add_argument("--context", metavar="NAME", help="kubeconfig context (default: the current one)")
    return parent


def _target_options() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument("name", metavar="NAME", help="deployment name (see servedeck deploy list)")
    parent.add_argument(
        "-n", "--namespace", help=f"namespace (default: where NAME is found, else {DEFAULT_NAMESPACE})"
    )
    return parent


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    deploy = subparsers.add_parser("deploy", help="deploy vLLM on Kubernetes and operate it")
    actions = deploy.add_subparsers(dest="deploy_command", metavar="ACTION")
    cluster, target = _cluster_options(), _target_options()

    contexts = actions.add_parser("contexts", parents=[cluster], help="list kubeconfig contexts")
    contexts.set_defaults(handler=_contexts)

    if deploy_render is not None:
        deploy_render.add_render_parser(actions)

    apply = actions.add_parser(
        "apply",
        parents=[cluster],
        help="render and server-side apply a deployment, then watch it roll out",
        description="Apply the objects of a deployment spec (the same flags as `deploy render`), or of a "
        "rendered file (-f), with server-side apply (field manager servedeck). The HF token Secret is "
        "filled from the token source at apply time. Then the rollout is watched until ready.",
    )
    apply.add_argument("-f", "--file", type=Path, help="apply objects from a rendered YAML/JSON file instead")
    if deploy_render is not None:
        deploy_render.add_spec_arguments(apply)
    else:  # pragma: no cover
        apply.add_argument("--namespace")
        apply.add_argument("--hf-token-env", metavar="NAME")
        apply.add_argument("--hf-token-file", type=Path, metavar="PATH")
    apply.add_argument("--skip-fit-check", action="store_true", help="apply even if the model does not fit")
    apply.add_argument(
        "--force-conflicts",
        action="store_true",
        help="take over fields other managers changed (kubectl scale/edit); replicas an HPA owns stay",
    )
    apply.add_argument(
        "--watch", action=argparse.BooleanOptionalAction, default=True, help="watch the rollout"
    )
    apply.add_argument(
        "--timeout",
        type=positive(float, "--timeout"),
        default=ROLLOUT_TIMEOUT_S,
        help="rollout watch limit, s (1200)",
    )
    apply.set_defaults(handler=_apply)

    status = actions.add_parser("status", parents=[cluster, target], help="replicas, pods and recent events")
    status.add_argument("--watch", action="store_true", help="then follow the rollout until it is ready")
    status.add_argument(
        "--timeout",
        type=positive(float, "--timeout"),
        default=ROLLOUT_TIMEOUT_S,
        help="rollout watch limit, s (1200)",
    )
    status.set_defaults(handler=_status)

    logs = actions.add_parser("logs", parents=[cluster, target], help="print (and follow) a pod's log")
    logs.add_argument("--pod", help="pod to read (default: a ready pod of the deployment)")
    logs.add_argument("--container", help="container (default: the pod's only one)")
    logs.add_argument("-f", "--follow", action="store_true", help="keep printing new lines")
    logs.add_argument(
        "--tail", type=int_in_range(0, 1_000_000, "--tail"), default=None, help="start with the last N lines"
    )
    logs.add_argument("--stats", action="store_true", help="print only vLLM's periodic stats, parsed")
    logs.set_defaults(handler=_logs)

    forward = actions.add_parser(
        "forward", parents=[cluster, target], help="forward 127.0.0.1:PORT to the deployment until ctrl-c"
    )
    forward.add_argument(
        "--local-port",
        type=int_in_range(0, 65535, "--local-port"),
        default=8000,
        help="0 = a free port (8000)",
    )
    forward.add_argument(
        "--remote-port", type=int_in_range(1, 65535, "--remote-port"), default=8000, help="pod port (8000)"
    )
    forward.set_defaults(handler=_forward)

    scale = actions.add_parser("scale", parents=[cluster, target], help="set the number of replicas")
    scale.add_argument(
        "--replicas",
        type=int_in_range(0, 1000, "--replicas"),
        required=True,
        help="replicas (0 stops the pods)",
    )
    scale.set_defaults(handler=_scale)

    delete = actions.add_parser(
        "delete",
        parents=[cluster, target],
        help="delete a deployment's objects (only those servedeck labelled)",
    )
    delete.add_argument("-y", "--yes", action="store_true", help="do not ask for confirmation")
    delete.add_argument("--keep-cache", action="store_true", help="keep the HF cache volume (PVC)")
    delete.set_defaults(handler=_delete)

    listing = actions.add_parser("list", parents=[cluster], help="vLLM deployments in the context")
    listing.add_argument("-n", "--namespace", help="one namespace (default: all)")
    listing.add_argument("-o", "--output", choices=["table", "json"], default="table")
    listing.set_defaults(handler=_list)

    def _deploy_help(_: argparse.Namespace) -> int:
        deploy.print_help()
        return 2

    deploy.set_defaults(handler=_deploy_help)


# --- helpers -------------------------------------------------------------------------------------


def _console() -> Console:
    console = Console(highlight=False)
    return console if console.is_terminal else Console(highlight=False, width=max(console.width, 160))


def _connect(args: argparse.Namespace) -> KubeClient:
    return KubeClient.connect(args.kubeconfig, args.context)


def _namespace(client: KubeClient, args: argparse.Namespace) -> str:
    if args.namespace:
        return str(args.namespace)
    return find_namespace(client, args.name, DEFAULT_NAMESPACE)


def _print_applied(applied: Sequence[AppliedObject]) -> None:
    for item in applied:
        note = f" ({item.note})" if item.note else ""
        print(f"{item.ref} {item.action.value}{note}")


def _watch(client: KubeClient, name: str, namespace: str, timeout_s: float) -> int:
    print(
        f"watching the rollout of {namespace}/{name} (ctrl-c stops watching, not the rollout) ...", flush=True
    )
    final: RolloutEvent | None = None
    with RolloutWatch(client, name, namespace, timeout_s=timeout_s) as watch:
        for event in watch:
            print(event.describe(), flush=True)
            final = event
    if final is not None and final.kind is RolloutEventKind.ROLLOUT_COMPLETE:
        return 0
    reason = final.describe() if final is not None else "the watch ended"
    raise KubeError(
        f"rollout of {namespace}/{name} did not complete ({reason}); "
        f"see servedeck deploy status {name} -n {namespace}"
    )


# --- handlers ------------------------------------------------------------------------------------


def _contexts(args: argparse.Namespace) -> int:
    config = load_kubeconfig(args.kubeconfig)
    table = Table("", "CONTEXT", "CLUSTER", "SERVER", "NAMESPACE", box=None, pad_edge=False)
    for context in config.contexts:
        current = "*" if context.name == config.current_context else ""
        table.add_row(
            current, context.name, context.cluster, context.server or "-", context.namespace or "default"
        )
    _console().print(table)
    return 0


def _load_manifest_file(path: Path) -> list[dict[str, Any]]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise ConfigError(f"cannot read {path}: {err.strerror or err}") from None
    try:
        documents = list(yaml.safe_load_all(text))
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path} is not valid YAML/JSON{where}") from None
    objects: list[dict[str, Any]] = []
    for document in documents:
        if document is None:
            continue
        if isinstance(document, dict) and document.get("kind") == "List":
            objects.extend(item for item in document.get("items") or [] if isinstance(item, dict))
        elif isinstance(document, dict):
            objects.append(document)
        else:
            raise ConfigError(
                f"{path} holds something that is not a Kubernetes object (a {type(document).__name__})"
            )
    if not objects:
        raise ConfigError(f"{path} holds no objects; render some with servedeck deploy render")
    return objects


def _file_token_source(args: argparse.Namespace, secret: dict[str, Any]) -> tuple[str | None, Path | None]:
    """Flags first, else the source the renderer noted on the Secret ("env NAME" / "file PATH")."""
    if getattr(args, "hf_token_file", None) is not None:
        return None, Path(args.hf_token_file)
    if getattr(args, "hf_token_env", None):
        return str(args.hf_token_env), None
    noted = str((secret.get("metadata", {}).get("annotations") or {}).get(TOKEN_SOURCE_ANNOTATION, ""))
    kind, _, where = noted.partition(" ")
    if kind == "file" and where:
        return None, Path(where)
    if kind == "env" and where:
        return where, None
    return None, None


def _objects_from_file(args: argparse.Namespace) -> tuple[list[dict[str, Any]], list[str]]:
    objects = _load_manifest_file(args.file)
    secrets = managed_secrets(objects)
    if not secrets:
        return objects, []
    env_var, file = _file_token_source(args, dict(secrets[0]))
    token = read_hf_token(env_var=env_var, file=file)
    return with_hf_token(objects, token), [token.get_secret_value()]


_SPEC_ONLY_FLAGS = (
    "spec",
    "model",
    "gpu",
    "count",
    "name",
    "replicas",
    "max_model_len",
    "gpu_memory_utilization",
    "max_num_seqs",
    "max_num_batched_tokens",
    "chunked_prefill",
    "prefix_caching",
    "dtype",
    "model_config",
    "quantization",
    "kv_cache_dtype",
    "spot",
    "zone",
    "machine_type",
    "image",
    "storage_gib",
    "extra_arg",
)


def _spec_given(args: argparse.Namespace) -> bool:
    return any(getattr(args, flag, None) is not None for flag in _SPEC_ONLY_FLAGS)


def _objects_from_spec(args: argparse.Namespace) -> tuple[list[dict[str, Any]], list[str], str]:
    from manifests.errors import ManifestError
    from manifests.render import render_objects
    from manifests.secrets import read_hf_token as read_spec_token

    assert deploy_render is not None
    spec, fit, notes = deploy_render.sized_spec_from_args(args)
    for note in notes:
        if note.startswith("sized:"):
            print(note)
    with deploy_render.manifest_errors():
        if fit is not None and not fit.fits and not args.skip_fit_check:
            raise ConfigError(f"{fit.message} (--skip-fit-check applies anyway)")
        try:
            token = read_spec_token(spec, os.environ) if spec.has_token_source else None
        except ManifestError as err:
            raise ConfigError(str(err)) from None
        objects = render_objects(spec, include_secret_value=token is not None, hf_token=token)
    secrets = [token.get_secret_value()] if token is not None else []
    return objects, secrets, spec.namespace


def _apply(args: argparse.Namespace) -> int:
    if args.file is not None and _spec_given(args):
        raise ConfigError("give either -f FILE or spec flags (--model, --gpu, ...), not both")
    if args.file is None and not _spec_given(args):
        raise ConfigError("nothing to apply: give --model and --gpu (as for deploy render) or -f FILE")
    if args.file is not None:
        objects, secrets = _objects_from_file(args)
        namespace = args.namespace
    else:
        objects, secrets, namespace = _objects_from_spec(args)
    with _connect(args) as client:
        print(
            f"applying {len(objects)} objects to context {client.context.name} ({client.server}) ...",
            flush=True,
        )
        applied = client.apply(
            objects, namespace=namespace, secrets=secrets, force_conflicts=args.force_conflicts
        )
        _print_applied(applied)
        workloads = [item.ref for item in applied if item.ref.kind == "Deployment"]
        if not args.watch or len(workloads) != 1:
            return 0
        ref = workloads[0]
        return _watch(client, ref.name, ref.namespace or client.default_namespace, args.timeout)


def _print_report(report: DeploymentReport) -> None:
    row = report.deployment
    owner = "servedeck" if row.managed else "not servedeck's"
    ready = f"{row.replicas_ready}/{row.replicas_desired} ready"
    print(f"deployment {row.key} ({owner}): {row.status.value}, {ready}")
    hardware = f"{row.accelerator or '?'} x{row.gpus_per_replica}"
    print(f"  model {row.model or '?'} on {hardware}, image {row.image or '?'}")
    if row.service:
        print(f"  service {row.service}:{row.port} ({row.in_cluster_url})")
    console = _console()
    if report.pods:
        pods = Table("POD", "PHASE", "READY", "RESTARTS", "REASON", "NODE", box=None, pad_edge=False)
        for pod in report.pods:
            pods.add_row(
                pod.name,
                pod.phase,
                "yes" if pod.ready else "no",
                str(pod.restarts),
                pod.reason or "-",
                pod.node or "-",
            )
        console.print(pods)
    else:
        print("  no pods")
    if report.events:
        events = Table("TIME", "TYPE", "REASON", "OBJECT", "MESSAGE", box=None, pad_edge=False)
        for event in report.events:
            events.add_row(event.time, event.type, event.reason, event.object, event.message)
        console.print(events)


def _status(args: argparse.Namespace) -> int:
    with _connect(args) as client:
        namespace = _namespace(client, args)
        _print_report(deployment_report(client, args.name, namespace))
        if args.watch:
            return _watch(client, args.name, namespace, args.timeout)
    return 0


def _stats_text(line: LogLine) -> str:
    stats = line.stats
    assert stats is not None
    parts = [
        f"{line.pod}",
        f"prompt {stats.prompt_tokens_per_s:.1f} tok/s",
        f"generation {stats.generation_tokens_per_s:.1f} tok/s",
        f"running {stats.running}",
        f"waiting {stats.waiting}",
    ]
    if stats.gpu_kv_cache_usage is not None:
        parts.append(f"KV cache {stats.gpu_kv_cache_usage:.1%}")
    if stats.prefix_cache_hit_rate is not None:
        parts.append(f"prefix hits {stats.prefix_cache_hit_rate:.1%}")
    if stats.preemptions:
        parts.append(f"preemptions {stats.preemptions}")
    return "  ".join(parts)


def _logs(args: argparse.Namespace) -> int:
    with _connect(args) as client:
        namespace = args.namespace or (
            DEFAULT_NAMESPACE if args.pod else find_namespace(client, args.name, DEFAULT_NAMESPACE)
        )
        pod = args.pod or pick_pod(client, args.name, namespace)
        stream = LogStream(
            client,
            pod,
            namespace,
            container=args.container,
            follow=args.follow,
            tail_lines=args.tail,
            deployment=args.name,
        )
        with stream:
            for line in stream:
                if args.stats:
                    if line.stats is not None:
                        print(_stats_text(line), flush=True)
                else:
                    print(line.text, flush=args.follow)
    return 0


def _forward(args: argparse.Namespace) -> int:
    def report(event: ForwardEvent) -> None:
        print(event.describe(), file=sys.stderr, flush=True)

    with _connect(args) as client:
        namespace = _namespace(client, args)
        forwarder = PortForwarder(
            client,
            namespace,
            deployment=args.name,
            remote_port=args.remote_port,
            local_port=args.local_port,
            on_event=report,
        )
        with forwarder:
            print(
                f"forwarding {forwarder.url} -> {namespace}/{args.name}:{args.remote_port}; ctrl-c to stop",
                flush=True,
            )
            with contextlib.suppress(KeyboardInterrupt):
                threading.Event().wait()
    return 0


def _scale(args: argparse.Namespace) -> int:
    with _connect(args) as client:
        namespace = _namespace(client, args)
        result = client.scale(args.name, args.replicas, namespace)
    where = f"{result.ref.namespace}/{result.ref.name}"
    print(f"scaled {where} from {result.previous_replicas} to {result.replicas} replicas")
    return 0


def _confirm(count: int) -> bool:
    if not sys.stdin.isatty():
        raise ConfigError("refusing to delete without confirmation on a non-interactive input: pass --yes")
    answer = input(f"delete these {count} objects? [y/N] ")
    return answer.strip().lower() in ("y", "yes")


def _delete(args: argparse.Namespace) -> int:
    with _connect(args) as client:
        namespace = _namespace(client, args)
        refs = client.managed_objects(namespace, args.name, keep_cache=args.keep_cache)
        if not refs:
            found = client.get("Deployment", args.name, namespace)
            if found is not None and not is_managed(found):
                raise ConfigError(
                    f"{namespace}/{args.name} was not created by servedeck (no managed-by label); "
                    "servedeck deletes only what it created: use kubectl for it"
                )
            raise ConfigError(
                f"nothing labelled as servedeck's deployment {args.name!r} in namespace {namespace}"
            )
        for ref in refs:
            print(f"  {ref}")
        if not args.yes and not _confirm(len(refs)):
            print("nothing deleted")
            return 1
        deleted = client.delete(refs)
    for ref in deleted:
        print(f"{ref} deleted")
    kept = " (the HF cache volume is kept)" if args.keep_cache else ""
    print(f"deleted {len(deleted)} objects of {args.name} in {namespace}{kept}; the namespace is left as is")
    return 0


def _list(args: argparse.Namespace) -> int:
    with _connect(args) as client:
        try:
            rows = list_vllm_deployments(client, args.namespace)
        except KubeForbiddenError:
            if args.namespace:
                raise
            fallback = client.default_namespace
            print(f"note: no right to list every namespace; listing {fallback} only", file=sys.stderr)
            rows = list_vllm_deployments(client, fallback)
    if args.output == "json":
        print(json.dumps([row.model_dump(mode="json") for row in rows], indent=2))
        return 0
    if not rows:
        where = f"namespace {args.namespace}" if args.namespace else "any namespace"
        print(f"no vLLM deployments in {where}")
        return 0
    _console().print(_rows_table(rows))
    return 0


def _rows_table(rows: Sequence[VllmDeployment]) -> Table:
    table = Table(
        "NAMESPACE",
        "NAME",
        "MODEL",
        "ACCELERATOR",
        "GPUS",
        "READY",
        "STATUS",
        "OWNER",
        "SERVICE",
        box=None,
        pad_edge=False,
    )
    for row in rows:
        table.add_row(
            row.namespace,
            row.name,
            row.model or "?",
            row.accelerator or "?",
            str(row.gpus_per_replica),
            f"{row.replicas_ready}/{row.replicas_desired}",
            row.status.value,
            "servedeck" if row.managed else "foreign",
            f"{row.service}:{row.port}" if row.service else "-",
        )
    return table
