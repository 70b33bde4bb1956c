"""One turn of a chat on screen: the user's prompt, or an answer with its live stats line."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import Static

from backends.chat_stats import AnswerStats
from tui.widgets.chat.stats import AnswerStatsLine

WAITING_TEXT = "waiting for the first token …"
SIMULATED_TAG = "simulated answer · canned ShareGPT text from the twin; only its timing is modelled"


class UserMessage(Static):
    DEFAULT_CSS = """
    UserMessage {
        height: auto; width: 1fr; margin: 1 0 0 0; padding: 0 1;
        background: $primary 15%; border-left: outer $primary;
    }
    """

    def __init__(self, text: str) -> None:
        super().__init__(text, markup=False)
        self.text = text


class AnswerView(Vertical):
    """An answer as it streams; ``state`` is streaming, complete, stopped, partial or error."""

    DEFAULT_CSS = """
    AnswerView { height: auto; width: 1fr; margin: 1 0 0 0; padding: 0 1; border-left: outer $success; }
    AnswerView > .answer-text { height: auto; width: 1fr; }
    AnswerView > .answer-text.-waiting { color: $text-muted; text-style: italic; }
    AnswerView > .answer-tag { height: auto; width: 1fr; color: $warning; text-style: italic; }
    AnswerView > .answer-error { height: auto; width: 1fr; color: $error; display: none; }
    AnswerView > .answer-error.-shown { display: block; }
    AnswerView.-error { border-left: outer $error; }
    AnswerView.-partial { border-left: outer $warning; }
    """

    def __init__(
        self,
        *,
        text: str = "",
        stats: AnswerStats | None = None,
        state: str = "streaming",
        error: str | None = None,
        simulated: bool = False,
    ) -> None:
        """A new answer streams; pass a finished ``state`` to show a stored one. A ``simulated`` answer
        (a twin's canned text) says so above its text."""
        super().__init__()
        self.simulated = simulated
        self.text = text
        self.state = state
        self.error = error
        self.stats = stats
        self._ready = False  # children exist once mounted; until then updates are only remembered

    def compose(self) -> ComposeResult:
        if self.simulated:
            yield Static(SIMULATED_TAG, classes="answer-tag", markup=False)
        yield Static(WAITING_TEXT, classes="answer-text -waiting", markup=False)
        yield AnswerStatsLine()
        yield Static("", classes="answer-error", markup=False)

    def on_mount(self) -> None:
        self._ready = True
        self._apply()

    def show_progress(self, text: str, stats: AnswerStats) -> None:
        self.text = text
        self.stats = stats
        self._apply()

    def show_final(self, text: str, stats: AnswerStats | None, state: str, error: str | None) -> None:
        self.text = text
        self.stats = stats
        self.state = state
        self.error = error
        self._apply()

    def _apply(self) -> None:
        if not self._ready:
            return  # on_mount applies the newest state
        streaming = self.state == "streaming"
        body = self.query_one(".answer-text", Static)
        if self.text:
            body.remove_class("-waiting")
            body.update(self.text.lstrip())
        else:
            body.add_class("-waiting")
            body.update(WAITING_TEXT if streaming else "(no text)")
        line = self.query_one(AnswerStatsLine)
        line.display = self.stats is not None
        if self.stats is not None:
            line.show(self.stats, "" if self.state == "complete" else self.state)
        error_view = self.query_one(".answer-error", Static)
        error_view.set_class(self.error is not None, "-shown")
        error_view.update(self.error or "")
        self.set_class(self.state == "error", "-error")
        self.set_class(self.state in ("partial", "stopped"), "-partial")
