"""A small OpenAI-compatible control-plane server for tests, over real HTTP on 127.0.0.1.

It can act as vLLM (V1 or V0 metrics), llama.cpp's llama-server, the ServeDeck twin, or a plain
OpenAI-compatible server, and it can fail in the ways real servers do (404, HTML, error JSON,
401 without the key, a 401 on completions that quotes the key sent, a slow answer). It runs in a
background thread with its own event loop; ``FakeServer`` starts and stops it within bounded time.
The configuration is read on every request, so a test may change it while the server runs.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from aiohttp import web

from tests.fakes.threaded_aiohttp import ThreadedAiohttpServer


class Flavor(StrEnum):
    VLLM = "vllm"
    VLLM_V0 = "vllm-v0"
    LLAMACPP = "llamacpp"
    TWIN = "twin"
    PLAIN = "plain"


class ModelsMode(StrEnum):
    OK = "ok"
    NOT_FOUND = "404"
    HTML = "html"
    VLLM_ERROR_FLAT = "vllm-error-flat"
    VLLM_ERROR_NESTED = "vllm-error-nested"
    SLOW = "slow"
    EMPTY = "empty"


# What vLLM's V1 engine exposes (prometheus_client format: HELP/TYPE, labels sorted, _created
# gauges for counters), here with two engines under data parallelism.
VLLM_V1_METRICS = """\
# HELP python_gc_objects_collected_total Objects collected during gc
# TYPE python_gc_objects_collected_total counter
python_gc_objects_collected_total{generation="0"} 12345.0
# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="google/gemma-3-27b-it"} 37.0
vllm:num_requests_running{engine="1",model_name="google/gemma-3-27b-it"} 5.0
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="google/gemma-3-27b-it"} 2.0
vllm:num_requests_waiting{engine="1",model_name="google/gemma-3-27b-it"} 1.0
# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{engine="0",model_name="google/gemma-3-27b-it"} 0.5
vllm:kv_cache_usage_perc{engine="1",model_name="google/gemma-3-27b-it"} 0.25
# HELP vllm:num_preemptions_total Cumulative number of preemption from the engine.
# TYPE vllm:num_preemptions_total counter
vllm:num_preemptions_total{engine="0",model_name="google/gemma-3-27b-it"} 3.0
vllm:num_preemptions_total{engine="1",model_name="google/gemma-3-27b-it"} 1.0
# HELP vllm:num_preemptions_created Cumulative number of preemption from the engine.
# TYPE vllm:num_preemptions_created gauge
vllm:num_preemptions_created{engine="0",model_name="google/gemma-3-27b-it"} 1.7e+09
# HELP vllm:prompt_tokens_total Number of prefill tokens processed.
# TYPE vllm:prompt_tokens_total counter
vllm:prompt_tokens_total{engine="0",model_name="google/gemma-3-27b-it"} 1.234e+06
vllm:prompt_tokens_total{engine="1",model_name="google/gemma-3-27b-it"} 1000.0
# HELP vllm:generation_tokens_total Number of generation tokens processed.
# TYPE vllm:generation_tokens_total counter
vllm:generation_tokens_total{engine="0",model_name="google/gemma-3-27b-it"} 456789.0
vllm:generation_tokens_total{engine="1",model_name="google/gemma-3-27b-it"} 11.0
# HELP vllm:prefix_cache_queries_total Prefix cache queries, in terms of number of queried tokens.
# TYPE vllm:prefix_cache_queries_total counter
vllm:prefix_cache_queries_total{engine="0",model_name="google/gemma-3-27b-it"} 1.2e+06
vllm:prefix_cache_queries_total{engine="1",model_name="google/gemma-3-27b-it"} 0.0
# HELP vllm:prefix_cache_hits_total Prefix cache hits, in terms of number of cached tokens.
# TYPE vllm:prefix_cache_hits_total counter
vllm:prefix_cache_hits_total{engine="0",model_name="google/gemma-3-27b-it"} 3.1e+05
vllm:prefix_cache_hits_total{engine="1",model_name="google/gemma-3-27b-it"} 0.0
# HELP vllm:request_success_total Count of successfully processed requests.
# TYPE vllm:request_success_total counter
vllm:request_success_total{engine="0",finished_reason="stop",model_name="google/gemma-3-27b-it"} 1.0
vllm:request_success_total{engine="0",finished_reason="length",model_name="google/gemma-3-27b-it"} 131.0
# HELP vllm:time_to_first_token_seconds Histogram of time to first token in seconds.
# TYPE vllm:time_to_first_token_seconds histogram
vllm:time_to_first_token_seconds_bucket{engine="0",le="0.1",model_name="google/gemma-3-27b-it"} 140.0
vllm:time_to_first_token_seconds_bucket{engine="0",le="0.25",model_name="google/gemma-3-27b-it"} 812.0
vllm:time_to_first_token_seconds_bucket{engine="0",le="+Inf",model_name="google/gemma-3-27b-it"} 900.0
vllm:time_to_first_token_seconds_count{engine="0",model_name="google/gemma-3-27b-it"} 900.0
vllm:time_to_first_token_seconds_sum{engine="0",model_name="google/gemma-3-27b-it"} 123.5
# HELP vllm:cache_config_info Information of the LLMEngine CacheConfig
# TYPE vllm:cache_config_info gauge
vllm:cache_config_info{block_size="16",enable_prefix_caching="True",num_gpu_blocks="2048"} 1.0
"""

# vLLM's V0 engine: model_name label only, gpu_cache_usage_perc, swapped requests.
VLLM_V0_METRICS = """\
# HELP vllm:num_requests_running Number of requests currently running on GPU.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{model_name="meta-llama/Llama-3.1-8B-Instruct"} 8.0
# HELP vllm:num_requests_swapped Number of requests swapped to CPU.
# TYPE vllm:num_requests_swapped gauge
vllm:num_requests_swapped{model_name="meta-llama/Llama-3.1-8B-Instruct"} 0.0
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{model_name="meta-llama/Llama-3.1-8B-Instruct"} 4.0
# HELP vllm:gpu_cache_usage_perc GPU KV-cache usage. 1 means 100 percent usage.
# TYPE vllm:gpu_cache_usage_perc gauge
vllm:gpu_cache_usage_perc{model_name="meta-llama/Llama-3.1-8B-Instruct"} 0.875
# HELP vllm:cpu_cache_usage_perc CPU KV-cache usage. 1 means 100 percent usage.
# TYPE vllm:cpu_cache_usage_perc gauge
vllm:cpu_cache_usage_perc{model_name="meta-llama/Llama-3.1-8B-Instruct"} 0.0
# HELP vllm:num_preemptions_total Cumulative number of preemption from the engine.
# TYPE vllm:num_preemptions_total counter
vllm:num_preemptions_total{model_name="meta-llama/Llama-3.1-8B-Instruct"} 12.0
# HELP vllm:prompt_tokens_total Number of prefill tokens processed.
# TYPE vllm:prompt_tokens_total counter
vllm:prompt_tokens_total{model_name="meta-llama/Llama-3.1-8B-Instruct"} 20480.0
# HELP vllm:generation_tokens_total Number of generation tokens processed.
# TYPE vllm:generation_tokens_total counter
vllm:generation_tokens_total{model_name="meta-llama/Llama-3.1-8B-Instruct"} 27453.0
# HELP vllm:gpu_prefix_cache_hit_rate GPU prefix cache block hit rate.
# TYPE vllm:gpu_prefix_cache_hit_rate gauge
vllm:gpu_prefix_cache_hit_rate{model_name="meta-llama/Llama-3.1-8B-Instruct"} 0.3
"""

# llama-server --metrics (the shape of server_task_result_metrics::to_metrics: no labels, no KV gauge).
LLAMACPP_METRICS = """\
# HELP llamacpp:prompt_tokens_total Number of prompt tokens processed, excluding cached tokens
# TYPE llamacpp:prompt_tokens_total counter
llamacpp:prompt_tokens_total 1200
# HELP llamacpp:prompt_tokens_cached_total Number of prompt tokens reused from the cache
# TYPE llamacpp:prompt_tokens_cached_total counter
llamacpp:prompt_tokens_cached_total 300
# HELP llamacpp:prompt_seconds_total Total time spent processing prompts
# TYPE llamacpp:prompt_seconds_total counter
llamacpp:prompt_seconds_total 1.25
# HELP llamacpp:tokens_predicted_total Number of generation tokens processed
# TYPE llamacpp:tokens_predicted_total counter
llamacpp:tokens_predicted_total 640
# HELP llamacpp:tokens_predicted_seconds_total Total time spent generating tokens
# TYPE llamacpp:tokens_predicted_seconds_total counter
llamacpp:tokens_predicted_seconds_total 11.5
# HELP llamacpp:n_decode_total Total number of llama_decode() calls
# TYPE llamacpp:n_decode_total counter
llamacpp:n_decode_total 700
# HELP llamacpp:prompt_tokens_seconds Average prompt throughput in tokens/s
# TYPE llamacpp:prompt_tokens_seconds gauge
llamacpp:prompt_tokens_seconds 960
# HELP llamacpp:predicted_tokens_seconds Average generation throughput in tokens/s
# TYPE llamacpp:predicted_tokens_seconds gauge
llamacpp:predicted_tokens_seconds 55.6
# HELP llamacpp:requests_processing Number of requests processing
# TYPE llamacpp:requests_processing gauge
llamacpp:requests_processing 2
# HELP llamacpp:requests_deferred Number of requests deferred
# TYPE llamacpp:requests_deferred gauge
llamacpp:requests_deferred 1
# HELP llamacpp:n_busy_slots_per_decode Average number of busy slots per llama_decode() call
# TYPE llamacpp:n_busy_slots_per_decode gauge
llamacpp:n_busy_slots_per_decode 1.5
"""


def llamacpp_slot(
    slot_id: int, *, n_ctx: int, processing: bool, n_prompt_tokens: int, n_decoded: int
) -> dict[str, Any]:
    """One entry of llama-server's /slots, in the shape of recent builds."""
    return {
        "id": slot_id,
        "n_ctx": n_ctx,
        "speculative": False,
        "is_processing": processing,
        "id_task": 100 + slot_id,
        "n_prompt_tokens": n_prompt_tokens,
        "n_prompt_tokens_processed": n_prompt_tokens,
        "n_prompt_tokens_cache": 0,
        "params": {"n_predict": -1, "temperature": 0.8},
        "next_token": [
            {"has_next_token": processing, "has_new_line": False, "n_remain": -1, "n_decoded": n_decoded}
        ],
    }


def default_llamacpp_slots() -> list[dict[str, Any]]:
    return [
        llamacpp_slot(0, n_ctx=1024, processing=True, n_prompt_tokens=512, n_decoded=40),
        llamacpp_slot(1, n_ctx=1024, processing=True, n_prompt_tokens=256, n_decoded=10),
        llamacpp_slot(2, n_ctx=1024, processing=False, n_prompt_tokens=900, n_decoded=0),
        llamacpp_slot(3, n_ctx=1024, processing=False, n_prompt_tokens=0, n_decoded=0),
    ]


@dataclass
class FakeServerConfig:
    flavor: Flavor = Flavor.PLAIN
    models: list[str] = field(default_factory=lambda: ["fake-model"])
    api_key: str | None = None
    models_mode: ModelsMode = ModelsMode.OK
    error_status: int = 500
    error_message: str = "The model is overloaded, try again later"
    slow_s: float = 5.0
    metrics_text: str | None = None
    metrics_status: int = 200
    slots: list[dict[str, Any]] | None = None
    # Completions answer 401 with OpenAI's body, which quotes the key sent back ("Incorrect API key ...").
    reject_key_echoing: bool = False


def _metrics_for(flavor: Flavor) -> str | None:
    return {
        Flavor.VLLM: VLLM_V1_METRICS,
        Flavor.VLLM_V0: VLLM_V0_METRICS,
        Flavor.TWIN: VLLM_V1_METRICS + "# TYPE servedeck:simulated gauge\nservedeck:simulated 1\n",
        Flavor.LLAMACPP: LLAMACPP_METRICS,
    }.get(flavor)


def _owned_by(flavor: Flavor) -> str:
    return {
        Flavor.VLLM: "vllm",
        Flavor.VLLM_V0: "vllm",
        Flavor.TWIN: "vllm",
        Flavor.LLAMACPP: "llamacpp",
    }.get(flavor, "organization-owner")


class FakeServer(ThreadedAiohttpServer):
    """Runs the fake on 127.0.0.1 in its own thread; use as a context manager or start()/stop()."""

    thread_name = "fake-openai"

    def __init__(self, config: FakeServerConfig | None = None) -> None:
        super().__init__()
        self.config = config or FakeServerConfig()
        self.requests: list[tuple[str, str, str | None]] = []  # (method, path, Authorization)

    def _build_app(self) -> web.Application:
        app = web.Application(middlewares=[self._middleware])
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/slots", self._slots)
        app.router.add_get("/props", self._props)
        app.router.add_get("/version", self._version)
        app.router.add_get("/health", self._health)
        app.router.add_post("/tokenize", self._tokenize)
        app.router.add_post("/v1/completions", self._completions)
        app.router.add_post("/v1/chat/completions", self._completions)
        return app

    # --- handlers ----------------------------------------------------------------------------

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        self.requests.append((request.method, request.path, request.headers.get("Authorization")))
        key = self.config.api_key
        if (
            key is not None
            and request.path != "/health"
            and request.headers.get("Authorization") != f"Bearer {key}"
        ):
            response: web.StreamResponse = web.json_response({"error": "Unauthorized"}, status=401)
        else:
            response = await handler(request)
        if self.config.flavor is Flavor.TWIN:
            response.headers["x-servedeck-simulated"] = "1"
        return response

    def _flavor_has(self, *flavors: Flavor) -> bool:
        return self.config.flavor in flavors

    def _not_found(self) -> web.Response:
        if self._flavor_has(Flavor.VLLM, Flavor.VLLM_V0, Flavor.TWIN):
            return web.json_response({"detail": "Not Found"}, status=404)
        return web.Response(status=404, text="File Not Found")

    async def _models(self, request: web.Request) -> web.StreamResponse:
        config = self.config
        mode = config.models_mode
        if mode is ModelsMode.NOT_FOUND:
            return web.Response(status=404, text="404 page not found")
        if mode is ModelsMode.HTML:
            return web.Response(
                text="<html><body><h1>Welcome to nginx!</h1></body></html>", content_type="text/html"
            )
        if mode is ModelsMode.VLLM_ERROR_FLAT:
            body: dict[str, Any] = {
                "object": "error",
                "message": config.error_message,
                "type": "InternalServerError",
                "param": None,
                "code": config.error_status,
            }
            return web.json_response(body, status=config.error_status)
        if mode is ModelsMode.VLLM_ERROR_NESTED:
            body = {
                "error": {
                    "message": config.error_message,
                    "type": "InternalServerError",
                    "param": None,
                    "code": config.error_status,
                }
            }
            return web.json_response(body, status=config.error_status)
        if mode is ModelsMode.SLOW:
            await asyncio.sleep(config.slow_s)
        data = (
            []
            if mode is ModelsMode.EMPTY
            else [
                {
                    "id": model_id,
                    "object": "model",
                    "created": 1735142223,
                    "owned_by": _owned_by(config.flavor),
                    "root": model_id,
                    "max_model_len": 4096,
                }
                for model_id in config.models
            ]
        )
        return web.json_response({"object": "list", "data": data})

    async def _metrics(self, request: web.Request) -> web.StreamResponse:
        text = (
            self.config.metrics_text
            if self.config.metrics_text is not None
            else _metrics_for(self.config.flavor)
        )
        if text is None:
            return self._not_found()
        if self.config.metrics_status != 200:
            return web.Response(status=self.config.metrics_status, text="metrics unavailable")
        return web.Response(text=text, content_type="text/plain", charset="utf-8")

    async def _slots(self, request: web.Request) -> web.StreamResponse:
        if not self._flavor_has(Flavor.LLAMACPP):
            return self._not_found()
        slots = self.config.slots if self.config.slots is not None else default_llamacpp_slots()
        return web.json_response(slots)

    async def _props(self, request: web.Request) -> web.StreamResponse:
        if not self._flavor_has(Flavor.LLAMACPP):
            return self._not_found()
        return web.json_response(
            {
                "default_generation_settings": {"n_ctx": 1024, "is_processing": False},
                "total_slots": 4,
                "model_path": "/models/gemma-3-270m.gguf",
                "build_info": "b0000-fake",
            }
        )

    async def _version(self, request: web.Request) -> web.StreamResponse:
        if not self._flavor_has(Flavor.VLLM, Flavor.VLLM_V0, Flavor.TWIN):
            return self._not_found()
        return web.json_response({"version": "0.11.0"})

    async def _health(self, request: web.Request) -> web.StreamResponse:
        return web.json_response({"status": "ok"}) if self._flavor_has(Flavor.LLAMACPP) else web.Response()

    async def _tokenize(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        if self._flavor_has(Flavor.LLAMACPP):
            text = body.get("content")
        elif self._flavor_has(Flavor.VLLM, Flavor.VLLM_V0, Flavor.TWIN):
            text = body.get("prompt")
        else:
            return self._not_found()
        if not isinstance(text, str):
            return web.json_response(
                {"error": {"message": "missing text", "type": "invalid_request_error", "code": 400}},
                status=400,
            )
        tokens = [sum(map(ord, word)) % 32000 for word in text.split()]
        return web.json_response({"tokens": tokens, "count": len(tokens), "max_model_len": 4096})

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        if self.config.reject_key_echoing:
            sent = (request.headers.get("Authorization") or "").removeprefix("Bearer ")
            message = (
                f"Incorrect API key provided: {sent}. You can find your API key at "
                "https://platform.openai.com/account/api-keys."
            )
            error = {"message": message, "type": "invalid_request_error", "code": "invalid_api_key"}
            return web.json_response({"error": {**error, "param": None}}, status=401)
        body = await request.json()
        options = body.get("stream_options") or {}
        flavor = self.config.flavor
        if flavor is Flavor.PLAIN and set(options) - {"include_usage"}:
            # OpenAI itself rejects parameters it does not know.
            unknown = sorted(set(options) - {"include_usage"})[0]
            return web.json_response(
                {
                    "error": {
                        "message": f"Unrecognized request argument supplied: {unknown}",
                        "type": "invalid_request_error",
                        "code": None,
                    }
                },
                status=400,
            )
        max_tokens = int(body.get("max_tokens") or 4)
        chat = request.path.endswith("/chat/completions")
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        if flavor is Flavor.TWIN:
            response.headers["x-servedeck-simulated"] = "1"
        await response.prepare(request)
        include_usage = bool(options.get("include_usage"))
        continuous = include_usage and bool(options.get("continuous_usage_stats"))
        vllm_like = flavor in (Flavor.VLLM, Flavor.VLLM_V0, Flavor.TWIN)
        prompt_tokens = 3

        def choice(text: str, finish: str | None) -> dict[str, Any]:
            if chat:
                return {"index": 0, "delta": {"content": text}, "finish_reason": finish}
            return {"index": 0, "text": text, "finish_reason": finish}

        def usage(completion: int) -> dict[str, int]:
            return {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion,
                "total_tokens": prompt_tokens + completion,
            }

        async def send(chunk: dict[str, Any]) -> None:
            await response.write(f"data: {json.dumps(chunk)}\n\n".encode())

        base = {
            "id": "cmpl-fake",
            "object": "chat.completion.chunk" if chat else "text_completion",
            "created": int(time.time()),
            "model": body.get("model"),
        }
        for i in range(max_tokens):
            last = i == max_tokens - 1
            chunk = {**base, "choices": [choice(f" tok{i}", "length" if last and vllm_like else None)]}
            if vllm_like and continuous:
                chunk["usage"] = usage(i + 1)
            await send(chunk)
        if flavor is Flavor.LLAMACPP:
            # llama-server ends with a chunk that carries the finish reason, and usage, unasked.
            await send({**base, "choices": [choice("", "length")], "usage": usage(max_tokens)})
        elif flavor is Flavor.PLAIN:
            await send({**base, "choices": [choice("", "length")]})
            if include_usage:
                await send({**base, "choices": [], "usage": usage(max_tokens)})
        elif include_usage:
            await send({**base, "choices": [], "usage": usage(max_tokens)})
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response
