"""Chat sessions: messages and the timing of every answer.

An answer is written while it streams: ``start_answer`` stores an empty reply marked partial,
``update_answer`` replaces its text as tokens arrive (the caller decides how often), and
``finish_answer`` marks it complete or error. If the process dies or the user stops it, the
reply is already there, marked partial.
"""

from __future__ import annotations

import sqlite3
import uuid
from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, Field, JsonValue
from pydantic_core import from_json

from backends.target_types import Target
from sessions.database import Database
from sessions.errors import SessionStoreError
from sessions.jsoncodec import dump_model, dump_plain
from sessions.secrets_guard import check_params, check_target
from sessions.timestamps import parse_stored, stored, utc_now


class MessageRole(StrEnum):
    SYSTEM = "system"
    USER = "user"
    ASSISTANT = "assistant"


class MessageStatus(StrEnum):
    COMPLETE = "complete"
    PARTIAL = "partial"
    ERROR = "error"


class AnswerTiming(BaseModel):
    """What the user saw of one answer's speed; times in milliseconds."""

    ttft_ms: float | None = None
    tpot_ms: float | None = None
    e2e_ms: float | None = None
    itl_ms: list[float] = Field(default_factory=list)
    prompt_tokens: int | None = None
    output_tokens: int | None = None
    finish_reason: str | None = None
    server_timings: dict[str, float] | None = None

    @property
    def tokens_per_s(self) -> float | None:
        if not self.output_tokens or not self.e2e_ms:
            return None
        return self.output_tokens / (self.e2e_ms / 1000.0)


class ChatMessage(BaseModel):
    id: int
    session_id: str
    role: MessageRole
    text: str
    status: MessageStatus
    created_at: datetime
    updated_at: datetime
    error: str | None = None
    timing: AnswerTiming | None = None


class ChatSummary(BaseModel):
    id: str
    title: str
    target_name: str
    base_url: str
    model: str
    created_at: datetime
    updated_at: datetime
    message_count: int


class ChatSession(BaseModel):
    id: str
    title: str
    target: Target
    system_prompt: str
    params: dict[str, JsonValue]
    created_at: datetime
    updated_at: datetime
    messages: list[ChatMessage] = Field(default_factory=list)


_MESSAGE_COLUMNS = (
    "m.id, m.session_id, m.role, m.text, m.status, m.created_at, m.updated_at, m.error, "
    "t.message_id, t.ttft_ms, t.tpot_ms, t.e2e_ms, t.itl_ms_json, t.prompt_tokens, t.output_tokens, "
    "t.finish_reason, t.server_timings_json"
)
_MESSAGE_FROM = "chat_messages m LEFT JOIN answer_timings t ON t.message_id = m.id"


def _message_from_row(row: tuple[Any, ...]) -> ChatMessage:
    timing = None
    if row[8] is not None:
        timing = AnswerTiming(
            ttft_ms=row[9],
            tpot_ms=row[10],
            e2e_ms=row[11],
            itl_ms=from_json(row[12]),
            prompt_tokens=row[13],
            output_tokens=row[14],
            finish_reason=row[15],
            server_timings=None if row[16] is None else from_json(row[16]),
        )
    return ChatMessage(
        id=row[0],
        session_id=row[1],
        role=MessageRole(row[2]),
        text=row[3],
        status=MessageStatus(row[4]),
        created_at=parse_stored(row[5]),
        updated_at=parse_stored(row[6] or row[5]),
        error=row[7],
        timing=timing,
    )


class ChatStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    def create_chat(
        self,
        target: Target,
        *,
        system_prompt: str = "",
        params: dict[str, JsonValue] | None = None,
        title: str | None = None,
    ) -> ChatSession:
        check_target(target)
        params = dict(params or {})
        check_params(params)
        now = utc_now()
        session = ChatSession(
            id=uuid.uuid4().hex,
            title=title or f"{target.model} on {target.name}",
            target=target,
            system_prompt=system_prompt,
            params=params,
            created_at=now,
            updated_at=now,
        )
        with self._db.write() as conn:
            conn.execute(
                "INSERT INTO chat_sessions (id, title, target_json, system_prompt, params_json, created_at,"
                " updated_at, target_name, base_url, model) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    session.id,
                    session.title,
                    dump_model(target),
                    system_prompt,
                    dump_plain(params),
                    stored(now),
                    stored(now),
                    target.name,
                    target.base_url,
                    target.model,
                ),
            )
        return session

    @staticmethod
    def _require_session(conn: sqlite3.Connection, session_id: str) -> None:
        if conn.execute("SELECT 1 FROM chat_sessions WHERE id = ?", (session_id,)).fetchone() is None:
            raise SessionStoreError(f"no chat session {session_id!r}; list them with the chat history view")

    @staticmethod
    def _touch(conn: sqlite3.Connection, session_id: str, now: str) -> None:
        conn.execute("UPDATE chat_sessions SET updated_at = ? WHERE id = ?", (now, session_id))

    def _fetch_message(self, conn: sqlite3.Connection, message_id: int) -> ChatMessage:
        row = conn.execute(
            f"SELECT {_MESSAGE_COLUMNS} FROM {_MESSAGE_FROM} WHERE m.id = ?", (message_id,)
        ).fetchone()
        if row is None:
            raise SessionStoreError(f"no chat message {message_id}; its chat may have been deleted")
        return _message_from_row(row)

    def append_message(
        self,
        session_id: str,
        role: MessageRole,
        text: str,
        *,
        status: MessageStatus = MessageStatus.COMPLETE,
    ) -> ChatMessage:
        now = stored(utc_now())
        with self._db.write() as conn:
            self._require_session(conn, session_id)
            cursor = conn.execute(
                "INSERT INTO chat_messages (session_id, role, text, created_at, updated_at, status)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (session_id, role.value, text, now, now, status.value),
            )
            self._touch(conn, session_id, now)
            message_id = cursor.lastrowid
            assert message_id is not None
            return self._fetch_message(conn, message_id)

    def start_answer(self, session_id: str) -> int:
        """Store an empty assistant reply, marked partial until ``finish_answer``; returns its id."""
        return self.append_message(session_id, MessageRole.ASSISTANT, "", status=MessageStatus.PARTIAL).id

    def update_answer(self, message_id: int, text: str) -> None:
        """Replace the streamed text so far; the reply stays partial."""
        now = stored(utc_now())
        with self._db.write() as conn:
            cursor = conn.execute(
                "UPDATE chat_messages SET text = ?, updated_at = ? WHERE id = ?", (text, now, message_id)
            )
            if cursor.rowcount == 0:
                raise SessionStoreError(f"no chat message {message_id}; its chat may have been deleted")

    def finish_answer(
        self,
        message_id: int,
        text: str,
        *,
        status: MessageStatus = MessageStatus.COMPLETE,
        timing: AnswerTiming | None = None,
        error: str | None = None,
    ) -> ChatMessage:
        """Final text and timing. Use ``PARTIAL`` for a reply cut short by a stop key or ctrl-c."""
        now = stored(utc_now())
        with self._db.write() as conn:
            cursor = conn.execute(
                "UPDATE chat_messages SET text = ?, status = ?, error = ?, updated_at = ? WHERE id = ?",
                (text, status.value, error, now, message_id),
            )
            if cursor.rowcount == 0:
                raise SessionStoreError(f"no chat message {message_id}; its chat may have been deleted")
            if timing is not None:
                conn.execute(
                    "INSERT OR REPLACE INTO answer_timings (message_id, ttft_ms, tpot_ms, e2e_ms,"
                    " itl_ms_json, prompt_tokens, output_tokens, finish_reason, server_timings_json)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        message_id,
                        timing.ttft_ms,
                        timing.tpot_ms,
                        timing.e2e_ms,
                        dump_plain(timing.itl_ms),
                        timing.prompt_tokens,
                        timing.output_tokens,
                        timing.finish_reason,
                        None if timing.server_timings is None else dump_plain(timing.server_timings),
                    ),
                )
            message = self._fetch_message(conn, message_id)
            self._touch(conn, message.session_id, now)
            return message

    def list_chats(self, limit: int | None = None) -> list[ChatSummary]:
        query = (
            "SELECT s.id, s.title, s.target_name, s.base_url, s.model, s.created_at, s.updated_at,"
            " (SELECT COUNT(*) FROM chat_messages m WHERE m.session_id = s.id)"
            " FROM chat_sessions s ORDER BY s.updated_at DESC, s.id"
        )
        params: tuple[int, ...] = ()
        if limit is not None:
            query += " LIMIT ?"
            params = (limit,)
        with self._db.read() as conn:
            rows = conn.execute(query, params).fetchall()
        return [
            ChatSummary(
                id=row[0],
                title=row[1],
                target_name=row[2],
                base_url=row[3],
                model=row[4],
                created_at=parse_stored(row[5]),
                updated_at=parse_stored(row[6]),
                message_count=row[7],
            )
            for row in rows
        ]

    def load_chat(self, session_id: str) -> ChatSession:
        """Everything needed to resume a chat, messages in order."""
        with self._db.read() as conn:
            row = conn.execute(
                "SELECT id, title, target_json, system_prompt, params_json, created_at, updated_at"
                " FROM chat_sessions WHERE id = ?",
                (session_id,),
            ).fetchone()
            if row is None:
                raise SessionStoreError(f"no chat session {session_id!r}; it may have been deleted")
            messages = conn.execute(
                f"SELECT {_MESSAGE_COLUMNS} FROM {_MESSAGE_FROM} WHERE m.session_id = ? ORDER BY m.id",
                (session_id,),
            ).fetchall()
        return ChatSession(
            id=row[0],
            title=row[1],
            target=Target.model_validate_json(row[2]),
            system_prompt=row[3],
            params=from_json(row[4]),
            created_at=parse_stored(row[5]),
            updated_at=parse_stored(row[6]),
            messages=[_message_from_row(message) for message in messages],
        )

    def update_chat(
        self,
        session_id: str,
        *,
        title: str | None = None,
        system_prompt: str | None = None,
        params: dict[str, JsonValue] | None = None,
    ) -> None:
        """Rename a chat or change its system prompt or sampling parameters."""
        if params is not None:
            check_params(params)
        now = stored(utc_now())
        with self._db.write() as conn:
            self._require_session(conn, session_id)
            if title is not None:
                conn.execute("UPDATE chat_sessions SET title = ? WHERE id = ?", (title, session_id))
            if system_prompt is not None:
                conn.execute(
                    "UPDATE chat_sessions SET system_prompt = ? WHERE id = ?", (system_prompt, session_id)
                )
            if params is not None:
                conn.execute(
                    "UPDATE chat_sessions SET params_json = ? WHERE id = ?", (dump_plain(params), session_id)
                )
            self._touch(conn, session_id, now)

    def rename_chat(self, session_id: str, title: str) -> None:
        self.update_chat(session_id, title=title)

    def delete_chat(self, session_id: str) -> None:
        with self._db.write() as conn:
            self._require_session(conn, session_id)
            conn.execute("DELETE FROM chat_sessions WHERE id = ?", (session_id,))
