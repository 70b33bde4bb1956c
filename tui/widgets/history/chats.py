"""History's chats table: saved chat sessions, newest first (the Chat view resumes them)."""

from __future__ import annotations

from collections.abc import Sequence

from textual.widgets import DataTable

from sessions.chats import ChatSummary
from tui.widgets.history.runs import local_time
from tui.widgets.table_cursor import cursor_row_key
from tui.widgets.table_filter import filter_matches

COLUMNS: tuple[tuple[str, str], ...] = (
    ("title", "title"),
    ("target", "target"),
    ("model", "model"),
    ("messages", "messages"),
    ("updated", "updated"),
)


def chat_matches(chat: ChatSummary, text: str) -> bool:
    return filter_matches(text, [chat.id, chat.title, chat.target_name, chat.model, chat.base_url])


class ChatsTable(DataTable[str]):
    DEFAULT_CSS = """
    ChatsTable {
        height: 1fr;
    }
    """

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id, cursor_type="row", zebra_stripes=True)

    def on_mount(self) -> None:
        for key, title in COLUMNS:
            self.add_column(title, key=key)

    def show(self, chats: Sequence[ChatSummary], filter_text: str) -> None:
        self.clear()
        for chat in chats:
            if chat_matches(chat, filter_text):
                self.add_row(
                    chat.title,
                    chat.target_name,
                    chat.model,
                    str(chat.message_count),
                    local_time(chat.updated_at),
                    key=chat.id,
                )

    @property
    def current_chat_id(self) -> str | None:
        return cursor_row_key(self)
