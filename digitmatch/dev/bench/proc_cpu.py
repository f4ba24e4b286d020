"""CPU time of a process (all its threads) and the machine the numbers were measured on."""

from __future__ import annotations

import os
from pathlib import Path

from digitmatch.procfs import read_stat


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds used so far by ``pid``; None where /proc is not available."""
    stat = read_stat(f"/proc/{pid}/stat")
    return None if stat is None else stat[1]


def machine() -> dict:
    """What the numbers were measured on."""
    import platform

    info = {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu_model"] = line.split(":", 1)[1].strip()
                break
        mem = Path("/proc/meminfo").read_text().split("\n", 1)[0].split()
        info["memory_gib"] = round(int(mem[1]) / 2**20, 1)
        info["load_average_at_start"] = [round(x, 2) for x in os.getloadavg()]
    except (OSError, IndexError, ValueError):
        pass
    return info
