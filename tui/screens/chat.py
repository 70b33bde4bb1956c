"""Chat view: stream answers with live latency stats; race two or three targets side by side.

The screen is thin. Each ``ChatLane`` streams its answers in its own thread worker; the saved-chat
list is read, resumed, renamed and deleted in thread workers that post results back. The screen
owns which lanes exist (one per ticked target), the shared prompt box and the parameters.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, ClassVar

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.screen import Screen
from textual.widgets import Button, Header, Input, Static

from backends.chat_stats import AnswerStats
from backends.errors import ServeDeckError
from backends.target_types import Target
from sessions import ChatSession, ChatSummary
from tui.messages import TargetsChanged
from tui.services.chat_records import RACE_KEY, RaceSeat, params_from_session, race_group
from tui.shell import app_context
from tui.widgets.chat.dialogs import ConfirmDeleteScreen, RenameChatScreen
from tui.widgets.chat.lane import ChatLane
from tui.widgets.chat.message import AnswerView
from tui.widgets.chat.sessions import ChatSessionList
from tui.widgets.chat.settings import ChatSettings
from tui.widgets.chat.stats import format_ms
from tui.widgets.footer import KeysFooter

if TYPE_CHECKING:
    from tui.context import AppContext

CHAT_LIST_LIMIT = 200
NO_TARGET_HINT = (
    "No target picked. Tick one in the list on the left (space), two or three to race them. "
    "None there? Start the local engine or add a URL in Deployments (press 1)."
)


def race_summary(entries: list[tuple[str, AnswerView | None]]) -> str | None:
    """One line after a race: who gave the first token and who finished first, TTFT and TPOT side by side."""
    timed: list[tuple[str, AnswerStats]] = [
        (name, view.stats) for name, view in entries if view is not None and view.stats is not None
    ]
    if len(entries) < 2 or len(timed) < 2:
        return None
    parts = []
    first = [(stats.ttft_s, name) for name, stats in timed if stats.ttft_s is not None]
    if first:
        parts.append(f"first token: {min(first)[1]}")
    done = [(stats.e2e_s, name) for name, stats in timed if stats.e2e_s is not None and not stats.partial]
    if done:
        parts.append(f"finished first: {min(done)[1]}")
    parts.append("TTFT " + " | ".join(f"{name} {format_ms(stats.ttft_s)}" for name, stats in timed))
    parts.append("TPOT " + " | ".join(f"{name} {format_ms(stats.tpot_s)}" for name, stats in timed))
    return "race · " + " · ".join(parts)


class ChatScreen(Screen[None]):
    TITLE = "Chat"

    DEFAULT_CSS = """
    ChatScreen #chat-body { height: 1fr; }
    ChatScreen #chat-sidebar { width: 36; height: 1fr; }
    ChatScreen #chat-sidebar.-hidden { display: none; }
    ChatScreen #chat-main { width: 1fr; height: 1fr; }
    ChatScreen #chat-lanes { height: 1fr; }
    ChatScreen #chat-no-target { height: 1fr; padding: 1 2; color: $text-muted; display: none; }
    ChatScreen #chat-no-target.-shown { display: block; }
    ChatScreen #chat-race-summary { height: auto; padding: 0 1; background: $panel; display: none; }
    ChatScreen #chat-race-summary.-shown { display: block; }
    ChatScreen #chat-prompt-row { height: 3; }
    ChatScreen #chat-prompt { width: 1fr; }
    ChatScreen #chat-prompt-row Button { min-width: 8; margin-left: 1; }
    """

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding(
            "escape", "stop", "stop", tooltip="stop the answer (a second esc leaves Chat)", id="chat.stop"
        ),
        Binding("slash", "focus_prompt", "prompt", key_display="/", id="chat.prompt"),
        Binding("ctrl+t", "race", "race mode", tooltip="race 2-3 targets on each prompt", id="chat.race"),
        Binding("ctrl+y", "copy_answer", "copy answer", id="chat.copy"),
        Binding("ctrl+g", "regenerate", "regenerate", id="chat.regenerate"),
        Binding("ctrl+n", "new_chat", "new chat", id="chat.new"),
        Binding("ctrl+r", "rename", "rename", id="chat.rename"),
        Binding("ctrl+d", "delete", "delete chat", show=False, id="chat.delete"),
        Binding("ctrl+l", "focus_chats", "chats", id="chat.sessions"),
        Binding("ctrl+b", "toggle_sidebar", "sidebar", id="chat.sidebar"),
    ]

    class ChatsListed(Message):
        def __init__(self, request: int, chats: list[ChatSummary], error: str | None = None) -> None:
            super().__init__()
            self.request = request
            self.chats = chats
            self.error = error

    class ChatLoaded(Message):
        def __init__(self, sessions: list[ChatSession]) -> None:
            super().__init__()
            self.sessions = sessions

    class StoreChanged(Message):
        """A rename or delete finished (``removed`` lists deleted chat ids); ``error`` if it failed."""

        def __init__(self, removed: list[str], error: str | None = None) -> None:
            super().__init__()
            self.removed = removed
            self.error = error

    def __init__(self) -> None:
        super().__init__()
        self._race_id: str | None = None
        self._list_request = 0
        self._known: dict[str, Target] = {}  # targets of resumed chats that the app no longer lists

    # ---- layout ----------------------------------------------------------------------------------

    def compose(self) -> ComposeResult:
        yield Header()
        with Horizontal(id="chat-body"):
            with Vertical(id="chat-sidebar"):
                yield ChatSessionList(id="chat-sessions")
                yield ChatSettings(id="chat-settings")
            with Vertical(id="chat-main"):
                yield Horizontal(id="chat-lanes")
                yield Static(NO_TARGET_HINT, id="chat-no-target", markup=False)
                yield Static("", id="chat-race-summary", markup=False)
                with Horizontal(id="chat-prompt-row"):
                    yield Input(placeholder="Ask something, then press enter", id="chat-prompt")
                    yield Button("Send", id="chat-send", variant="primary")
                    yield Button("Stop", id="chat-stop", variant="error", disabled=True)
        yield KeysFooter()

    @property
    def ctx(self) -> AppContext:
        return app_context(self)

    @property
    def lanes(self) -> list[ChatLane]:
        return list(self.query_one("#chat-lanes", Horizontal).query_children(ChatLane))

    @property
    def settings(self) -> ChatSettings:
        return self.query_one(ChatSettings)

    @property
    def streaming(self) -> bool:
        return any(lane.streaming for lane in self.lanes)

    async def on_mount(self) -> None:
        ctx = self.ctx
        first = ctx.selected_target or (ctx.targets[0].name if ctx.targets else None)
        picked = [first] if first is not None else []
        self.settings.show_targets(self._listed_targets(), picked)
        await self._arrange_lanes(self.settings.picked_targets())
        self.query_one("#chat-prompt", Input).focus()
        self.load_chats()

    def _listed_targets(self) -> list[Target]:
        listed = {target.name: target for target in self.ctx.targets}
        for lane in self.lanes:
            listed.setdefault(lane.target.name, lane.target)
        for name, target in self._known.items():
            listed.setdefault(name, target)
        return list(listed.values())

    def _target(self, name: str) -> Target | None:
        return self.ctx.target(name) or self._known.get(name)

    async def _arrange_lanes(self, names: list[str], sessions: list[ChatSession] | None = None) -> None:
        """Make the lanes match ``names`` in order. Lanes for the same targets keep their chat unless
        ``sessions`` is given: then every lane is rebuilt, from its saved chat if there is one."""
        container = self.query_one("#chat-lanes", Horizontal)
        if sessions is not None:
            await container.remove_children()
        by_session = {session.target.name: session for session in sessions or []}
        current = {lane.target.name: lane for lane in self.lanes}
        for name, lane in current.items():
            if name not in names:
                await lane.remove()
        for name in names:
            if name in current:
                continue
            session = by_session.get(name)
            target = self._target(name) or (session.target if session is not None else None)
            if target is not None:
                current[name] = ChatLane(target, self.ctx, session)
                await container.mount(current[name])
        for index, name in enumerate(n for n in names if n in current):
            lane = current[name]
            children = list(container.children)
            if children.index(lane) != index:
                container.move_child(lane, before=children[index])
        self.query_one("#chat-no-target").set_class(not self.lanes, "-shown")
        self._refresh_chat_marks()

    # ---- sending and stopping -------------------------------------------------------------------

    @on(Input.Submitted, "#chat-prompt")
    @on(Button.Pressed, "#chat-send")
    def _send(self) -> None:
        prompt_box = self.query_one("#chat-prompt", Input)
        prompt = prompt_box.value.strip()
        if not prompt:
            return
        if self.streaming:
            self.notify(
                "an answer is still streaming; wait for it or press esc to stop it", severity="warning"
            )
            return
        lanes = self.lanes
        if not lanes:
            self.notify(NO_TARGET_HINT, severity="warning")
            return
        try:
            params = self.settings.read_params()
        except ServeDeckError as err:
            self.notify(str(err), severity="error", title="parameters")
            return
        if self._start_answers(lambda lane, race: lane.send(prompt, params, race)):
            prompt_box.value = ""

    def _start_answers(self, start: Callable[[ChatLane, RaceSeat | None], object]) -> int:
        """Start an answer in every lane (a race when there are several); returns how many started."""
        lanes = self.lanes
        started = 0
        self.query_one("#chat-race-summary").remove_class("-shown")
        for index, lane in enumerate(lanes):
            race = None
            if len(lanes) > 1:
                self._race_id = self._race_id or uuid.uuid4().hex
                race = RaceSeat(race_id=self._race_id, lane=index)
            try:
                start(lane, race)
                started += 1
            except ServeDeckError as err:
                self.notify(str(err), severity="error", title=lane.target.name)
        if started:
            self._streaming_changed()
        return started

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "stop":
            return self.streaming
        if action == "focus_prompt":
            return not isinstance(self.focused, Input)  # "/" is typed into a text box
        return True

    def action_focus_prompt(self) -> None:
        self.query_one("#chat-prompt", Input).focus()

    def action_race(self) -> None:
        """Race mode on (tick a second target) or off (keep the first)."""
        settings = self.settings
        if settings.locked_reason is not None:
            self.notify(settings.locked_reason, severity="warning")
            return
        picked = settings.picked_targets()
        if len(picked) > 1:
            settings.pick(picked[:1])
            self.notify(f"race mode off: chatting with {picked[0]}", timeout=4)
            return
        others = [name for name in settings.target_list.names if name not in picked]
        if not others:
            self.notify(
                "race mode needs a second target: start a twin or add a URL in Deployments (press 1)",
                severity="warning",
            )
            return
        racing = [*picked, others[0]]
        settings.pick(racing)
        settings.target_list.focus()
        self.notify(
            f"race mode: {' vs '.join(racing)}; space ticks another target, ctrl+t ends the race", timeout=6
        )

    def _chosen_lane(self) -> ChatLane | None:
        """The lane with focus inside it, else the first lane that has an answer."""
        lanes = self.lanes
        focused = self.focused
        for lane in lanes:
            if focused is not None and lane in focused.ancestors_with_self:
                return lane
        return next((lane for lane in lanes if lane.answers), None)

    def action_copy_answer(self) -> None:
        lane = self._chosen_lane()
        answer = None if lane is None else lane.last_answer
        if lane is None or answer is None or not answer.text:
            self.notify("no answer to copy yet", severity="warning")
            return
        self.app.copy_to_clipboard(answer.text.strip())
        self.notify(f"copied {lane.target.name}'s answer ({len(answer.text.strip())} characters)", timeout=3)

    def action_regenerate(self) -> None:
        if self.streaming:
            self.notify("an answer is still streaming; press esc to stop it first", severity="warning")
            return
        try:
            params = self.settings.read_params()
        except ServeDeckError as err:
            self.notify(str(err), severity="error", title="parameters")
            return
        if not self._start_answers(lambda lane, race: lane.regenerate(params, race)) and not self.lanes:
            self.notify(NO_TARGET_HINT, severity="warning")

    @on(Button.Pressed, "#chat-stop")
    def action_stop(self) -> None:
        for lane in self.lanes:
            lane.stop()

    def _streaming_changed(self) -> None:
        streaming = self.streaming
        self.query_one("#chat-stop", Button).disabled = not streaming
        self.settings.lock_targets(
            "the targets cannot change while answers stream; press esc to stop them first"
            if streaming
            else None
        )
        self.refresh_bindings()

    @on(ChatLane.Finished)
    def _answer_finished(self, message: ChatLane.Finished) -> None:
        if message.error is not None:
            self.notify(message.error, severity="error", title=message.lane.target.name, timeout=10)
        if message.save_failure is not None:
            self.notify(message.save_failure, severity="warning", title="sessions", timeout=10)
        self._streaming_changed()
        if not self.streaming:
            self._show_race_summary()
            self.load_chats()

    def _show_race_summary(self) -> None:
        summary = self.query_one("#chat-race-summary", Static)
        text = race_summary([(lane.target.name, lane.last_answer) for lane in self.lanes])
        summary.update(text or "")
        summary.set_class(text is not None, "-shown")

    # ---- targets ---------------------------------------------------------------------------------

    @on(ChatSettings.TargetsPicked)
    async def _targets_picked(self, message: ChatSettings.TargetsPicked) -> None:
        await self._arrange_lanes(message.names)

    @on(TargetsChanged)
    async def _targets_changed(self) -> None:
        picked = [lane.target.name for lane in self.lanes]
        if not picked and self.ctx.selected_target is not None:
            picked = [self.ctx.selected_target]
        self.settings.show_targets(self._listed_targets(), picked)
        if not self.lanes and picked:
            await self._arrange_lanes(self.settings.picked_targets())

    # ---- saved chats -----------------------------------------------------------------------------

    def load_chats(self) -> None:
        """Re-read the saved chats; only the newest request's answer is shown."""
        self._list_request += 1
        self._list_chats(self._list_request)

    @work(thread=True, group="chat-list", exit_on_error=False)
    def _list_chats(self, request: int) -> None:
        try:
            with self.ctx.open_store() as store:
                chats = store.chats.list_chats(limit=CHAT_LIST_LIMIT)
        except ServeDeckError as err:
            self.post_message(self.ChatsListed(request, [], error=f"saved chats cannot be listed: {err}"))
            return
        self.post_message(self.ChatsListed(request, chats))

    @on(ChatsListed)
    def _chats_listed(self, message: ChatsListed) -> None:
        if message.request != self._list_request:
            return  # an older listing that finished late
        if message.error is not None:
            self.notify(message.error, severity="warning", title="sessions", timeout=10)
        self.query_one(ChatSessionList).show(message.chats, self._open_session_ids())

    def _open_session_ids(self) -> set[str]:
        return {lane.session_id for lane in self.lanes if lane.session_id is not None}

    def _refresh_chat_marks(self) -> None:
        listing = self.query_one(ChatSessionList)
        listing.show(listing.chats, self._open_session_ids())

    @on(ChatSessionList.ResumeRequested)
    def _resume_requested(self, message: ChatSessionList.ResumeRequested) -> None:
        self.resume_chat(message.session_id)

    def resume_chat(self, session_id: str) -> None:
        """Open a saved chat (and the other lanes of its race) in place of the current one."""
        if self.streaming:
            self.notify("an answer is still streaming; press esc to stop it first", severity="warning")
            return
        self._load_chat(session_id)

    @work(thread=True, exclusive=True, group="chat-load", exit_on_error=False)
    def _load_chat(self, session_id: str) -> None:
        try:
            with self.ctx.open_store() as store:
                sessions = race_group(store, session_id, CHAT_LIST_LIMIT)
        except ServeDeckError as err:
            self.post_message(self.StoreChanged([], error=f"the chat cannot be opened: {err}"))
            return
        self.post_message(self.ChatLoaded(sessions))

    @on(ChatLoaded)
    async def _chat_loaded(self, message: ChatLoaded) -> None:
        sessions = message.sessions[:3]
        if self.streaming or not sessions:
            return
        for session in sessions:
            if self.ctx.target(session.target.name) is None:
                self._known[session.target.name] = session.target
        race_id = sessions[0].params.get(RACE_KEY)
        self._race_id = race_id if isinstance(race_id, str) else None
        names = [session.target.name for session in sessions]
        self.settings.show_targets(self._listed_targets(), names)
        self.settings.show_params(params_from_session(sessions[0].system_prompt, sessions[0].params))
        await self._arrange_lanes(names, sessions)
        self._show_race_summary()
        self.query_one("#chat-prompt", Input).focus()

    async def action_new_chat(self) -> None:
        if self.streaming:
            self.notify("an answer is still streaming; press esc to stop it first", severity="warning")
            return
        self._race_id = None
        await self._arrange_lanes(self.settings.picked_targets(), sessions=[])
        self.query_one("#chat-prompt", Input).focus()

    def _chosen_session(self) -> tuple[str, str] | None:
        """(id, title) of the chat a rename or delete acts on: the highlighted one, else the open one."""
        listing = self.query_one(ChatSessionList)
        session_id = listing.highlighted_session_id if listing.has_focus else None
        if session_id is None:
            session_id = next((lane.session_id for lane in self.lanes if lane.session_id), None)
        if session_id is None:
            return None
        return session_id, self._listed_title(session_id)

    def _listed_title(self, session_id: str) -> str:
        return next(
            (chat.title for chat in self.query_one(ChatSessionList).chats if chat.id == session_id), ""
        )

    @on(ChatSessionList.RenameRequested)
    def _rename_requested(self, message: ChatSessionList.RenameRequested) -> None:
        self._ask_rename(message.session_id, self._listed_title(message.session_id))

    def action_rename(self) -> None:
        chosen = self._chosen_session()
        if chosen is None:
            self.notify("no saved chat to rename yet; send a prompt first", severity="warning")
            return
        self._ask_rename(*chosen)

    def _ask_rename(self, session_id: str, title: str) -> None:
        def renamed(new_title: str | None) -> None:
            if new_title:
                self._rename_chat(session_id, new_title)

        self.app.push_screen(RenameChatScreen(title), renamed)

    @work(thread=True, group="chat-edit", exit_on_error=False)
    def _rename_chat(self, session_id: str, title: str) -> None:
        try:
            with self.ctx.open_store() as store:
                for session in race_group(store, session_id, CHAT_LIST_LIMIT):
                    store.chats.rename_chat(session.id, title)
        except ServeDeckError as err:
            self.post_message(self.StoreChanged([], error=f"the chat was not renamed: {err}"))
            return
        self.post_message(self.StoreChanged([]))

    @on(ChatSessionList.DeleteRequested)
    def _delete_requested(self, message: ChatSessionList.DeleteRequested) -> None:
        self._ask_delete(message.session_id, self._listed_title(message.session_id))

    def action_delete(self) -> None:
        chosen = self._chosen_session()
        if chosen is None:
            self.notify("no saved chat to delete", severity="warning")
            return
        self._ask_delete(*chosen)

    def _ask_delete(self, session_id: str, title: str) -> None:
        def confirmed(yes: bool | None) -> None:
            if yes:
                self._delete_chat(session_id)

        self.app.push_screen(ConfirmDeleteScreen(f"Delete the chat {title!r} and its answers?"), confirmed)

    @work(thread=True, group="chat-edit", exit_on_error=False)
    def _delete_chat(self, session_id: str) -> None:
        removed: list[str] = []
        try:
            with self.ctx.open_store() as store:
                for session in race_group(store, session_id, CHAT_LIST_LIMIT):
                    store.chats.delete_chat(session.id)
                    removed.append(session.id)
        except ServeDeckError as err:
            self.post_message(self.StoreChanged(removed, error=f"the chat was not deleted: {err}"))
            return
        self.post_message(self.StoreChanged(removed))

    @on(StoreChanged)
    async def _store_changed(self, message: StoreChanged) -> None:
        if message.error is not None:
            self.notify(message.error, severity="error", title="sessions", timeout=10)
        if set(message.removed) & self._open_session_ids() and not self.streaming:
            self._race_id = None
            await self._arrange_lanes(self.settings.picked_targets(), sessions=[])
        self.load_chats()

    # ---- focus and layout ------------------------------------------------------------------------

    def action_focus_chats(self) -> None:
        sidebar = self.query_one("#chat-sidebar")
        sidebar.remove_class("-hidden")
        self.query_one(ChatSessionList).focus()

    def action_toggle_sidebar(self) -> None:
        self.query_one("#chat-sidebar").toggle_class("-hidden")
