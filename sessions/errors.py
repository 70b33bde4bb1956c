"""The one error type the sessions store raises for anything a user can meet or fix."""

from backends.errors import ServeDeckError


class SessionStoreError(ServeDeckError):
    """The sessions database cannot be opened, read or written; the message says what to do."""
