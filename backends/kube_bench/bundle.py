"""What the load-generator pods need from here, carried in ConfigMaps: ServeDeck's wheel and the prompts.

A stock cluster has no registry of ours, so the default pod is a public Python image that installs
ServeDeck's own wheel at start (like the article's benchmark pod installed its tools). The wheel is
built at run time from this source tree with ``pip wheel --no-deps`` (in a temporary copy, so the
source tree gets no ``build/`` folder), or taken from ``--loadgen-wheel``.

A ConfigMap holds at most 1 MiB, so blobs (the wheel, the gzip'd dataset, multi-turn's conversations)
are cut into parts of ``PART_BYTES`` and packed into as many ConfigMaps as needed (``binaryData`` keys
``<blob>.part-NNN``); the pod mounts all of them into one folder through a projected volume and joins the
parts in order.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from email.parser import HeaderParser
from pathlib import Path

from backends.errors import ConfigError

WHEEL_BLOB = "wheel"
DATASET_BLOB = "dataset"
CONVERSATIONS_BLOB = "conversations"
PART_BYTES = 700 * 1024
"""Raw bytes per ConfigMap: under the 1 MiB data limit, and base64 (x4/3) stays under 1 MiB of JSON."""
MAX_CONFIGMAPS = 16
WHEEL_BUILD_TIMEOUT_S = 300.0
SOURCE_PACKAGES = ("backends", "manifests", "sessions", "tui")
SOURCE_FILES = ("pyproject.toml", "README.md")
WORKER_DISTRIBUTIONS = ("pydantic", "numpy", "uvloop", "httptools")
"""What ``python -m tui.cli.bench_worker`` imports besides the standard library (tested)."""
_PART_KEY = re.compile(r"^(?P<blob>[a-z]+)\.part-(?P<index>\d{3})$")


def part_key(blob: str, index: int) -> str:
    return f"{blob}.part-{index:03d}"


def pack_parts(blobs: dict[str, bytes], part_bytes: int = PART_BYTES) -> list[dict[str, bytes]]:
    """The ``binaryData`` of each ConfigMap: every blob cut into parts, parts packed in order."""
    configmaps: list[dict[str, bytes]] = [{}]
    room = part_bytes
    for blob, data in blobs.items():
        if not re.fullmatch(r"[a-z]+", blob):
            raise ConfigError(f"bundle blob names are lowercase letters, got {blob!r}")
        index = 0
        offset = 0
        while True:
            if room == 0:
                configmaps.append({})
                room = part_bytes
            piece = data[offset : offset + room]
            configmaps[-1][part_key(blob, index)] = piece
            offset += len(piece)
            room -= len(piece)
            index += 1
            if offset >= len(data):
                break
    if len(configmaps) > MAX_CONFIGMAPS:
        total = sum(len(data) for data in blobs.values())
        raise ConfigError(
            f"the load-generator bundle is {total / 2**20:.1f} MiB, more than {MAX_CONFIGMAPS} ConfigMaps "
            "can carry; use --loadgen-image with ServeDeck installed and a smaller --num-prompts"
        )
    return configmaps


def read_blob(directory: str | Path, blob: str) -> bytes:
    """Join the parts of ``blob`` found in ``directory`` (the mounted ConfigMaps), in order."""
    folder = Path(directory)
    try:
        names = sorted(path.name for path in folder.iterdir())
    except OSError as err:
        raise ConfigError(f"cannot read the bench bundle folder {folder}: {err.strerror or err}") from None
    parts = sorted(
        (int(match["index"]), name)
        for name in names
        if (match := _PART_KEY.match(name)) and match["blob"] == blob
    )
    if not parts:
        raise ConfigError(f"the bench bundle folder {folder} has no {blob} parts ({blob}.part-000, ...)")
    if [index for index, _ in parts] != list(range(len(parts))):
        raise ConfigError(f"the bench bundle folder {folder} is missing parts of {blob}")
    return b"".join((folder / name).read_bytes() for _, name in parts)


# --- the wheel --------------------------------------------------------------------------------------


def source_tree() -> Path | None:
    """The ServeDeck source tree this code runs from (an editable or source checkout), if any."""
    root = Path(__file__).resolve().parents[2]
    pyproject = root / "pyproject.toml"
    try:
        text = pyproject.read_text(encoding="utf-8")
    except OSError:
        return None
    if not re.search(r'^name\s*=\s*"servedeck"', text, flags=re.MULTILINE):
        return None
    return root if all((root / package).is_dir() for package in SOURCE_PACKAGES) else None


def build_wheel(dest_dir: Path, source: Path | None = None) -> Path:
    """Build ServeDeck's wheel (no dependencies) into ``dest_dir``; returns its path."""
    root = source or source_tree()
    if root is None:
        raise ConfigError(
            "cannot build ServeDeck's wheel for the load-generator pods: this installation has no source "
            "tree; pass --loadgen-wheel PATH (a servedeck .whl) or --loadgen-image with ServeDeck installed"
        )
    with tempfile.TemporaryDirectory(prefix="servedeck-wheel-src-") as tmp:
        copy = Path(tmp) / "servedeck"
        copy.mkdir()
        ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
        for package in SOURCE_PACKAGES:
            shutil.copytree(root / package, copy / package, ignore=ignore)
        for name in SOURCE_FILES:
            if (root / name).is_file():
                shutil.copy2(root / name, copy / name)
        command = [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--quiet",
            "-w",
            str(dest_dir),
            str(copy),
        ]
        try:
            done = subprocess.run(
                command, capture_output=True, text=True, timeout=WHEEL_BUILD_TIMEOUT_S, check=False
            )
        except subprocess.TimeoutExpired:
            raise ConfigError(
                f"building ServeDeck's wheel took more than {WHEEL_BUILD_TIMEOUT_S:.0f}s; "
                "pass a prebuilt one with --loadgen-wheel PATH"
            ) from None
        if done.returncode != 0:
            lines = [line for line in (done.stderr + done.stdout).splitlines() if line.strip()]
            reason = lines[-1].strip() if lines else f"pip exited with {done.returncode}"
            raise ConfigError(
                f"building ServeDeck's wheel failed: {reason}; pass a prebuilt one with --loadgen-wheel PATH"
            )
    wheels = sorted(dest_dir.glob("servedeck-*.whl"))
    if not wheels:
        raise ConfigError(f"pip built no servedeck wheel in {dest_dir}; pass one with --loadgen-wheel PATH")
    return wheels[-1]


def check_wheel(path: Path) -> Path:
    """A usable ``--loadgen-wheel``: an existing servedeck ``.whl`` file."""
    if not path.is_file():
        raise ConfigError(f"--loadgen-wheel: no such file {path}")
    if not (path.name.startswith("servedeck-") and path.name.endswith(".whl")):
        raise ConfigError(f"--loadgen-wheel: {path.name} is not a servedeck wheel (servedeck-*.whl)")
    return path


def worker_requirements(wheel: Path) -> list[str]:
    """The pod's pip requirements: the worker's dependencies, with the wheel's own version specifiers.

    Only what the worker imports: the full dependency list would pull the local engine's sdist (an
    11-minute llama.cpp build) and the 125 MB ShareGPT dataset into every pod.
    """
    try:
        with zipfile.ZipFile(wheel) as archive:
            metadata_name = next(
                (name for name in archive.namelist() if name.endswith(".dist-info/METADATA")), None
            )
            metadata = archive.read(metadata_name).decode("utf-8") if metadata_name else ""
    except (OSError, zipfile.BadZipFile) as err:
        raise ConfigError(f"{wheel.name} is not a readable wheel: {err}") from None
    declared: dict[str, str] = {}
    for requirement in HeaderParser().parsestr(metadata).get_all("Requires-Dist") or []:
        spec = requirement.split(";", 1)
        if len(spec) == 2 and "extra" in spec[1]:
            continue
        match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", spec[0])
        if match:
            declared[_normalize(match.group(1))] = spec[0].strip().replace(" ", "")
    return [declared.get(name, name) for name in WORKER_DISTRIBUTIONS]


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()
