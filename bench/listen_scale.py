"""How many streams one machine keeps in real time through `listen` (1 s hop, 10 s windows).

For each stream count N: N file sources replayed at real time (the same pacing as
microphones), one daemon, onnxruntime (or whatever `--backend` picks), no broker (a recording
communicator timestamps what would be published). One stream gets an anomaly at a known time;
with patience 1 the event latency is the wall time from the arrival of the first window that
contains the anomaly to the publication of its event. Reported per N: windows scored per
stream per second (1.0 = real time), skipped windows, CPU use, daemon overhead (tick time not
spent in the engine), RSS at start and end, and the event latency.

    python bench/listen_scale.py --streams 8 16 24 32 --seconds 60
    python bench/listen_scale.py --streams 32 --seconds 600     # RSS over 10 minutes
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

# The random bundle that the tests use lives with the test fixtures (not product code).
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def default_bundle() -> Path:
    artifacts = Path(os.environ.get("EDGE_ASD_ARTIFACTS", Path(__file__).resolve().parents[1] / ".cache" / "test-artifacts"))
    trained = artifacts / "synth-bundle"
    if (trained / "model.json").is_file():
        return trained
    from tests.fixtures.random_bundle import ensure_random_bundle

    return ensure_random_bundle(artifacts / "bundle-random")


def run_once(bundle: Path, n: int, seconds: float, backend: str, anomaly_at: float, workdir: Path) -> dict:
    from edge_asd.config import validate_config
    from edge_asd.core.audio_io import write_wav
    from edge_asd.core.synth import make_stream_recording
    from edge_asd.daemon.listen import build_daemon
    from engines.bundle import load_bundle
    from tests.fixtures.comms import MemoryCommunicator

    cls = load_bundle(bundle).classes[0]
    machine_type, machine_id = cls.split("/")
    length = seconds + 15.0
    normal, _ = make_stream_recording(machine_type, int(machine_id[-2:]), length, None, seed=1)
    faulty, span = make_stream_recording(machine_type, int(machine_id[-2:]), length, anomaly_at, 20.0, "imbalance", seed=1)
    write_wav(workdir / "normal.wav", normal)
    write_wav(workdir / "faulty.wav", faulty)

    class TimedCommunicator(MemoryCommunicator):
        def __init__(self) -> None:
            super().__init__()
            self.event_times: list[tuple[float, dict]] = []

        def publish_event(self, kind, before, after):
            if kind == "new":
                self.event_times.append((time.time(), after))
            super().publish_event(kind, before, after)

    sources = [{"name": f"s{i}", "type": "file", "path": str(workdir / ("faulty.wav" if i == 0 else "normal.wav")),
                "realtime": True} for i in range(n)]
    streams = [{"name": f"m{i}", "source": f"s{i}", "classes": [cls], "threshold": 1e9,
                "decision": {"warmup_windows": 0, "patience": 1}} for i in range(n)]
    cfg = validate_config({
        "bundle": str(bundle), "backend": backend, "hop_s": 1.0, "state_dir": str(workdir / "state"),
        "sources": sources, "streams": streams, "evidence": {"enabled": False}, "logging": {"level": "WARNING"},
    }, where="bench")
    comms = TimedCommunicator()
    daemon = build_daemon(cfg, comms=comms)
    pipeline = daemon.pipeline
    t_start_wall = time.time()  # stream 0's source starts first: its audio clock starts here
    for capture in daemon.captures:
        capture.start()
    rss0, cpu0, t0 = rss_mib(), cpu_seconds(), time.monotonic()
    stop = threading.Timer(seconds, pipeline.stop)
    stop.start()
    calibrated = False
    try:
        while not pipeline.stop_event.is_set():
            scored = pipeline.tick()
            first = pipeline.streams[0]
            if not calibrated and first.last_score is not None:
                # Its first (normal) window's score + 50 %: the faulty stream is quiet until the
                # anomaly, then opens an event at once (patience 1, no warm-up).
                first.threshold_override = first.last_score * 1.5
                calibrated = True
            if scored == 0:
                pipeline.stop_event.wait(0.02)
    finally:
        stop.cancel()
        wall = time.monotonic() - t0
        cpu = cpu_seconds() - cpu0
        rss1 = rss_mib()
        for capture in daemon.captures:
            capture.stop()
        daemon.runtime.close()
    stats = pipeline.stats()
    per_stream = [s["windows"] for s in stats["streams"].values()]
    expected = max(1.0, seconds - 10.0)  # first window after 10 s of audio, then one per hop
    latency = None
    if comms.event_times:
        published, after = comms.event_times[0]
        arrival = t_start_wall + after["start_time"]  # the window that opened the event ends here
        latency = published - arrival
    return {
        "streams": n,
        "seconds": round(wall, 1),
        "windows_per_stream_per_s": round(float(np.mean(per_stream)) / expected, 3),
        "min_windows_per_stream": int(min(per_stream)),
        "skipped": int(sum(s["skipped"] for s in stats["streams"].values())),
        "cpu_percent": round(100.0 * cpu / wall, 1),
        "inference_ms_mean": stats["detector"]["inference_ms"],
        "overhead_percent": stats["detector"]["overhead_percent"],
        "rss_start_mib": round(rss0, 1),
        "rss_end_mib": round(rss1, 1),
        "event_latency_s": None if latency is None else round(latency, 3),
        "anomaly_span_s": span,
        "backend": stats["detector"]["engine"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--streams", type=int, nargs="+", default=[8, 16, 24, 32])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--bundle", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    bundle = args.bundle or default_bundle()
    anomaly_at = max(12.0, args.seconds - 25.0)
    rows = []
    for n in args.streams:
        with tempfile.TemporaryDirectory() as tmp:
            row = run_once(bundle, n, args.seconds, args.backend, anomaly_at, Path(tmp))
        rows.append(row)
        print(json.dumps(row), flush=True)
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} logical cores"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                machine = f"{line.split(':', 1)[1].strip()}, {os.cpu_count()} logical cores"
                break
    except OSError:
        pass
    print(f"\nMachine: {machine}; bundle {bundle}\n")
    print("| streams | windows/stream/s (1.0 = real time) | skipped | CPU % | inference ms/batch | overhead % | RSS start → end MiB | event latency s |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['streams']} | {r['windows_per_stream_per_s']} | {r['skipped']} | {r['cpu_percent']} | "
              f"{r['inference_ms_mean']} | {r['overhead_percent']} | {r['rss_start_mib']} → {r['rss_end_mib']} | "
              f"{r['event_latency_s']} |")
    if args.out:
        args.out.write_text(json.dumps({"machine": machine, "bundle": str(bundle), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
