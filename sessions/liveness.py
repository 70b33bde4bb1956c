"""Is the process that was writing a run still alive?

A pid alone can be reused after a crash, so the writer also records its start time as the kernel
reports it (``/proc/<pid>/stat`` field 22, Linux); a live pid with a different start time is another
process. Where ``/proc`` does not exist the start time is ``None`` and only the pid is checked.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path


def host_name() -> str:
    return socket.gethostname()


def _proc_stat_fields(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may itself contain spaces or ')'.
    return text[text.rfind(")") + 2 :].split()


def process_start_token(pid: int) -> str | None:
    fields = _proc_stat_fields(pid)
    if fields is None or len(fields) < 20:
        return None
    return fields[19]


def is_process_alive(pid: int, start_token: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by someone else
    fields = _proc_stat_fields(pid)
    if fields is None:
        return not Path("/proc/self/stat").exists()  # no /proc at all: trust kill(0)
    if fields[0] in ("Z", "X"):  # zombie or dead: killed, not yet reaped
        return False
    return start_token is None or len(fields) < 20 or fields[19] == start_token
