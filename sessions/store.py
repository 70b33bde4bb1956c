"""The sessions store: one SQLite file in the data directory holding chats and bench runs."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from types import TracebackType

from backends.config import data_dir, ensure_writable_dir
from backends.errors import ConfigError
from sessions.bundle import export_bundle, import_bundle
from sessions.chats import ChatStore
from sessions.database import Database, database_path
from sessions.errors import StoreBusyError
from sessions.journal import merge_journals
from sessions.run_models import RunBundle
from sessions.runs import RunStore


class SessionStore:
    """Open with ``SessionStore.open()`` (or ``open(data_dir=...)``); close, or use as a context manager.

    Opening merges runs that were kept in the journal while the store was busy (``merged_runs``),
    then marks runs whose writing process died as partial (``recovered_runs``); a busy store leaves
    both for a later open. A store whose file or folder is not writable opens read-only
    (``read_only``): it lists, shows and exports. ``reset_damaged``: the user agreed to replace a
    damaged database with a fresh one (``db.reset_from`` names the copy kept of it).
    """

    def __init__(self, db: Database) -> None:
        self.db = db
        self.chats = ChatStore(db)
        self.runs = RunStore(db)
        self.recovered_runs: list[str] = []
        self.merged_runs: list[str] = []

    @classmethod
    def open(cls, directory: Path | str | None = None, *, reset_damaged: bool = False) -> SessionStore:
        folder = data_dir(directory)
        path = database_path(folder)
        try:
            ensure_writable_dir(folder, "data")
            read_only = path.is_file() and not os.access(path, os.W_OK)
        except ConfigError:
            if not path.is_file():
                raise
            read_only = True
        store = cls(Database.open(path, read_only=read_only, reset_damaged=reset_damaged))
        if read_only:
            return store
        try:
            store.merged_runs = merge_journals(store.db)
            # Another process holding the lock only delays recovery to a later open.
            with contextlib.suppress(StoreBusyError):
                store.recovered_runs = store.runs.recover_abandoned(busy_timeout_s=1.0)
        except BaseException:
            store.close()
            raise
        return store

    @property
    def read_only(self) -> bool:
        return self.db.read_only

    @property
    def path(self) -> Path:
        return self.db.path

    def export_bundle(self, run_id: str) -> RunBundle:
        return export_bundle(self.db, run_id)

    def import_bundle(self, bundle: RunBundle, *, new_id: bool = False) -> str:
        return import_bundle(self.db, bundle, new_id=new_id)

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> SessionStore:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()
