"""A server child process that cannot outlive ServeDeck.

Three layers, because each covers a way of dying the others miss:

* the child runs in its own session/process group, so a terminal ctrl-c reaches only us and we stop
  it in order (``terminate``), and stopping kills anything it spawned too;
* ``atexit`` terminates every live child on a normal interpreter exit (including an uncaught error);
* on Linux ``PR_SET_PDEATHSIG`` makes the kernel SIGKILL the child when its parent dies in a way no
  Python code runs for (SIGKILL, OOM kill, a crash).

PR_SET_PDEATHSIG fires when the *thread* that forked the child ends, not the process. The TUI may start
an engine from a short-lived worker thread, so a dedicated keeper thread forks the child and then
waits for it: it lives exactly as long as the child does.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

_PR_SET_PDEATHSIG = 1


def _load_prctl() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(None, use_errno=True)
    prctl: Callable[..., int] = libc.prctl
    return prctl


# Resolved before any fork: the pre-exec hook must not load libraries or take locks.
_PRCTL = _load_prctl()


def _die_with_parent_hook(parent_pid: int) -> Callable[[], None]:
    def hook() -> None:
        if _PRCTL is not None:
            _PRCTL(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        # The parent may have died between fork and prctl; then nobody would ever signal us.
        if os.getppid() != parent_pid:
            os._exit(1)

    return hook


class GuardedChild:
    """One child process, its output going to ``log_path``; see the module docstring."""

    def __init__(self, argv: Sequence[str], env: Mapping[str, str], log_path: Path) -> None:
        self._argv = list(argv)
        self._env = dict(env)
        self._log_path = log_path
        self._popen: subprocess.Popen[bytes] | None = None
        self._spawn_error: BaseException | None = None
        self._spawned = threading.Event()
        self._exited = threading.Event()
        self._keeper: threading.Thread | None = None

    def spawn(self) -> None:
        """Start the child; raises OSError if it cannot be executed."""
        self._keeper = threading.Thread(
            target=self._keep, name=f"keeper:{Path(self._argv[0]).name}", daemon=True
        )
        self._keeper.start()
        self._spawned.wait()
        if self._spawn_error is not None:
            raise self._spawn_error

    def _keep(self) -> None:
        try:
            with self._log_path.open("ab") as log:
                self._popen = subprocess.Popen(
                    self._argv,
                    env=self._env,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                    preexec_fn=_die_with_parent_hook(os.getpid()),
                )
        except BaseException as exc:
            self._spawn_error = exc
            self._exited.set()
            self._spawned.set()
            return
        _LIVE_CHILDREN.add(self)
        self._spawned.set()
        try:
            self._popen.wait()
        finally:
            self._exited.set()
            _LIVE_CHILDREN.discard(self)

    @property
    def pid(self) -> int:
        if self._popen is None:
            raise RuntimeError("child not spawned")
        return self._popen.pid

    @property
    def returncode(self) -> int | None:
        """The exit status once the child has exited and been reaped, else None."""
        if self._popen is None or not self._exited.is_set():
            return None
        return self._popen.returncode

    def wait(self, timeout_s: float | None) -> int | None:
        """Block until the child exits (returning its status) or ``timeout_s`` passes (None)."""
        self._exited.wait(timeout_s)
        return self.returncode

    def terminate(self, timeout_s: float = 10.0) -> int | None:
        """SIGTERM the child's process group, wait up to ``timeout_s``, then SIGKILL it."""
        if self._popen is None:
            return None
        for sig, wait_s in ((signal.SIGTERM, timeout_s), (signal.SIGKILL, 5.0)):
            if self._exited.is_set():
                break
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._popen.pid, sig)
            self._exited.wait(wait_s)
        return self.returncode


class _LiveChildren:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._children: set[GuardedChild] = set()

    def add(self, child: GuardedChild) -> None:
        with self._lock:
            self._children.add(child)

    def discard(self, child: GuardedChild) -> None:
        with self._lock:
            self._children.discard(child)

    def terminate_all(self) -> None:
        with self._lock:
            children = list(self._children)
        for child in children:
            child.terminate(timeout_s=5.0)


_LIVE_CHILDREN = _LiveChildren()
atexit.register(_LIVE_CHILDREN.terminate_all)
