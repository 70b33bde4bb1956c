"""The error types the sessions store raises for anything a user can meet or fix."""

from pathlib import Path

from backends.errors import ServeDeckError


class SessionStoreError(ServeDeckError):
    """The sessions database cannot be opened, read or written; the message says what to do."""


class StoreBusyError(SessionStoreError):
    """Another process held the write lock for longer than the busy timeout."""


class StoreDamagedError(SessionStoreError):
    """The database file is damaged; ``copy`` is the quarantined copy kept next to it."""

    def __init__(self, message: str, path: Path, copy: Path | None) -> None:
        super().__init__(message)
        self.path = path
        self.copy = copy
