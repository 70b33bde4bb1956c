"""What the Bench and History screens share: the app's context and the sessions store.

A damaged store (a copy of it is already kept next to it) is replaced by a fresh one only when the
user says yes in a dialog; a worker that meets it waits for the answer.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from textual.app import App
from textual.worker import NoActiveWorker, get_current_worker

from sessions.errors import StoreDamagedError
from sessions.store import SessionStore
from tui.context import AppContext

# Opening the store writes and removes a fixed-name probe file in the data folder
# (backends.config.ensure_writable_dir); two threads doing it at once can fail each other, so this
# app's own openings take turns.
_STORE_OPEN_LOCK = threading.Lock()


# Copies of damaged stores the user chose to keep as they are: not asked again in this session.
_DECLINED: set[Path] = set()
_ANSWER_POLL_S = 0.2


def _ask_to_reset(app: App[Any], err: StoreDamagedError, copy: Path) -> bool:
    """Show the question on the app's thread; block this worker thread until it is answered."""
    from tui.widgets.deploy.dialogs import ConfirmScreen

    answered = threading.Event()
    answer: list[bool] = []

    def done(result: bool | None) -> None:
        answer.append(bool(result))
        answered.set()

    question = (
        f"The sessions database {err.path} is damaged; nothing was written to it and a copy is kept "
        f"at {copy}.\n\nStart a fresh, empty store now? (The copy stays.)"
    )
    app.call_from_thread(app.push_screen, ConfirmScreen(question, confirm_label="Start fresh"), done)
    while not answered.wait(_ANSWER_POLL_S):
        if not app.is_running:
            return False
    return answer[0]


def _worker_app() -> App[Any] | None:
    """The app of the thread worker running this, if any (only a worker can wait for an answer)."""
    try:
        worker = get_current_worker()
    except NoActiveWorker:
        return None
    if threading.current_thread() is threading.main_thread():
        return None
    return worker.node.app


def _open_or_offer_reset(ctx: AppContext) -> SessionStore:
    try:
        return ctx.open_store()
    except StoreDamagedError as err:
        copy = err.copy
        app = _worker_app()
        if copy is None or copy in _DECLINED or app is None:
            raise
        if not _ask_to_reset(app, err, copy):
            _DECLINED.add(copy)
            raise
    store = SessionStore.open(ctx.data_dir, reset_damaged=True)
    if store.db.reset_from is not None:
        app.call_from_thread(
            app.notify, f"started a fresh sessions store; the damaged one is kept at {store.db.reset_from}"
        )
    return store


@contextlib.contextmanager
def open_store(ctx: AppContext) -> Iterator[SessionStore]:
    with _STORE_OPEN_LOCK:
        store = _open_or_offer_reset(ctx)
    try:
        yield store
    finally:
        store.close()
