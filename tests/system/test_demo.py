"""`edge-asd demo` completes and the alert it prints names the injected anomaly's time."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]


def test_demo_end_to_end(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", "from edge_asd.cli import main; main()", "demo", "--out", str(tmp_path / "demo")],
        capture_output=True,
        text=True,
        timeout=1100,
        env={**os.environ, "COLUMNS": "1000", "PATH": os.environ.get("PATH", "") + ":/usr/sbin:/sbin"},
    )
    out = proc.stdout
    assert proc.returncode == 0, out[-3000:] + proc.stderr[-3000:]
    injected = re.search(r"anomaly injected at ([\d.]+)-([\d.]+) s", out)
    assert injected, out[-2000:]
    start, end = float(injected.group(1)), float(injected.group(2))
    alerts = re.findall(r"ALERT .*? anomaly in the window ([\d.]+)-([\d.]+) s of the recording \(injected at ([\d.]+) s\)", out)
    assert alerts, out[-3000:]
    lo, hi, named = (float(x) for x in alerts[0])
    assert named == start
    assert lo < end and hi > start, f"alert window {lo}-{hi} s misses the anomaly {start}-{end} s"
    assert "evidence" in out and "MQTT edge-asd/demo/events" in out
