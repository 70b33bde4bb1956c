"""The live twin: a simulated vLLM server over real HTTP, in real time.

One engine loop drives everything: it calls ``engine.step(now)``, waits until the step's simulated
duration has passed (absolute deadlines, so rounding never accumulates), then writes every stream's
new tokens from that one tick, the way a real engine step releases a batch. Requests that arrive
during a step join the next one, as in vLLM.

Endpoints (vLLM's OpenAI server, reference/vllm_k8s_facts.md §3): ``POST /v1/chat/completions`` and
``/v1/completions`` (streamed or not, ``stream_options.include_usage`` / ``continuous_usage_stats``),
``GET /v1/models``, ``/health``, ``/ping``, ``/version``, ``/metrics``, ``POST /tokenize``,
``/detokenize``. Everything says it is simulated: the model id ends in ``-twin``, every response has
``x-servedeck-simulated: 1`` and ``/metrics`` has ``servedeck:simulated 1``. vLLM's stats line is
written every ``log_interval_s`` to ``log_sink`` (stdout by default).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import uvloop
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from backends.errors import ServeDeckError
from backends.http_listener import Listener, LoopStartTimeout, serve_on_thread
from backends.twin import chunks
from backends.twin.capacity import MemoryPlan, plan_memory
from backends.twin.chunks import CHAT, COMPLETION, DONE_FRAME, ChunkFormat
from backends.twin.dcgm import GpuActivity, render_dcgm
from backends.twin.engine import InvalidRequestError, PromptTooLongError, StepResult, TwinEngine
from backends.twin.engine_config import TwinConfig
from backends.twin.http_server import (
    CLOSE_HEADER,
    SSE_HEAD,
    STREAM_END,
    HttpConnection,
    HttpRequest,
    TwinServerError,
    error_body,
    listen_failure,
    sse_frame,
)
from backends.twin.logline import DEFAULT_INTERVAL_S, StatsCounters, StatsLogger
from backends.twin.metrics_text import CONTENT_TYPE as METRICS_CONTENT_TYPE
from backends.twin.metrics_text import EngineGauges, RequestHistograms, render_metrics
from backends.twin.text import AnswerText, TwinTokenizer, answer_text, chat_messages

TWIN_SUFFIX = "-twin"
TWIN_VERSION = "servedeck-twin"
STARTUP_TIMEOUT_S = 60.0
# A step that ends later than this behind its deadline (the server's core was busy) restarts the
# clock from now instead of bursting to catch up, like a GPU that was simply late.
MAX_CATCH_UP_S = 0.05
# When the engine has work but a step makes no progress (nothing schedulable), poll at this pace.
IDLE_STEP_S = 0.001
# uvloop's timers have millisecond steps: wake this much before a deadline, then spin the loop to it.
TIMER_EARLY_S = 0.0015
TIMER_SLACK_S = 20e-6
# Answer tokens hashed for the prefix cache (a longer answer's tail is kept private).
MAX_HASHED_ANSWER_TOKENS = 4096

_clock = time.perf_counter


def _json(value: object) -> bytes:
    """Compact JSON, as vLLM's (Starlette's) JSONResponse renders it."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()


def twin_model_id(config: TwinConfig) -> str:
    return f"{config.model.name}{TWIN_SUFFIX}"


def prefix_key(content: str) -> str:
    """Names a prompt's content for the engine's prefix cache (fast-forward hashes prompts the same way):
    a prompt sent again finds its blocks cached, as in vLLM."""
    return hashlib.blake2b(content.encode("utf-8", "surrogatepass"), digest_size=12).hexdigest()


# ---- request bodies ---------------------------------------------------------------------------------


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")

    include_usage: bool | None = True
    continuous_usage_stats: bool | None = False


class _GenerationBody(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    ignore_eos: bool = False
    n: int = Field(default=1, ge=1)


class ChatBody(_GenerationBody):
    messages: list[Any]
    max_completion_tokens: int | None = Field(default=None, ge=1)


class CompletionBody(_GenerationBody):
    prompt: str | list[str] | list[int] | list[list[int]]


class TokenizeBody(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    prompt: str | None = None
    messages: list[Any] | None = None
    add_special_tokens: bool = True
    add_generation_prompt: bool = True


class DetokenizeBody(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    tokens: list[int]


_Body = TypeVar("_Body", bound=BaseModel)


class _BadRequest(Exception):
    def __init__(self, status: int, error_type: str, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.error_type = error_type
        self.message = message
        self.param = param


def _validation_message(exc: ValidationError) -> str:
    first = exc.errors()[0]
    where = ".".join(str(part) for part in first["loc"]) or "body"
    return f"Invalid request field '{where}': {first['msg']}"


# ---- one generation (streamed or not) ---------------------------------------------------------------


class _Generation:
    """One request in flight: where its text comes from, what it has sent, how to send the rest."""

    __slots__ = (
        "arrival",
        "cancelled",
        "conn",
        "continuous",
        "created",
        "fmt",
        "head",
        "include_usage",
        "last_token_at",
        "prompt_tokens",
        "request",
        "request_id",
        "sent",
        "server",
        "stream",
        "text_start",
    )

    def __init__(
        self,
        server: _TwinState,
        conn: HttpConnection,
        request: HttpRequest,
        fmt: ChunkFormat,
        request_id: str,
        prompt_tokens: int,
        stream: bool,
        include_usage: bool,
        continuous: bool,
        text_start: int,
    ) -> None:
        self.server = server
        self.conn = conn
        self.request = request
        self.arrival = request.received_at
        self.fmt = fmt
        self.request_id = request_id
        self.prompt_tokens = prompt_tokens
        self.stream = stream
        self.include_usage = include_usage
        self.continuous = continuous
        self.text_start = text_start
        self.created = int(time.time())
        self.head = chunks.chunk_head(fmt, request_id, self.created, server.model_id)
        self.sent = 0
        self.last_token_at = 0.0
        self.cancelled = False

    def cancel(self) -> None:
        """The client disconnected: the engine stops working on this request."""
        if not self.cancelled:
            self.cancelled = True
            self.server.abort(self)

    def fail(self, message: str) -> None:
        """The engine refused the request after the response began: vLLM's in-stream error, or a 400."""
        body = error_body(400, "BadRequestError", message)
        if self.stream:
            self.conn.write(sse_frame(b"data: %b\n\n" % body) + DONE_FRAME + STREAM_END)
            self.conn.finish(self.request.keep_alive)
        else:
            self.conn.respond(self.request, 400, body)

    def emit(self, new_tokens: int, finish_reason: str | None, now: float) -> None:
        """Send ``new_tokens`` tokens produced by the step that just ended (and the end, if finished)."""
        histograms = self.server.histograms
        if self.sent == 0:
            histograms.ttft.observe(now - self.arrival)
        else:
            histograms.itl.observe(now - self.last_token_at)
        self.last_token_at = now
        start = self.text_start + self.sent
        self.sent += new_tokens
        if finish_reason is not None:
            histograms.e2e.observe(now - self.arrival)
            histograms.success[finish_reason] = histograms.success.get(finish_reason, 0) + 1
        if self.stream:
            self._write_chunks(start, new_tokens, finish_reason)
        elif finish_reason is not None:
            self._write_answer(finish_reason)

    def _write_chunks(self, start: int, new_tokens: int, finish_reason: str | None) -> None:
        fmt = self.fmt
        head = self.head
        text = self.server.text
        pieces = text.pieces_json
        n = len(pieces)
        if new_tokens == 1:
            content = pieces[start % n]
        else:
            content = json.dumps(text.text(start, new_tokens), ensure_ascii=False).encode()
        out: list[bytes] = []
        if start == self.text_start and fmt.role:
            out.append(chunks.role_event(fmt, head, self.prompt_tokens, self.continuous))
        close = fmt.content_close if finish_reason is None else fmt.final_close % _json(finish_reason)
        usage = (
            b',"usage":%b' % chunks.usage_json(self.prompt_tokens, self.sent)
            if self.continuous
            else fmt.no_usage
        )
        out.append(sse_frame(head + fmt.content_open + content + close + usage + b"}\n\n"))
        if finish_reason is not None:
            if self.include_usage:
                out.append(chunks.usage_event(head, self.prompt_tokens, self.sent))
            out.append(DONE_FRAME)
            out.append(STREAM_END)
        conn = self.conn
        conn.write(b"".join(out))
        if finish_reason is not None:
            conn.finish(self.request.keep_alive)

    def _write_answer(self, finish_reason: str) -> None:
        server = self.server
        body = chunks.full_answer(
            self.fmt,
            self.request_id,
            self.created,
            server.model_id,
            server.text.text(self.text_start, self.sent),
            finish_reason,
            self.prompt_tokens,
            self.sent,
        )
        self.conn.respond(self.request, 200, body)


@dataclass(slots=True)
class _Admission:
    """A validated request waiting for the next step to start."""

    generation: _Generation
    max_tokens: int
    ignore_eos: bool
    prefix_key: str
    token_ids: list[int] | None = None


# ---- server state and the engine loop ---------------------------------------------------------------


class _TwinState:
    """Everything the loop thread owns: engine, streams, counters."""

    def __init__(
        self,
        config: TwinConfig,
        loop: asyncio.AbstractEventLoop,
        text: AnswerText,
        tokenizer: TwinTokenizer,
        log_interval_s: float,
        log_sink: Callable[[str], None],
    ) -> None:
        self.config = config
        self.loop = loop
        self.text = text
        self.tokenizer = tokenizer
        self.model_id = twin_model_id(config)
        self.max_model_len = config.resolved_max_model_len
        self.memory: MemoryPlan = plan_memory(config)
        self.engine = TwinEngine(config)
        self.gpu_activity = GpuActivity(config, self.memory, self.engine.roofline, _clock())
        self.histograms = RequestHistograms()
        self.generations: dict[str, _Generation] = {}
        self.arrivals: deque[_Admission] = deque()
        self.connections: set[HttpConnection] = set()
        self.request_count = 0
        self.created = int(time.time())
        self.stepping = False
        self.step_handle: asyncio.TimerHandle | asyncio.Handle | None = None
        self.next_start = 0.0
        self.deadline = 0.0
        self.pending_result: StepResult | None = None
        self.log_interval_s = log_interval_s
        self.log_sink = log_sink
        self.stats_logger = StatsLogger()
        self.log_handle: asyncio.TimerHandle | None = None
        self.closed = False

    # -- engine loop -----------------------------------------------------------------------------
    # Times are time.perf_counter() seconds: uvloop's own clock and timers have millisecond steps, too
    # coarse next to a decode step of a few milliseconds.

    def submit(self, admission: _Admission) -> None:
        """Queue a validated request; it joins the first step that starts after it arrived."""
        self.generations[admission.generation.request_id] = admission.generation
        self.arrivals.append(admission)
        self.wake()

    def wake(self) -> None:
        if not self.stepping and not self.closed:
            self.stepping = True
            self.next_start = _clock()
            self.step_handle = self.loop.call_soon(self._step)

    def _call_at(self, when: float, callback: Callable[[], None]) -> None:
        """Run ``callback`` at ``when``, always from the loop (so requests are read between steps).

        uvloop's timers have millisecond steps and fire up to a millisecond or two late: the timer wakes
        a little early, then loop iterations (which keep serving I/O) carry it to the deadline."""
        delay = when - _clock() - TIMER_EARLY_S
        if delay > 0:
            self.step_handle = self.loop.call_later(delay, self._fire, when, callback)
        else:
            self.step_handle = self.loop.call_soon(self._fire, when, callback)

    def _fire(self, when: float, callback: Callable[[], None]) -> None:
        if _clock() < when - TIMER_SLACK_S:
            self.step_handle = self.loop.call_soon(self._fire, when, callback)
        else:
            self.step_handle = None
            callback()

    def _admit(self, start: float) -> None:
        """Hand the engine every request that arrived by ``start``, as a real engine step would see them."""
        arrivals = self.arrivals
        engine = self.engine
        while arrivals and arrivals[0].generation.arrival <= start:
            admission = arrivals.popleft()
            generation = admission.generation
            if generation.cancelled:
                continue
            try:
                engine.add_request(
                    generation.request_id,
                    generation.prompt_tokens,
                    admission.max_tokens,
                    admission.ignore_eos,
                    generation.arrival,
                    admission.prefix_key,
                    token_ids=admission.token_ids,
                )
            except InvalidRequestError as exc:  # validated on arrival; kept for any rule added later
                self.generations.pop(generation.request_id, None)
                generation.fail(str(exc))

    def _step(self) -> None:
        if self.closed:
            return
        now = _clock()
        # A step that starts late because this core was busy keeps its place on the timeline (so the
        # simulated GPU does not slow down) unless it is so late that catching up would burst.
        start = self.next_start if now - self.next_start <= MAX_CATCH_UP_S else now
        self._admit(start)
        if not self.engine.has_work():
            if self.arrivals:  # they arrived after ``start``: the engine idles until the first one
                self.next_start = self.arrivals[0].generation.arrival
                self._call_at(self.next_start, self._step)
            else:
                self.stepping = False
                self.step_handle = None
            return
        result = self.engine.step(start)
        duration = result.duration_s
        self.gpu_activity.on_step(start, duration, result.cost)
        if result.num_scheduled == 0:
            duration = max(duration, IDLE_STEP_S)
        self.pending_result = result
        self.deadline = start + duration
        self._call_at(self.deadline, self._end_step)

    def _end_step(self) -> None:
        if self.closed:
            return
        result, self.pending_result = self.pending_result, None
        if result is not None:
            self.deliver(result, _clock())
        self.next_start = self.deadline
        self._step()

    def deliver(self, result: StepResult, now: float) -> None:
        """Write the step's tokens to every stream in this one tick."""
        generations = self.generations
        for output in result.outputs:
            generation = generations.get(output.request_id)
            if generation is None:
                continue  # aborted while the step ran
            reason = output.finish_reason
            if reason is not None:
                del generations[output.request_id]
                generation.emit(output.new_tokens, reason.value, now)
            else:
                generation.emit(output.new_tokens, None, now)

    def abort(self, generation: _Generation) -> None:
        if self.generations.pop(generation.request_id, None) is not None:
            self.engine.abort_request(generation.request_id)
            self.histograms.success["abort"] += 1

    # -- stats -----------------------------------------------------------------------------------

    def gauges(self) -> EngineGauges:
        stats = self.engine.stats()
        return EngineGauges(
            running=stats.running,
            # Requests that arrived during the current step are waiting too; they join the next one.
            waiting=stats.waiting + len(self.arrivals),
            kv_cache_usage=stats.kv_cache_usage,
            prompt_tokens_total=stats.prompt_tokens_total,
            generation_tokens_total=stats.generation_tokens_total,
            preemptions_total=stats.preemptions_total,
            prefix_cache_queries_total=stats.prefix_cache_queries_total,
            prefix_cache_hits_total=stats.prefix_cache_hits_total,
        )

    def counters(self) -> StatsCounters:
        g = self.gauges()
        return StatsCounters(
            prompt_tokens=g.prompt_tokens_total,
            generation_tokens=g.generation_tokens_total,
            preemptions=g.preemptions_total,
            prefix_queries=g.prefix_cache_queries_total,
            prefix_hits=g.prefix_cache_hits_total,
            running=g.running,
            waiting=g.waiting,
            kv_cache_usage=g.kv_cache_usage,
        )

    def start_logging(self) -> None:
        self.stats_logger.start(self.counters(), _clock())
        self.log_handle = self.loop.call_later(self.log_interval_s, self._log_tick)

    def _log_tick(self) -> None:
        if self.closed:
            return
        line = self.stats_logger.line(self.counters(), _clock())
        if line is not None:
            self.log_sink(line)
        self.log_handle = self.loop.call_later(self.log_interval_s, self._log_tick)

    def cache_config_labels(self) -> dict[str, str]:
        config = self.config
        return {
            "block_size": str(config.block_size),
            "cache_dtype": "auto",
            "calculate_kv_scales": "False",
            "cpu_offload_gb": "0",
            "enable_prefix_caching": str(config.enable_prefix_caching),
            "gpu_memory_utilization": str(config.gpu_memory_utilization),
            "is_attention_free": "False",
            "num_cpu_blocks": "None",
            "num_gpu_blocks": str(self.memory.num_gpu_blocks),
            "num_gpu_blocks_override": "None",
            "prefix_caching_hash_algo": "builtin",
            "sliding_window": str(config.model.sliding_window) if config.model.sliding_window else "None",
            "swap_space": "4",
            "swap_space_bytes": str(4 * 1024**3),
        }

    def twin_info_labels(self) -> dict[str, str]:
        config = self.config
        return {
            "gpu": config.gpu.value,
            "gpu_count": str(config.gpu_count),
            "model": config.model.hf_id,
            "max_model_len": str(self.max_model_len),
            "max_num_seqs": str(config.resolved_max_num_seqs),
            "max_num_batched_tokens": str(config.resolved_max_num_batched_tokens),
        }

    def shutdown(self) -> None:
        self.closed = True
        if self.step_handle is not None:
            self.step_handle.cancel()
        if self.log_handle is not None:
            self.log_handle.cancel()
        for connection in list(self.connections):
            connection.abort()


# ---- HTTP endpoints ---------------------------------------------------------------------------------


class _TwinHandler:
    def __init__(self, state: _TwinState) -> None:
        self.state = state
        self.routes: dict[tuple[str, str], Callable[[HttpConnection, HttpRequest], None]] = {
            ("POST", "/v1/chat/completions"): self.chat,
            ("POST", "/v1/completions"): self.completions,
            ("GET", "/v1/models"): self.models,
            ("GET", "/health"): self.health,
            ("GET", "/ping"): self.health,
            ("POST", "/ping"): self.health,
            ("GET", "/version"): self.version,
            ("GET", "/metrics"): self.metrics,
            ("GET", "/dcgm"): self.dcgm,
            ("POST", "/tokenize"): self.tokenize,
            ("POST", "/detokenize"): self.detokenize,
        }
        self.paths = {path for _, path in self.routes}

    def handle(self, connection: HttpConnection, request: HttpRequest) -> None:
        path = request.path.rstrip("/") or "/"
        route = self.routes.get((request.method, path))
        if route is None:
            if path in self.paths:
                connection.respond(request, 405, b'{"detail":"Method Not Allowed"}')
            else:
                connection.respond(request, 404, b'{"detail":"Not Found"}')
            return
        try:
            route(connection, request)
        except _BadRequest as exc:
            connection.respond(
                request, exc.status, error_body(exc.status, exc.error_type, exc.message, exc.param)
            )

    # -- simple endpoints ------------------------------------------------------------------------

    def health(self, connection: HttpConnection, request: HttpRequest) -> None:
        connection.respond(request, 200, b"", b"text/plain; charset=utf-8")

    def version(self, connection: HttpConnection, request: HttpRequest) -> None:
        connection.respond(request, 200, _json({"version": TWIN_VERSION}))

    def models(self, connection: HttpConnection, request: HttpRequest) -> None:
        state = self.state
        card = {
            "id": state.model_id,
            "object": "model",
            "created": state.created,
            "owned_by": "vllm",
            "root": state.config.model.hf_id,
            "parent": None,
            "max_model_len": state.max_model_len,
            "permission": [
                {
                    "id": f"modelperm-{uuid.uuid4().hex}",
                    "object": "model_permission",
                    "created": state.created,
                    "allow_create_engine": False,
                    "allow_sampling": True,
                    "allow_logprobs": True,
                    "allow_search_indices": False,
                    "allow_view": True,
                    "allow_fine_tuning": False,
                    "organization": "*",
                    "group": None,
                    "is_blocking": False,
                }
            ],
        }
        connection.respond(request, 200, _json({"object": "list", "data": [card]}))

    def metrics(self, connection: HttpConnection, request: HttpRequest) -> None:
        state = self.state
        text = render_metrics(
            state.model_id,
            state.gauges(),
            state.histograms,
            state.cache_config_labels(),
            state.twin_info_labels(),
        )
        connection.respond(request, 200, text.encode(), METRICS_CONTENT_TYPE.encode())

    def dcgm(self, connection: HttpConnection, request: HttpRequest) -> None:
        """The simulated GPUs as dcgm-exporter shows them (backends/twin/dcgm.py); none on a CPU twin."""
        activity = self.state.gpu_activity
        if not activity.enabled:
            connection.respond(request, 404, b'{"detail":"a CPU twin has no GPUs"}')
            return
        text = render_dcgm(activity, _clock())
        connection.respond(request, 200, text.encode(), METRICS_CONTENT_TYPE.encode())

    def tokenize(self, connection: HttpConnection, request: HttpRequest) -> None:
        body = self._parse(request, TokenizeBody)
        self._check_model(body.model)
        tokenizer = self.state.tokenizer
        if body.messages is not None:
            messages = chat_messages(body.messages)
            if messages is None:
                raise _BadRequest(
                    400, "BadRequestError", "'messages' must be a list of {role, content} objects"
                )
            tokens = tokenizer.encode_chat(messages, body.add_generation_prompt)
        elif body.prompt is not None:
            tokens = tokenizer.encode_prompt(body.prompt, body.add_special_tokens)
        else:
            raise _BadRequest(
                400, "BadRequestError", "give a 'prompt' string or a 'messages' list to tokenize"
            )
        answer = {
            "count": len(tokens),
            "max_model_len": self.state.max_model_len,
            "tokens": tokens,
            "token_strs": None,
        }
        connection.respond(request, 200, _json(answer))

    def detokenize(self, connection: HttpConnection, request: HttpRequest) -> None:
        body = self._parse(request, DetokenizeBody)
        self._check_model(body.model)
        encoding = self.state.tokenizer.encoding
        ordinary = [
            token for token in body.tokens if 0 <= token < encoding.n_vocab and token != encoding.eot_token
        ]
        try:
            text = encoding.decode(ordinary)
        except (KeyError, ValueError):
            raise _BadRequest(400, "BadRequestError", "token ids outside the twin's vocabulary") from None
        connection.respond(request, 200, _json({"prompt": text}))

    # -- generation ------------------------------------------------------------------------------

    def chat(self, connection: HttpConnection, request: HttpRequest) -> None:
        body = self._parse(request, ChatBody)
        messages = chat_messages(body.messages)
        if messages is None:
            raise _BadRequest(
                400, "BadRequestError", "'messages' must be a non-empty list of {role, content} objects"
            )
        prompt_ids = self.state.tokenizer.encode_chat(messages)
        max_tokens = body.max_completion_tokens or body.max_tokens
        key = prefix_key(json.dumps(messages, ensure_ascii=False))
        self._generate(connection, request, body, CHAT, len(prompt_ids), max_tokens, key, prompt_ids)

    def completions(self, connection: HttpConnection, request: HttpRequest) -> None:
        body = self._parse(request, CompletionBody)
        prompt = body.prompt
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str | list):
            prompt = prompt[0]
        if isinstance(prompt, str):
            prompt_ids = self.state.tokenizer.encode_prompt(prompt)
            key = prefix_key(prompt)
        elif isinstance(prompt, list) and all(isinstance(token, int) for token in prompt):
            prompt_ids = [token for token in prompt if isinstance(token, int)]
            key = prefix_key(json.dumps(prompt))
        else:
            raise _BadRequest(
                400,
                "BadRequestError",
                "the twin serves one prompt per request; send a string or one token list",
            )
        self._generate(
            connection, request, body, COMPLETION, len(prompt_ids), body.max_tokens, key, prompt_ids
        )

    def _generate(
        self,
        connection: HttpConnection,
        request: HttpRequest,
        body: _GenerationBody,
        fmt: ChunkFormat,
        prompt_tokens: int,
        max_tokens: int | None,
        prefix_key: str,
        prompt_ids: list[int],
    ) -> None:
        state = self.state
        self._check_model(body.model)
        if body.n != 1:
            raise _BadRequest(
                400, "BadRequestError", f"the twin generates one choice per request; n={body.n}"
            )
        stream = bool(body.stream)
        options = body.stream_options
        if options is not None and not stream:
            raise _BadRequest(
                400, "BadRequestError", "Stream options can only be defined when `stream=True`."
            )
        include_usage = options is not None and bool(options.include_usage)
        continuous = include_usage and options is not None and bool(options.continuous_usage_stats)
        max_model_len = state.max_model_len
        if max_tokens is None:
            max_tokens = max(max_model_len - prompt_tokens, 1)
        if prompt_tokens < 1:
            raise _BadRequest(400, "BadRequestError", "The decoder prompt cannot be empty")
        if prompt_tokens >= max_model_len or prompt_tokens + max_tokens > max_model_len:
            raise _BadRequest(
                400, "BadRequestError", str(PromptTooLongError(prompt_tokens, max_tokens, max_model_len))
            )
        request_id = f"{fmt.id_prefix}{uuid.uuid4().hex}"
        state.request_count += 1
        generation = _Generation(
            state,
            connection,
            request,
            fmt,
            request_id,
            prompt_tokens,
            stream,
            include_usage,
            continuous,
            state.text.start_for(state.request_count),
        )
        token_ids = None
        if state.engine.pool.enable_caching:
            # The answer's tokens follow the prompt's in the block hashes, so a next turn that sends this
            # answer back finds its blocks cached, as in vLLM.
            answer = state.text.text(generation.text_start, min(max_tokens, MAX_HASHED_ANSWER_TOKENS))
            token_ids = prompt_ids + state.tokenizer.encoding.encode_ordinary(answer)
        connection.begin(generation)
        if stream:
            connection.write(SSE_HEAD + (b"\r\n" if request.keep_alive else CLOSE_HEADER + b"\r\n"))
        state.submit(_Admission(generation, max_tokens, body.ignore_eos, prefix_key, token_ids))

    # -- helpers ---------------------------------------------------------------------------------

    def _parse(self, request: HttpRequest, model: type[_Body]) -> _Body:
        try:
            raw = json.loads(request.body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise _BadRequest(400, "BadRequestError", f"The request body is not valid JSON: {exc}") from None
        if not isinstance(raw, dict):
            raise _BadRequest(400, "BadRequestError", "The request body must be a JSON object.")
        try:
            return model.model_validate(raw)
        except ValidationError as exc:
            raise _BadRequest(400, "BadRequestError", _validation_message(exc)) from None

    def _check_model(self, model: str | None) -> None:
        if model is not None and model != self.state.model_id:
            raise _BadRequest(404, "NotFoundError", f"The model `{model}` does not exist.", "model")


# ---- running it -------------------------------------------------------------------------------------


def _print_line(line: str) -> None:
    print(line, flush=True)


class TwinServer:
    """A twin on 127.0.0.1: ``start_in_thread()`` (tests, benchmarks) or ``serve_forever()`` (the CLI)."""

    def __init__(
        self,
        config: TwinConfig,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        log_interval_s: float = DEFAULT_INTERVAL_S,
        log_sink: Callable[[str], None] | None = None,
    ) -> None:
        if not log_interval_s > 0:
            raise TwinServerError(f"the stats log interval must be > 0 s, not {log_interval_s:g}")
        self.config = config
        self.host = host
        self.port = port
        self.log_interval_s = log_interval_s
        self.log_sink = log_sink or _print_line
        self.model_id = twin_model_id(config)
        self.memory = plan_memory(config)  # a model that does not fit fails here, before any socket
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._state: _TwinState | None = None
        self._listener: Listener | None = None
        self._stopped: asyncio.Event | None = None

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def _open(self, loop: asyncio.AbstractEventLoop) -> None:
        """Build the state and bind the socket on ``loop`` (runs on the loop's thread)."""
        text = answer_text()
        tokenizer = TwinTokenizer()
        _ = tokenizer.encoding  # load it now, not on the first request
        state = _TwinState(self.config, loop, text, tokenizer, self.log_interval_s, self.log_sink)
        handler = _TwinHandler(state)
        listener = Listener(
            loop,
            self.host,
            self.port,
            lambda: HttpConnection(handler, loop, state.connections),
            listen_failure,
        )
        self.port = listener.port
        self._state, self._listener = state, listener
        state.start_logging()

    def _close(self) -> None:
        if self._listener is not None:
            self._listener.close()
        if self._state is not None:
            self._state.shutdown()
        self._listener = self._state = None

    def start_in_thread(self, timeout_s: float = STARTUP_TIMEOUT_S) -> int:
        """Serve on a daemon thread with its own uvloop loop; return the bound port."""
        if self._thread is not None:
            raise TwinServerError("this twin is already running; stop() it before starting it again")
        loop = uvloop.new_event_loop()
        self._loop = loop
        try:
            thread = serve_on_thread(
                loop,
                lambda: self._open(loop),
                name="servedeck-twin",
                timeout_s=timeout_s,
                on_exit=self._close,
            )
        except LoopStartTimeout:
            raise TwinServerError(f"the twin did not start within {timeout_s:.0f} s") from None
        except ServeDeckError:
            self._loop = None
            raise
        except BaseException as error:
            self._loop = None
            raise TwinServerError(f"the twin failed to start: {type(error).__name__}: {error}") from error
        self._thread = thread
        return self.port

    def stop(self, timeout_s: float = 5.0) -> None:
        thread, loop = self._thread, self._loop
        if thread is None or loop is None:
            return
        if not loop.is_closed():
            loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout_s)
        self._thread = self._loop = None

    def __enter__(self) -> TwinServer:
        self.start_in_thread()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    async def serve(self, on_ready: Callable[[TwinServer], None] | None = None) -> None:
        """Serve on the running loop until ``shutdown()`` (or cancellation)."""
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._stopped = asyncio.Event()
        self._open(loop)
        try:
            if on_ready is not None:
                on_ready(self)
            await self._stopped.wait()
        finally:
            self._close()

    def shutdown(self) -> None:
        """Ask ``serve()`` to return (thread-safe)."""
        loop, stopped = self._loop, self._stopped
        if loop is not None and stopped is not None and not loop.is_closed():
            loop.call_soon_threadsafe(stopped.set)

    def serve_forever(self, on_ready: Callable[[TwinServer], None] | None = None) -> None:
        """Run ``serve()`` on a new uvloop loop in this thread until ctrl-c or ``shutdown()``."""
        with contextlib.suppress(KeyboardInterrupt):
            uvloop.run(self.serve(on_ready))
