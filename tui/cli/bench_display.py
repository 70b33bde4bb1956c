"""Live terminal display of a sweep for the headless CLI (rich), and its summary table."""

from __future__ import annotations

import sys
from types import TracebackType

from rich.console import Console, Group
from rich.live import Live
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from backends.bench.models import Axis, ProgressSnapshot
from backends.bench.results import LevelResult, PromptSampling, RunStatus, SweepResult
from backends.bench.sweep import (
    LevelFinished,
    LevelStarted,
    RecordsBatch,
    SweepEvent,
    SweepFinished,
    SweepStarted,
)
from backends.prometheus import prefix_cache_hit_rate, prefix_cache_warning
from backends.redaction import redact_url
from manifests.cost import usd_per_million_tokens


def _fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _server_line(snapshot: ProgressSnapshot) -> str:
    server = snapshot.server
    parts = []
    if server is None:
        line = "server: no /metrics"
    else:
        if server.running is not None:
            parts.append(f"running {server.running:g}")
        if server.waiting is not None:
            parts.append(f"waiting {server.waiting:g}")
        if server.kv_cache_usage is not None:
            parts.append(f"KV {server.kv_cache_usage * 100:.1f}%")
        line = "server: " + (", ".join(parts) or "-")
    gpu = snapshot.gpu
    if gpu is not None:
        gpu_parts = [f"{gpu.gpus} GPU" + ("s" if gpu.gpus != 1 else "")]
        if gpu.utilisation is not None:
            gpu_parts.append(f"util {gpu.utilisation * 100:.0f}%")
        if gpu.dram_active is not None:
            gpu_parts.append(f"DRAM {gpu.dram_active * 100:.0f}%")
        if gpu.power_w is not None:
            gpu_parts.append(f"{gpu.power_w:.0f} W")
        line += " | GPU: " + ", ".join(gpu_parts)
    return line


def prompts_line(result: SweepResult) -> str:
    """How the run's levels drew their prompts, for the table's caption."""
    n = result.config.num_prompts
    sampling = next((lvl.prompt_sampling for lvl in result.levels if lvl.prompt_sampling), None)
    if sampling is None:
        sampling = PromptSampling.SAME if result.config.same_prompts else None
    if sampling is PromptSampling.SAME:
        return (
            f"prompts: the same {n} at every level (--same-prompts, vLLM's behaviour): the prefix cache "
            "answers repeats from the second level on"
        )
    if sampling is PromptSampling.OVERLAP:
        return f"prompts: {n} per level, shared between levels (too few in the dataset for disjoint samples)"
    if sampling is PromptSampling.OWN:
        return f"prompts: each level its own {n} (disjoint samples of the dataset)"
    return f"prompts: {n} per level"


def level_footnotes(level: LevelResult) -> list[str]:
    """Why a level is marked: client-limited, host contention, prefix-cache hits on fresh prompts."""
    notes = []
    if level.client.client_limited and level.client.reason:
        notes.append(f"client-limited: {level.client.reason}")
    if level.client.note:
        notes.append(level.client.note)
    warning = prefix_cache_warning(prefix_cache_hit_rate(level.server_snapshots), level.prompt_sampling)
    if warning and level.turns is None:  # multi-turn resends its history: hits are the point
        notes.append(warning)
    tokens_note = input_tokens_note(level)
    if tokens_note:
        notes.append(tokens_note)
    return notes


def input_tokens_note(level: LevelResult) -> str | None:
    """Where the server counted other prompt tokens than the dataset's (vLLM's client) count."""
    m = level.metrics
    server = m.server_input_tokens
    if server is None or server == m.total_input_tokens or not m.total_input_tokens:
        return None
    change = (server - m.total_input_tokens) / m.total_input_tokens
    return (
        f"input tokens: {m.total_input_tokens:,} by the dataset's prompt lengths (vLLM's count, in total "
        f"tok/s); the server counted {server:,} ({change:+.1%}, chat template included)"
    )


def _hit_rate_cell(level: LevelResult) -> str:
    rate = prefix_cache_hit_rate(level.server_snapshots)
    if rate is None:
        return "n/a"
    text = f"{rate:.0%}"
    if prefix_cache_warning(rate, level.prompt_sampling) and level.turns is None:
        return f"[yellow]{text}[/]"
    return text


def results_table(result: SweepResult) -> Table:
    axis = "concurrency" if result.config.axis is Axis.CONCURRENCY else "req/s"
    footnotes: list[str] = []
    rows: list[tuple[LevelResult, str]] = []
    for level in result.levels:
        marks = ""
        for note in level_footnotes(level):
            footnotes.append(f"({len(footnotes) + 1}) {level.level.label}: {note}")
            marks += f"({len(footnotes)})"
        rows.append((level, marks))
    gpu_notes = sorted({lv.gpu.message for lv in result.levels if lv.gpu is not None and lv.gpu.message})
    caption = "\n".join([prompts_line(result), *footnotes, *gpu_notes])
    table = Table(
        title=f"{result.config.target.model} @ {redact_url(result.config.target.base_url)}",
        caption=caption,
        caption_justify="left",
    )
    for header in (
        axis,
        "status",
        "ok/fail",
        "req/s",
        "out tok/s",
        "total tok/s",
        "TTFT p50",
        "TTFT p99",
        "TPOT p50",
        "ITL p99",
        "peak conc",
        "prefix hit",
        "client",
    ):
        table.add_column(header, justify="right")
    price = result.config.usd_per_hour
    if price is not None:
        table.add_column(f"$/1M tok at ${price:g}/h", justify="right")
    for level, marks in rows:
        row = _level_row(level, marks)
        if price is not None:
            cost = usd_per_million_tokens(price, level.metrics.total_token_throughput)
            row.append("-" if cost is None else f"{cost:.3f}")
        table.add_row(*row)
    return table


GPU_HEADERS = ("GPU util", "DRAM active", "GPU W", "kJ/1M out", "$/1M out")


def gpu_table(result: SweepResult) -> Table | None:
    """Per level: mean GPU utilisation, DRAM activity and power, energy and dollars per 1M output
    tokens; None when no level read GPU telemetry."""
    levels = [lv for lv in result.levels if lv.gpu is not None and lv.gpu.state == "ok"]
    if not levels:
        return None
    simulated = any(lv.gpu is not None and lv.gpu.simulated for lv in levels)
    count = max(lv.gpu.gpus for lv in levels if lv.gpu is not None)
    how = ", simulated by the twin" if simulated else ""
    title = f"GPU telemetry ({count} GPU{'s' if count != 1 else ''}{how})"
    table = Table(title=title)
    table.add_column("concurrency" if result.config.axis is Axis.CONCURRENCY else "req/s", justify="right")
    for header in GPU_HEADERS:
        table.add_column(header, justify="right")
    for level in result.levels:
        table.add_row(f"{level.level.value:g}", *gpu_cells(level))
    return table


def gpu_cells(level: LevelResult) -> list[str]:
    """Mean GPU utilisation and power, energy and dollars per 1M output tokens ("-" where not read)."""
    gpu = level.gpu
    if gpu is None or gpu.state != "ok":
        return ["-"] * len(GPU_HEADERS)
    util = "-" if gpu.gpu_util_mean is None else f"{gpu.gpu_util_mean * 100:.0f}%"
    dram = "-" if gpu.dram_active_mean is None else f"{gpu.dram_active_mean * 100:.0f}%"
    kj = gpu.kj_per_1m_output_tokens
    usd = gpu.usd_per_1m_output_tokens
    return [
        util,
        dram,
        _fmt(gpu.power_w_mean, 0),
        "-" if kj is None else f"{kj:,.0f}",
        "-" if usd is None else f"{usd:.3f}",
    ]


def turns_table(result: SweepResult) -> Table | None:
    """Multi-turn: TTFT by turn index per level, with the level's prefix-cache hit rate (the server's
    counters) and each turn's where the server says per request; None for a single-turn sweep."""
    levels = [lv for lv in result.levels if lv.turns]
    if not levels:
        return None
    spec = result.config.dataset
    answers = "the dataset's answers" if spec.dataset_answers else "the model's own answers"
    table = Table(title=f"per turn (multi-turn, {spec.turns} turns a session, history with {answers})")
    table.add_column(
        "concurrency" if result.config.axis is Axis.CONCURRENCY else "sessions/s", justify="right"
    )
    for header in ("level prefix hit", "turn", "ok/sent", "mean prompt", "TTFT p50", "TTFT p99", "turn hit"):
        table.add_column(header, justify="right")
    for level in levels:
        level_hit = _hit_rate_cell(level)
        for i, turn in enumerate(level.turns or []):
            hit = turn.prefix_cache_hit_rate
            table.add_row(
                f"{level.level.value:g}" if i == 0 else "",
                level_hit if i == 0 else "",
                str(turn.turn),
                f"{turn.completed}/{turn.requests}",
                _fmt(turn.mean_prompt_len, 0),
                _fmt(turn.median_ttft_ms),
                _fmt(turn.p99_ttft_ms),
                "n/a" if hit is None else f"{hit:.0%}",
            )
    return table


def _level_row(level: LevelResult, marks: str = "") -> list[str]:
    m = level.metrics
    status_style = {RunStatus.COMPLETE: "green", RunStatus.PARTIAL: "yellow", RunStatus.FAILED: "red"}
    status = f"[{status_style.get(level.status, 'white')}]{level.status.value}[/]"
    client = "[red]client-limited[/]" if level.client.client_limited else "ok"
    return [
        f"{level.level.value:g}",
        status,
        f"{m.completed}/{m.failed}",
        _fmt(m.request_throughput, 2),
        _fmt(m.output_throughput),
        _fmt(m.total_token_throughput),
        _fmt(m.ttft.median),
        _fmt(m.ttft.percentiles.get("99")),
        _fmt(m.tpot.median),
        _fmt(m.itl.percentiles.get("99")),
        str(m.max_concurrent_requests),
        _hit_rate_cell(level),
        client + (f" {marks}" if marks else ""),
    ]


class SweepDisplay:
    """Receives sweep events; draws a live view on a terminal or prints lines otherwise."""

    def __init__(self, plain: bool, console: Console | None = None) -> None:
        self.plain = plain
        self.console = console or Console(stderr=True, width=None if sys.stderr.isatty() else 160)
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=self.console,
        )
        self.status = Text("")
        self.live: Live | None = None
        self.task: TaskID | None = None
        self.finished: list[LevelResult] = []

    def __enter__(self) -> SweepDisplay:
        if not self.plain:
            self.live = Live(Group(self.progress, self.status), console=self.console, refresh_per_second=4)
            self.live.__enter__()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.live is not None:
            self.live.__exit__(exc_type, exc, tb)
            self.live = None

    def handle(self, event: SweepEvent) -> None:
        if isinstance(event, SweepStarted):
            for note in event.notes:
                self.console.print(f"[yellow]note:[/] {note}")
        elif isinstance(event, LevelStarted):
            self.task = self.progress.add_task(event.level.label, total=event.total)
            if self.plain:
                self.console.print(f"level {event.index + 1}: {event.level.label}, {event.total} requests")
        elif isinstance(event, ProgressSnapshot):
            self._on_snapshot(event)
        elif isinstance(event, LevelFinished):
            self._on_level(event.result)
        elif isinstance(event, RecordsBatch | SweepFinished):
            pass

    def _on_snapshot(self, snapshot: ProgressSnapshot) -> None:
        done = snapshot.completed + snapshot.failed
        if self.task is not None:
            self.progress.update(self.task, completed=done)
        ttft = sorted(snapshot.recent_ttft_ms)
        ttft_text = f"{ttft[len(ttft) // 2]:.0f} ms" if ttft else "-"
        line = (
            f"{snapshot.level_label}: {snapshot.output_tokens_per_s:,.0f} tok/s, in flight "
            f"{snapshot.in_flight}, failed {snapshot.failed}, recent TTFT p50 {ttft_text}, "
            f"{_server_line(snapshot)}"
        )
        if self.plain:
            self.console.print(line, highlight=False)
        else:
            self.status.plain = line

    def _on_level(self, level: LevelResult) -> None:
        self.finished.append(level)
        m = level.metrics
        line = (
            f"{level.level.label}: {level.status.value}, {m.completed} ok / {m.failed} failed, "
            f"{m.output_throughput:,.1f} out tok/s, TTFT p99 {_fmt(m.ttft.percentiles.get('99'))} ms"
        )
        rate = prefix_cache_hit_rate(level.server_snapshots)
        if rate is not None:
            line += f", prefix cache {rate:.0%}"
        if level.message:
            line += f" ({level.message})"
        self.console.print(line, highlight=False)
        for note in level_footnotes(level):
            self.console.print(f"  [yellow]note:[/] {note}", highlight=False)

    def print_summary(self, result: SweepResult) -> None:
        wide = None if sys.stdout.isatty() else 160
        out = Console(file=sys.stdout, width=wide) if self.console.stderr else self.console
        if result.levels:
            out.print(results_table(result))
            turns = turns_table(result)
            if turns is not None:
                out.print(turns)
            gpus = gpu_table(result)
            if gpus is not None:
                out.print(gpus)
        if result.message:
            self.console.print(f"[yellow]{result.message}[/]")
