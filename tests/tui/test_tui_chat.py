"""Chat view flows driven by Textual's Pilot: real local engine, fake SSE servers, the sessions store."""

from __future__ import annotations

import socket
from functools import partial
from pathlib import Path

import pytest
from textual.app import App
from textual.pilot import Pilot
from textual.widgets import Input

from backends.engines.local import LocalEngine
from backends.target_types import Target, TargetKind
from sessions import MessageRole, MessageStatus, SessionStore
from tests import tui_helpers
from tests.fakes.sse_server import VOCAB, FakeSSEServer
from tests.tui_helpers import notifications
from tui.context import AppContext
from tui.messages import TargetsChanged
from tui.screens.chat import ChatScreen
from tui.services.chat_records import RACE_KEY
from tui.widgets.chat.lane import ChatLane
from tui.widgets.chat.message import AnswerView
from tui.widgets.chat.sessions import ChatSessionList
from tui.widgets.chat.stats import AnswerStatsLine

pytestmark = pytest.mark.anyio
SIZE = (120, 40)
WAIT_S = 60.0


class ChatTestApp(App[None]):
    """The Chat view alone, with a fixed ``ctx`` (the real app mounts it as the "chat" mode)."""

    def __init__(self, ctx: AppContext) -> None:
        super().__init__()
        self.ctx = ctx

    def on_mount(self) -> None:
        self.push_screen(ChatScreen())


wait_until = partial(tui_helpers.wait_until, timeout_s=WAIT_S, poll_s=0.02)


def chat_screen(app: App[None]) -> ChatScreen:
    screen = app.screen
    assert isinstance(screen, ChatScreen)
    return screen


def answers(app: App[None]) -> list[AnswerView]:
    return list(chat_screen(app).query(AnswerView))


def stats_text(view: AnswerView) -> str:
    line = view.query_one(AnswerStatsLine)
    return " ".join(str(static.render()) for static in line.query("Static"))


async def set_field(pilot: Pilot[None], selector: str, value: str) -> None:
    chat_screen(pilot.app).query_one(selector, Input).value = value
    await pilot.pause()


async def tick(pilot: Pilot[None], index: int) -> None:
    """Tick or untick the target at ``index`` in the settings' list, as a user does with space."""
    listing = chat_screen(pilot.app).settings.target_list
    listing.focus()
    listing.highlighted = index
    await pilot.press("space")
    await pilot.pause()


async def send(pilot: Pilot[None], prompt: str) -> None:
    box = chat_screen(pilot.app).query_one("#chat-prompt", Input)
    box.focus()
    box.value = prompt
    await pilot.press("enter")


async def wait_answered(pilot: Pilot[None], count: int = 1) -> None:
    screen = chat_screen(pilot.app)
    await wait_until(pilot, lambda: len(answers(pilot.app)) >= count and not screen.streaming)
    await pilot.pause()


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def fake_target(server: FakeSSEServer, name: str = "fake") -> Target:
    return Target(name=name, base_url=f"http://127.0.0.1:{server.port}", model="fake-model")


def stored_answers(data_dir: Path) -> list[tuple[str, MessageStatus, str | None, int | None]]:
    """(text, status, error, output tokens) of every stored answer, oldest chat first."""
    with SessionStore.open(data_dir) as store:
        found = []
        for summary in reversed(store.chats.list_chats()):
            for message in store.chats.load_chat(summary.id).messages:
                if message.role is MessageRole.ASSISTANT:
                    tokens = None if message.timing is None else message.timing.output_tokens
                    found.append((message.text, message.status, message.error, tokens))
        return found


# ---- flows ----------------------------------------------------------------------------------------


@pytest.mark.engine
async def test_chat_one_message_with_the_local_engine_and_see_its_stats(
    local_engine: LocalEngine, tmp_path: Path
) -> None:
    ctx = AppContext(data_dir=tmp_path, targets=[local_engine.target()], selected_target="local")
    app = ChatTestApp(ctx)
    async with app.run_test(size=SIZE) as pilot:
        await set_field(pilot, "#chat-max-tokens", "12")
        await set_field(pilot, "#chat-temperature", "0")
        await send(pilot, "Name a colour.")
        await wait_answered(pilot)

        [answer] = answers(app)
        assert answer.state == "complete" and answer.error is None
        assert answer.stats is not None and answer.stats.ttft_s is not None and answer.stats.ttft_s > 0
        tokens = answer.stats.output_tokens
        assert 1 <= tokens <= 12 and answer.text.strip()
        shown = stats_text(answer)
        assert "TTFT " in shown and "tok/s" in shown and "TPOT" in shown and f"{tokens} tok" in shown
        assert "e2e " in shown

        await wait_until(pilot, lambda: len(app.screen.query_one(ChatSessionList).chats) == 1)
    assert stored_answers(tmp_path) == [(answer.text, MessageStatus.COMPLETE, None, tokens)]


@pytest.mark.engine
async def test_race_two_targets_side_by_side(
    local_engine: LocalEngine, fake_server: FakeSSEServer, tmp_path: Path
) -> None:
    targets = [local_engine.target(), fake_target(fake_server)]
    app = ChatTestApp(AppContext(data_dir=tmp_path, targets=targets, selected_target="local"))
    async with app.run_test(size=SIZE) as pilot:
        screen = chat_screen(app)
        await tick(pilot, 1)  # the second target: race mode
        await wait_until(pilot, lambda: len(screen.lanes) == 2)
        assert [lane.target.name for lane in screen.lanes] == ["local", "fake"]

        await set_field(pilot, "#chat-max-tokens", "8")
        await send(pilot, "Say hi.")
        await wait_until(pilot, lambda: all(lane.streaming for lane in screen.lanes) or not screen.streaming)
        await wait_answered(pilot, count=2)

        local_answer, fake_answer = (lane.answers[0] for lane in screen.lanes)
        assert local_answer.state == fake_answer.state == "complete"
        assert fake_answer.text == "".join(VOCAB[:8])
        for view in (local_answer, fake_answer):
            assert view.stats is not None and view.stats.ttft_s is not None
            assert "TTFT " in stats_text(view) and f"{view.stats.output_tokens} tok" in stats_text(view)

        assert [message for message in notifications(app) if "not being saved" in message] == []
        listing = screen.query_one(ChatSessionList)
        await wait_until(pilot, lambda: len(listing.chats) == 2)
        assert {chat.title for chat in listing.chats} == {"race · Say hi."}

        # A new chat empties the lanes; resuming either saved chat brings the whole race back.
        await pilot.press("ctrl+n")
        await wait_until(pilot, lambda: not answers(app))
        screen.resume_chat(listing.chats[-1].id)
        await wait_until(pilot, lambda: len(answers(app)) == 2)
        assert [lane.target.name for lane in screen.lanes] == ["local", "fake"]
        assert screen.lanes[1].answers[0].text == "".join(VOCAB[:8])
        assert screen.lanes[1].answers[0].state == "complete"

    with SessionStore.open(tmp_path) as store:
        sessions = [store.chats.load_chat(chat.id) for chat in store.chats.list_chats()]
    race_ids = {session.params[RACE_KEY] for session in sessions}
    assert len(race_ids) == 1 and None not in race_ids


async def test_stop_mid_answer_keeps_the_partial_answer(fake_server: FakeSSEServer, tmp_path: Path) -> None:
    app = ChatTestApp(AppContext(data_dir=tmp_path, targets=[fake_target(fake_server)]))
    async with app.run_test(size=SIZE) as pilot:
        await set_field(pilot, "#chat-max-tokens", "2000")
        await set_field(pilot, "#chat-extra", '{"fake_itl_ms": 40}')
        await send(pilot, "Count to a thousand.")
        await wait_until(pilot, lambda: bool(answers(app)) and len(answers(app)[0].text.split()) >= 3)
        stop_key = chat_screen(app).active_bindings["escape"]
        assert stop_key.binding.action == "stop" and stop_key.enabled
        await pilot.press("escape")
        await wait_answered(pilot)

        [answer] = answers(app)
        assert answer.state == "stopped"
        assert answer.text and answer.stats is not None and 3 <= answer.stats.output_tokens < 2000
        assert "stopped" in stats_text(answer)
        await wait_until(pilot, lambda: len(app.screen.query_one(ChatSessionList).chats) == 1)
    [(text, status, error, tokens)] = stored_answers(tmp_path)
    assert (text, status, error) == (answer.text, MessageStatus.PARTIAL, None)
    assert tokens == answer.stats.output_tokens


async def test_a_dead_endpoint_shows_a_clear_message(tmp_path: Path) -> None:
    port = closed_port()
    dead = Target(name="dead", base_url=f"http://127.0.0.1:{port}", model="m")
    app = ChatTestApp(AppContext(data_dir=tmp_path, targets=[dead]))
    async with app.run_test(size=SIZE) as pilot:
        await send(pilot, "Anyone there?")
        await wait_answered(pilot)

        [answer] = answers(app)
        assert answer.state == "error" and answer.text == ""
        assert answer.error is not None and answer.error.startswith(
            f"cannot reach dead at http://127.0.0.1:{port}/v1"
        )
        assert not answer.query_one(AnswerStatsLine).display
        assert any("cannot reach dead" in message for message in notifications(app))
        await wait_until(pilot, lambda: len(app.screen.query_one(ChatSessionList).chats) == 1)
    [(text, status, error, _)] = stored_answers(tmp_path)
    assert text == "" and status is MessageStatus.ERROR and error == answer.error


async def test_server_killed_mid_answer_is_stored_as_partial(
    fake_server: FakeSSEServer, tmp_path: Path
) -> None:
    app = ChatTestApp(AppContext(data_dir=tmp_path, targets=[fake_target(fake_server)]))
    async with app.run_test(size=SIZE) as pilot:
        await set_field(pilot, "#chat-max-tokens", "10")
        await set_field(pilot, "#chat-extra", '{"fake_fault": "drop_mid_stream", "fake_fault_after": 5}')
        await send(pilot, "hello")
        await wait_answered(pilot)
        [answer] = answers(app)
        assert answer.state == "partial" and answer.text == "".join(VOCAB[:5])
        assert answer.error is not None and "dropped the connection mid-answer" in answer.error
        await wait_until(pilot, lambda: len(app.screen.query_one(ChatSessionList).chats) == 1)
    [(text, status, error, tokens)] = stored_answers(tmp_path)
    assert (text, status, error, tokens) == (answer.text, MessageStatus.PARTIAL, answer.error, 5)


async def test_a_conversation_keeps_its_history(fake_server: FakeSSEServer, tmp_path: Path) -> None:
    app = ChatTestApp(AppContext(data_dir=tmp_path, targets=[fake_target(fake_server)]))
    async with app.run_test(size=SIZE) as pilot:
        await set_field(pilot, "#chat-max-tokens", "3")
        await send(pilot, "first")
        await wait_answered(pilot)
        await send(pilot, "second")
        await wait_answered(pilot, count=2)
        [lane] = chat_screen(app).lanes
        assert [turn.role for turn in lane.turns] == ["user", "assistant", "user", "assistant"]
        await wait_until(pilot, lambda: bool(app.screen.query_one(ChatSessionList).chats))
        [chat] = app.screen.query_one(ChatSessionList).chats
        assert chat.title == "first" and chat.message_count == 4


# ---- bad input and failures -----------------------------------------------------------------------


async def test_bad_parameters_are_named_and_nothing_is_sent(
    fake_server: FakeSSEServer, tmp_path: Path
) -> None:
    before = fake_server.stats().generation_requests
    app = ChatTestApp(AppContext(data_dir=tmp_path, targets=[fake_target(fake_server)]))
    async with app.run_test(size=SIZE) as pilot:
        await set_field(pilot, "#chat-temperature", "hot")
        await send(pilot, "hello")
        await pilot.pause()
        assert any("temperature 'hot' is not a number" in message for message in notifications(app))
        assert answers(app) == []
        assert chat_screen(app).query_one("#chat-prompt", Input).value == "hello"  # the prompt is kept
    assert fake_server.stats().generation_requests == before


async def test_an_unwritable_store_still_chats_and_says_so(
    fake_server: FakeSSEServer, tmp_path: Path
) -> None:
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("x")
    app = ChatTestApp(AppContext(data_dir=not_a_folder, targets=[fake_target(fake_server)]))
    async with app.run_test(size=SIZE) as pilot:
        await set_field(pilot, "#chat-max-tokens", "4")
        await send(pilot, "hello")
        await wait_answered(pilot)
        [answer] = answers(app)
        assert answer.state == "complete" and answer.text == "".join(VOCAB[:4])
        assert any(message.startswith("this chat is not being saved:") for message in notifications(app))


async def test_no_target_says_what_to_do(tmp_path: Path) -> None:
    app = ChatTestApp(AppContext(data_dir=tmp_path, targets=[]))
    async with app.run_test(size=SIZE) as pilot:
        screen = chat_screen(app)
        assert screen.lanes == []
        assert screen.query_one("#chat-no-target").has_class("-shown")
        await send(pilot, "hello")
        await pilot.pause()
        assert any("No target picked" in message for message in notifications(app))


async def test_race_mode_takes_at_most_three_targets(fake_server: FakeSSEServer, tmp_path: Path) -> None:
    targets = [fake_target(fake_server, f"fake-{i}") for i in range(4)]
    app = ChatTestApp(AppContext(data_dir=tmp_path, targets=targets, selected_target="fake-0"))
    async with app.run_test(size=SIZE) as pilot:
        screen = chat_screen(app)
        for index in (1, 2, 3):
            await tick(pilot, index)
        assert [lane.target.name for lane in screen.lanes] == ["fake-0", "fake-1", "fake-2"]
        assert any("at most 3 targets" in message for message in notifications(app))


async def test_targets_changed_lists_new_targets(fake_server: FakeSSEServer, tmp_path: Path) -> None:
    ctx = AppContext(data_dir=tmp_path, targets=[])
    app = ChatTestApp(ctx)
    async with app.run_test(size=SIZE) as pilot:
        screen = chat_screen(app)
        ctx.targets = [fake_target(fake_server, "twin-h100")]
        ctx.selected_target = "twin-h100"
        screen.post_message(TargetsChanged(list(ctx.targets), ctx.selected_target))
        await wait_until(pilot, lambda: [lane.target.name for lane in screen.lanes] == ["twin-h100"])
        assert screen.settings.picked_targets() == ["twin-h100"]
        assert not screen.query_one("#chat-no-target").has_class("-shown")


# ---- saved chats: rename and delete ---------------------------------------------------------------


async def test_rename_and_delete_a_saved_chat(fake_server: FakeSSEServer, tmp_path: Path) -> None:
    app = ChatTestApp(AppContext(data_dir=tmp_path, targets=[fake_target(fake_server)]))
    async with app.run_test(size=SIZE) as pilot:
        screen = chat_screen(app)
        await set_field(pilot, "#chat-max-tokens", "2")
        await send(pilot, "keep me")
        await wait_answered(pilot)
        listing = screen.query_one(ChatSessionList)
        await wait_until(pilot, lambda: len(listing.chats) == 1)

        listing.focus()
        listing.highlighted = 0
        await pilot.press("f2")
        await wait_until(pilot, lambda: app.screen is not screen)
        app.screen.query_one("#rename-title", Input).value = "renamed chat"
        await pilot.press("enter")
        await wait_until(pilot, lambda: [chat.title for chat in listing.chats] == ["renamed chat"])

        listing.focus()
        await pilot.press("ctrl+d")
        await wait_until(pilot, lambda: app.screen is not screen)
        await pilot.press("y")
        await wait_until(pilot, lambda: listing.chats == [] and not answers(app))
    with SessionStore.open(tmp_path) as store:
        assert store.chats.list_chats() == []


def test_answer_progress_messages_coalesce_per_lane() -> None:
    from backends.chat_stats import AnswerStats

    lane_a = ChatLane(Target(name="a", base_url="http://127.0.0.1:1", model="m"), AppContext())
    lane_b = ChatLane(Target(name="b", base_url="http://127.0.0.1:1", model="m"), AppContext())
    older = ChatLane.AnswerProgress(lane_a, "x", AnswerStats())
    assert ChatLane.AnswerProgress(lane_a, "xy", AnswerStats()).can_replace(older)
    assert not ChatLane.AnswerProgress(lane_b, "xy", AnswerStats()).can_replace(older)


async def test_the_app_opens_the_chat_view_as_its_chat_mode(
    fake_server: FakeSSEServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tui.app import ServeDeckApp

    for name in ("SERVEDECK_CONFIG_DIR", "SERVEDECK_DATA_DIR", "SERVEDECK_CACHE_DIR"):
        monkeypatch.setenv(name, str(tmp_path / name.lower()))
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "no-kubeconfig"))
    ctx = AppContext(data_dir=tmp_path / "data", targets=[fake_target(fake_server)], selected_target="fake")
    app = ServeDeckApp(ctx, start_local_engine=False, show_welcome=False, check_health=False)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("2")
        await wait_until(pilot, lambda: isinstance(app.screen, ChatScreen))
        screen = chat_screen(app)
        await wait_until(pilot, lambda: [lane.target.name for lane in screen.lanes] == ["fake"])
        await set_field(pilot, "#chat-max-tokens", "3")
        await send(pilot, "hello")
        await wait_answered(pilot)
        assert answers(app)[0].state == "complete"


async def test_leaving_the_app_mid_answer_stores_it_as_partial(
    fake_server: FakeSSEServer, tmp_path: Path
) -> None:
    app = ChatTestApp(AppContext(data_dir=tmp_path, targets=[fake_target(fake_server)]))
    async with app.run_test(size=SIZE) as pilot:
        await set_field(pilot, "#chat-max-tokens", "2000")
        await set_field(pilot, "#chat-extra", '{"fake_itl_ms": 40}')
        await send(pilot, "Talk for a while.")
        await wait_until(pilot, lambda: bool(answers(app)) and len(answers(app)[0].text.split()) >= 3)
        app.exit()
    [(text, status, error, tokens)] = stored_answers(tmp_path)
    assert status is MessageStatus.PARTIAL and error is None
    assert len(text.split()) >= 3 and tokens is not None and 3 <= tokens < 2000


async def test_send_and_stop_with_the_mouse_and_targets_stay_put_while_streaming(
    fake_server: FakeSSEServer, tmp_path: Path
) -> None:
    targets = [fake_target(fake_server), fake_target(fake_server, "other")]
    app = ChatTestApp(AppContext(data_dir=tmp_path, targets=targets, selected_target="fake"))
    async with app.run_test(size=SIZE) as pilot:
        screen = chat_screen(app)
        await set_field(pilot, "#chat-max-tokens", "2000")
        await set_field(pilot, "#chat-extra", '{"fake_itl_ms": 40}')
        screen.query_one("#chat-prompt", Input).value = "Keep going."
        await pilot.click("#chat-send")
        await wait_until(pilot, lambda: bool(answers(app)) and bool(answers(app)[0].text))

        await tick(pilot, 1)  # refused while the answer streams
        assert [lane.target.name for lane in screen.lanes] == ["fake"]
        assert screen.settings.picked_targets() == ["fake"]
        assert any("cannot change while answers stream" in message for message in notifications(app))

        await pilot.click("#chat-stop")
        await wait_answered(pilot)
        assert answers(app)[0].state == "stopped"


# ---- issue 10: honest local chat, race mode, keys, per-answer details -------------------------------

DEMO_SIZES = [(160, 45), (100, 30)]


def base_model_target(server: FakeSSEServer) -> Target:
    """The fake server under the local engine's model id: the chat sends it the few-shot frame."""
    return Target(name="local", base_url=f"http://127.0.0.1:{server.port}", model="gemma-3-270m")


def twin_target(server: FakeSSEServer) -> Target:
    return Target(
        name="twin-h100",
        base_url=f"http://127.0.0.1:{server.port}",
        model="google/gemma-3-27b-it-twin",
        kind=TargetKind.TWIN,
    )


def lane_header(lane: ChatLane) -> str:
    return " ".join(str(view.render()) for view in lane.query(".lane-title, .lane-note"))


def row_texts(screen: ChatScreen) -> list[str]:
    listing = screen.settings.target_list
    return [str(listing.get_option_at_index(i).prompt) for i in range(listing.option_count)]


@pytest.mark.parametrize("size", DEMO_SIZES)
async def test_the_local_lane_says_base_model_and_every_twin_answer_says_simulated(
    fake_server: FakeSSEServer, tmp_path: Path, size: tuple[int, int]
) -> None:
    targets = [base_model_target(fake_server), twin_target(fake_server)]
    app = ChatTestApp(AppContext(data_dir=tmp_path, targets=targets, selected_target="local"))
    async with app.run_test(size=size) as pilot:
        screen = chat_screen(app)
        await pilot.press("ctrl+t")  # race the local model against the twin
        await wait_until(pilot, lambda: len(screen.lanes) == 2)
        local_lane, twin_lane = screen.lanes
        assert "270M base model" in lane_header(local_lane) and "few-shot" in lane_header(local_lane)
        assert "simulated" in lane_header(twin_lane)
        await set_field(pilot, "#chat-max-tokens", "4")
        await send(pilot, "What is the capital of Italy?")
        await wait_answered(pilot, count=2)
        # The base model went through /v1/completions (choices[].text), and its text still arrived.
        assert local_lane.answers[0].text == "".join(VOCAB[:4]) and local_lane.answers[0].state == "complete"
        assert not local_lane.answers[0].query(".answer-tag")
        [tag] = twin_lane.answers[0].query(".answer-tag")
        assert "simulated" in str(tag.render())


async def test_race_mode_is_a_key_with_visible_marks_and_a_summary(
    fake_server: FakeSSEServer, tmp_path: Path
) -> None:
    targets = [fake_target(fake_server, "fake-a"), fake_target(fake_server, "fake-b")]
    app = ChatTestApp(AppContext(data_dir=tmp_path, targets=targets, selected_target="fake-a"))
    async with app.run_test(size=(160, 45)) as pilot:
        screen = chat_screen(app)
        assert [row[:4] for row in row_texts(screen)] == ["[x] ", "[ ] "]
        assert "race" in screen.active_bindings["ctrl+t"].binding.description
        await pilot.press("ctrl+t")
        await wait_until(pilot, lambda: len(screen.lanes) == 2)
        assert [row[:4] for row in row_texts(screen)] == ["[x] ", "[x] "]
        assert "RACE · 2 targets" in str(screen.query_one("#chat-mode").render())

        await set_field(pilot, "#chat-max-tokens", "5")
        await send(pilot, "Say hi.")
        await wait_answered(pilot, count=2)
        summary = screen.query_one("#chat-race-summary")
        assert summary.has_class("-shown")
        line = str(summary.render())
        assert "first token: fake-" in line and "finished first: fake-" in line
        assert "TTFT fake-a " in line and "| fake-b " in line and "TPOT fake-a " in line

        await pilot.press("ctrl+t")  # race mode off: the first target stays
        await wait_until(pilot, lambda: len(screen.lanes) == 1)
        assert screen.settings.picked_targets() == ["fake-a"]
        assert "RACE" not in str(screen.query_one("#chat-mode").render())


async def test_the_target_cursor_stays_on_its_row_across_refreshes(
    fake_server: FakeSSEServer, tmp_path: Path
) -> None:
    targets = [fake_target(fake_server, f"fake-{i}") for i in range(3)]
    ctx = AppContext(data_dir=tmp_path, targets=targets, selected_target="fake-0")
    app = ChatTestApp(ctx)
    async with app.run_test(size=(100, 30)) as pilot:
        screen = chat_screen(app)
        listing = screen.settings.target_list
        listing.focus()
        await pilot.press("down", "down")
        assert listing.highlighted == 2
        for _ in range(2):  # the registry refreshes (health checks every 15 s)
            screen.post_message(TargetsChanged(list(ctx.targets), ctx.selected_target))
            await pilot.pause()
            assert listing.highlighted == 2
        await pilot.press("space")
        await wait_until(pilot, lambda: len(screen.lanes) == 2)
        assert screen.settings.picked_targets() == ["fake-0", "fake-2"]
        assert listing.highlighted == 2
        await pilot.press("up", "space")
        await wait_until(pilot, lambda: len(screen.lanes) == 3)
        assert screen.settings.picked_targets() == ["fake-0", "fake-1", "fake-2"]


async def test_slash_focuses_the_prompt(fake_server: FakeSSEServer, tmp_path: Path) -> None:
    app = ChatTestApp(AppContext(data_dir=tmp_path, targets=[fake_target(fake_server)]))
    async with app.run_test(size=(100, 30)) as pilot:
        screen = chat_screen(app)
        screen.settings.target_list.focus()
        await pilot.pause()
        await pilot.press("slash")
        assert app.focused is screen.query_one("#chat-prompt", Input)
        await pilot.press("slash")  # in the prompt it is a character
        assert screen.query_one("#chat-prompt", Input).value == "/"


async def test_each_answer_shows_itl_percentiles_prompt_tokens_and_finish_reason(
    fake_server: FakeSSEServer, tmp_path: Path
) -> None:
    app = ChatTestApp(AppContext(data_dir=tmp_path, targets=[fake_target(fake_server)]))
    async with app.run_test(size=(160, 45)) as pilot:
        await set_field(pilot, "#chat-max-tokens", "6")
        await set_field(pilot, "#chat-extra", '{"fake_prompt_tokens": 37}')
        await send(pilot, "hello")
        await wait_answered(pilot)
        [answer] = answers(app)
        shown = stats_text(answer)
        assert "ITL p50 " in shown and " p99 " in shown
        assert "prompt 37 tok" in shown and "finish length" in shown


async def test_copy_and_regenerate_the_last_answer(fake_server: FakeSSEServer, tmp_path: Path) -> None:
    app = ChatTestApp(AppContext(data_dir=tmp_path, targets=[fake_target(fake_server)]))
    async with app.run_test(size=(160, 45)) as pilot:
        await set_field(pilot, "#chat-max-tokens", "3")
        await send(pilot, "first")
        await wait_answered(pilot)
        await pilot.press("ctrl+y")
        assert app.clipboard == "".join(VOCAB[:3]).strip()
        assert any(message.startswith("copied fake's answer") for message in notifications(app))

        await set_field(pilot, "#chat-max-tokens", "5")
        await pilot.press("ctrl+g")
        await wait_answered(pilot, count=2)
        [lane] = chat_screen(app).lanes
        assert [answer.text for answer in lane.answers] == ["".join(VOCAB[:3]), "".join(VOCAB[:5])]
        assert [(turn.role, turn.content) for turn in lane.turns] == [
            ("user", "first"),
            ("assistant", "".join(VOCAB[:5])),
        ]
