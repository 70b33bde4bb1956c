"""Opening the sessions database safely, and turning SQLite failures into one clear message.

An existing file is inspected read-only first: a file that is not SQLite, belongs to another
program, or was written by a newer ServeDeck is refused without a single byte being changed.
Only then is it opened for writing (WAL, foreign keys, busy timeout) and migrated; before a
migration the old file is copied next to it (``sessions.db.v<N>.bak``).
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

from backends.config import DATA_DIR_ENV
from sessions.errors import SessionStoreError
from sessions.schema import MIGRATIONS, SCHEMA_VERSION

DB_FILENAME = "sessions.db"
BUSY_TIMEOUT_S = 10.0
_SQLITE_MAGIC = b"SQLite format 3\x00"
_MOVE_ASIDE = (
    "move it aside (nothing in it was changed), or point ServeDeck at another folder "
    f"with --data-dir or {DATA_DIR_ENV}"
)


def database_path(directory: Path) -> Path:
    return directory / DB_FILENAME


def _damaged(path: Path, reason: str) -> SessionStoreError:
    return SessionStoreError(f"the sessions database {path} is not readable ({reason}); {_MOVE_ASIDE}")


def translate(exc: sqlite3.Error, path: Path) -> SessionStoreError:
    """One clear, user-facing message for a SQLite failure."""
    text = str(exc)
    lowered = text.lower()
    if "full" in lowered:
        return SessionStoreError(
            f"the disk holding {path} is full; free some space and try again "
            "(everything saved before this point is kept)"
        )
    if "locked" in lowered or "busy" in lowered:
        return SessionStoreError(
            f"another ServeDeck process kept {path} busy for more than {BUSY_TIMEOUT_S:g} s; try again"
        )
    if "readonly" in lowered or "read-only" in lowered or "unable to open" in lowered or "i/o" in lowered:
        return SessionStoreError(
            f"cannot write the sessions database {path} ({text}); check its permissions and free space, "
            f"or use another folder with --data-dir or {DATA_DIR_ENV}"
        )
    if isinstance(exc, sqlite3.DatabaseError) and not isinstance(exc, sqlite3.OperationalError):
        return _damaged(path, text)
    return SessionStoreError(f"the sessions database {path} failed: {text}")


def _is_translatable(exc: sqlite3.Error) -> bool:
    # IntegrityError and ProgrammingError are bugs in our code, not conditions a user can fix.
    return not isinstance(exc, sqlite3.IntegrityError | sqlite3.ProgrammingError | sqlite3.InterfaceError)


def _inspect_existing(path: Path) -> int:
    """The schema version of an existing file, read without writing anything."""
    if path.is_dir():
        raise SessionStoreError(f"{path} is a folder, not the sessions database; {_MOVE_ASIDE}")
    try:
        with path.open("rb") as handle:
            head = handle.read(len(_SQLITE_MAGIC))
    except OSError as exc:
        raise SessionStoreError(
            f"cannot read the sessions database {path} ({exc.strerror}); check its permissions"
        ) from None
    if not head:
        return 0  # an empty file is an empty database
    if head != _SQLITE_MAGIC:
        raise _damaged(path, "it is not an SQLite database")
    try:
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=BUSY_TIMEOUT_S)
    except sqlite3.Error as exc:
        raise translate(exc, path) from None
    try:
        (version,) = conn.execute("PRAGMA user_version").fetchone()
        tables = [row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
    except sqlite3.Error as exc:
        raise translate(exc, path) from None
    finally:
        conn.close()
    if version > SCHEMA_VERSION:
        raise SessionStoreError(
            f"the sessions database {path} was written by a newer ServeDeck (schema version {version}; "
            f"this version understands up to {SCHEMA_VERSION}); upgrade ServeDeck to open it. "
            "The file was not changed."
        )
    if version == 0 and tables:
        raise SessionStoreError(f"{path} is an SQLite file of another program; {_MOVE_ASIDE}")
    return int(version)


class Database:
    """One connection shared by this process's threads; every transaction holds the lock."""

    def __init__(self, conn: sqlite3.Connection, path: Path) -> None:
        self._conn = conn
        self.path = path
        self._lock = threading.RLock()

    @classmethod
    def open(cls, path: Path) -> Database:
        if path.exists():
            _inspect_existing(path)
        try:
            conn = sqlite3.connect(
                path, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False
            )
        except sqlite3.Error as exc:
            raise translate(exc, path) from None
        database = cls(conn, path)
        try:
            database._configure()
            database._migrate()
        except sqlite3.Error as exc:
            conn.close()
            raise translate(exc, path) from None
        except BaseException:
            conn.close()
            raise
        return database

    def _configure(self) -> None:
        conn = self._conn
        (version,) = conn.execute("PRAGMA user_version").fetchone()
        if version == 0:
            # Only an empty database can switch; lets deleted runs give their space back.
            conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
        (mode,) = conn.execute("PRAGMA journal_mode = WAL").fetchone()
        if str(mode).lower() != "wal":
            raise SessionStoreError(
                f"the sessions database {self.path} cannot use write-ahead logging (journal mode {mode}); "
                f"use a local folder with --data-dir or {DATA_DIR_ENV}"
            )
        # NORMAL in WAL mode: a committed transaction survives a killed process; only power loss can
        # drop the last few commits.
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute("PRAGMA foreign_keys = ON")

    def _migrate(self) -> None:
        conn = self._conn
        (version,) = conn.execute("PRAGMA user_version").fetchone()
        if version == SCHEMA_VERSION:
            return
        backup_note = ""
        if version >= 1:
            backup_path = self.path.with_name(f"{self.path.name}.v{version}.bak")
            if not backup_path.exists():
                backup = sqlite3.connect(backup_path)
                try:
                    conn.backup(backup)
                finally:
                    backup.close()
            backup_note = f"; a copy of it from before the upgrade is at {backup_path}"
        conn.execute("BEGIN IMMEDIATE")
        try:
            (version,) = conn.execute("PRAGMA user_version").fetchone()  # another process may have won
            if version > SCHEMA_VERSION:
                raise SessionStoreError(
                    f"the sessions database {self.path} was upgraded by a newer ServeDeck while opening it "
                    f"(schema version {version}); upgrade ServeDeck to open it"
                )
            for migration in MIGRATIONS[version:]:
                migration(conn)
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            conn.execute("COMMIT")
        except sqlite3.Error:
            self._rollback()
            raise
        except SessionStoreError:
            self._rollback()
            raise
        except Exception as exc:
            self._rollback()
            raise SessionStoreError(
                f"could not upgrade the sessions database {self.path} from schema version {version} "
                f"({exc.__class__.__name__}: {exc}); it was left unchanged{backup_note}"
            ) from None
        except BaseException:
            self._rollback()
            raise

    @property
    def schema_version(self) -> int:
        with self.read() as conn:
            (version,) = conn.execute("PRAGMA user_version").fetchone()
        return int(version)

    @contextmanager
    def _transaction(self, begin: str) -> Iterator[sqlite3.Connection]:
        with self._lock:
            try:
                self._conn.execute(begin)
            except sqlite3.Error as exc:
                raise translate(exc, self.path) from None
            try:
                yield self._conn
                self._conn.execute("COMMIT")
            except sqlite3.Error as exc:
                self._rollback()
                if _is_translatable(exc):
                    raise translate(exc, self.path) from None
                raise
            except BaseException:
                self._rollback()
                raise

    def _rollback(self) -> None:
        if self._conn.in_transaction:
            # SQLite may already have rolled back by itself (e.g. after SQLITE_FULL).
            with contextlib.suppress(sqlite3.Error):
                self._conn.execute("ROLLBACK")

    def write(self) -> AbstractContextManager[sqlite3.Connection]:
        """A write transaction; taking the write lock up front avoids deadlocked upgrades."""
        return self._transaction("BEGIN IMMEDIATE")

    def read(self) -> AbstractContextManager[sqlite3.Connection]:
        """A read transaction: every query inside sees the same snapshot."""
        return self._transaction("BEGIN")

    def close(self) -> None:
        with self._lock:
            self._conn.close()
