"""Saving chat answers to the sessions store as they stream, and reading them back for display.

``AnswerRecorder`` runs inside a lane's worker thread with its own store connection. A store that
cannot be written (full disk, read-only folder) never stops the chat: the first failure is kept in
``failure`` for the UI to show once, and later writes are skipped.
"""

from __future__ import annotations

import time
from types import TracebackType

from pydantic import BaseModel, ConfigDict, JsonValue

from backends.chat import AnswerEnd, ChatParams
from backends.chat_stats import AnswerStats
from backends.errors import ServeDeckError
from backends.target_types import Target
from sessions import AnswerTiming, ChatSession, MessageRole, MessageStatus, SessionStore
from tui.context import AppContext

SAVE_INTERVAL_S = 0.25
TITLE_CHARS = 48
RACE_KEY = "race_id"
RACE_LANE_KEY = "race_lane"


class RaceSeat(BaseModel):
    """Which race a lane's chat belongs to, and its place from the left."""

    model_config = ConfigDict(frozen=True)

    race_id: str
    lane: int


def timing_from_stats(stats: AnswerStats) -> AnswerTiming:
    return AnswerTiming(
        ttft_ms=None if stats.ttft_s is None else stats.ttft_s * 1000.0,
        tpot_ms=None if stats.tpot_s is None else stats.tpot_s * 1000.0,
        e2e_ms=None if stats.e2e_s is None else stats.e2e_s * 1000.0,
        itl_ms=[gap * 1000.0 for gap in stats.itl_s],
        prompt_tokens=stats.prompt_tokens,
        output_tokens=stats.output_tokens,
        finish_reason=stats.finish_reason,
        server_timings=stats.server_timings,
    )


def stats_from_timing(timing: AnswerTiming, status: MessageStatus) -> AnswerStats:
    return AnswerStats(
        ttft_s=None if timing.ttft_ms is None else timing.ttft_ms / 1000.0,
        tpot_s=None if timing.tpot_ms is None else timing.tpot_ms / 1000.0,
        e2e_s=None if timing.e2e_ms is None else timing.e2e_ms / 1000.0,
        itl_s=[gap / 1000.0 for gap in timing.itl_ms],
        output_tokens=timing.output_tokens or 0,
        output_tokens_source="usage",
        prompt_tokens=timing.prompt_tokens,
        finish_reason=timing.finish_reason,
        partial=status is not MessageStatus.COMPLETE,
        server_timings=timing.server_timings,
    )


def answer_status(end: AnswerEnd) -> MessageStatus:
    """Complete when the server finished; partial when stopped or cut short after some text; else error."""
    if not end.partial and end.error is None:
        return MessageStatus.COMPLETE
    if end.stopped or end.text:
        return MessageStatus.PARTIAL
    return MessageStatus.ERROR


def session_params(params: ChatParams, race: RaceSeat | None) -> dict[str, JsonValue]:
    stored: dict[str, JsonValue] = {"temperature": params.temperature, "max_tokens": params.max_tokens}
    if params.extra_body:
        stored["extra_body"] = dict(params.extra_body)
    if race is not None:
        stored[RACE_KEY] = race.race_id
        stored[RACE_LANE_KEY] = race.lane
    return stored


def params_from_session(system_prompt: str, stored: dict[str, JsonValue]) -> ChatParams:
    """The parameters a chat was saved with; fields that do not fit fall back to the defaults."""
    defaults = ChatParams()
    temperature = stored.get("temperature")
    max_tokens = stored.get("max_tokens")
    extra = stored.get("extra_body")
    return ChatParams(
        system_prompt=system_prompt,
        temperature=float(temperature)
        if isinstance(temperature, int | float) and 0 <= temperature <= 2
        else defaults.temperature,
        max_tokens=max_tokens if isinstance(max_tokens, int) and max_tokens >= 1 else defaults.max_tokens,
        extra_body=dict(extra) if isinstance(extra, dict) else {},
    )


def chat_title(prompt: str, race: bool) -> str:
    line = " ".join(prompt.split())
    if len(line) > TITLE_CHARS:
        line = line[: TITLE_CHARS - 1] + "…"
    return f"race · {line}" if race else line


def race_group(store: SessionStore, session_id: str, search_limit: int) -> list[ChatSession]:
    """The chat and the other lanes of its race (same race id among the newest ``search_limit``)."""
    first = store.chats.load_chat(session_id)
    race_id = first.params.get(RACE_KEY)
    if not isinstance(race_id, str):
        return [first]
    group = [first]
    for summary in store.chats.list_chats(limit=search_limit):
        if summary.id == first.id:
            continue
        other = store.chats.load_chat(summary.id)
        if other.params.get(RACE_KEY) == race_id:
            group.append(other)
    return sorted(group, key=_race_lane)


def _race_lane(session: ChatSession) -> tuple[int, str]:
    lane = session.params.get(RACE_LANE_KEY)
    return (lane if isinstance(lane, int) else 99, session.created_at.isoformat())


class AnswerRecorder:
    """Writes one question and its streamed answer; a failure is remembered, never raised."""

    def __init__(self, ctx: AppContext) -> None:
        self._ctx = ctx
        self._store: SessionStore | None = None
        self.failure: str | None = None
        self.session_id: str | None = None
        self.created_session = False
        self._answer_id: int | None = None
        self._last_saved = 0.0

    def __enter__(self) -> AnswerRecorder:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None

    def _fail(self, err: ServeDeckError) -> None:
        if self.failure is None:
            self.failure = f"this chat is not being saved: {err}"

    def begin(
        self,
        target: Target,
        session_id: str | None,
        prompt: str,
        params: ChatParams,
        race: RaceSeat | None,
    ) -> None:
        """Open the store, create the chat if new (else save its current settings), store the question."""
        try:
            self._store = self._ctx.open_store()
            chats = self._store.chats
            stored_params = session_params(params, race)
            if session_id is None:
                session = chats.create_chat(
                    target,
                    system_prompt=params.system_prompt,
                    params=stored_params,
                    title=chat_title(prompt, race is not None),
                )
                session_id = session.id
                self.created_session = True
            else:
                chats.update_chat(session_id, system_prompt=params.system_prompt, params=stored_params)
            self.session_id = session_id
            chats.append_message(session_id, MessageRole.USER, prompt)
            self._answer_id = chats.start_answer(session_id)
            self._last_saved = time.monotonic()
        except ServeDeckError as err:
            self._fail(err)

    def update(self, text: str) -> None:
        """Save the text so far, at most every ``SAVE_INTERVAL_S``."""
        if self._store is None or self._answer_id is None or self.failure is not None:
            return
        now = time.monotonic()
        if now - self._last_saved < SAVE_INTERVAL_S:
            return
        self._last_saved = now
        try:
            self._store.chats.update_answer(self._answer_id, text)
        except ServeDeckError as err:
            self._fail(err)

    def finish(self, end: AnswerEnd) -> MessageStatus:
        status = answer_status(end)
        if self._store is None or self._answer_id is None or self.failure is not None:
            return status
        try:
            self._store.chats.finish_answer(
                self._answer_id,
                end.text,
                status=status,
                timing=timing_from_stats(end.stats),
                error=end.error,
            )
        except ServeDeckError as err:
            self._fail(err)
        return status
