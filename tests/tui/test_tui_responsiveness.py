"""What keeps the UI thread free: a footer that rebuilds only on change, and the garbage-collector policy."""

from __future__ import annotations

import gc
import weakref
from typing import ClassVar

import pytest
from textual.app import App, ComposeResult
from textual.binding import Binding, BindingType
from textual.widgets import Input
from textual.widgets._footer import FooterKey

from tui.gc_policy import (
    FULL_COLLECTION_THRESHOLD,
    RECLAIM_AFTER_QUIET_S,
    RECLAIM_MIN_INTERVAL_S,
    GcPolicy,
    freeze_long_lived_objects,
)
from tui.widgets.footer import KeysFooter

pytestmark = pytest.mark.anyio


class TwoFields(App[None]):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("f2", "toggle", "toggle"),
        Binding("f3", "other", "other"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.toggle_shown = True

    def compose(self) -> ComposeResult:
        yield Input(id="first")
        yield Input(id="second")
        yield KeysFooter()

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        return self.toggle_shown if action == "toggle" else True

    def action_toggle(self) -> None:
        pass

    def action_other(self) -> None:
        pass


def footer_keys(app: App[None]) -> list[FooterKey]:
    return [key for key in app.screen.query(FooterKey) if key.action != "command_palette"]


async def test_the_footer_keeps_its_keys_when_focus_moves_and_the_keys_stay_the_same() -> None:
    app = TwoFields()
    async with app.run_test(size=(80, 10)) as pilot:
        await pilot.pause()
        before = footer_keys(app)
        assert [key.action for key in before] == ["toggle", "other"]
        app.query_one("#second", Input).focus()
        await pilot.pause()
        app.query_one("#first", Input).focus()
        await pilot.pause()
        assert footer_keys(app) == before  # the same widgets: no rebuild


async def test_the_footer_rebuilds_when_the_keys_it_shows_change() -> None:
    app = TwoFields()
    async with app.run_test(size=(80, 10)) as pilot:
        await pilot.pause()
        app.toggle_shown = False
        app.screen.refresh_bindings()
        await pilot.pause()
        assert [key.action for key in footer_keys(app)] == ["other"]
        app.toggle_shown = True
        app.screen.refresh_bindings()
        await pilot.pause()
        assert [key.action for key in footer_keys(app)] == ["toggle", "other"]


@pytest.fixture
def thawed() -> object:
    yield None
    gc.unfreeze()


def test_freezing_moves_survivors_out_of_the_collectors_way(thawed: object) -> None:
    gc.unfreeze()
    survivor = [object() for _ in range(1000)]
    freeze_long_lived_objects()
    assert gc.get_freeze_count() >= len(survivor)
    assert gc.get_threshold()[2] >= FULL_COLLECTION_THRESHOLD


def test_a_full_reclaim_waits_for_quiet_input_and_runs_at_most_every_few_minutes(thawed: object) -> None:
    now = [1000.0]
    quiet = [0.0]
    policy = GcPolicy(lambda: quiet[0], clock=lambda: now[0])

    now[0] += RECLAIM_MIN_INTERVAL_S + 1
    policy.tick()  # someone is typing: only the young pass
    assert (policy.young_passes, policy.reclaims) == (1, 0)

    quiet[0] = RECLAIM_AFTER_QUIET_S + 1
    policy.tick()
    assert (policy.young_passes, policy.reclaims) == (1, 1)
    assert gc.get_freeze_count() > 0  # everything alive is frozen again after the full pass

    now[0] += 10
    policy.tick()  # still quiet, but a reclaim ran 10 s ago
    assert (policy.young_passes, policy.reclaims) == (2, 1)


def test_a_reclaim_frees_a_cycle_that_became_garbage_after_it_was_frozen(thawed: object) -> None:
    class Node:
        partner: object = None

    first, second = Node(), Node()
    first.partner, second.partner = second, first
    alive = weakref.ref(first)
    freeze_long_lived_objects()
    del first, second
    gc.collect()
    assert alive() is not None  # frozen: the collector does not look at it

    now = [0.0]
    policy = GcPolicy(lambda: RECLAIM_AFTER_QUIET_S + 1, clock=lambda: now[0])
    now[0] = RECLAIM_MIN_INTERVAL_S + 1
    policy.tick()
    assert policy.reclaims == 1
    assert alive() is None
