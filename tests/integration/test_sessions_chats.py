"""Chats: messages, streamed answers stored as they arrive, timing stats, list/resume/rename/delete."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from sessions import AnswerTiming, MessageRole, MessageStatus, SessionStore, SessionStoreError
from tests.sessions_helpers import make_target

TIMING = AnswerTiming(
    ttft_ms=182.5,
    tpot_ms=21.25,
    e2e_ms=1250.0,
    itl_ms=[20.5, 22.0, 19.75],
    prompt_tokens=31,
    output_tokens=48,
    finish_reason="stop",
    server_timings={"prompt_ms": 40.1, "predicted_ms": 1010.2},
)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SessionStore]:
    with SessionStore.open(tmp_path) as opened:
        yield opened


def test_conversation_with_timing_is_resumed_exactly(store: SessionStore) -> None:
    chat = store.chats.create_chat(
        make_target(), system_prompt="Be brief.", params={"temperature": 0.7, "max_tokens": 256}
    )
    question = store.chats.append_message(chat.id, MessageRole.USER, "Why is the sky blue?")
    answer_id = store.chats.start_answer(chat.id)
    store.chats.update_answer(answer_id, "Rayleigh")
    store.chats.update_answer(answer_id, "Rayleigh scattering.")
    answer = store.chats.finish_answer(answer_id, "Rayleigh scattering.", timing=TIMING)

    resumed = store.chats.load_chat(chat.id)
    assert resumed.target == make_target()
    assert resumed.system_prompt == "Be brief."
    assert resumed.params == {"temperature": 0.7, "max_tokens": 256}
    assert resumed.messages == [question, answer]
    assert answer.status is MessageStatus.COMPLETE
    assert answer.timing == TIMING
    assert answer.timing is not None and answer.timing.tokens_per_s == pytest.approx(38.4)
    assert question.timing is None


def test_an_answer_is_partial_while_streaming_and_after_a_stop(store: SessionStore) -> None:
    chat = store.chats.create_chat(make_target())
    store.chats.append_message(chat.id, MessageRole.USER, "Count to 100")
    answer_id = store.chats.start_answer(chat.id)
    store.chats.update_answer(answer_id, "1 2 3")
    streaming = store.chats.load_chat(chat.id).messages[-1]
    assert (streaming.text, streaming.status) == ("1 2 3", MessageStatus.PARTIAL)

    stopped = store.chats.finish_answer(answer_id, "1 2 3 4", status=MessageStatus.PARTIAL)
    assert (stopped.text, stopped.status, stopped.timing) == ("1 2 3 4", MessageStatus.PARTIAL, None)

    failed_id = store.chats.start_answer(chat.id)
    failed = store.chats.finish_answer(
        failed_id, "5 6", status=MessageStatus.ERROR, error="server closed the stream"
    )
    assert failed.error == "server closed the stream"
    assert [m.status for m in store.chats.load_chat(chat.id).messages] == [
        MessageStatus.COMPLETE,
        MessageStatus.PARTIAL,
        MessageStatus.ERROR,
    ]


def test_reply_of_a_killed_process_is_kept_as_partial(tmp_path: Path) -> None:
    script = textwrap.dedent(
        """
        import os, signal, sys
        from sessions import MessageRole, SessionStore
        from tests.sessions_helpers import make_target
        store = SessionStore.open(sys.argv[1])
        chat = store.chats.create_chat(make_target())
        store.chats.append_message(chat.id, MessageRole.USER, "tell me a story")
        answer = store.chats.start_answer(chat.id)
        store.chats.update_answer(answer, "Once upon a time")
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    repo = Path(__file__).resolve().parents[2]
    proc = subprocess.run([sys.executable, "-c", script, str(tmp_path)], cwd=repo, timeout=60, check=False)
    assert proc.returncode == -9
    with SessionStore.open(tmp_path) as store:
        (summary,) = store.chats.list_chats()
        messages = store.chats.load_chat(summary.id).messages
    assert [(m.role, m.text, m.status) for m in messages] == [
        (MessageRole.USER, "tell me a story", MessageStatus.COMPLETE),
        (MessageRole.ASSISTANT, "Once upon a time", MessageStatus.PARTIAL),
    ]


def test_list_rename_update_and_delete(store: SessionStore) -> None:
    first = store.chats.create_chat(make_target(name="l4"), title="L4 check")
    second = store.chats.create_chat(make_target(name="h100"))
    store.chats.append_message(first.id, MessageRole.USER, "hello")  # most recently used now

    listed = store.chats.list_chats()
    assert [(c.id, c.message_count) for c in listed] == [(first.id, 1), (second.id, 0)]
    assert listed[1].title == "google/gemma-3-27b-it on h100"
    assert store.chats.list_chats(limit=1)[0].id == first.id

    store.chats.rename_chat(second.id, "H100 feel test")
    store.chats.update_chat(second.id, system_prompt="You are terse.", params={"temperature": 0.0})
    updated = store.chats.load_chat(second.id)
    assert (updated.title, updated.system_prompt, updated.params) == (
        "H100 feel test",
        "You are terse.",
        {"temperature": 0.0},
    )

    store.chats.delete_chat(first.id)
    assert [c.id for c in store.chats.list_chats()] == [second.id]
    with store.db.read() as conn:
        assert conn.execute("SELECT COUNT(*) FROM chat_messages").fetchone() == (0,)


def test_unknown_chat_or_message_is_one_clear_error(store: SessionStore) -> None:
    with pytest.raises(SessionStoreError, match="no chat session 'missing'"):
        store.chats.load_chat("missing")
    with pytest.raises(SessionStoreError, match="no chat session"):
        store.chats.append_message("missing", MessageRole.USER, "hi")
    with pytest.raises(SessionStoreError, match="no chat message 999"):
        store.chats.update_answer(999, "x")
    with pytest.raises(SessionStoreError, match="no chat message 999"):
        store.chats.finish_answer(999, "x")
    with pytest.raises(SessionStoreError, match="no chat session"):
        store.chats.delete_chat("missing")


@pytest.mark.parametrize("name", ["api_key", "HF_TOKEN", "Authorization", "openai-api-key", "password"])
def test_secret_looking_parameters_are_refused(store: SessionStore, name: str) -> None:
    with pytest.raises(SessionStoreError, match="looks like a secret"):
        store.chats.create_chat(make_target(), params={name: "sk-123"})
    chat = store.chats.create_chat(make_target(), params={"max_tokens": 128, "top_p": 0.9})
    with pytest.raises(SessionStoreError, match="looks like a secret"):
        store.chats.update_chat(chat.id, params={"extra": {name: "sk-123"}})
    assert store.chats.load_chat(chat.id).params == {"max_tokens": 128, "top_p": 0.9}


@pytest.mark.parametrize(
    "url", ["http://admin:pw@127.0.0.1:8000", "http://127.0.0.1:8000/?api_key=sk-1", "http://u@h:1"]
)
def test_target_url_carrying_credentials_is_refused(store: SessionStore, url: str) -> None:
    target = make_target().model_copy(update={"base_url": url})
    with pytest.raises(SessionStoreError, match="api_key_env"):
        store.chats.create_chat(target)
    assert store.chats.list_chats() == []
