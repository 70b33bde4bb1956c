"""Shared-prefix workloads from real text (issue 13, item 1): K prefixes x M suffixes, and random prompts
with a shared prefix; on the real local engine their prefix-cache hit rate is above single-turn ShareGPT's,
as llama.cpp's own ``timings.cache_n`` counts it."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from backends.bench.datasets import sample_requests, sharegpt_words
from backends.bench.models import Axis, RequestRecord
from backends.bench.results import DatasetSpec, SweepConfig, SweepResult
from backends.bench.sweep import run_sweep
from backends.engines.local import LocalEngine, LocalEngineConfig
from backends.errors import DatasetError
from backends.twin.engine_config import TwinConfig
from backends.twin.process import start_twin_process
from tests.conftest import ENGINE_START_DEADLINE_S, require_llama_server
from tests.unit.test_datasets import WhitespaceCounter

TWIN = TwinConfig.build("gemma-3-27b-it", "h100", 1)


def test_prefix_repetition_shares_k_prefixes_of_real_text_over_its_requests() -> None:
    spec = DatasetSpec(
        kind="prefix_repetition", prefix_len=40, suffix_len=10, num_prefixes=3, prefix_output_len=7
    )
    sampled = sample_requests(spec, 12, WhitespaceCounter(), seed=5, output_len=None)
    prompts = [r.prompt for r in sampled.requests]
    heads = {" ".join(p.split()[:40]) for p in prompts}
    assert len(heads) == 3  # three shared prefixes...
    assert len(set(prompts)) == 12  # ...each followed by its own suffixes
    assert all(r.prompt_len == 50 and r.expected_output_len == 7 for r in sampled.requests)
    vocabulary = set(sharegpt_words(5))
    assert all(word in vocabulary for p in prompts for word in p.split())  # ShareGPT's own words
    again = sample_requests(spec, 12, WhitespaceCounter(), seed=5, output_len=None)
    assert [r.prompt for r in again.requests] == prompts  # the seed decides


def test_random_prompts_with_a_shared_prefix_start_alike() -> None:
    spec = DatasetSpec(kind="random", random_input_len=20, random_output_len=4, random_prefix_len=30)
    sampled = sample_requests(spec, 6, WhitespaceCounter(), seed=1, output_len=None)
    assert len({" ".join(r.prompt.split()[:30]) for r in sampled.requests}) == 1
    assert [r.prompt_len for r in sampled.requests] == [50] * 6


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (DatasetSpec(kind="prefix_repetition", num_prefixes=20), "cannot cover 20 prefixes"),
        (DatasetSpec(kind="prefix_repetition", prefix_len=0), "prefix and suffix lengths"),
        (DatasetSpec(kind="random", random_prefix_len=-1), "prefix length must be >= 0"),
        (DatasetSpec(kind="custom"), "needs --dataset-path"),
    ],
)
def test_impossible_shared_prefix_workloads_are_one_clear_line(spec: DatasetSpec, message: str) -> None:
    with pytest.raises(DatasetError, match=message):
        sample_requests(spec, 10, WhitespaceCounter(), seed=0, output_len=None)


def _cache_hit_rate(records: Sequence[RequestRecord]) -> float:
    """llama.cpp's own count: prompt tokens taken from a slot's cache over all prompt tokens."""
    cached = evaluated = 0.0
    for record in records:
        assert record.server_timings is not None
        cached += record.server_timings.get("cache_n", 0.0)
        evaluated += record.server_timings["prompt_n"]
    return cached / (cached + evaluated)


def _sweep(engine: LocalEngine, dataset: DatasetSpec) -> SweepResult:
    config = SweepConfig(
        target=engine.target(),
        dataset=dataset,
        axis=Axis.CONCURRENCY,
        levels=[4],
        num_prompts=16,
        output_len=4,
        endpoint="completions",
    )
    return asyncio.run(asyncio.wait_for(run_sweep(config, lambda _: None), timeout=240))


@pytest.fixture(scope="module")
def swa_full_engine() -> Iterator[LocalEngine]:
    """A private engine with ``--swa-full``. Gemma 3 attends through a sliding window, and without a
    full-size window cache llama.cpp re-processes a prompt that only shares a prefix with a slot's
    cached one (measured: cache_n 0 for a second prompt sharing 383 of 447 tokens; 384 with
    --swa-full), so the session engine shows prefix hits for exact repeats only."""
    require_llama_server()
    engine = LocalEngine(LocalEngineConfig(parallel=4, ctx_per_slot=2048, extra_args=("--swa-full",)))
    engine.start(deadline_s=ENGINE_START_DEADLINE_S)
    try:
        yield engine
    finally:
        engine.stop()


@pytest.mark.timeout(400)
def test_a_shared_prefix_workload_hits_the_engines_prefix_cache_more_than_single_turn(
    swa_full_engine: LocalEngine,
) -> None:
    single = _sweep(swa_full_engine, DatasetSpec(kind="sharegpt"))
    # One system prompt of 384 tokens before every question of 64.
    shared = _sweep(
        swa_full_engine, DatasetSpec(kind="prefix_repetition", prefix_len=384, suffix_len=64, num_prefixes=1)
    )
    for result in (single, shared):
        assert result.levels[0].metrics.completed == 16, result.levels[0].message
    assert all(abs(r.prompt_len - 448) <= 2 for r in shared.levels[0].records)
    single_rate = _cache_hit_rate(single.levels[0].records)
    shared_rate = _cache_hit_rate(shared.levels[0].records)
    print(
        f"prefix-cache hit rate: single-turn ShareGPT {single_rate:.1%}, one shared prefix {shared_rate:.1%}"
    )
    assert shared_rate > single_rate + 0.2


def test_codebase_qa_shares_one_document_from_a_folder_and_asks_sharegpt_questions(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    (repo / "pkg").mkdir(parents=True)
    (repo / "pkg" / "a.py").write_text("def alpha(x):\n    return x + 1\n" * 40)
    (repo / "README.md").write_text("The alpha package adds one. " * 30)
    (repo / "image.png").write_bytes(b"\x89PNG not text")
    spec = DatasetSpec(kind="codebase_qa", document_path=str(repo), document_len=300)
    sampled = sample_requests(spec, 5, WhitespaceCounter(), seed=2, output_len=None)
    documents = {r.prompt.split("\n\nQuestion about the text above: ")[0] for r in sampled.requests}
    assert len(documents) == 1
    (document,) = documents
    assert abs(len(document.split()) - 300) <= 2  # text split at spaces: a piece may hold a newline
    assert "# file: README.md" in document and "def alpha" in document and "PNG" not in document
    questions = [r.prompt.split("Question about the text above: ")[1] for r in sampled.requests]
    assert len(set(questions)) == 5 and all(q.strip().endswith("?") for q in questions)
    assert all(r.expected_output_len == 128 for r in sampled.requests)
    with pytest.raises(DatasetError, match="does not exist"):
        sample_requests(
            DatasetSpec(kind="codebase_qa", document_path=str(tmp_path / "nope")),
            2,
            WhitespaceCounter(),
            seed=0,
            output_len=None,
        )


def test_a_document_longer_than_the_servers_context_is_one_clear_line(tmp_path: Path) -> None:
    with start_twin_process(TWIN, log_interval_s=3600.0) as twin:
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "tui.cli",
                "bench",
                "--plain",
                "--target",
                twin.base_url,
                "--dataset",
                "codebase_qa",
                "--document-len",
                "1000000",
                "--concurrency",
                "1",
            ],
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, "SERVEDECK_DATA_DIR": str(tmp_path)},
            stdin=subprocess.DEVNULL,
        )
    assert done.returncode == 1, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "longer than" in lines[0] and "max-model-len" in lines[0], done.stderr
