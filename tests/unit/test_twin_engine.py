"""The twin's engine: vLLM V1 scheduling invariants, KV paging, prefix caching, capacity and bad input."""

from __future__ import annotations

import numpy as np
import pytest

from backends.errors import ConfigError
from backends.twin.capacity import GIB, plan_memory
from backends.twin.engine import (
    FinishReason,
    InvalidRequestError,
    PromptTooLongError,
    StepResult,
    TwinConfig,
    TwinEngine,
)
from backends.twin.roofline import Roofline, StepCost
from manifests.gpus import GpuType
from manifests.spec import DeploymentSpec

pytestmark = pytest.mark.timeout(60)


def small_h100(**engine_args: object) -> TwinConfig:
    args: dict[str, object] = {"max_model_len": 4096}
    args.update(engine_args)
    return TwinConfig.build("gemma-3-27b-it", "h100", 1, **args)


def drain(engine: TwinEngine, now: float = 0.0, limit: int = 100_000) -> list[StepResult]:
    steps: list[StepResult] = []
    for _ in range(limit):
        if not engine.has_work():
            return steps
        step = engine.step(now)
        engine.pool.check()
        steps.append(step)
        now += step.duration_s
    raise AssertionError("engine did not drain")


# -- scheduling ----------------------------------------------------------------------------------------------


def test_token_budget_and_max_num_seqs_are_respected() -> None:
    engine = TwinEngine(small_h100(max_num_batched_tokens=64, max_num_seqs=5))
    for i in range(12):
        engine.add_request(f"r{i}", prompt_tokens=40 + 7 * i, max_tokens=10)
    for step in drain(engine):
        assert step.prefill_tokens + step.decode_tokens <= 64
        assert step.num_scheduled <= 5
    stats = engine.stats()
    assert stats.generation_tokens_total == 12 * 10
    assert stats.prompt_tokens_total == sum(40 + 7 * i for i in range(12))
    assert stats.running == stats.waiting == 0


def test_decodes_go_first_and_prefill_takes_the_rest_of_the_budget() -> None:
    engine = TwinEngine(small_h100(max_num_batched_tokens=100))
    for i in range(3):
        engine.add_request(f"d{i}", prompt_tokens=20, max_tokens=50)
    first = engine.step(0.0)
    assert {o.request_id for o in first.outputs} == {"d0", "d1", "d2"}  # prefills done, first tokens out
    engine.add_request("long", prompt_tokens=1000, max_tokens=5)
    step = engine.step(1.0)
    assert {o.request_id for o in step.outputs} == {"d0", "d1", "d2"}  # every decode got its token
    assert step.decode_tokens == 3
    assert step.prefill_tokens == 97  # the long prompt is chunked to what the decodes left
    assert engine.stats().running == 4


def test_without_chunked_prefill_a_prompt_over_the_budget_waits() -> None:
    engine = TwinEngine(small_h100(enable_chunked_prefill=False, max_num_batched_tokens=4096))
    engine.add_request("a", prompt_tokens=3000, max_tokens=4)
    engine.add_request("b", prompt_tokens=2000, max_tokens=4)
    step = engine.step(0.0)
    assert step.prefill_tokens == 3000  # "b" does not fit the rest of the budget and is not chunked
    assert engine.stats().waiting == 1


def test_first_token_after_prefill_then_one_token_per_step() -> None:
    engine = TwinEngine(small_h100(max_num_batched_tokens=256))
    engine.add_request("r", prompt_tokens=600, max_tokens=3)
    steps = drain(engine)
    tokens = [[o.output_tokens for o in s.outputs] for s in steps]
    assert tokens == [[], [], [1], [2], [3]]  # 256 + 256 + 88 prompt tokens, then decodes
    assert steps[-1].outputs[0].finish_reason is FinishReason.LENGTH


def test_eos_after_stops_early_unless_ignore_eos() -> None:
    engine = TwinEngine(small_h100())
    engine.add_request("eos", prompt_tokens=10, max_tokens=50, eos_after=5)
    engine.add_request("ignore", prompt_tokens=10, max_tokens=8, ignore_eos=True, eos_after=3)
    finished = {o.request_id: o for s in drain(engine) for o in s.finished}
    assert finished["eos"].output_tokens == 5 and finished["eos"].finish_reason is FinishReason.STOP
    assert finished["ignore"].output_tokens == 8 and finished["ignore"].finish_reason is FinishReason.LENGTH


def test_step_time_grows_with_batch_and_context() -> None:
    roof = Roofline(small_h100())
    small = StepCost(tokens=1, sampled=1, sequences=1, kv_full_tokens=100, kv_sliding_tokens=100)
    big_batch = StepCost(
        tokens=256, sampled=256, sequences=256, kv_full_tokens=25600, kv_sliding_tokens=25600
    )
    long_ctx = StepCost(
        tokens=256, sampled=256, sequences=256, kv_full_tokens=2_560_000, kv_sliding_tokens=262_144
    )
    assert 0 < roof.step_seconds(small) < roof.step_seconds(big_batch) < roof.step_seconds(long_ctx)


def test_vectorised_decode_times_match_single_steps() -> None:
    roof = Roofline(TwinConfig.build("gemma-3-27b-it", "h100", 2, max_model_len=8192))
    contexts = np.array([100, 900, 1500, 3000])
    kv_full = np.array([contexts.sum(), contexts.sum() + 4])
    kv_sliding = np.array([np.minimum(contexts, 1024).sum(), np.minimum(contexts + 1, 1024).sum()])
    vector = roof.decode_seconds(4, kv_full, kv_sliding)
    for i in range(2):
        cost = StepCost(
            tokens=4,
            sampled=4,
            sequences=4,
            kv_full_tokens=int(kv_full[i]),
            kv_sliding_tokens=int(kv_sliding[i]),
            attn_full_pairs=float(kv_full[i]),
            attn_sliding_pairs=float(kv_sliding[i]),
        )
        assert vector[i] == pytest.approx(roof.step_seconds(cost), rel=1e-12)


def test_same_input_gives_the_same_steps() -> None:
    def run() -> list[tuple[float, list[tuple[str, int]], list[str]]]:
        engine = TwinEngine(small_h100(gpu_memory_utilization=0.8))
        rng = np.random.default_rng(3)
        for i in range(60):
            engine.add_request(
                f"r{i}", int(rng.integers(50, 900)), int(rng.integers(5, 300)), prefix_key=f"k{i % 7}"
            )
        return [
            (s.duration_s, [(o.request_id, o.output_tokens) for o in s.outputs], s.preempted)
            for s in drain(engine)
        ]

    assert run() == run()


# -- KV cache ------------------------------------------------------------------------------------------------


def tight_engine() -> TwinEngine:
    # 0.8 of an H100 leaves ~6 GiB of KV next to Gemma 3 27B: about 700 blocks of 16 tokens.
    return TwinEngine(small_h100(gpu_memory_utilization=0.8))


def test_preemption_when_the_kv_cache_runs_out() -> None:
    engine = tight_engine()
    capacity = engine.memory.num_gpu_blocks
    for i in range(40):
        engine.add_request(f"r{i}", prompt_tokens=500, max_tokens=500)
    now, preempted_seen, completed = 0.0, 0, 0
    while engine.has_work():
        newest = engine.running[-1].request_id if engine.running else None
        step = engine.step(now)
        engine.pool.check()
        assert engine.pool.used_pages <= capacity
        if step.preempted:
            preempted_seen += len(step.preempted)
            assert step.preempted[0] == newest  # FCFS: the newest running request goes first
        completed += len(step.finished)
        now += step.duration_s
    stats = engine.stats()
    assert preempted_seen > 0 and stats.preemptions_total == preempted_seen
    assert completed == 40 and stats.generation_tokens_total == 40 * 500  # recomputed, nothing lost
    assert stats.kv_cache_usage == 0.0


def test_kv_usage_rises_with_running_requests() -> None:
    engine = TwinEngine(small_h100())
    engine.add_request("a", prompt_tokens=1000, max_tokens=100)
    engine.step(0.0)
    one = engine.stats().kv_cache_usage
    engine.add_request("b", prompt_tokens=1000, max_tokens=100)
    engine.step(0.1)
    assert 0 < one < engine.stats().kv_cache_usage < 1


def test_prefix_cache_hits_on_a_repeated_prompt() -> None:
    engine = TwinEngine(small_h100())
    engine.add_request("first", prompt_tokens=800, max_tokens=2, prefix_key="doc")
    drain(engine)
    engine.add_request("again", prompt_tokens=800, max_tokens=2, prefix_key="doc")
    steps = drain(engine)
    stats = engine.stats()
    assert stats.prefix_cache_queries_total == 1600
    assert stats.prefix_cache_hits_total == 784  # 49 full blocks; the last token is always recomputed
    assert steps[0].prefill_tokens == 16
    assert steps[0].outputs[0].cached_tokens == 784


def test_shared_prefix_covers_only_its_length() -> None:
    engine = TwinEngine(small_h100())
    engine.add_request("a", prompt_tokens=500, max_tokens=1, prefix_key="system", prefix_len=200)
    drain(engine)
    engine.add_request("b", prompt_tokens=700, max_tokens=1, prefix_key="system", prefix_len=200)
    drain(engine)
    assert engine.stats().prefix_cache_hits_total == 192  # 12 whole blocks of the 200 shared tokens


def test_no_hits_with_prefix_caching_off() -> None:
    engine = TwinEngine(small_h100(enable_prefix_caching=False))
    for name in ("a", "b"):
        engine.add_request(name, prompt_tokens=800, max_tokens=2, prefix_key="doc")
        drain(engine)
    stats = engine.stats()
    assert stats.prefix_cache_hits_total == stats.prefix_cache_queries_total == 0


def test_abort_frees_the_blocks() -> None:
    engine = TwinEngine(small_h100())
    engine.add_request("a", prompt_tokens=1000, max_tokens=100)
    engine.add_request("b", prompt_tokens=10, max_tokens=100)
    engine.step(0.0)
    assert engine.abort_request("a") and engine.abort_request("b")
    assert not engine.abort_request("a")
    assert engine.pool.used_pages == 0 and not engine.has_work()


# -- capacity ------------------------------------------------------------------------------------------------


def test_hybrid_layout_of_gemma_3_27b() -> None:
    plan = plan_memory(TwinConfig.build("gemma-3-27b-it", "h100", 4, max_model_len=32768))
    layout = plan.layout
    # vLLM's hybrid doc: 10 full-attention layers, 52 sliding -> 1 full group + 6 sliding groups of 10.
    assert (layout.layers_per_group, layout.full_groups, layout.sliding_groups) == (10, 1, 6)
    assert layout.padding_layers == 8
    assert layout.page_bytes_per_gpu == 10 * 16 * 2 * 4 * 128 * 2  # 4 KV heads per GPU at TP 4
    assert plan.weight_bytes == pytest.approx(51.2 * GIB / 4, abs=1)
    assert plan.pages_per_max_len_request == 2048 + 6 * 65


def test_full_attention_allocator_holds_fewer_long_requests() -> None:
    hybrid = plan_memory(TwinConfig.build("gemma-3-27b-it", "h100", 2, max_model_len=32768))
    full = plan_memory(
        TwinConfig.build("gemma-3-27b-it", "h100", 2, max_model_len=32768, hybrid_kv_cache=False)
    )
    assert full.max_concurrency_at(32768) < hybrid.max_concurrency_at(32768) / 4


def test_vllm_scheduler_defaults_per_gpu() -> None:
    h100, a100 = small_h100(), TwinConfig.build("gemma-3-27b-it", "a100-80gb", 1, max_model_len=4096)
    assert (h100.resolved_max_num_batched_tokens, h100.resolved_max_num_seqs) == (8192, 1024)
    assert (a100.resolved_max_num_batched_tokens, a100.resolved_max_num_seqs) == (2048, 256)


def test_config_from_a_deployment_spec() -> None:
    spec = DeploymentSpec(
        name="gemma",
        model="google/gemma-3-27b-it",
        gpu=GpuType.H100,
        gpu_count=2,
        max_model_len=8192,
        gpu_memory_utilization=0.85,
        enable_prefix_caching=False,
    )
    config = TwinConfig.from_spec(spec)
    assert (config.model.name, config.gpu, config.gpu_count) == ("gemma-3-27b-it", GpuType.H100, 2)
    assert (config.max_model_len, config.gpu_memory_utilization, config.enable_prefix_caching) == (
        8192,
        0.85,
        False,
    )


# -- bad input -----------------------------------------------------------------------------------------------


def test_prompt_plus_max_tokens_over_max_model_len_is_vllms_400() -> None:
    engine = TwinEngine(small_h100())
    with pytest.raises(PromptTooLongError) as err:
        engine.add_request("r", prompt_tokens=3000, max_tokens=2000)
    assert str(err.value) == (
        "'max_tokens' or 'max_completion_tokens' is too large: 2000. This model's maximum context length is "
        "4096 tokens and your request has 3000 input tokens (2000 > 4096 - 3000)."
    )
    with pytest.raises(PromptTooLongError, match="your request has 5000 input tokens"):
        engine.add_request("r", prompt_tokens=5000, max_tokens=1)
    assert not engine.has_work()


def test_bad_requests_are_rejected() -> None:
    engine = TwinEngine(small_h100())
    engine.add_request("r", prompt_tokens=10, max_tokens=10)
    with pytest.raises(InvalidRequestError, match="already in the engine"):
        engine.add_request("r", prompt_tokens=10, max_tokens=10)
    with pytest.raises(InvalidRequestError, match="max_tokens must be at least 1"):
        engine.add_request("s", prompt_tokens=10, max_tokens=0)
    with pytest.raises(InvalidRequestError, match="at least 1 token"):
        engine.add_request("t", prompt_tokens=0, max_tokens=1)


def test_unknown_gpu_and_model_are_one_line_errors() -> None:
    with pytest.raises(ConfigError, match=r"unknown GPU type 'b200'; known: l4, a100-40gb"):
        TwinConfig.build("gemma-3-27b-it", "b200", 1)
    with pytest.raises(ConfigError, match=r"unknown model 'llama-9'; known: gemma-3-1b-it"):
        TwinConfig.build("llama-9", "h100", 1)


def test_tp_must_divide_the_kv_heads() -> None:
    with pytest.raises(
        ConfigError, match=r"tensor-parallel size 3 does not divide .*16 KV heads.*1, 2, 4, 8, 16, 32"
    ):
        TwinConfig.build("gemma-3-27b-it", "h100", 3)


def test_a_model_that_cannot_fit_names_the_numbers() -> None:
    with pytest.raises(ConfigError) as err:
        TwinEngine(TwinConfig.build("gemma-3-27b-it", "l4", 1))
    message = str(err.value)
    assert "does not fit 1xNVIDIA L4 24GB" in message
    assert "51.2 GiB of weights" in message and "for the KV cache out of 19.8 GiB" in message


def test_max_model_len_beyond_the_kv_cache_suggests_a_length() -> None:
    with pytest.raises(
        ConfigError, match=r"max-model-len 131,072 needs .* set --max-model-len [\d,]+ or less"
    ):
        TwinEngine(TwinConfig.build("gemma-3-27b-it", "a100-80gb", 1, hybrid_kv_cache=False))


def test_out_of_range_engine_args() -> None:
    with pytest.raises(ConfigError, match="gpu-memory-utilization must be in"):
        small_h100(gpu_memory_utilization=1.5)
    with pytest.raises(ConfigError, match="max-model-len 200,000 is outside"):
        small_h100(max_model_len=200_000)
    with pytest.raises(ConfigError, match="max-num-seqs must be at least 1"):
        small_h100(max_num_seqs=0)
    with pytest.raises(ConfigError, match=r"GPU count .* at least 1"):
        TwinConfig.build("gemma-3-27b-it", "h100", 0)
