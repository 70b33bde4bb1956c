"""Every target ServeDeck can talk to, as rows of one table: the local engine, twin profiles,
Kubernetes vLLM deployments and manual OpenAI-compatible URLs.

``TargetRegistry`` (registry.py) joins them; each kind has its own module. httpx, the engine and the
Kubernetes client are imported where they are used: the app's first frame does not need them, and they
cost a noticeable part of its start-up time.
"""

from backends.kube.kubeconfig_paths import DEFAULT_KUBECONFIG, KUBECONFIG_ENV
from backends.target_registry.cluster import (
    CLUSTER_KEY,
    ClusterEvent,
    ClusterPod,
    ClusterState,
    cluster_key,
)
from backends.target_registry.health import PROBE_TIMEOUT_S, probe_endpoint
from backends.target_registry.local import LOCAL_KEY, LOCAL_START_DEADLINE_S, LOCAL_TARGET_NAME
from backends.target_registry.logs import (
    LOG_BATCH_LINES,
    LOG_POLL_INTERVAL_S,
    LOG_TAIL_BYTES,
    LOG_TAIL_LINES,
    follow_log_file,
)
from backends.target_registry.manual_urls import (
    MANUAL_TARGETS_FILE,
    MANUAL_TARGETS_VERSION,
    ManualTarget,
    ManualTargetStore,
    validate_api_key_env,
)
from backends.target_registry.registry import TargetRegistry
from backends.target_registry.rows import DeploymentRow, TargetSource, TargetStatus
from backends.target_registry.twins import (
    DEFAULT_TWIN_SHAPES,
    HOST,
    TWIN_START_DEADLINE_S,
    TWIN_STOP_TIMEOUT_S,
    accelerator_label,
    default_twin_specs,
    spec_price_per_hour,
    twin_key,
    twin_name,
)

__all__ = [
    "CLUSTER_KEY",
    "DEFAULT_KUBECONFIG",
    "DEFAULT_TWIN_SHAPES",
    "HOST",
    "KUBECONFIG_ENV",
    "LOCAL_KEY",
    "LOCAL_START_DEADLINE_S",
    "LOCAL_TARGET_NAME",
    "LOG_BATCH_LINES",
    "LOG_POLL_INTERVAL_S",
    "LOG_TAIL_BYTES",
    "LOG_TAIL_LINES",
    "MANUAL_TARGETS_FILE",
    "MANUAL_TARGETS_VERSION",
    "PROBE_TIMEOUT_S",
    "TWIN_START_DEADLINE_S",
    "TWIN_STOP_TIMEOUT_S",
    "ClusterEvent",
    "ClusterPod",
    "ClusterState",
    "DeploymentRow",
    "ManualTarget",
    "ManualTargetStore",
    "TargetRegistry",
    "TargetSource",
    "TargetStatus",
    "accelerator_label",
    "cluster_key",
    "default_twin_specs",
    "follow_log_file",
    "probe_endpoint",
    "spec_price_per_hour",
    "twin_key",
    "twin_name",
    "validate_api_key_env",
]
