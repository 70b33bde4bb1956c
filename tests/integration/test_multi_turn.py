"""Multi-turn conversations (issue 13 items 1 and 2): sessions replayed turn by turn, per-turn TTFT, and the
prefix-cache hit rate the server reports; the twin's block-level prefix cache against the real engine's."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from backends.bench.datasets import sample_requests
from backends.bench.models import Axis
from backends.bench.results import DatasetSpec, SweepConfig, SweepResult
from backends.bench.sweep import run_sweep
from backends.engines.local import LocalEngine, LocalEngineConfig
from backends.errors import DatasetError
from backends.prometheus import prefix_cache_hit_rate
from backends.targets import discover_target
from backends.twin.engine_config import TwinConfig
from backends.twin.process import start_twin_process
from tests.conftest import ENGINE_START_DEADLINE_S, require_llama_server
from tests.unit.test_datasets import WhitespaceCounter

TWIN = TwinConfig.build("gemma-3-27b-it", "h100", 1)
WORKLOAD = DatasetSpec(kind="multi_turn", turns=4, max_context_len=1800)


def _sweep(base_url: str) -> SweepResult:
    async def go() -> SweepResult:
        target = await discover_target(base_url)
        config = SweepConfig(
            target=target, dataset=WORKLOAD, axis=Axis.CONCURRENCY, levels=[4], num_prompts=4, output_len=16
        )
        return await run_sweep(config, lambda _: None)

    return asyncio.run(asyncio.wait_for(go(), timeout=300))


def _check_four_by_four(result: SweepResult) -> float:
    (level,) = result.levels
    assert level.metrics.completed == 16, level.message
    assert sorted((r.session, r.turn) for r in level.records) == [(s, t) for s in range(4) for t in range(4)]
    assert level.turns is not None and [t.turn for t in level.turns] == [0, 1, 2, 3]
    assert all(t.completed == 4 and t.mean_ttft_ms is not None for t in level.turns)
    # Each turn resends the history: its prompt grows.
    lens = [t.mean_prompt_len for t in level.turns]
    assert lens == sorted(lens) and lens[3] > lens[0]
    rate = prefix_cache_hit_rate(level.server_snapshots)
    assert rate is not None
    return rate


def test_a_conversation_without_a_user_turn_is_one_clear_line(tmp_path: Path) -> None:
    file = tmp_path / "chats.json"
    conversations = [
        {"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}]},
        {"conversations": [{"from": "gpt", "value": "I speak first"}]},
    ]
    file.write_text(json.dumps(conversations))
    spec = DatasetSpec(kind="multi_turn", path=str(file))
    with pytest.raises(DatasetError, match=r"conversation 2 of chats.json has no user turn") as err:
        sample_requests(spec, 2, WhitespaceCounter(), seed=0, output_len=8)
    assert "\n" not in str(err.value)


def test_sessions_keep_their_turns_in_order_within_the_context_limit() -> None:
    sampled = sample_requests(WORKLOAD, 6, WhitespaceCounter(), seed=3, output_len=16, levels=2)
    assert len(sampled.level_conversations) == 2
    for sessions in sampled.level_conversations:
        assert len(sessions) == 6
        for conversation in sessions:
            assert 1 <= len(conversation.turns) <= 4
            assert sum(t.user_len + 16 for t in conversation.turns) <= 1800
    assert [c.turns[0].user for c in sampled.level_conversations[0]] == [r.prompt for r in sampled.requests]


@pytest.fixture(scope="module")
def swa_full_engine() -> Iterator[LocalEngine]:
    """Gemma 3's sliding window: without --swa-full llama.cpp reuses only exact repeats
    (tests/integration/test_shared_prefix_workloads.py)."""
    require_llama_server()
    engine = LocalEngine(LocalEngineConfig(parallel=4, ctx_per_slot=2048, extra_args=("--swa-full",)))
    engine.start(deadline_s=ENGINE_START_DEADLINE_S)
    try:
        yield engine
    finally:
        engine.stop()


@pytest.mark.timeout(600)
def test_four_users_by_four_turns_hit_the_prefix_cache_on_the_engine_and_the_twin_alike(
    swa_full_engine: LocalEngine,
) -> None:
    engine_rate = _check_four_by_four(_sweep(swa_full_engine.target().base_url))
    with start_twin_process(TWIN, log_interval_s=3600.0) as twin:
        twin_rate = _check_four_by_four(_sweep(twin.base_url))
    print(f"multi-turn 4x4 prefix-cache hit rate: local engine {engine_rate:.1%}, twin {twin_rate:.1%}")
    assert engine_rate > 0.3  # later turns find the history in the cache
    assert abs(twin_rate - engine_rate) <= 0.10
