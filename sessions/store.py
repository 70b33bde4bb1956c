"""The sessions store: one SQLite file in the data directory holding chats and bench runs."""

from __future__ import annotations

from pathlib import Path
from types import TracebackType

from backends.config import data_dir, ensure_writable_dir
from sessions.bundle import export_bundle, import_bundle
from sessions.chats import ChatStore
from sessions.database import Database, database_path
from sessions.run_models import RunBundle
from sessions.runs import RunStore


class SessionStore:
    """Open with ``SessionStore.open()`` (or ``open(data_dir=...)``); close, or use as a context manager.

    Opening marks runs whose writing process died as partial (``recovered_runs`` lists them).
    """

    def __init__(self, db: Database) -> None:
        self.db = db
        self.chats = ChatStore(db)
        self.runs = RunStore(db)
        self.recovered_runs: list[str] = []

    @classmethod
    def open(cls, directory: Path | str | None = None) -> SessionStore:
        folder = ensure_writable_dir(data_dir(directory), "data")
        store = cls(Database.open(database_path(folder)))
        try:
            store.recovered_runs = store.runs.recover_abandoned()
        except BaseException:
            store.close()
            raise
        return store

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
