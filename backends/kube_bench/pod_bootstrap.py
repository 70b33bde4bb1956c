"""The load-generator pod's entry point, run by the image's own Python before ServeDeck is importable.

``render_job`` passes this file's source as ``python3 -c SOURCE WHEEL_NAME REQUIREMENT...``, so it uses
the standard library only, and its text must hold no dollar-parenthesis or double dollar (the kubelet
expands those in a container's args). It joins ServeDeck's wheel from the mounted bundle and unzips it
(a pure-Python wheel: no pip, no venv), imports the worker's dependencies from the image and, only when
some are missing, installs them with the image's pip into a folder under ``$TMPDIR``. Then it execs the
worker. When it cannot, it writes one line to the container's termination message (the file
``$SERVEDECK_TERMINATION_LOG`` names) and exits with ``EXIT_CODE``: the driver shows that line as the
pod's failure.
"""

from __future__ import annotations

import glob
import importlib.util
import os
import re
import subprocess
import sys
import zipfile

MIN_PYTHON = (3, 11)
EXIT_CODE = 78
"""EX_CONFIG: the pod could not get what the worker needs (the driver takes the termination message as is)."""
TERMINATION_LOG_ENV = "SERVEDECK_TERMINATION_LOG"
BUNDLE_ENV = "SERVEDECK_BENCH_BUNDLE"
WORKER_MODULE = "tui.cli.bench_worker"
OPTIONAL = frozenset({"uvloop"})
"""Installed when pip can, not required: the worker falls back to asyncio's own loop."""
DEFAULT_INDEX = "https://pypi.org/simple"
PIP_TIMEOUT_S = 600
_UNREACHABLE = (
    "NewConnectionError",
    "Failed to establish a new connection",
    "ConnectTimeoutError",
    "Connection refused",
    "Network is unreachable",
    "Name or service not known",
    "Temporary failure in name resolution",
    "nodename nor servname",
    "ProxyError",
    "Read timed out",
)
_TLS = ("SSLError", "CERTIFICATE_VERIFY_FAILED", "SSLCertVerificationError")
_NO_EGRESS_HINT = (
    "use --loadgen-image with an image that has them (README: clusters without egress), "
    "or let the pods reach a package index (PIP_INDEX_URL in the image)"
)


def fail(message: str) -> None:
    line = " ".join(message.split())
    path = os.environ.get(TERMINATION_LOG_ENV) or "/dev/termination-log"
    try:
        with open(path, "w", encoding="utf-8") as out:
            out.write(line)
    except OSError:
        pass
    print(f"servedeck: error: {line}", file=sys.stderr, flush=True)
    sys.exit(EXIT_CODE)


def module_of(requirement: str) -> str:
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
    return (match.group(1) if match else requirement).lower().replace("-", "_").replace(".", "_")


def without_credentials(url: str) -> str:
    return re.sub(r"//[^/@\s]*@", "//", url)


def index_url(output: str) -> str:
    configured = os.environ.get("PIP_INDEX_URL")
    if configured:
        return without_credentials(configured)
    looking = re.search(r"Looking in indexes: (\S+)", output)
    return without_credentials(looking.group(1).rstrip(",")) if looking else DEFAULT_INDEX


def pip_failure(output: str) -> str:
    """Why pip failed, in a few words: the index is unreachable, TLS failed, or pip's last error line."""
    index = index_url(output)
    if any(marker in output for marker in _UNREACHABLE):
        return f"cannot reach the package index {index}"
    if any(marker in output for marker in _TLS):
        return f"the package index {index} failed TLS verification"
    errors = [line.strip() for line in output.splitlines() if line.strip().startswith("ERROR:")]
    lines = errors or [line.strip() for line in output.splitlines() if line.strip()]
    return lines[-1].removeprefix("ERROR:").strip() if lines else "pip failed"


def pip_install(requirements: list[str], target: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "pip", "install", "--no-input", "--disable-pip-version-check"]
    command += ["--retries", "1", "--target", target, *requirements]
    try:
        return subprocess.run(command, capture_output=True, text=True, timeout=PIP_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired:
        return subprocess.CompletedProcess(command, 1, "", f"ERROR: pip ran past {PIP_TIMEOUT_S}s")


def main(argv: list[str]) -> None:
    if sys.version_info[:2] < MIN_PYTHON:
        fail(f"the load-generator image has Python {sys.version.split()[0]}; the worker needs 3.11 or later")
    wheel_name, requirements = argv[0], argv[1:]
    work = os.path.join(os.environ.get("TMPDIR") or "/tmp", "servedeck")
    site = os.path.join(work, "site")
    os.makedirs(work, exist_ok=True)
    bundle = os.environ.get(BUNDLE_ENV) or "/opt/servedeck/bundle"
    parts = sorted(glob.glob(os.path.join(glob.escape(bundle), "wheel.part-*")))
    if not parts:
        fail(f"the bench bundle folder {bundle} has no wheel parts (are the ConfigMaps mounted?)")
    wheel = os.path.join(work, wheel_name)
    try:
        with open(wheel, "wb") as out:
            for part in parts:
                with open(part, "rb") as piece:
                    out.write(piece.read())
        with zipfile.ZipFile(wheel) as archive:
            archive.extractall(site)
    except (OSError, zipfile.BadZipFile) as err:
        fail(f"cannot unpack ServeDeck's wheel from the bundle into {work}: {err}")
    path = [site]
    missing = [r for r in requirements if importlib.util.find_spec(module_of(r)) is None]
    needed = [r for r in missing if module_of(r) not in OPTIONAL]
    if missing:
        deps = os.path.join(work, "deps")
        names = ", ".join(needed)
        if needed and importlib.util.find_spec("pip") is None:
            fail(f"the load-generator image lacks {names} and has no pip to install them; {_NO_EGRESS_HINT}")
        if needed:
            print(f"installing {', '.join(missing)} with pip (not in the image)", flush=True)
            done = pip_install(missing, deps)
            if done.returncode != 0 and [r for r in missing if r not in needed]:
                done = pip_install(needed, deps)  # an optional one (no wheel for this platform?) may be why
            if done.returncode != 0:
                why = pip_failure(done.stdout + "\n" + done.stderr)
                fail(
                    f"the load-generator pod cannot install {names} (not in the image): {why}; "
                    + _NO_EGRESS_HINT
                )
            path.append(deps)
        elif importlib.util.find_spec("pip") is not None and pip_install(missing, deps).returncode == 0:
            path.append(deps)
    inherited = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join([*path, *([inherited] if inherited else [])])
    sys.stdout.flush()
    os.execv(sys.executable, [sys.executable, "-m", WORKER_MODULE])


if __name__ == "__main__":
    main(sys.argv[1:])
