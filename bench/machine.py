"""What machine a benchmark ran on, for the JSON every script in ``bench/`` writes."""

from __future__ import annotations

import os
import platform
from pathlib import Path


def cpu_description() -> dict:
    """CPU model, logical cores, architecture and Python version."""
    model = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": model, "logical_cores": os.cpu_count(), "machine": platform.machine(), "python": platform.python_version()}
