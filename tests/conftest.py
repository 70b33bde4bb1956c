"""Shared fixtures.

``local_engine``: ONE real llama-server (Gemma 3 270M, 8 slots x 2048 tokens) for the whole test
session, on a free port of 127.0.0.1. It yields the ``LocalEngine``: ``base_url`` (server root, where
``/health``, ``/metrics``, ``/slots``, ``/tokenize`` live), ``openai_base_url`` (``.../v1``),
``model_id`` ("gemma-3-270m"), ``port``, ``pid``, ``target()``. Tests must not stop it; start a
private ``LocalEngine`` to test stopping.

A test that needs the engine is skipped only when llama-server is genuinely not installed, and
with ``SERVEDECK_REQUIRE_ENGINE=1`` (CI) that fails loudly instead.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from backends.engines.llama_binary import LlamaServerBinary, find_llama_server
from backends.engines.local import LocalEngine, LocalEngineConfig
from backends.errors import EngineError
from tests.fakes.sse_server import FakeSSEServer

REQUIRE_ENGINE_ENV = "SERVEDECK_REQUIRE_ENGINE"
SESSION_ENGINE_PARALLEL = 8
SESSION_ENGINE_CTX_PER_SLOT = 2048
ENGINE_START_DEADLINE_S = 180.0


def require_llama_server() -> LlamaServerBinary:
    """The installed llama-server, or skip the calling test (fail it when SERVEDECK_REQUIRE_ENGINE=1)."""
    try:
        return find_llama_server()
    except EngineError as err:
        if os.environ.get(REQUIRE_ENGINE_ENV) == "1":
            pytest.fail(f"{REQUIRE_ENGINE_ENV}=1 but the local engine is unavailable: {err}", pytrace=False)
        pytest.skip(f"llama-server is not installed (set {REQUIRE_ENGINE_ENV}=1 to fail instead): {err}")


@pytest.fixture(scope="session")
def local_engine() -> Iterator[LocalEngine]:
    require_llama_server()
    engine = LocalEngine(
        LocalEngineConfig(parallel=SESSION_ENGINE_PARALLEL, ctx_per_slot=SESSION_ENGINE_CTX_PER_SLOT)
    )
    engine.start(deadline_s=ENGINE_START_DEADLINE_S)
    try:
        yield engine
    finally:
        engine.stop()


@pytest.fixture(scope="session", autouse=True)
def _private_data_and_config_dirs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """No test reads or writes the user's own store, calibrations or lists: a test that forgets
    --data-dir (or a subprocess it starts) lands in this session's folders. Tests that need their own
    folders still set the variables themselves."""
    from backends.config import CONFIG_DIR_ENV, DATA_DIR_ENV

    saved = {name: os.environ.get(name) for name in (DATA_DIR_ENV, CONFIG_DIR_ENV)}
    root = tmp_path_factory.mktemp("servedeck-home")
    os.environ.setdefault(DATA_DIR_ENV, str(root / "data"))
    os.environ.setdefault(CONFIG_DIR_ENV, str(root / "config"))
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    """anyio-marked tests run on asyncio only (Textual's loop)."""
    return "asyncio"


@pytest.fixture
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Config, data, cache and kubeconfig in tmp_path: nothing of the developer's leaks in.

    A module opts in with ``pytestmark = pytest.mark.usefixtures("isolated")``; a test that needs the folder
    takes ``isolated: Path`` (``isolated / "servedeck_data_dir"``, ...)."""
    for name in ("SERVEDECK_CONFIG_DIR", "SERVEDECK_DATA_DIR", "SERVEDECK_CACHE_DIR"):
        monkeypatch.setenv(name, str(tmp_path / name.lower()))
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "no-kubeconfig"))
    return tmp_path


@pytest.fixture(scope="module")
def fake_server() -> Iterator[FakeSSEServer]:
    """One fake OpenAI-compatible SSE server (tests/fakes/sse_server.py) per test module."""
    with FakeSSEServer() as server:
        yield server
