"""The footer every screen shows: Textual's Footer, rebuilt only when the keys it shows change."""

from __future__ import annotations

from collections.abc import Hashable

from textual.screen import Screen
from textual.widgets import Footer


class KeysFooter(Footer):
    """Textual's Footer recomposes on every bindings signal, i.e. on every focus change: a tab switch
    rebuilt ~15 key widgets and laid the whole screen out again for keys that had not changed (10-20 ms
    a switch on a 2-core machine, most of the layouts during a sweep; tests/benchmarks/bench_tui_bench.py).
    This one compares what it would show with what it shows and recomposes only on a difference."""

    def __init__(self) -> None:
        super().__init__()
        self._shown: Hashable | None = None

    def bindings_changed(self, screen: Screen[object]) -> None:
        if self._bindings_ready and self.is_attached and screen is self.screen:
            shown = _shown_keys(screen)
            if shown == self._shown:
                return
            self._shown = shown
        super().bindings_changed(screen)


def _shown_keys(screen: Screen[object]) -> Hashable:
    """Everything of the active bindings that Footer.compose renders."""
    app = screen.app
    keys: list[Hashable] = []
    for _, binding, enabled, tooltip in screen.active_bindings.values():
        if binding.show or binding.key == app.COMMAND_PALETTE_BINDING:
            group = binding.group
            keys.append(
                (
                    binding.key,
                    binding.action,
                    binding.description,
                    app.get_key_display(binding),
                    group.description if group is not None else None,
                    group.compact if group is not None else None,
                    enabled,
                    tooltip,
                )
            )
    return tuple(keys)
