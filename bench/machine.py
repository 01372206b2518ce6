"""What the machine did to a benchmark run, recorded next to its figures."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["steal_s"]


def steal_s() -> float:
    """CPU seconds the hypervisor took away so far, summed over CPUs (a contended run shows here; 0 where
    /proc/stat has no such field)."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()
        return int(fields[8]) / os.sysconf("SC_CLK_TCK") if len(fields) > 8 else 0.0
    except (OSError, ValueError):
        return 0.0
