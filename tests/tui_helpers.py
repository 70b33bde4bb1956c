"""Helpers shared by the Textual app tests: waiting on a condition between app pauses, reading toasts."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from textual.app import App
from textual.pilot import Pilot


async def wait_until(
    pilot: Pilot[Any], predicate: Callable[[], bool], timeout_s: float = 15.0, poll_s: float = 0.05
) -> None:
    """Pause the app `poll_s` at a time until `predicate()` holds; fail the test after `timeout_s`.

    Modules bind their own bound and poll step: ``wait_until = partial(tui_helpers.wait_until,
    timeout_s=WAIT_S, poll_s=0.02)``."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout_s:.0f} s")
        await pilot.pause(poll_s)


def notifications(app: App[Any]) -> list[str]:
    """The messages of the toasts the app shows now."""
    return [notification.message for notification in app._notifications]
