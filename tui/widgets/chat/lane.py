"""One target's side of a chat: its messages, and the worker that streams its answers.

The answer streams in a thread worker (its own event loop, its own store connection) that never
touches widgets: it posts ``AnswerProgress`` (coalesced, at most ~20 per second, with the running
stats the stream's ``TokenDelta`` carries) and one ``AnswerDone``; the lane updates the screen from
those on the UI thread. A race is two or three lanes side by side, each sending the same prompt at
once.
"""

from __future__ import annotations

import asyncio
import threading
import time

from textual import on
from textual.app import ComposeResult
from textual.containers import Vertical, VerticalScroll
from textual.message import Message
from textual.widgets import Static

from backends.chat import (
    AnswerEnd,
    ChatError,
    ChatParams,
    ChatStream,
    ChatTurn,
    TokenDelta,
    is_simulated,
    target_note,
)
from backends.chat_stats import AnswerStats
from backends.target_types import Target
from sessions import ChatSession, MessageRole, MessageStatus
from tui.context import AppContext
from tui.services.chat_records import AnswerRecorder, RaceSeat, stats_from_timing
from tui.widgets.chat.message import AnswerView, UserMessage

PROGRESS_INTERVAL_S = 0.05
SAVE_ON_EXIT_S = 3.0
EMPTY_HINT = "Type a prompt below and press enter; TTFT, tokens/s, TPOT and ITL appear under each answer."


def answer_state(status: MessageStatus, stopped: bool) -> str:
    if status is MessageStatus.COMPLETE:
        return "complete"
    if status is MessageStatus.ERROR:
        return "error"
    return "stopped" if stopped else "partial"


def _visible_stats(stats: AnswerStats) -> AnswerStats | None:
    """No stats line for an answer that never got a token (a refused or unreachable request)."""
    return stats if stats.output_tokens or stats.ttft_s is not None else None


class ChatLane(Vertical):
    DEFAULT_CSS = """
    ChatLane { width: 1fr; height: 1fr; border: round $panel; padding: 0 0; }
    ChatLane:focus-within { border: round $accent; }
    ChatLane > .lane-title { height: 1; width: 1fr; padding: 0 1; text-style: bold; background: $panel; }
    ChatLane > .lane-note { height: auto; width: 1fr; padding: 0 1; color: $warning; background: $panel; }
    ChatLane > VerticalScroll { height: 1fr; width: 1fr; padding: 0 1; scrollbar-size-vertical: 1; }
    ChatLane .lane-hint { color: $text-muted; margin: 1 0; }
    """

    class AnswerProgress(Message):
        """Posted by the worker; a newer one replaces an unprocessed older one."""

        def __init__(self, lane: ChatLane, text: str, stats: AnswerStats) -> None:
            super().__init__()
            self.lane = lane
            self.text = text
            self.stats = stats

        def can_replace(self, message: Message) -> bool:
            return isinstance(message, ChatLane.AnswerProgress) and message.lane is self.lane

    class AnswerDone(Message):
        def __init__(self, end: AnswerEnd, status: MessageStatus, save_failure: str | None) -> None:
            super().__init__()
            self.end = end
            self.status = status
            self.save_failure = save_failure

    class SessionSaved(Message):
        def __init__(self, session_id: str) -> None:
            super().__init__()
            self.session_id = session_id

    class Finished(Message):
        """Bubbles to the screen when an answer ends (complete, stopped, partial or error)."""

        def __init__(self, lane: ChatLane, state: str, error: str | None, save_failure: str | None) -> None:
            super().__init__()
            self.lane = lane
            self.state = state
            self.error = error
            self.save_failure = save_failure

    def __init__(self, target: Target, ctx: AppContext, session: ChatSession | None = None) -> None:
        super().__init__()
        self.target = target
        self._ctx = ctx
        self._session = session
        self.session_id: str | None = None if session is None else session.id
        self.turns: list[ChatTurn] = []
        self._stream: ChatStream | None = None
        self._answer: AnswerView | None = None
        self._worker_running = threading.Event()  # set from send() until the worker has saved the answer
        if session is not None:
            for message in session.messages:
                if message.text and message.role is MessageRole.USER:
                    self.turns.append(ChatTurn(role="user", content=message.text))
                elif message.text and message.role is MessageRole.ASSISTANT:
                    self.turns.append(ChatTurn(role="assistant", content=message.text))

    @property
    def streaming(self) -> bool:
        return self._stream is not None

    @property
    def answers(self) -> list[AnswerView]:
        return list(self.query(AnswerView))

    def compose(self) -> ComposeResult:
        yield Static(f"{self.target.name} · {self.target.model}", classes="lane-title", markup=False)
        note = target_note(self.target)
        if note is not None:
            yield Static(note, classes="lane-note", markup=False)
        with VerticalScroll():
            if self._session is None or not self._session.messages:
                yield Static(EMPTY_HINT, classes="lane-hint", markup=False)
            else:
                yield from self._stored_views(self._session)

    @property
    def last_answer(self) -> AnswerView | None:
        found = self.answers
        return found[-1] if found else None

    @staticmethod
    def _stored_views(session: ChatSession) -> list[UserMessage | AnswerView]:
        simulated = is_simulated(session.target)
        views: list[UserMessage | AnswerView] = []
        for message in session.messages:
            if message.role is MessageRole.USER:
                views.append(UserMessage(message.text))
            elif message.role is MessageRole.ASSISTANT:
                stats = None if message.timing is None else stats_from_timing(message.timing, message.status)
                state = answer_state(message.status, stopped=message.error is None)
                views.append(
                    AnswerView(
                        text=message.text,
                        stats=None if stats is None else _visible_stats(stats),
                        state=state,
                        error=message.error,
                        simulated=simulated,
                    )
                )
        return views

    def on_mount(self) -> None:
        if self._session is not None and self._session.messages:
            self.query_one(VerticalScroll).anchor()  # keep the newest answer in view

    async def on_unmount(self) -> None:
        """Stop a streaming answer and give its worker a moment to save it as partial."""
        self.stop()
        deadline = time.monotonic() + SAVE_ON_EXIT_S
        while self._worker_running.is_set() and time.monotonic() < deadline:
            await asyncio.sleep(0.01)

    # ---- sending ---------------------------------------------------------------------------------

    def send(self, prompt: str, params: ChatParams, race: RaceSeat | None) -> None:
        """Start streaming an answer to ``prompt``; raises ``ChatError`` if it cannot be sent."""
        turns = [*self.turns, ChatTurn(role="user", content=prompt)]
        stream = ChatStream(self.target, turns, params)
        self.turns = turns
        self._stream = stream
        scroll = self.query_one(VerticalScroll)
        for hint in scroll.query(".lane-hint"):
            hint.remove()
        self._answer = AnswerView(simulated=is_simulated(self.target))
        scroll.mount_all([UserMessage(prompt), self._answer])
        scroll.anchor()
        self._worker_running.set()
        self.run_worker(
            self._stream_answer(stream, prompt, race, self.session_id),
            thread=True,
            group=f"chat-lane-{id(self)}",
            name=f"chat with {self.target.name}",
            exit_on_error=False,
        )

    def regenerate(self, params: ChatParams, race: RaceSeat | None) -> str:
        """Ask the last prompt again, without the answer it got; returns the prompt."""
        last_user = max((i for i, turn in enumerate(self.turns) if turn.role == "user"), default=None)
        if last_user is None:
            raise ChatError(f"{self.target.name} has no prompt to regenerate yet; send one first")
        prompt = self.turns[last_user].content
        history = self.turns
        self.turns = self.turns[:last_user]
        try:
            self.send(prompt, params, race)
        except ChatError:
            self.turns = history
            raise
        return prompt

    def stop(self) -> None:
        if self._stream is not None:
            self._stream.stop()

    async def _stream_answer(
        self, stream: ChatStream, prompt: str, race: RaceSeat | None, session_id: str | None
    ) -> None:
        """Runs in a worker thread: stream, save as it goes, post progress and the end."""
        try:
            await self._stream_and_save(stream, prompt, race, session_id)
        finally:
            self._worker_running.clear()

    async def _stream_and_save(
        self, stream: ChatStream, prompt: str, race: RaceSeat | None, session_id: str | None
    ) -> None:
        pieces: list[str] = []
        last: TokenDelta | None = None  # its stats are the answer's timing so far
        last_post = 0.0
        with AnswerRecorder(self._ctx) as recorder:
            recorder.begin(self.target, session_id, prompt, stream.params, race)
            if recorder.created_session and recorder.session_id is not None:
                self.post_message(self.SessionSaved(recorder.session_id))
            end: AnswerEnd | None = None
            try:
                async for event in stream.events():
                    if isinstance(event, TokenDelta):
                        pieces.append(event.text)
                        last = event
                        now = time.monotonic()
                        if event.index == 0 or now - last_post >= PROGRESS_INTERVAL_S:
                            last_post = now
                            text = "".join(pieces)
                            self.post_message(self.AnswerProgress(self, text, event.stats))
                            recorder.update(text)
                    else:
                        end = event
            except Exception as exc:  # a bug must not leave the lane stuck "streaming"
                end = AnswerEnd(
                    text="".join(pieces),
                    stats=AnswerStats() if last is None else last.stats,
                    error=f"the chat failed unexpectedly ({type(exc).__name__}: {exc}); "
                    "the partial answer is kept, please report this",
                )
            if end is None:
                stats = AnswerStats() if last is None else last.stats
                end = AnswerEnd(text="".join(pieces), stats=stats, stopped=True)
            status = recorder.finish(end)
            self.post_message(self.AnswerDone(end, status, recorder.failure))

    # ---- results from the worker (UI thread) -----------------------------------------------------

    @on(AnswerProgress)
    def _progress(self, message: AnswerProgress) -> None:
        message.stop()
        if self._answer is not None and self._stream is not None:
            self._answer.show_progress(message.text, message.stats)

    @on(SessionSaved)
    def _session_saved(self, message: SessionSaved) -> None:
        message.stop()
        self.session_id = message.session_id

    @on(AnswerDone)
    def _done(self, message: AnswerDone) -> None:
        message.stop()
        end = message.end
        state = answer_state(message.status, end.stopped)
        if self._answer is not None:
            self._answer.show_final(end.text, _visible_stats(end.stats), state, end.error)
        if end.text:
            self.turns.append(ChatTurn(role="assistant", content=end.text))
        self._stream = None
        self._answer = None
        self.post_message(self.Finished(self, state, end.error, message.save_failure))
