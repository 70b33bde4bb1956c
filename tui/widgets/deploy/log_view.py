"""A bounded log pane that highlights vLLM's periodic stats line and keeps its latest values on top.

Lines arrive in batches (``LogLines``) from a worker that reads a file or a pod log, so the pane
repaints at most a few times a second however fast the log grows.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.message import Message
from textual.widgets import RichLog, Static

from backends.kube.vllm_log import VllmStatsLine, parse_vllm_stats_line

MAX_LINES = 2000
FLUSH_INTERVAL_S = 0.2
FLUSH_BATCH = 200
STATS_STYLE = "bold cyan"
ERROR_WORDS = ("error", "traceback", "oomkilled", "exception")


class LogLines(Message):
    """A batch of new log lines (posted from a worker thread)."""

    def __init__(self, lines: list[str]) -> None:
        super().__init__()
        self.lines = lines


def stats_summary(stats: VllmStatsLine) -> str:
    parts = [
        f"generation {stats.generation_tokens_per_s:,.1f} tok/s",
        f"prompt {stats.prompt_tokens_per_s:,.1f} tok/s",
        f"running {stats.running}",
        f"waiting {stats.waiting}",
    ]
    if stats.preemptions:
        parts.append(f"preemptions {stats.preemptions}")
    if stats.gpu_kv_cache_usage is not None:
        parts.append(f"KV cache {stats.gpu_kv_cache_usage * 100:.1f}%")
    if stats.prefix_cache_hit_rate is not None:
        parts.append(f"prefix hits {stats.prefix_cache_hit_rate * 100:.1f}%")
    return "vLLM stats: " + "  ·  ".join(parts)


def styled_line(line: str) -> tuple[Text, VllmStatsLine | None]:
    stats = parse_vllm_stats_line(line)
    if stats is not None:
        return Text(line, style=STATS_STYLE), stats
    lowered = line.lower()
    if any(word in lowered for word in ERROR_WORDS):
        return Text(line, style="red"), None
    return Text(line), None


class DeployLogView(Vertical):
    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.line_count = 0
        self.last_stats: VllmStatsLine | None = None

    def compose(self) -> ComposeResult:
        yield Static(
            "vLLM stats: none yet (vLLM logs them every few seconds while it has traffic)", id="log-stats"
        )
        yield RichLog(max_lines=MAX_LINES, wrap=False, highlight=False, auto_scroll=True, id="log-lines")

    def show_message(self, text: str) -> None:
        self.query_one(RichLog).write(Text(text, style="dim italic"))

    def on_log_lines(self, message: LogLines) -> None:
        log = self.query_one(RichLog)
        latest: VllmStatsLine | None = None
        for line in message.lines:
            text, stats = styled_line(line)
            log.write(text)
            if stats is not None:
                latest = stats
        self.line_count += len(message.lines)
        if latest is not None:
            self.last_stats = latest
            self.query_one("#log-stats", Static).update(Text(stats_summary(latest), style=STATS_STYLE))


class LineBatcher:
    """Collects lines from a thread and hands them on at most every ``FLUSH_INTERVAL_S`` (or per batch)."""

    def __init__(self, send: Callable[[list[str]], None]) -> None:
        self._send = send
        self._buffer: list[str] = []
        self._last_flush = time.monotonic()
        self._lock = threading.Lock()

    def add(self, lines: list[str]) -> None:
        with self._lock:
            self._buffer.extend(lines)
            due = len(self._buffer) >= FLUSH_BATCH or time.monotonic() - self._last_flush >= FLUSH_INTERVAL_S
        if due:
            self.flush()

    def flush(self) -> None:
        with self._lock:
            lines, self._buffer = self._buffer, []
            self._last_flush = time.monotonic()
        if lines:
            self._send(lines)
