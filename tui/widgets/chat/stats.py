"""The live stats under an answer: TTFT, tokens/s, TPOT; ITL spark line, tokens, e2e; ITL p50/p99, prompt
tokens and finish reason."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.widgets import Sparkline, Static

from backends.chat_stats import AnswerStats, percentile

SPARK_POINTS = 256  # the newest ITL gaps drawn; the spark line buckets them into its width


def format_ms(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    ms = seconds * 1000.0
    if ms >= 10_000:
        return f"{seconds:.1f} s"
    if ms >= 1000:
        return f"{seconds:.2f} s"
    if ms >= 100:
        return f"{ms:.0f} ms"
    return f"{ms:.1f} ms"


def speed_text(stats: AnswerStats, state: str = "") -> str:
    """First row: ``TTFT 354 ms · 56.1 tok/s · TPOT 17.7 ms`` and the answer's state if not complete."""
    rate = "–" if stats.tokens_per_s is None else f"{stats.tokens_per_s:.1f}"
    text = f"TTFT {format_ms(stats.ttft_s)} · {rate} tok/s · TPOT {format_ms(stats.tpot_s)}"
    return f"{text} · {state}" if state else text


def totals_text(stats: AnswerStats) -> str:
    """Second row, after the ITL spark line: ``12 tok · e2e 989 ms``."""
    return f"{stats.output_tokens} tok · e2e {format_ms(stats.e2e_s)}"


def detail_text(stats: AnswerStats) -> str:
    """Third row: ``ITL p50 18.0 ms p99 24.5 ms · prompt 31 tok · finish stop``."""
    p50, p99 = (format_ms(percentile(stats.itl_s, q)) for q in (50, 99))
    prompt = "–" if stats.prompt_tokens is None else stats.prompt_tokens
    return f"ITL p50 {p50} p99 {p99} · prompt {prompt} tok · finish {stats.finish_reason or '–'}"


class AnswerStatsLine(Vertical):
    DEFAULT_CSS = """
    AnswerStatsLine { height: auto; width: 1fr; color: $text-muted; }
    AnswerStatsLine > .speed { height: auto; width: 1fr; }
    AnswerStatsLine > Horizontal { height: 1; width: 1fr; }
    AnswerStatsLine .itl-label { width: 4; }
    AnswerStatsLine Sparkline { width: 1fr; max-width: 24; min-width: 4; margin-right: 1; }
    AnswerStatsLine .totals { width: auto; }
    AnswerStatsLine > .detail { height: auto; width: 1fr; }
    """

    def __init__(self) -> None:
        super().__init__()
        # The children are held directly: ``show`` may come before they are mounted (a parent's on_mount
        # can run first), when a query would find nothing.
        self._speed = Static("TTFT – · – tok/s · TPOT –", classes="speed", markup=False)
        self._spark: Sparkline = Sparkline([], summary_function=max)
        self._totals = Static("0 tok · e2e –", classes="totals", markup=False)
        self._detail = Static("", classes="detail", markup=False)

    def compose(self) -> ComposeResult:
        yield self._speed
        with Horizontal():
            yield Static("ITL", classes="itl-label", markup=False)
            yield self._spark
            yield self._totals
        yield self._detail

    def show(self, stats: AnswerStats, state: str = "") -> None:
        self._speed.update(speed_text(stats, state))
        self._spark.data = [gap * 1000.0 for gap in stats.itl_s[-SPARK_POINTS:]]
        self._totals.update(totals_text(stats))
        self._detail.update(detail_text(stats))
