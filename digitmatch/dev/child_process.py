"""Starting the helper processes (the embedded broker, ``digitmatch serve``) so that they can be
stopped as a group and do not outlive the process that started them."""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path


def _detach() -> None:  # runs in the child between fork and exec
    os.setsid()


def _detach_and_die_with_parent() -> None:  # runs in the child between fork and exec
    os.setsid()
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def child_preexec():
    """``preexec_fn`` for helper processes: their own process group (a signal to the group reaches
    them and their children only); on Linux, when started from the main thread, also killed when
    this process dies (Linux ties that signal to the starting *thread*, so a process started from
    a short-lived thread would die with it: there it is left out)."""
    if sys.platform.startswith("linux") and threading.current_thread() is threading.main_thread():
        return _detach_and_die_with_parent
    return _detach


def spawn(cmd: list[str], log_path: Path | None = None, env: dict[str, str] | None = None) -> subprocess.Popen:
    """Start ``cmd`` in its own process group, stdout and stderr appended to ``log_path``
    (discarded when ``None``)."""
    if log_path:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        out = open(log_path, "ab")
    else:
        out = subprocess.DEVNULL
    try:
        return subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env, preexec_fn=child_preexec()
        )
    finally:
        if out is not subprocess.DEVNULL:
            out.close()
