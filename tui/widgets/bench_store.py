"""What the Bench and History screens share: the app's context and the sessions store."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any

from textual.screen import Screen

from sessions.store import SessionStore
from tui.context import AppContext

# Opening the store writes and removes a fixed-name probe file in the data folder
# (backends.config.ensure_writable_dir); two threads doing it at once can fail each other, so this
# app's own openings take turns.
_STORE_OPEN_LOCK = threading.Lock()


@contextlib.contextmanager
def open_store(ctx: AppContext) -> Iterator[SessionStore]:
    with _STORE_OPEN_LOCK:
        store = ctx.open_store()
    try:
        yield store
    finally:
        store.close()


def app_context(screen: Screen[Any]) -> AppContext:
    ctx = getattr(screen.app, "ctx", None)
    if not isinstance(ctx, AppContext):
        raise RuntimeError("the Bench and History views need an app with an AppContext as `ctx`")
    return ctx
