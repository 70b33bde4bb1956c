"""`servedeck runs list|show|export|import|delete|label`: saved bench runs from the sessions store."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path

from rich import box
from rich.console import Console
from rich.table import Table

from backends.bench.metrics import Distribution
from backends.bench.results import RunStatus
from backends.errors import ConfigError
from sessions.bundle import bundle_json, read_bundle_file
from sessions.errors import StoreDamagedError
from sessions.exports import sweep_csv, write_text_atomically, write_vllm_results
from sessions.run_models import LevelSummary, RunFilter, RunSummary
from sessions.store import SessionStore
from tui.cli.arg_types import int_in_range

EXPORT_FORMATS = ("bundle", "vllm", "sweep", "csv")


def _moment(text: str, *, end_of_day: bool) -> datetime:
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a date like 2025-03-04 or 2025-03-04T15:30, got {text!r}"
        ) from None
    if moment.tzinfo is None:
        moment = moment.astimezone()  # a date the user types is in their own time zone
    if end_of_day and len(text) == len("2025-03-04"):
        moment += timedelta(days=1)  # --until 2025-03-04 includes that day
    return moment


def _since(text: str) -> datetime:
    return _moment(text, end_of_day=False)


def _until(text: str) -> datetime:
    return _moment(text, end_of_day=True)


def _add_data_dir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data-dir",
        type=Path,
        # SUPPRESS: without the flag here, `servedeck --data-dir X runs ...` keeps the top-level value.
        default=argparse.SUPPRESS,
        help="folder of the sessions database (default: the user data dir)",
    )
    parser.add_argument(
        "--reset-store",
        action="store_true",
        help="if the sessions database is damaged, start a fresh one (a copy of the damaged file is kept)",
    )


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    runs = subparsers.add_parser("runs", help="list, show, export, import, label and delete saved bench runs")
    actions = runs.add_subparsers(dest="runs_command", metavar="ACTION")

    listing = actions.add_parser("list", help="saved runs, newest first")
    listing.add_argument("--target", help="target name, URL or model contains this")
    listing.add_argument("--gpu", help="GPU / accelerator text contains this")
    listing.add_argument("--label", help="label contains this")
    listing.add_argument("--status", choices=[status.value for status in RunStatus])
    listing.add_argument("--since", type=_since, help="created on or after (2025-03-04 or ISO time)")
    listing.add_argument("--until", type=_until, help="created before; a plain date includes that day")
    listing.add_argument(
        "--limit",
        type=int_in_range(1, 1_000_000, "--limit"),
        default=50,
        help="at most this many (default 50)",
    )
    listing.add_argument("--json", action="store_true", help="JSON instead of a table")
    _add_data_dir(listing)
    listing.set_defaults(handler=_list)

    show = actions.add_parser("show", help="one run: configuration and per-level metrics")
    show.add_argument("run", help="run id (or an unambiguous prefix)")
    show.add_argument("--json", action="store_true", help="JSON instead of tables")
    _add_data_dir(show)
    show.set_defaults(handler=_show)

    export = actions.add_parser(
        "export",
        help="write a run as a ServeDeck bundle, vLLM result files, a sweep file or CSV",
        description=(
            "bundle: one JSON file with everything (imports back unchanged); vllm: one vLLM --save-result "
            "JSON per level, in a folder; sweep: the same file `servedeck bench --out` writes; csv: the "
            "sweep table."
        ),
    )
    export.add_argument("run", help="run id (or an unambiguous prefix)")
    export.add_argument("--format", choices=EXPORT_FORMATS, default="bundle")
    export.add_argument(
        "-o",
        "--output",
        help="file (folder for vllm); '-' for stdout. Default: <run id>.servedeck.json, <run id>-vllm/, "
        "<run id>.sweep.json, stdout for csv",
    )
    export.add_argument("--detailed", action="store_true", help="vllm/sweep: per-request arrays too")
    _add_data_dir(export)
    export.set_defaults(handler=_export)

    importing = actions.add_parser("import", help="store a run from a ServeDeck bundle file")
    importing.add_argument("file", type=Path, help="bundle written by `runs export --format bundle`")
    importing.add_argument(
        "--new-id", action="store_true", help="store under a new id (keeps an existing run)"
    )
    _add_data_dir(importing)
    importing.set_defaults(handler=_import)

    delete = actions.add_parser("delete", help="delete runs and all their records")
    delete.add_argument("runs", nargs="+", metavar="RUN", help="run ids (or unambiguous prefixes)")
    delete.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    _add_data_dir(delete)
    delete.set_defaults(handler=_delete)

    label = actions.add_parser("label", help="set or clear a run's label")
    label.add_argument("run", help="run id (or an unambiguous prefix)")
    label.add_argument("label", nargs="?", help="new label")
    label.add_argument("--clear", action="store_true", help="remove the label")
    _add_data_dir(label)
    label.set_defaults(handler=_label)

    def _runs_help(_: argparse.Namespace) -> int:
        runs.print_help()
        return 2

    runs.set_defaults(handler=_runs_help)


def _open_or_reset(args: argparse.Namespace) -> SessionStore:
    reset: bool = getattr(args, "reset_store", False)
    try:
        return SessionStore.open(args.data_dir, reset_damaged=reset)
    except StoreDamagedError as err:
        if reset or err.copy is None or not sys.stdin.isatty():
            raise
        print(f"servedeck: {err}", file=sys.stderr)
        answer = input(f"start a fresh sessions store now (the damaged one stays at {err.copy})? [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            raise ConfigError(
                f"the damaged sessions store was left as it is (a copy is at {err.copy})"
            ) from None
        return SessionStore.open(args.data_dir, reset_damaged=True)


@contextmanager
def _open_store(args: argparse.Namespace) -> Iterator[SessionStore]:
    with _open_or_reset(args) as store:
        if store.db.reset_from is not None:
            print(
                f"servedeck: started a fresh sessions store at {store.path}; "
                f"the damaged one is kept at {store.db.reset_from}",
                file=sys.stderr,
            )
        if store.merged_runs:
            ids = ", ".join(store.merged_runs)
            print(
                f"servedeck: added to history from the journal kept while the store was busy: {ids}",
                file=sys.stderr,
            )
        if store.recovered_runs:
            ids = ", ".join(store.recovered_runs)
            print(f"servedeck: marked as partial (their writing process had stopped): {ids}", file=sys.stderr)
        yield store


def _console() -> Console:
    console = Console(highlight=False)
    if not console.is_terminal:
        # Piped into a file or another tool: no terminal width to fit, so never cut a cell short.
        console = Console(highlight=False, width=max(console.width, 180))
    return console


def _when(moment: datetime | None) -> str:
    return "" if moment is None else moment.astimezone().strftime("%Y-%m-%d %H:%M")


def _levels_text(summary: RunSummary) -> str:
    values = ", ".join(f"{value:g}" for value in summary.level_values)
    unit = "req/s" if summary.axis == "request-rate" else "in flight"
    return f"{values} {unit}"


def _list(args: argparse.Namespace) -> int:
    run_filter = RunFilter(
        target=args.target,
        gpu=args.gpu,
        label=args.label,
        status=RunStatus(args.status) if args.status else None,
        since=args.since,
        until=args.until,
        limit=args.limit,
    )
    with _open_store(args) as store:
        summaries = store.runs.list_runs(run_filter)
    if args.json:
        print(json.dumps([summary.model_dump(mode="json") for summary in summaries], indent=2))
        return 0
    console = _console()
    if not summaries:
        console.print(
            "no saved runs match" if _filtered(args) else "no saved runs yet: `servedeck bench` saves one"
        )
        return 0
    table = Table(title=f"saved runs ({len(summaries)})", box=box.SIMPLE_HEAD)
    table.add_column("id", no_wrap=True, min_width=len(summaries[0].id))
    table.add_column("created", no_wrap=True)
    table.add_column("label")
    table.add_column("target")
    table.add_column("gpu")
    table.add_column("levels")
    table.add_column("status")
    table.add_column("requests", justify="right")
    for summary in summaries:
        table.add_row(
            summary.id,
            _when(summary.created_at),
            summary.label or "",
            f"{summary.target_name} ({summary.model})",
            summary.gpu or "",
            _levels_text(summary),
            summary.status.value,
            str(summary.records_stored),
        )
    console.print(table)
    return 0


def _filtered(args: argparse.Namespace) -> bool:
    return any(getattr(args, name) for name in ("target", "gpu", "label", "status", "since", "until"))


def _ms(dist: Distribution, which: str) -> str:
    value = dist.mean if which == "mean" else dist.percentiles.get(which)
    return "" if value is None else f"{value:.1f}"


def _level_row(level: LevelSummary) -> list[str]:
    metrics = level.metrics
    head = [str(level.index), level.level.label, level.status.value, str(level.records_stored)]
    if metrics is None:
        return [*head, "", "", "", "", "", "", "", ""]
    return [
        *head,
        f"{metrics.completed}/{metrics.failed}",
        f"{metrics.request_throughput:.2f}",
        f"{metrics.output_throughput:.1f}",
        _ms(metrics.ttft, "mean"),
        _ms(metrics.ttft, "99"),
        _ms(metrics.tpot, "mean"),
        _ms(metrics.itl, "99"),
        _ms(metrics.e2el, "mean"),
    ]


def _show(args: argparse.Namespace) -> int:
    with _open_store(args) as store:
        detail = store.runs.detail(store.runs.resolve_run_id(args.run))
    if args.json:
        print(detail.model_dump_json(indent=2))
        return 0
    summary = detail.summary
    config = detail.config
    console = _console()
    console.print(f"[bold]run {summary.id}[/bold]  {summary.status.value}")
    facts = [
        ("label", summary.label or ""),
        ("target", f"{summary.target_name}  {summary.base_url}  model {summary.model}"),
        ("gpu", summary.gpu or ""),
        ("axis", f"{config.axis.value}: {_levels_text(summary)}"),
        ("dataset", f"{config.dataset.kind}{' ' + config.dataset.path if config.dataset.path else ''}"),
        ("prompts per level", str(config.num_prompts)),
        ("created", _when(summary.created_at)),
        ("finished", _when(summary.finished_at)),
    ]
    if summary.message:
        facts.append(("note", summary.message))
    for name, value in facts:
        console.print(f"  {name:<18} {value}")
    table = Table(title="levels", box=box.SIMPLE_HEAD)
    for column in ("#", "level", "status", "records", "ok/failed", "req/s", "out tok/s"):
        table.add_column(column, no_wrap=True)
    for column in ("TTFT mean", "TTFT p99", "TPOT mean", "ITL p99", "E2E mean"):
        table.add_column(f"{column} ms", justify="right")
    for level in detail.levels:
        table.add_row(*_level_row(level))
    console.print(table)
    unfinished = [level.index for level in detail.levels if level.metrics is None]
    if unfinished:
        console.print(
            f"levels {', '.join(map(str, unfinished))} were cut off before their metrics were computed; "
            "their finished requests are in the bundle export"
        )
    return 0


def _write_output(text: str, output: str | None, default: Path) -> str:
    if output == "-":
        sys.stdout.write(text)
        return "stdout"
    path = Path(output) if output else default
    write_text_atomically(path, text)
    return str(path)


def _export(args: argparse.Namespace) -> int:
    fmt: str = args.format
    with _open_store(args) as store:
        run_id = store.runs.resolve_run_id(args.run)
        if fmt == "bundle":
            text = bundle_json(store.export_bundle(run_id))
            where = _write_output(text, args.output, Path(f"{run_id}.servedeck.json"))
            print(f"run {run_id} written to {where}", file=sys.stderr)
            return 0
        needs_records = fmt in ("vllm", "sweep")  # vLLM files list per-request latencies
        sweep = store.runs.load_sweep(run_id, with_records=needs_records, with_snapshots=needs_records)
    if not sweep.levels:
        raise ConfigError(
            f"run {run_id} has no finished level to export; `--format bundle` keeps what it has"
        )
    if fmt == "vllm":
        if args.output == "-":
            raise ConfigError("--format vllm writes one file per level: give a folder with -o, not '-'")
        directory = Path(args.output) if args.output else Path(f"{run_id}-vllm")
        paths = write_vllm_results(sweep, directory, detailed=args.detailed)
        for path in paths:
            print(path)
        return 0
    if fmt == "sweep":
        from backends.bench.export import sweep_file_content

        text = json.dumps(sweep_file_content(sweep, detailed=args.detailed), indent=2) + "\n"
        where = _write_output(text, args.output, Path(f"{run_id}.sweep.json"))
    else:
        where = _write_output(sweep_csv(sweep), args.output or "-", Path(f"{run_id}.csv"))
    if where != "stdout":
        print(f"run {run_id} written to {where}", file=sys.stderr)
    return 0


def _import(args: argparse.Namespace) -> int:
    bundle = read_bundle_file(args.file)
    with _open_store(args) as store:
        run_id = store.import_bundle(bundle, new_id=args.new_id)
    records = sum(len(level.records) for level in bundle.levels)
    print(f"imported run {run_id}: {len(bundle.levels)} levels, {records} requests")
    return 0


def _confirm(question: str) -> bool:
    if not sys.stdin.isatty():
        raise ConfigError("refusing to delete without confirmation: pass --yes")
    answer = input(f"{question} [y/N] ")
    return answer.strip().lower() in ("y", "yes")


def _delete(args: argparse.Namespace) -> int:
    with _open_store(args) as store:
        run_ids = [store.runs.resolve_run_id(run) for run in args.runs]
        if not args.yes and not _confirm(f"delete {len(run_ids)} run(s): {', '.join(run_ids)}?"):
            print("nothing deleted")
            return 1
        for run_id in run_ids:
            store.runs.delete_run(run_id)
            print(f"deleted run {run_id}")
    return 0


def _label(args: argparse.Namespace) -> int:
    if args.clear == (args.label is not None):
        raise ConfigError("give either a new LABEL or --clear")
    with _open_store(args) as store:
        run_id = store.runs.resolve_run_id(args.run)
        store.runs.set_label(run_id, None if args.clear else args.label)
    print(f"run {run_id}: label {'cleared' if args.clear else repr(args.label)}")
    return 0
