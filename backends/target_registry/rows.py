"""The rows of the Deployments table: where a target comes from, its status, and one row's fields."""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, ConfigDict

from backends.target_types import Target, TargetKind
from manifests.spec import model_short_name


class TargetSource(StrEnum):
    LOCAL = "local"
    TWIN = "twin"
    KUBERNETES = "kubernetes"
    MANUAL = "manual"
    GIVEN = "given"


class TargetStatus(StrEnum):
    STOPPED = "stopped"
    STARTING = "starting"
    READY = "ready"
    FAILED = "failed"
    UNREACHABLE = "unreachable"
    NOT_CHECKED = "not checked"
    AVAILABLE = "available"
    ROLLING_OUT = "rolling out"
    SCALED_TO_ZERO = "scaled to 0"
    NO_CLUSTER = "no cluster"


class DeploymentRow(BaseModel):
    """One line of the Deployments table. ``target`` is set when the row can be chatted with or benched."""

    model_config = ConfigDict(frozen=True)

    key: str
    name: str
    source: TargetSource
    engine: str
    model: str
    accelerator: str
    replicas: str = "-"
    status: TargetStatus
    price_per_hour: float | None = None
    endpoint: str | None = None
    detail: str = ""
    target: Target | None = None

    @property
    def usable(self) -> bool:
        return self.target is not None and self.status is TargetStatus.READY


def endpoint_row(key: str, source: TargetSource, target: Target, health: str | None) -> DeploymentRow:
    """The row of an endpoint ServeDeck does not run (a manual URL or a given target).

    ``health`` is "" while unchecked, None when the endpoint answered, else why it did not.
    """
    return DeploymentRow(
        key=key,
        name=target.name,
        source=source,
        engine=_engine_label(target.kind),
        model=model_short_name(target.model),
        accelerator="-",
        status=_health_status(health),
        endpoint=f"{target.base_url}/v1",
        detail=health or "",
        target=target,
    )


def _health_status(health: str | None) -> TargetStatus:
    if health == "":
        return TargetStatus.NOT_CHECKED
    return TargetStatus.READY if health is None else TargetStatus.UNREACHABLE


def _engine_label(kind: TargetKind) -> str:
    return {
        TargetKind.VLLM: "vLLM",
        TargetKind.LLAMACPP: "llama.cpp",
        TargetKind.TWIN: "vLLM twin",
        TargetKind.OPENAI: "OpenAI API",
    }[kind]
