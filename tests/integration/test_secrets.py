"""No secret value in any output, file or export (issue 9, "Secrets").

Canary keys are sent to real servers on 127.0.0.1 and the CLI runs as a real process; every byte it
printed, wrote or stored is searched for the canary afterwards.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from backends.bench.results import RunStatus
from backends.errors import TargetError
from backends.redaction import Redactor, environment_secrets, redact, redact_url
from backends.targets import read_api_key
from sessions import SessionStore
from tests.fakes.openai_like_server import FakeServer, FakeServerConfig
from tests.sessions_helpers import make_config, make_level_result, make_records

# Neither canary matches a secret-looking pattern, so only "redact the value that was sent" hides it.
CANARY = "canary-4f1c9e7b2d6a8053"
CANARY_ENV = "SERVEDECK_TEST_BENCH_CRED"
SK_CANARY = "sk-proj-Zq81VbX3c9LmT0aWn7Ue"
SMALL = ["--concurrency", "1", "--dataset", "random", "--random-input-len", "16", "--output-len", "4"]
SMALL += ["--num-prompts", "4"]


def _cli(
    args: list[str], data_dir: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tui.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "SERVEDECK_DATA_DIR": str(data_dir), "COLUMNS": "200", **(env or {})},
        stdin=subprocess.DEVNULL,
    )


def _bytes_under(folder: Path) -> bytes:
    # Stored requests are zlib-compressed: the store's bytes show its messages; exports show the requests.
    return b"".join(path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file())


@pytest.fixture
def echoing_server() -> Iterator[FakeServer]:
    with FakeServer(FakeServerConfig(reject_key_echoing=True)) as server:
        yield server


def _export_everything(data_dir: Path, out: Path) -> tuple[bytes, str]:
    """Every `runs export` format of the one stored run, and what the commands printed."""
    listed = _cli(["runs", "list", "--json"], data_dir)
    assert listed.returncode == 0, listed.stderr
    (run,) = json.loads(listed.stdout)
    printed = listed.stdout + listed.stderr
    for fmt, target in (("bundle", "b.json"), ("sweep", "s.json"), ("csv", "s.csv"), ("vllm", "vllm")):
        args = ["runs", "export", run["id"], "--format", fmt, "-o", str(out / target)]
        if fmt in ("sweep", "vllm"):
            args.append("--detailed")
        done = _cli(args, data_dir)
        assert done.returncode == 0, done.stderr
        printed += done.stdout + done.stderr
    shown = _cli(["runs", "show", run["id"]], data_dir)
    shown_json = _cli(["runs", "show", run["id"], "--json"], data_dir)
    printed += shown.stdout + shown.stderr + shown_json.stdout + shown_json.stderr
    return _bytes_under(out), printed


@pytest.mark.parametrize("key", [CANARY, SK_CANARY])
def test_a_server_that_echoes_the_key_gets_it_nowhere(
    echoing_server: FakeServer, tmp_path: Path, key: str
) -> None:
    data_dir, out = tmp_path / "data", tmp_path / "out"
    out.mkdir()
    done = _cli(
        [
            "bench",
            "--plain",
            "--target",
            echoing_server.url,
            "--api-key-env",
            CANARY_ENV,
            *SMALL,
            "--out",
            str(out / "bench.json"),
            "--csv",
            str(out / "bench.csv"),
        ],
        data_dir,
        env={CANARY_ENV: key},
    )
    assert "Traceback" not in done.stderr
    # The requests really were refused with the key quoted back, and the user still sees why.
    assert any(auth == f"Bearer {key}" for _, path, auth in echoing_server.requests if "completions" in path)
    assert "Incorrect API key provided" in done.stdout + done.stderr
    assert (out / "bench.json").exists()
    exported, printed = _export_everything(data_dir, out)
    assert b"Incorrect API key provided" in exported
    for where, content in (
        ("bench output", (done.stdout + done.stderr).encode()),
        ("files and exports", exported),
        ("runs commands", printed.encode()),
        ("the store", _bytes_under(data_dir)),
    ):
        assert key.encode() not in content, where


# ---- the redaction itself ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        (
            "HTTP 401: Incorrect API key provided: sk-proj-Zq81VbX3c9LmT0aWn7Ue. You can",
            "Zq81VbX3c9LmT0aWn7Ue",
        ),
        ("cannot connect to http://admin:hunter2pw@10.0.0.1:8000/v1", "hunter2pw"),
        ("GET https://h/v1/models?api_key=abc123def&x=1 failed", "abc123def"),
        ("upstream said: Authorization: Bearer eyAbCdEf0123456789", "eyAbCdEf0123456789"),
        ('{"password": "hunter2pw", "max_tokens": 5}', "hunter2pw"),
        ("bad token hf_AbCdEfGhIjKlMnOpQrStUv in header", "AbCdEfGhIjKlMnOpQrStUv"),
        ("ghp_0123456789abcdefghijABCDEFGHIJ was revoked", "0123456789abcdefghijABCDEFGHIJ"),
    ],
)
def test_secret_looking_text_is_masked(text: str, secret: str) -> None:
    masked = redact(text)
    assert secret not in masked
    assert "***" in masked


@pytest.mark.parametrize(
    "text",
    [
        "no request completed: HTTP 500: The model is overloaded, try again later",
        "token counts: tiktoken cl100k_base; max_tokens=5, 4 tokens: ok",
        "task-abcdefgh12345 on disk-usage12345678",
        "e.g. HTTP 429 (retry: stream ended without [DONE])",
    ],
)
def test_ordinary_messages_are_left_alone(text: str) -> None:
    assert redact(text) == text


def test_known_values_are_masked_whatever_they_look_like() -> None:
    redactor = Redactor([CANARY, None, "ab"])  # too short to mask: "ab" would eat ordinary words
    assert redactor(f"a {CANARY} b about") == "a *** b about"
    assert redactor("x 7f3k-unlisted-key y", ["7f3k-unlisted-key"]) == "x *** y"


def test_environment_secrets_are_masked_by_the_name_of_their_variable() -> None:
    env = {
        "HF_TOKEN": "plainvalue-1234567",
        "MY_API_KEY": "zzzz-yyyy-xxxx",
        "HOME": "/home/u",
        "X_KEY": "short",
    }
    assert sorted(environment_secrets(env)) == ["plainvalue-1234567", "zzzz-yyyy-xxxx"]


def test_redact_url_drops_userinfo_and_masks_token_parameters() -> None:
    assert redact_url("https://user:pw12345@vllm.example:8443/v1?token=abc&x=2") == (
        "https://vllm.example:8443/v1?token=***&x=2"
    )
    assert redact_url("http://127.0.0.1:8000") == "http://127.0.0.1:8000"


# ---- keys given where a name belongs, URLs with credentials ---------------------------------------


def test_a_key_given_as_api_key_env_is_refused_without_repeating_it() -> None:
    with pytest.raises(TargetError) as caught:
        read_api_key(SK_CANARY)
    assert SK_CANARY not in str(caught.value)
    assert "NAME of an environment variable" in str(caught.value)
    with pytest.raises(TargetError):
        read_api_key("not a name")


@pytest.mark.parametrize("key", [SK_CANARY, CANARY])
def test_bench_with_a_key_as_api_key_env_does_not_echo_it(tmp_path: Path, key: str) -> None:
    done = _cli(
        ["bench", "--plain", "--target", "http://127.0.0.1:9", "--api-key-env", key, *SMALL], tmp_path
    )
    assert done.returncode == 1
    assert "NAME of an environment variable" in done.stderr
    assert key not in done.stdout + done.stderr


def test_bench_refuses_a_target_url_with_credentials_before_writing_anything(
    echoing_server: FakeServer, tmp_path: Path
) -> None:
    url = echoing_server.url.replace("http://", f"http://bench:{CANARY}@")
    out = tmp_path / "out.json"
    done = _cli(["bench", "--plain", "--target", url, *SMALL, "--out", str(out)], tmp_path / "data")
    assert done.returncode == 1, done.stderr
    assert "credentials" in done.stderr and "Traceback" not in done.stderr
    assert CANARY not in done.stdout + done.stderr
    assert not out.exists()
    assert echoing_server.requests == []


def _stored_run(data_dir: Path) -> str:
    """A run whose records and messages carry secrets, as a run stored by an older ServeDeck would."""
    config = make_config(levels=[1.0])
    records = make_records(0, 6, chunks=4)
    records[1] = records[1].model_copy(
        update={"success": False, "error": f"HTTP 401: Incorrect API key provided: {SK_CANARY}"}
    )
    with SessionStore.open(data_dir) as store:
        writer = store.runs.writer()
        run_id = writer.begin_run(config, gpu="1x L4")
        writer.finish_level(make_level_result(config, 0, records, status=RunStatus.PARTIAL))
        writer.finish_run(RunStatus.PARTIAL)
        with store.db.write() as conn:
            conn.execute("UPDATE runs SET message = ?", (f"server said Bearer {CANARY}",))
            conn.execute("UPDATE run_levels SET message = ?", (f"e.g. key {SK_CANARY} refused",))
    return run_id


def test_secrets_that_reached_the_store_never_leave_it(tmp_path: Path) -> None:
    data_dir, out = tmp_path / "data", tmp_path / "out"
    out.mkdir()
    _stored_run(data_dir)
    exported, printed = _export_everything(data_dir, out)
    assert b"Incorrect API key provided" in exported and b"server said Bearer ***" in exported
    for key in (SK_CANARY, CANARY):
        assert key.encode() not in exported
        assert key not in printed


def _bundle_file(tmp_path: Path, edit: dict[str, str]) -> Path:
    source = tmp_path / "source"
    run_id = _stored_run(source)
    with SessionStore.open(source) as store:
        from sessions.bundle import bundle_json

        bundle = json.loads(bundle_json(store.export_bundle(run_id)))
    bundle["message"] = edit.get("message", bundle["message"])
    bundle["levels"][0]["message"] = edit.get("level_message", bundle["levels"][0]["message"])
    bundle["levels"][0]["records"][1]["error"] = edit.get("error", bundle["levels"][0]["records"][1]["error"])
    bundle["config"]["target"]["base_url"] = edit.get("base_url", bundle["config"]["target"]["base_url"])
    path = tmp_path / "run.servedeck.json"
    path.write_text(json.dumps(bundle))
    return path


def test_import_refuses_a_bundle_whose_url_carries_credentials(tmp_path: Path) -> None:
    path = _bundle_file(tmp_path, {"base_url": f"http://admin:{CANARY}@127.0.0.1:8000"})
    data_dir = tmp_path / "data"
    done = _cli(["runs", "import", str(path)], data_dir)
    assert done.returncode == 1, done.stdout
    assert "credentials" in done.stderr
    assert CANARY not in done.stdout + done.stderr
    listed = _cli(["runs", "list", "--json"], data_dir)
    assert json.loads(listed.stdout) == []


def test_import_masks_secrets_in_messages_and_request_errors(tmp_path: Path) -> None:
    path = _bundle_file(
        tmp_path,
        {
            "message": f"run note with api_key={CANARY}",
            "level_message": f"e.g. HTTP 401: Incorrect API key provided: {SK_CANARY}",
            "error": f"HTTP 401: token hf_AbCdEfGhIjKlMnOpQrStUv and {SK_CANARY}",
        },
    )
    data_dir, out = tmp_path / "data", tmp_path / "out"
    out.mkdir()
    done = _cli(["runs", "import", str(path)], data_dir)
    assert done.returncode == 0, done.stderr
    exported, printed = _export_everything(data_dir, out)
    for secret in (CANARY, SK_CANARY, "hf_AbCdEfGhIjKlMnOpQrStUv"):
        assert secret.encode() not in exported + _bytes_under(data_dir)
        assert secret not in printed


# ---- deploy render -------------------------------------------------------------------------------

RENDER = ["deploy", "render", "--model", "google/gemma-3-27b-it", "--gpu", "h100", "--count", "1"]


@pytest.mark.parametrize(
    "extra",
    [
        [f"--extra-arg=--api-key={CANARY}"],
        ["--extra-arg=--api-key", f"--extra-arg={CANARY}"],
        [f"--extra-arg=--served-model-name={SK_CANARY}"],
        ["--extra-arg=--model-loader-extra-config", f'--extra-arg={{"token": "{CANARY}"}}'],
    ],
)
@pytest.mark.parametrize("output", ["yaml", "json"])
def test_render_refuses_extra_args_that_carry_a_key(tmp_path: Path, extra: list[str], output: str) -> None:
    done = _cli([*RENDER, "-o", output, *extra], tmp_path)
    assert done.returncode == 1, done.stdout[-300:]
    assert done.stdout == ""
    assert "secret" in done.stderr and "servedeck.io/spec" in done.stderr
    for key in (CANARY, SK_CANARY):
        assert key not in done.stderr


def test_render_still_takes_ordinary_extra_args(tmp_path: Path) -> None:
    done = _cli([*RENDER, "--extra-arg=--swap-space=4", "--extra-arg=--tokenizer-mode=auto"], tmp_path)
    assert done.returncode == 0, done.stderr
    assert "--swap-space=4" in done.stdout and "--tokenizer-mode=auto" in done.stdout


# ---- chat ----------------------------------------------------------------------------------------


def test_a_chat_answer_refused_with_the_key_quoted_back_does_not_show_it(
    echoing_server: FakeServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    from backends.chat import AnswerEnd, ChatParams, ChatStream, ChatTurn
    from backends.target_types import Target

    monkeypatch.setenv(CANARY_ENV, CANARY)
    target = Target(name="echo", base_url=echoing_server.url, model="fake-model", api_key_env=CANARY_ENV)
    stream = ChatStream(target, [ChatTurn(role="user", content="hi")], ChatParams(max_tokens=4))

    async def last_event() -> AnswerEnd:
        async with asyncio.timeout(60):
            async for event in stream.events():
                if isinstance(event, AnswerEnd):
                    return event
        raise AssertionError("the stream ended without an AnswerEnd")

    end = asyncio.run(last_event())
    assert end.error is not None and "HTTP 401" in end.error and "Incorrect API key provided" in end.error
    assert CANARY not in end.error
    assert any(auth == f"Bearer {CANARY}" for _, _, auth in echoing_server.requests)
