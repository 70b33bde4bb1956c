"""Pictures of the Chat view at 160x45 and 100x30 from fixed saved chats: no clocks, hostnames or
blinking cursors.

Update after a deliberate change with ``pytest tests/tui/test_tui_snapshots_chat.py --snapshot-update``
and look at the SVGs before committing them.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from pydantic import JsonValue
from textual.pilot import Pilot
from textual.widgets import Input

from backends.target_types import Target, TargetKind
from sessions import AnswerTiming, MessageRole, MessageStatus, SessionStore
from tests.tui.test_tui_chat import ChatTestApp, chat_screen, wait_until
from tui.context import AppContext
from tui.services.chat_records import RACE_KEY, RACE_LANE_KEY
from tui.widgets.chat.message import AnswerView
from tui.widgets.chat.sessions import ChatSessionList

SnapCompare = Callable[..., bool]

SIZES = [(160, 45), (100, 30)]
H100 = Target(
    name="h100-gemma-27b",
    base_url="http://10.0.0.11:8000",
    model="google/gemma-3-27b-it",
    kind=TargetKind.VLLM,
)
L4 = Target(
    name="l4x4-gemma-27b",
    base_url="http://10.0.0.12:8000",
    model="google/gemma-3-27b-it",
    kind=TargetKind.VLLM,
)
LOCAL = Target(name="local", base_url="http://127.0.0.1:8080", model="gemma-3-270m", kind=TargetKind.LLAMACPP)

SKY = (
    "Sunlight scatters off the molecules of the air, and blue light, with its shorter wavelength, "
    "scatters far more than red (Rayleigh scattering). So blue reaches your eyes from every part of the sky."
)
SUNSET = "At sunset the light crosses much more air, so most of the blue is scattered away before"


def itl_ms(count: int, base: float, spread: int) -> list[float]:
    """A fixed, gently varying ITL pattern (no randomness)."""
    return [base + (index * 7 % spread) * 0.5 for index in range(count)]


def timing(ttft: float, itl: list[float], prompt: int, finish: str | None) -> AnswerTiming:
    tokens = len(itl) + 1
    e2e = ttft + sum(itl)
    return AnswerTiming(
        ttft_ms=ttft,
        tpot_ms=(e2e - ttft) / (tokens - 1),
        e2e_ms=e2e,
        itl_ms=itl,
        prompt_tokens=prompt,
        output_tokens=tokens,
        finish_reason=finish,
    )


def build_store(data_dir: Path) -> dict[str, str]:
    """Two saved chats: a two-turn conversation with the L4 and a race of H100 against L4."""
    ids: dict[str, str] = {}
    with SessionStore.open(data_dir) as store:
        chats = store.chats
        single = chats.create_chat(
            L4,
            system_prompt="Answer briefly.",
            params={"temperature": 0.7, "max_tokens": 256},
            title="Why is the sky blue?",
        )
        ids["single"] = single.id
        chats.append_message(single.id, MessageRole.USER, "Why is the sky blue?")
        answer = chats.start_answer(single.id)
        chats.finish_answer(answer, SKY, timing=timing(182.5, itl_ms(47, 20.0, 9), 31, "stop"))
        chats.append_message(single.id, MessageRole.USER, "And at sunset?")
        answer = chats.start_answer(single.id)
        chats.finish_answer(
            answer, SUNSET, status=MessageStatus.PARTIAL, timing=timing(175.0, itl_ms(17, 21.0, 5), 96, None)
        )
        time.sleep(0.01)  # distinct updated_at values keep the list order fixed

        race_params: dict[str, JsonValue] = {"temperature": 0.0, "max_tokens": 128, RACE_KEY: "race-fixed"}
        for lane, (target, ttft, base, cut) in enumerate(((H100, 48.0, 6.5, False), (L4, 231.0, 24.0, True))):
            session = chats.create_chat(
                target,
                system_prompt="",
                params={**race_params, RACE_LANE_KEY: lane},
                title="race · Explain KV cache in one line.",
            )
            ids[f"race-{lane}"] = session.id
            chats.append_message(session.id, MessageRole.USER, "Explain KV cache in one line.")
            answer = chats.start_answer(session.id)
            text = "It stores each layer's keys and values for past tokens so decoding reuses them."
            if cut:
                chats.finish_answer(
                    answer,
                    text[:44],
                    status=MessageStatus.PARTIAL,
                    timing=timing(ttft, itl_ms(10, base, 5), 14, None),
                    error="l4x4-gemma-27b dropped the connection mid-answer after 11 token chunks "
                    "(peer closed connection); the partial answer is kept. The server may have crashed: "
                    "check its logs.",
                )
            else:
                chats.finish_answer(answer, text, timing=timing(ttft, itl_ms(18, base, 5), 14, "stop"))
            time.sleep(0.01)
    return ids


def make_app(data_dir: Path) -> ChatTestApp:
    return ChatTestApp(AppContext(data_dir=data_dir, targets=[H100, L4, LOCAL], selected_target="local"))


async def steady(pilot: Pilot[None]) -> None:
    for box in pilot.app.screen.query(Input):
        box.cursor_blink = False
    await pilot.pause()
    await pilot.app.workers.wait_for_complete()
    await pilot.pause()


def resume(session_id: str, answers: int) -> Callable[[Pilot[None]], Awaitable[None]]:
    async def run_before(pilot: Pilot[None]) -> None:
        screen = chat_screen(pilot.app)
        await wait_until(pilot, lambda: len(screen.query_one(ChatSessionList).chats) == 3)
        screen.resume_chat(session_id)
        await wait_until(pilot, lambda: len(screen.query(AnswerView)) == answers)
        await steady(pilot)

    return run_before


@pytest.fixture
def saved(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    return tmp_path, build_store(tmp_path)


@pytest.mark.parametrize("size", SIZES)
def test_chat_view_with_a_resumed_conversation(
    saved: tuple[Path, dict[str, str]], snap_compare: SnapCompare, size: tuple[int, int]
) -> None:
    data_dir, ids = saved
    assert snap_compare(make_app(data_dir), terminal_size=size, run_before=resume(ids["single"], 2))


@pytest.mark.parametrize("size", SIZES)
def test_chat_view_race_of_two_targets(
    saved: tuple[Path, dict[str, str]], snap_compare: SnapCompare, size: tuple[int, int]
) -> None:
    data_dir, ids = saved
    assert snap_compare(make_app(data_dir), terminal_size=size, run_before=resume(ids["race-1"], 2))


@pytest.mark.parametrize("size", SIZES)
def test_chat_view_empty(tmp_path: Path, snap_compare: SnapCompare, size: tuple[int, int]) -> None:
    async def run_before(pilot: Pilot[None]) -> None:
        await wait_until(pilot, lambda: len(chat_screen(pilot.app).lanes) == 1)
        await steady(pilot)

    assert snap_compare(make_app(tmp_path), terminal_size=size, run_before=run_before)
