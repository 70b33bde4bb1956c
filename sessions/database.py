"""Opening the sessions database safely, and turning SQLite failures into one clear message.

An existing file is inspected read-only first: a file that is not SQLite, belongs to another
program, was written by a newer ServeDeck or fails ``PRAGMA quick_check`` is refused without a
single byte being changed. A damaged file is also copied next to itself
(``sessions.db.corrupt-<UTC time>``); it is replaced by a fresh store only when the caller passes
``reset_damaged`` (the user asked). Only then is it opened for writing (WAL, foreign keys, busy
timeout) and migrated; before a migration the old file is copied next to it
(``sessions.db.v<N>.bak``). A store whose file or folder is not writable opens read-only.
"""

from __future__ import annotations

import contextlib
import filecmp
import shutil
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

from backends.config import DATA_DIR_ENV
from sessions.errors import SessionStoreError, StoreBusyError, StoreDamagedError
from sessions.schema import MIGRATIONS, SCHEMA_VERSION
from sessions.timestamps import utc_now

DB_FILENAME = "sessions.db"
BUSY_TIMEOUT_S = 10.0
_SQLITE_MAGIC = b"SQLite format 3\x00"
_MOVE_ASIDE = (
    "move it aside (nothing in it was changed), or point ServeDeck at another folder "
    f"with --data-dir or {DATA_DIR_ENV}"
)
_QUARANTINE_INFIX = ".corrupt-"
RESET_HINT = "--reset-store"

# Files this process has already seen pass quick_check: (resolved path, inode). The check reads the
# whole file, and the app opens the store once per worker.
_CHECKED: set[tuple[str, int]] = set()
_CHECKED_LOCK = threading.Lock()


def database_path(directory: Path) -> Path:
    return directory / DB_FILENAME


def _existing_copy(path: Path) -> Path | None:
    for candidate in sorted(path.parent.glob(f"{path.name}{_QUARANTINE_INFIX}*")):
        if not candidate.name.endswith("-wal") and filecmp.cmp(candidate, path, shallow=False):
            return candidate
    return None


def quarantine(path: Path) -> Path | None:
    """A timestamped copy of a damaged file (and its WAL), or an identical one kept before."""
    try:
        if (kept := _existing_copy(path)) is not None:
            return kept
        stamp = f"{utc_now():%Y%m%dT%H%M%S}"
        copy = path.with_name(f"{path.name}{_QUARANTINE_INFIX}{stamp}")
        serial = 1
        while copy.exists():
            serial += 1
            copy = path.with_name(f"{path.name}{_QUARANTINE_INFIX}{stamp}-{serial}")
        shutil.copy2(path, copy)
        wal = path.with_name(f"{path.name}-wal")
        if wal.is_file() and wal.stat().st_size > 0:
            shutil.copy2(wal, copy.with_name(f"{copy.name}-wal"))
    except OSError:
        return None
    return copy


def _damaged(path: Path, reason: str) -> StoreDamagedError:
    copy = quarantine(path) if path.is_file() else None
    if copy is None:
        return StoreDamagedError(
            f"the sessions database {path} is damaged ({reason}); nothing was written to it and no copy "
            f"of it could be kept: {_MOVE_ASIDE}",
            path,
            None,
        )
    return StoreDamagedError(
        f"the sessions database {path} is damaged ({reason}); nothing was written to it and a copy is "
        f"kept at {copy}. Rerun with {RESET_HINT} to start a fresh store (e.g. `servedeck runs list "
        f"{RESET_HINT}`; the copy stays), or use another folder with --data-dir or {DATA_DIR_ENV}",
        path,
        copy,
    )


def _read_only_message(path: Path) -> str:
    return (
        f"the sessions database {path} is read-only here (the file or its folder is not writable): "
        "runs can be listed, shown and exported but nothing can be changed; fix its permissions or "
        f"use another folder with --data-dir or {DATA_DIR_ENV}"
    )


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
        return StoreBusyError(
            f"another ServeDeck process kept {path} busy for more than {BUSY_TIMEOUT_S:g} s; try again"
        )
    if "malformed" in lowered or "not a database" in lowered:
        return _damaged(path, text)
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


def _connect_read_only(path: Path) -> sqlite3.Connection:
    uri = path.resolve().as_uri()
    try:
        conn = sqlite3.connect(
            f"{uri}?mode=ro", uri=True, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False
        )
    except sqlite3.Error as exc:
        raise translate(exc, path) from None
    try:
        conn.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()
        return conn
    except sqlite3.OperationalError:
        conn.close()
        wal = path.with_name(f"{path.name}-wal")
        if wal.is_file() and wal.stat().st_size > 0:
            raise
    # A WAL database in a folder this process cannot write: no -shm can be made next to it. With
    # no WAL content left to read, opening it as immutable reads exactly what is stored.
    try:
        return sqlite3.connect(
            f"{uri}?immutable=1",
            uri=True,
            timeout=BUSY_TIMEOUT_S,
            isolation_level=None,
            check_same_thread=False,
        )
    except sqlite3.Error as exc:
        raise translate(exc, path) from None


def _check_key(path: Path) -> tuple[str, int]:
    return (str(path.resolve()), path.stat().st_ino)


def _quick_check(conn: sqlite3.Connection, path: Path) -> None:
    key = _check_key(path)
    with _CHECKED_LOCK:
        if key in _CHECKED:
            return
    problems = [str(row[0]) for row in conn.execute("PRAGMA quick_check(3)")]
    if problems != ["ok"]:
        lines = [line.strip() for problem in problems for line in problem.splitlines()]
        found = "; ".join(line for line in lines if line and not line.startswith("***"))
        raise _damaged(path, f"quick_check: {found}")
    with _CHECKED_LOCK:
        _CHECKED.add(key)


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
        conn = _connect_read_only(path)
    except sqlite3.Error as exc:
        raise translate(exc, path) from None
    try:
        (version,) = conn.execute("PRAGMA user_version").fetchone()
        tables = [row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        if 0 < version <= SCHEMA_VERSION:
            _quick_check(conn, path)
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
    if version < 0:
        raise _damaged(path, f"schema version {version}, which no ServeDeck writes")
    if version == 0 and tables:
        raise SessionStoreError(f"{path} is an SQLite file of another program; {_MOVE_ASIDE}")
    return int(version)


def _remove_damaged(path: Path) -> None:
    """Only called once a copy of the file is kept."""
    for name in (path.name, f"{path.name}-wal", f"{path.name}-shm"):
        try:
            path.with_name(name).unlink(missing_ok=True)
        except OSError as exc:
            raise SessionStoreError(f"cannot replace the damaged store {path} ({exc.strerror})") from None


class Database:
    """One connection shared by this process's threads; every transaction holds the lock."""

    def __init__(self, conn: sqlite3.Connection, path: Path, *, read_only: bool = False) -> None:
        self._conn = conn
        self.path = path
        self.read_only = read_only
        self.reset_from: Path | None = None  # the damaged store's copy, when this one replaced it
        self._lock = threading.RLock()

    @classmethod
    def open(cls, path: Path, *, read_only: bool = False, reset_damaged: bool = False) -> Database:
        """``reset_damaged``: the user agreed to replace a damaged file (a copy of it is kept)."""
        reset_from = None
        if path.exists():
            try:
                _inspect_existing(path)
            except StoreDamagedError as err:
                if not reset_damaged or read_only or err.copy is None:
                    raise
                _remove_damaged(path)
                reset_from = err.copy
        if read_only:
            return cls._open_read_only(path)
        try:
            conn = sqlite3.connect(
                path, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False
            )
        except sqlite3.Error as exc:
            raise translate(exc, path) from None
        database = cls(conn, path)
        database.reset_from = reset_from
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

    @classmethod
    def _open_read_only(cls, path: Path) -> Database:
        conn = _connect_read_only(path)
        try:
            (version,) = conn.execute("PRAGMA user_version").fetchone()
        except sqlite3.Error as exc:
            conn.close()
            raise translate(exc, path) from None
        if version != SCHEMA_VERSION:
            conn.close()
            raise SessionStoreError(
                f"the sessions database {path} has schema version {version} and needs an upgrade to "
                f"{SCHEMA_VERSION}, which cannot be written: {_read_only_message(path)}"
            )
        conn.execute("PRAGMA query_only = ON")
        return cls(conn, path, read_only=True)

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
    def _transaction(self, begin: str, busy_timeout_s: float | None = None) -> Iterator[sqlite3.Connection]:
        with self._lock:
            if busy_timeout_s is not None:
                self._conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_s * 1000)}")
            try:
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
            finally:
                if busy_timeout_s is not None:
                    self._conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")

    def _rollback(self) -> None:
        if self._conn.in_transaction:
            # SQLite may already have rolled back by itself (e.g. after SQLITE_FULL).
            with contextlib.suppress(sqlite3.Error):
                self._conn.execute("ROLLBACK")

    def write(self, *, busy_timeout_s: float | None = None) -> AbstractContextManager[sqlite3.Connection]:
        """A write transaction; taking the write lock up front avoids deadlocked upgrades.
        ``busy_timeout_s``: how long to wait for another process's lock (default BUSY_TIMEOUT_S)."""
        if self.read_only:
            raise SessionStoreError(_read_only_message(self.path))
        return self._transaction("BEGIN IMMEDIATE", busy_timeout_s)

    def read(self) -> AbstractContextManager[sqlite3.Connection]:
        """A read transaction: every query inside sees the same snapshot."""
        return self._transaction("BEGIN")

    def close(self) -> None:
        with self._lock:
            self._conn.close()
