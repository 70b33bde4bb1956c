"""The line protocol a load-generator pod prints on stdout, read back from its pod log.

Every protocol line is ``@servedeck-bench/1 <kind> <json>``; anything else in the log (pip's output,
Python warnings) is not protocol and is kept only as context for error messages. Kinds:

- ``ready``: connections are open (``PodReady``);
- ``start``: the pod's time zero as a wall-clock epoch, and how late it was (``PodStart``);
- ``record``: one finished request, a ``RequestRecord`` exactly as the worker measured it (times are
  seconds from the pod's time zero; JSON floats round-trip exactly);
- ``progress``: counters about once a second (``PodProgress``);
- ``summary``: the pod is done (``PodSummary``); ``fatal``: it could not run (``PodFatal``).

A record with thousands of chunk times can exceed the container runtime's 16 KiB log-line limit; the
runtime stores such a line as partial entries and the kubelet joins them again when serving the log,
so a reader of ``pods/log`` sees one line.
"""

from __future__ import annotations

from pydantic import BaseModel, ValidationError

from backends.bench.models import ClientStats, RequestRecord
from backends.errors import ServeDeckError

PROTOCOL = "@servedeck-bench/1"
_PREFIX = PROTOCOL + " "


class ProtocolError(ServeDeckError):
    """A protocol line that cannot be decoded (a different ServeDeck version, or a damaged log)."""


class PodReady(BaseModel):
    pod_index: int
    connections: int
    epoch: float


class PodStart(BaseModel):
    pod_index: int
    zero_epoch: float
    """Wall-clock time (the pod's clock) at which the pod's time zero fell."""
    late_s: float
    """How long after the shared start the pod began (0 when it was ready in time)."""


class PodProgress(BaseModel):
    pod_index: int
    t: float
    sent: int
    completed: int
    failed: int
    in_flight: int
    tokens: int
    """Output tokens since the previous progress line."""


class PodSummary(BaseModel):
    pod_index: int
    records: int
    duration_s: float
    client: ClientStats
    cancelled: bool = False


class PodFatal(BaseModel):
    pod_index: int
    message: str


PodMessage = PodReady | PodStart | RequestRecord | PodProgress | PodSummary | PodFatal

_KINDS: dict[str, type[BaseModel]] = {
    "ready": PodReady,
    "start": PodStart,
    "record": RequestRecord,
    "progress": PodProgress,
    "summary": PodSummary,
    "fatal": PodFatal,
}
_KIND_OF: dict[type[BaseModel], str] = {model: kind for kind, model in _KINDS.items()}


def encode(message: PodMessage) -> str:
    """One protocol line (no newline). Records drop calibration-only probe data."""
    kind = _KIND_OF[type(message)]
    if isinstance(message, RequestRecord):
        payload = message.model_dump_json(exclude={"probe_emit_arrival_ns"})
    else:
        payload = message.model_dump_json()
    return f"{_PREFIX}{kind} {payload}"


def is_protocol_line(line: str) -> bool:
    return line.startswith(_PREFIX)


def decode(line: str) -> PodMessage | None:
    """The message of a protocol line; None for any other log line; ProtocolError for a bad one."""
    text = line.rstrip("\r\n")
    if not text.startswith(_PREFIX):
        if text.startswith("@servedeck-bench/"):
            version = text.split(" ", 1)[0]
            raise ProtocolError(
                f"a load-generator pod speaks {version}, this ServeDeck reads {PROTOCOL}; use the same "
                "ServeDeck version in the image (or the default image, which installs this one)"
            )
        return None
    kind, _, payload = text[len(_PREFIX) :].partition(" ")
    model = _KINDS.get(kind)
    if model is None:
        raise ProtocolError(f"unknown load-generator message kind {kind!r} in a pod log")
    try:
        decoded = model.model_validate_json(payload)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or kind
        raise ProtocolError(f"damaged {kind} line in a pod log ({where}: {first['msg']})") from None
    assert isinstance(decoded, PodReady | PodStart | RequestRecord | PodProgress | PodSummary | PodFatal)
    return decoded
