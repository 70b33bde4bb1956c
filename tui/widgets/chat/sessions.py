"""The saved chats in the Chat view's sidebar: enter resumes, F2 renames, ctrl+d deletes."""

from __future__ import annotations

from typing import ClassVar

from rich.text import Text
from textual import on
from textual.binding import Binding, BindingType
from textual.message import Message
from textual.widgets import OptionList
from textual.widgets.option_list import Option

from sessions import ChatSummary

LABEL_WIDTH = 29  # the sidebar is 36 columns: borders, padding and the "▸ " mark take the rest


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def chat_label(chat: ChatSummary, current: bool) -> Text:
    """Two lines cut to the sidebar's width: the title, then the target and how many messages."""
    label = Text("▸ " if current else "  ", style="bold")
    label.append(_cut(chat.title, LABEL_WIDTH), style="bold" if current else "")
    label.append("\n  " + _cut(f"{chat.target_name} · {chat.message_count} msgs", LABEL_WIDTH), style="dim")
    return label


class ChatSessionList(OptionList):
    """Saved chats, newest first. Posts requests; the screen does the work in workers."""

    DEFAULT_CSS = """
    ChatSessionList { height: 1fr; border: round $panel; }
    ChatSessionList:focus { border: round $accent; }
    """

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("f2", "rename", "rename chat", id="chat.sessions.rename"),
        Binding("ctrl+d,delete", "delete", "delete chat", id="chat.sessions.delete"),
    ]

    class ResumeRequested(Message):
        def __init__(self, session_id: str) -> None:
            super().__init__()
            self.session_id = session_id

    class RenameRequested(Message):
        def __init__(self, session_id: str) -> None:
            super().__init__()
            self.session_id = session_id

    class DeleteRequested(Message):
        def __init__(self, session_id: str) -> None:
            super().__init__()
            self.session_id = session_id

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.border_title = "chats"
        self.chats: list[ChatSummary] = []

    def show(self, chats: list[ChatSummary], current: set[str]) -> None:
        highlighted = self.highlighted_session_id
        self.chats = chats
        self.clear_options()
        self.add_options([Option(chat_label(chat, chat.id in current), id=chat.id) for chat in chats])
        ids = [chat.id for chat in chats]
        if highlighted in ids:
            self.highlighted = ids.index(highlighted)

    @property
    def highlighted_session_id(self) -> str | None:
        if self.highlighted is None or not 0 <= self.highlighted < self.option_count:
            return None
        return self.get_option_at_index(self.highlighted).id

    @on(OptionList.OptionSelected)
    def _selected(self, event: OptionList.OptionSelected) -> None:
        event.stop()
        if event.option.id is not None:
            self.post_message(self.ResumeRequested(event.option.id))

    def action_rename(self) -> None:
        session_id = self.highlighted_session_id
        if session_id is not None:
            self.post_message(self.RenameRequested(session_id))

    def action_delete(self) -> None:
        session_id = self.highlighted_session_id
        if session_id is not None:
            self.post_message(self.DeleteRequested(session_id))
