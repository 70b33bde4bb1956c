"""Stream one chat answer from an OpenAI-compatible target and time it.

``ChatStream(target, turns, params).events()`` yields ``TokenDelta`` events as text arrives and always
ends with exactly one ``AnswerEnd``: the full text so far, its ``AnswerStats`` and, when the answer
was cut short, one clear ``error`` line (dead server, HTTP error with the server's own message, a
malformed event, a dropped or silent connection). ``stop()`` (safe from any thread) ends the stream
early; the partial answer is kept. Nothing here raises once streaming has begun: a caller always
gets the text that arrived.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import threading
import time
from collections.abc import AsyncIterator, Callable
from functools import cached_property
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue, ValidationError

from backends.chat_stats import AnswerStats, StatsAccumulator
from backends.engines.gemma_model import MODEL_ID as LOCAL_BASE_MODEL_ID
from backends.errors import ConfigError, TargetError
from backends.redaction import redact, remember_secret
from backends.target_types import Target, TargetKind

if TYPE_CHECKING:
    import openai
    from openai.types.chat import ChatCompletionMessageParam

NO_API_KEY = "EMPTY"  # what vLLM and llama.cpp accept when they run without --api-key
DEFAULT_CONNECT_TIMEOUT_S = 5.0
DEFAULT_STALL_TIMEOUT_S = 60.0
# Fields the chat sets itself; an extra body that set them again would break streaming or the stats.
RESERVED_BODY_FIELDS = frozenset(
    {
        "model", "messages", "prompt", "stream", "stream_options", "temperature", "max_tokens",
        "max_completion_tokens",
    }
)  # fmt: skip

# Base checkpoints (no chat template, not instruction-tuned) that get the few-shot frame below.
BASE_MODELS: dict[str, str] = {LOCAL_BASE_MODEL_ID: "Gemma 3 270M base model"}
FEW_SHOT_PREAMBLE = "Questions and short, correct answers."
FEW_SHOT_EXAMPLES: tuple[tuple[str, str], ...] = (
    ("What is the capital of France?", "Paris is the capital of France."),
    ("How many legs does a spider have?", "A spider has eight legs."),
    ("Name a primary colour.", "Red is a primary colour."),
)
# Where a base model's answer ends: the next turn it would invent (or a blank line).
FEW_SHOT_STOP: tuple[str, ...] = ("\nQ:", "\nUser:", "\nA:", "\n\n")


class ChatError(TargetError):
    """A chat could not be sent, or its answer ended early; the message says what to do."""


class ChatParamsError(ConfigError):
    """A chat parameter typed by the user is not valid."""


class ChatTurn(BaseModel):
    model_config = ConfigDict(frozen=True)

    role: Literal["system", "user", "assistant"]
    content: str


class ChatParams(BaseModel):
    """Sampling settings for one answer. ``extra_body`` goes into the request as is (e.g. ``top_k``)."""

    model_config = ConfigDict(frozen=True)

    system_prompt: str = ""
    temperature: float = Field(0.7, ge=0.0, le=2.0)
    max_tokens: int = Field(256, ge=1, le=131_072)
    extra_body: dict[str, JsonValue] = Field(default_factory=dict)

    @classmethod
    def from_form(
        cls, *, system_prompt: str, temperature: str, max_tokens: str, extra_body: str = ""
    ) -> ChatParams:
        """Parameters as typed into a form; raises ``ChatParamsError`` naming the field to fix."""
        try:
            temperature_value = float(temperature.strip())
        except ValueError:
            raise ChatParamsError(
                f"temperature {temperature.strip()!r} is not a number; type one from 0 to 2 (e.g. 0.7)"
            ) from None
        if not 0.0 <= temperature_value <= 2.0:
            raise ChatParamsError(f"temperature {temperature_value:g} is out of range; use 0 to 2")
        try:
            max_tokens_value = int(max_tokens.strip())
        except ValueError:
            raise ChatParamsError(
                f"max tokens {max_tokens.strip()!r} is not a whole number; type e.g. 256"
            ) from None
        if not 1 <= max_tokens_value <= 131_072:
            raise ChatParamsError(f"max tokens {max_tokens_value} is out of range; use 1 to 131072")
        return cls(
            system_prompt=system_prompt,
            temperature=temperature_value,
            max_tokens=max_tokens_value,
            extra_body=parse_extra_body(extra_body),
        )


def parse_extra_body(text: str) -> dict[str, JsonValue]:
    """A JSON object of extra request fields, e.g. ``{"top_k": 40}``; empty text means none."""
    if not text.strip():
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ChatParamsError(
            f"extra request fields are not valid JSON ({exc.msg} at column {exc.colno}); "
            'write an object such as {"top_k": 40}'
        ) from None
    if not isinstance(value, dict):
        raise ChatParamsError('extra request fields must be a JSON object such as {"top_k": 40}')
    clashing = sorted(RESERVED_BODY_FIELDS & value.keys())
    if clashing:
        raise ChatParamsError(
            f"extra request fields may not set {', '.join(clashing)}; "
            "use the temperature and max tokens fields (the rest is set by ServeDeck)"
        )
    try:
        return ChatParams(extra_body=value).extra_body
    except ValidationError:
        raise ChatParamsError("extra request fields must hold plain JSON values") from None


def is_base_model(target: Target) -> bool:
    """A base checkpoint continues text rather than follows a chat: it is sent a few-shot frame."""
    return target.model in BASE_MODELS


def target_note(target: Target) -> str | None:
    """What a user must know about a target's answers before reading them, if anything."""
    if is_base_model(target):
        return f"{BASE_MODELS[target.model]}, few-shot Q/A prompt; not instruction-tuned"
    if is_simulated(target):
        return "vLLM twin: simulated answers (canned ShareGPT text), modelled timing"
    return None


def is_simulated(target: Target) -> bool:
    """A twin answers with canned dataset text; only its timing models a real server."""
    return target.kind is TargetKind.TWIN or target.model.endswith("-twin")


def few_shot_prompt(system_prompt: str, turns: list[ChatTurn]) -> str:
    """The raw prompt a base model continues: a preamble, fixed Q/A examples, the conversation's
    own Q/A pairs, then ``Q: <prompt>\\nA:``; the answer ends at ``FEW_SHOT_STOP``."""
    lines = [system_prompt.strip() or FEW_SHOT_PREAMBLE, ""]
    for question, answer in FEW_SHOT_EXAMPLES:
        lines += [f"Q: {question}", f"A: {answer}", ""]
    for turn in turns:
        text = " ".join(turn.content.split())
        if turn.role == "user":
            lines.append(f"Q: {text}")
        elif turn.role == "assistant":
            lines += [f"A: {text}", ""]
    lines.append("A:")
    return "\n".join(lines)


class TokenDelta(BaseModel):
    """New answer text; ``t`` is seconds since the request was sent, ``index`` counts token chunks.

    ``stats`` is the answer's running timing as of this chunk (TTFT, ITL, TPOT over the chunks so far),
    worked out when first read from the stream's own chunk clock: the times up to this chunk never
    change, so a reader that looks at every 20th event pays for those alone.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    kind: Literal["token"] = "token"
    text: str
    t: float
    index: int
    clock: StatsAccumulator = Field(exclude=True, repr=False, description="the stream's chunk clock")

    @classmethod
    def on(cls, clock: StatsAccumulator, text: str, t: float) -> TokenDelta:
        """The event for the chunk ``clock`` has just counted."""
        return cls(text=text, t=t, index=clock.chunk_count - 1, clock=clock)

    @cached_property
    def stats(self) -> AnswerStats:
        return self.clock.running(self.index + 1)


class AnswerEnd(BaseModel):
    """The last event of every stream: all text that arrived, its stats, and why it ended early."""

    kind: Literal["end"] = "end"
    text: str
    stats: AnswerStats
    error: str | None = None
    stopped: bool = False

    @property
    def partial(self) -> bool:
        return self.stats.partial


ChatEvent = TokenDelta | AnswerEnd


def resolve_api_key(target: Target) -> str:
    """The key from the target's environment variable, or ``EMPTY`` for servers without one."""
    if target.api_key_env is None:
        return NO_API_KEY
    key = remember_secret(os.environ.get(target.api_key_env))
    if not key:
        raise ChatError(
            f"target {target.name!r} reads its API key from ${target.api_key_env}, which is not set; "
            f"export {target.api_key_env}=... and start ServeDeck again"
        )
    return key


def _message_param(turn: ChatTurn) -> ChatCompletionMessageParam:
    if turn.role == "system":
        return {"role": "system", "content": turn.content}
    if turn.role == "user":
        return {"role": "user", "content": turn.content}
    return {"role": "assistant", "content": turn.content}


def _server_message(body: object, fallback: str) -> str:
    """The human part of vLLM's error JSON (flat ``{"message": ...}`` or nested ``{"error": {...}}``)."""
    if isinstance(body, dict):
        inner = body.get("error")
        if isinstance(inner, dict):
            body = inner
        message = body.get("message")
        if isinstance(message, str) and message.strip():
            return message.strip()
    if isinstance(body, str) and body.strip():
        return body.strip()[:300]
    return fallback


def _http_advice(status: int, target: Target) -> str:
    if status == 400:
        return "shorten the conversation or lower max tokens, or fix the extra request fields"
    if status in (401, 403):
        where = f"${target.api_key_env}" if target.api_key_env else "an API key environment variable"
        return f"check the API key in {where}"
    if status == 404:
        return f"check the URL and that the server serves model {target.model!r}"
    if status == 429:
        return "the server is rate limiting; wait and send again"
    if status >= 500:
        return "the server failed; check its logs, then send again"
    return "check the target's URL and settings"


def _cause(exc: BaseException) -> str:
    cause = exc.__cause__ or exc.__context__
    while cause is not None and not str(cause) and (cause.__cause__ or cause.__context__) is not None:
        cause = cause.__cause__ or cause.__context__
    text = str(cause) if cause is not None and str(cause) else type(cause or exc).__name__
    return text.splitlines()[0][:200] if text else "no details"


def _chunks(count: int) -> str:
    return "1 token chunk" if count == 1 else f"{count} token chunks"


class ChatStream:
    """One streamed answer. Iterate ``events()`` once; ``stop()`` may be called from any thread."""

    def __init__(
        self,
        target: Target,
        turns: list[ChatTurn],
        params: ChatParams,
        *,
        connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S,
        stall_timeout_s: float = DEFAULT_STALL_TIMEOUT_S,
    ) -> None:
        if not turns or turns[-1].role != "user":
            raise ChatError("a chat request must end with the user's message; type a prompt and send it")
        self.target = target
        self.turns = turns
        self.params = params
        self.connect_timeout_s = connect_timeout_s
        self.stall_timeout_s = stall_timeout_s
        self._api_key = resolve_api_key(target)
        self._stop_requested = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def endpoint(self) -> str:
        return f"{self.target.base_url}/v1"

    @property
    def few_shot(self) -> bool:
        """True when the target is a base model: the turns go to /v1/completions as a Q/A frame."""
        return is_base_model(self.target)

    def request_prompt(self) -> str:
        return few_shot_prompt(self.params.system_prompt, self.turns)

    def request_messages(self) -> list[ChatCompletionMessageParam]:
        messages: list[ChatCompletionMessageParam] = []
        if self.params.system_prompt.strip():
            messages.append({"role": "system", "content": self.params.system_prompt})
        messages.extend(_message_param(turn) for turn in self.turns)
        return messages

    # ---- stopping ----------------------------------------------------------------------------

    def stop(self) -> None:
        """End the answer now and keep what arrived; safe from any thread, before or during streaming."""
        self._stop_requested.set()
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            self._cancel_reader()
        else:
            with contextlib.suppress(RuntimeError):  # the loop closed in between
                loop.call_soon_threadsafe(self._cancel_reader)

    @property
    def stop_requested(self) -> bool:
        return self._stop_requested.is_set()

    def _cancel_reader(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()

    # ---- streaming ---------------------------------------------------------------------------

    async def events(self) -> AsyncIterator[ChatEvent]:
        if self._loop is not None:
            raise ChatError("this chat stream was already used; start a new one for the next answer")
        self._loop = asyncio.get_running_loop()
        queue: asyncio.Queue[ChatEvent] = asyncio.Queue()
        self._task = asyncio.create_task(self._read(queue.put_nowait), name=f"chat-{self.target.name}")

        def reader_done(task: asyncio.Task[None]) -> None:
            # A stop that lands before the reader's first step cancels it before it can report.
            if task.cancelled() and self._stop_requested.is_set():
                empty = StatsAccumulator(0.0).snapshot(partial=True)
                queue.put_nowait(AnswerEnd(text="", stats=empty, stopped=True))

        self._task.add_done_callback(reader_done)
        try:
            while True:
                event = await queue.get()
                yield event
                if isinstance(event, AnswerEnd):
                    return
        finally:
            task = self._task
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    async def _read(self, emit: Callable[[ChatEvent], None]) -> None:
        pieces: list[str] = []
        error: str | None = None
        stopped = False
        response_started = False
        import openai  # deferred: importing the SDK costs about a second, paid on the first answer

        stats = StatsAccumulator(time.perf_counter())

        async def mark_sent(request: Any) -> None:
            # The clock starts as the request leaves, after the SDK has built it (vLLM: just before post).
            stats.started_at = time.perf_counter()

        timeout = openai.Timeout(
            connect=self.connect_timeout_s,
            read=self.stall_timeout_s,
            write=self.stall_timeout_s,
            pool=self.connect_timeout_s,
        )
        client = openai.AsyncOpenAI(
            base_url=self.endpoint,
            api_key=self._api_key,
            max_retries=0,
            timeout=timeout,
            http_client=openai.DefaultAsyncHttpxClient(timeout=timeout, event_hooks={"request": [mark_sent]}),
        )
        try:
            if self._stop_requested.is_set():
                raise asyncio.CancelledError
            stream: openai.AsyncStream[Any]
            if self.few_shot:
                stream = await client.completions.create(
                    model=self.target.model,
                    prompt=self.request_prompt(),
                    stop=list(FEW_SHOT_STOP),
                    temperature=self.params.temperature,
                    max_tokens=self.params.max_tokens,
                    stream=True,
                    stream_options={"include_usage": True},
                    extra_body=self.params.extra_body or None,
                )
            else:
                stream = await client.chat.completions.create(
                    model=self.target.model,
                    messages=self.request_messages(),
                    temperature=self.params.temperature,
                    max_tokens=self.params.max_tokens,
                    stream=True,
                    stream_options={"include_usage": True},
                    extra_body=self.params.extra_body or None,
                )
            response_started = True
            async for chunk in stream:
                arrived_at = time.perf_counter()
                self._take_chunk(chunk, arrived_at, stats, pieces, emit)
            if stats.finish_reason is None:
                error = (
                    f"{self.target.name} ended the stream before the answer finished (no finish reason); "
                    "the partial answer is kept. The server may have restarted: check its logs."
                )
        except asyncio.CancelledError:
            if not self._stop_requested.is_set():
                raise
            current = asyncio.current_task()
            if current is not None:
                current.uncancel()
            stopped = True
        except openai.APIStatusError as exc:
            message = _server_message(exc.body, exc.message)
            error = (
                f"{self.target.name} answered HTTP {exc.status_code}: {message} "
                f"({_http_advice(exc.status_code, self.target)})"
            )
        except openai.APITimeoutError as exc:
            error = self._describe_timeout(exc, response_started, stats.chunk_count)
        except openai.APIConnectionError as exc:
            error = self._describe_connection_error(exc, response_started, stats.chunk_count)
        except openai.APIError as exc:  # an error event inside the stream (vLLM sends {"error": ...})
            message = _server_message(exc.body, exc.message)
            error = (
                f"{self.target.name} reported an error mid-answer: {message}; the partial answer is kept. "
                "Check the server's logs, then send again."
            )
        except json.JSONDecodeError as exc:
            error = (
                f"{self.target.name} sent a malformed stream event (not JSON: {exc.doc[:60]!r}); "
                "stopped reading and kept the partial answer. Is this an OpenAI-compatible server?"
            )
        finally:
            with contextlib.suppress(Exception):
                await asyncio.shield(client.close())
        finished = stats.finish_reason is not None and error is None and not stopped
        emit(
            AnswerEnd(
                text="".join(pieces),
                stats=stats.snapshot(partial=not finished),
                # Servers quote back the key they were sent.
                error=redact(error, None if self._api_key == NO_API_KEY else self._api_key),
                stopped=stopped,
            )
        )

    def _take_chunk(
        self,
        chunk: Any,
        arrived_at: float,
        stats: StatsAccumulator,
        pieces: list[str],
        emit: Callable[[ChatEvent], None],
    ) -> None:
        usage = getattr(chunk, "usage", None)
        if usage is not None:
            completion_tokens = getattr(usage, "completion_tokens", None)
            prompt_tokens = getattr(usage, "prompt_tokens", None)
            if isinstance(completion_tokens, int):
                stats.usage_completion_tokens = completion_tokens
            if isinstance(prompt_tokens, int):
                stats.prompt_tokens = prompt_tokens
        extra = getattr(chunk, "model_extra", None) or {}
        timings = extra.get("timings")
        if isinstance(timings, dict):  # llama.cpp's server-side prompt_ms / predicted_ms
            stats.server_timings = {
                key: float(value)
                for key, value in timings.items()
                if isinstance(value, int | float) and not isinstance(value, bool)
            }
        for choice in getattr(chunk, "choices", None) or []:
            if getattr(choice, "index", 0) != 0:
                continue
            delta = getattr(choice, "delta", None)
            # A chat chunk carries delta.content; a completions chunk (the few-shot frame) carries text.
            content = getattr(delta, "content", None) if delta is not None else getattr(choice, "text", None)
            if isinstance(content, str) and content:
                t = stats.on_token_chunk(arrived_at)
                pieces.append(content)
                emit(TokenDelta.on(stats, content, t))
            finish_reason = getattr(choice, "finish_reason", None)
            if isinstance(finish_reason, str) and finish_reason:
                stats.finish_reason = finish_reason

    def _describe_connection_error(
        self, exc: openai.APIConnectionError, response_started: bool, chunks: int
    ) -> str:
        cause = _cause(exc)
        if not response_started:
            return (
                f"cannot reach {self.target.name} at {self.endpoint} ({cause}); "
                "check that the server is running and the URL is right, or pick another target"
            )
        return (
            f"{self.target.name} dropped the connection mid-answer after {_chunks(chunks)} ({cause}); "
            "the partial answer is kept. The server may have crashed: check its logs."
        )

    def _describe_timeout(self, exc: openai.APITimeoutError, response_started: bool, chunks: int) -> str:
        if not response_started and "connect" in type(exc.__cause__).__name__.lower():
            return (
                f"cannot connect to {self.target.name} at {self.endpoint} within "
                f"{self.connect_timeout_s:g} s; check the URL, the port-forward or the network, "
                "or pick another target"
            )
        if not response_started:
            return (
                f"{self.target.name} at {self.endpoint} did not answer within "
                f"{self.stall_timeout_s:g} s; it may be overloaded or hung: check it, then send again"
            )
        return (
            f"{self.target.name} went silent for {self.stall_timeout_s:g} s mid-answer after "
            f"{_chunks(chunks)}; stopped waiting and kept the partial answer. Check the server's logs."
        )
