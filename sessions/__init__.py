"""ServeDeck's memory: chats and bench runs in one SQLite file that survives crashes.

Start with ``SessionStore.open(data_dir=None)``; ``store.chats`` and ``store.runs`` hold the APIs,
``store.runs.writer()`` writes a run as it happens.
"""

from sessions.chats import AnswerTiming, ChatMessage, ChatSession, ChatSummary, MessageRole, MessageStatus
from sessions.errors import SessionStoreError
from sessions.run_models import LevelSummary, RunBundle, RunDetail, RunFilter, RunSummary
from sessions.run_writer import RunWriter
from sessions.store import SessionStore

__all__ = [
    "AnswerTiming",
    "ChatMessage",
    "ChatSession",
    "ChatSummary",
    "LevelSummary",
    "MessageRole",
    "MessageStatus",
    "RunBundle",
    "RunDetail",
    "RunFilter",
    "RunSummary",
    "RunWriter",
    "SessionStore",
    "SessionStoreError",
]
