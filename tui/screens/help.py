"""`?` help: every key that works on the current view, read from the live bindings (one source of truth)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

from rich.table import Table
from rich.text import Text
from textual.app import App, ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen, Screen
from textual.widgets import Static

from tui.shell import View

HelpRow = tuple[str, str]


def _key_text(app: App[Any], binding: Binding) -> str:
    return binding.key_display or app.get_key_display(binding)


# Bindings every Textual screen has; they belong with the global keys, not with the view's own.
_GENERIC_ACTIONS = frozenset({"focus_next", "focus_previous", "copy_text", "maximize", "minimize"})


def _collect(screen: Screen[Any]) -> tuple[list[HelpRow], list[HelpRow], list[HelpRow]]:
    """(keys of this view, keys of the focused panel, keys that work everywhere), in binding order.

    A binding's ``tooltip``, when it has one, is the longer explanation shown here."""
    view: list[HelpRow] = []
    panel: list[HelpRow] = []
    everywhere: list[HelpRow] = []
    seen: set[tuple[str, str]] = set()
    app = screen.app
    for active in screen.active_bindings.values():
        binding = active.binding
        if not binding.description:
            continue
        row = (_key_text(app, binding), binding.tooltip or binding.description)
        if row in seen:
            continue
        seen.add(row)
        if active.node is app or binding.action.rpartition(".")[2] in _GENERIC_ACTIONS:
            everywhere.append(row)
        elif active.node is screen:
            view.append(row)
        else:
            panel.append(row)
    return view, panel, everywhere


def _table(title: str, rows: Sequence[HelpRow]) -> Table:
    table = Table(title=title, title_justify="left", show_header=False, box=None, padding=(0, 2, 0, 0))
    table.add_column("key", style="bold", min_width=10)
    table.add_column("what it does")
    for key, description in rows:
        table.add_row(key, description)
    return table


class HelpScreen(ModalScreen[None]):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "close", "close"),
        Binding("question_mark", "close", "close", show=False),
        Binding("q", "close", "close", show=False),
    ]

    def __init__(
        self,
        view_title: str,
        view_keys: list[HelpRow],
        panel_keys: list[HelpRow],
        global_keys: list[HelpRow],
        views: list[HelpRow],
    ) -> None:
        super().__init__()
        self._view_title = view_title
        self._view_keys = view_keys
        self._panel_keys = panel_keys
        self._global_keys = global_keys
        self._views = views

    @classmethod
    def for_screen(cls, screen: Screen[Any], views: Sequence[View]) -> HelpScreen:
        view_keys, panel_keys, global_keys = _collect(screen)
        title = screen.title or type(screen).__name__.removesuffix("Screen")
        view_rows = [(f":{view.mode}", ", ".join(f":{alias}" for alias in view.aliases)) for view in views]
        return cls(title, view_keys, panel_keys, global_keys, view_rows)

    def compose(self) -> ComposeResult:
        with Vertical(id="help-box") as box:
            box.border_title = "Help"
            box.border_subtitle = "esc closes"
            intro = Text.assemble(
                ("Keys follow k9s: ", "bold"),
                "`:` jumps to a view by name, `/` filters the list, `esc` goes back, ",
                "`ctrl+p` opens the command palette with every action. The mouse works everywhere.",
            )
            yield Static(intro, id="help-intro")
            with Horizontal(id="help-columns"):
                with VerticalScroll(classes="help-column"):
                    if self._view_keys:
                        yield Static(
                            _table(f"{self._view_title} view", self._view_keys), classes="help-section"
                        )
                    if self._panel_keys:
                        yield Static(_table("Focused panel", self._panel_keys), classes="help-section")
                with VerticalScroll(classes="help-column"):
                    yield Static(_table("Everywhere", self._global_keys), classes="help-section")
                    if self._views:
                        yield Static(
                            _table("Views (`:` then a name or alias)", self._views), classes="help-section"
                        )

    def action_close(self) -> None:
        self.dismiss(None)
