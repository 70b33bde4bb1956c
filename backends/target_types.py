"""The types every layer shares about a serving endpoint: what it is (Target) and what its /metrics said
(ServerSnapshot). The bench core, the chat client, the store and both front ends all take them."""

from __future__ import annotations

from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


class TargetKind(StrEnum):
    VLLM = "vllm"
    LLAMACPP = "llamacpp"
    TWIN = "twin"
    OPENAI = "openai-compatible"


class TargetCapabilities(BaseModel):
    tokenize: bool = False
    metrics: bool = False
    slots: bool = False
    stream_usage: bool = False
    continuous_usage: bool = False


class Target(BaseModel):
    """One OpenAI-compatible endpoint. The API key is never stored: only where to read it."""

    model_config = ConfigDict(frozen=True)

    name: str
    base_url: str
    model: str
    kind: TargetKind = TargetKind.OPENAI
    api_key_env: str | None = None
    capabilities: TargetCapabilities = Field(default_factory=TargetCapabilities)
    hardware: str | None = Field(default=None, description="what serves it, when the server says (a twin)")
    max_model_len: int | None = Field(
        default=None, description="tokens one request may use (prompt + output), when the server says"
    )

    @field_validator("base_url")
    @classmethod
    def _strip_slash(cls, value: str) -> str:
        value = value.rstrip("/")
        if value.endswith("/v1"):
            value = value[: -len("/v1")]
        return value


class ServerSnapshot(BaseModel):
    """Server-side state from one /metrics (and /slots) scrape."""

    t: float
    source: Literal["vllm-v1", "vllm-v0", "llamacpp", "twin", "unknown"] = "unknown"
    running: float | None = None
    waiting: float | None = None
    kv_cache_usage: float | None = Field(default=None, description="0..1")
    prompt_tokens_total: float | None = None
    generation_tokens_total: float | None = None
    preemptions_total: float | None = None
    prefix_cache_hits_total: float | None = None
    prefix_cache_queries_total: float | None = None
    prompt_tokens_per_s: float | None = Field(default=None, description="from vLLM's periodic log line")
    generation_tokens_per_s: float | None = Field(default=None, description="from vLLM's periodic log line")
    prefix_cache_hit_rate: float | None = Field(default=None, description="0..1, from vLLM's log line")
