"""CPU time of a process or one of its threads, from Linux's ``/proc``."""

from __future__ import annotations

import os
from pathlib import Path

_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def read_stat(path: Path | str) -> tuple[str, float] | None:
    """``(command name, user + system CPU seconds)`` from a ``stat`` file of proc(5)
    (``/proc/<pid>/stat`` or ``/proc/<pid>/task/<tid>/stat``); None when it cannot be read (gone,
    or no /proc on this system)."""
    try:
        text = Path(path).read_text()
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may contain spaces and parentheses itself:
    # count the fields after the last closing one.
    end = text.rindex(")")
    fields = text[end + 2 :].split()
    utime, stime = int(fields[11]), int(fields[12])  # fields 14 and 15 of proc(5)
    return text[text.index("(") + 1 : end], (utime + stime) / _TICKS
