"""What every load-generator pod of one level is told: the ``WorkerPlan`` (JSON in an env var).

The dataset (the sampled prompts, the same for every level; for multi-turn also the sampled
conversations) travels separately in the bundle ConfigMaps (``bundle``); the pod's index comes from
Kubernetes (``JOB_COMPLETION_INDEX``).
"""

from __future__ import annotations

import gzip
import json

from pydantic import BaseModel, Field, ValidationError

from backends.bench.models import LoadLevel, SampledConversation, SampledRequest
from backends.errors import ConfigError

PLAN_ENV = "SERVEDECK_BENCH_PLAN"
BUNDLE_DIR_ENV = "SERVEDECK_BENCH_BUNDLE"
INDEX_ENV = "JOB_COMPLETION_INDEX"
DEFAULT_BUNDLE_DIR = "/opt/servedeck/bundle"
PLAN_VERSION = 2
DEFAULT_FIRST_START_DELAY_S = 90.0
"""From Job creation to the first level's shared start: image pull and dependency install on a fresh node."""
POD_START_TIMEOUT_S = 600.0
"""A pod not running this long after the shared start is given up (its share is reported missing)."""


class SessionSettings(BaseModel):
    """Multi-turn: how every pod replays its sessions (the local worker's ``LevelPlan`` fields)."""

    dataset_answers: bool = False
    think_time_s: float = Field(default=0.0, ge=0.0)
    think_time_dist: str = "fixed"


class WorkerPlan(BaseModel):
    """One level as the pods run it. Every pod gets the same plan and derives its own share."""

    version: int = PLAN_VERSION
    run_id: str
    level_index: int
    level: LoadLevel
    pods: int = Field(ge=1)
    num_requests: int = Field(ge=1, description="requests of the level; multi-turn: its sessions")
    seed: int = 0
    base_url: str
    model: str
    endpoint: str = "chat"
    temperature: float = 0.0
    ignore_eos: bool = False
    continuous_usage: bool = True
    api_key_env: str | None = None
    """Name of the env var holding the API key inside the pod (filled from a Secret), if any."""
    start_at_epoch: float
    """Shared start (wall clock): pods open their connections, then wait for this instant."""
    request_timeout_s: float = 600.0
    idle_timeout_s: float = 60.0
    connect_timeout_s: float = 10.0
    multi_turn: SessionSettings | None = None
    """Multi-turn: the pods run the worker's session loop over the bundle's conversations."""


def encode_plan(plan: WorkerPlan) -> str:
    """The plan as the pods' env var holds it. An infinite rate (``--request-rate inf``, a ramp-up's
    level) is written ``Infinity``, which ``parse_plan`` reads back; pydantic's JSON would write null."""
    return json.dumps(plan.model_dump(), allow_nan=True, separators=(",", ":"))


def parse_plan(text: str) -> WorkerPlan:
    try:
        plan = WorkerPlan.model_validate_json(text)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "plan"
        raise ConfigError(f"the bench-worker plan is not valid ({where}: {first['msg']})") from None
    if plan.version != PLAN_VERSION:
        raise ConfigError(
            f"the bench-worker plan has version {plan.version}, this worker reads {PLAN_VERSION}; "
            "run the same ServeDeck version in the driver and the pods"
        )
    return plan


def encode_dataset(requests: list[SampledRequest]) -> bytes:
    """The sampled prompts as gzip'd JSON (what pods read from the bundle)."""
    payload = [request.model_dump() for request in requests]
    return gzip.compress(json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode(), mtime=0)


def decode_dataset(blob: bytes) -> list[SampledRequest]:
    try:
        raw = json.loads(gzip.decompress(blob))
        return [SampledRequest.model_validate(item) for item in raw]
    except (OSError, EOFError, ValueError, TypeError) as err:
        raise ConfigError(f"the bench dataset in the bundle is damaged: {err}") from None


def encode_conversations(levels: list[list[SampledConversation]]) -> bytes:
    """Multi-turn: each level's sampled conversations as gzip'd JSON (the bundle's second blob)."""
    payload = [[conversation.model_dump() for conversation in level] for level in levels]
    return gzip.compress(json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode(), mtime=0)


def decode_conversations(blob: bytes) -> list[list[SampledConversation]]:
    try:
        raw = json.loads(gzip.decompress(blob))
        return [[SampledConversation.model_validate(item) for item in level] for level in raw]
    except (OSError, EOFError, ValueError, TypeError) as err:
        raise ConfigError(f"the bench conversations in the bundle are damaged: {err}") from None
