"""How many streams one machine keeps in real time through `listen` (1 s hop, 10 s windows).

For each stream count N: N file sources replayed at real time (the same pacing as
microphones), one daemon, onnxruntime (or whatever `--backend` picks), no broker (a recording
communicator timestamps what would be published). One stream gets an anomaly at a known time;
with patience 1 the event latency is the wall time from the arrival of the first window that
contains the anomaly to the publication of its event. The other streams are enrolled as a
site's streams are (``enrol_streams``; ``--no-enrol``: scored by the bundle's score), so the
daemon's work per window is the fused site score's. Reported per N: windows scored per
stream per second (1.0 = real time), skipped windows, audio still queued at the end, CPU use
per thread group, the daemon overhead, RSS at start, end and peak, and the event latency.

The daemon overhead is the CPU the daemon spends on its own work as a share of the CPU it
spends on the model and that work together (``daemon_cpu_share_percent``, the goal: < 10 %).
The model: the engine's threads, and on the pipeline thread the copy of each due window out
of its stream buffer (one copy of the model's 10 s on the frame grid, of which the hop's window
is a view), the front end and the hand-over (``Pipeline.model_cpu_s``). Its own work:
everything else, i.e. the pipeline thread's level checks, indicators, scores, decisions and
comms, its ticks that scored nothing (and the bench's loop on that thread), the capture
workers (resampling into the stream buffers) and any other thread. Until issue 13's sixth
pass the daemon copied each window for itself and once more for the model, and its own copy
was its own work; ``daemon_cpu_share_copy_as_own_percent`` gives the overhead with the one
copy counted so (``Pipeline.window_cpu_s``), for a comparison with figures taken before. The file sources, the bench's stand-in for microphones, are reported apart
(``source``): a sound card's driver costs something else. Also reported: the pipeline
thread's own work alone as a share of the whole process's CPU (``own_cpu_share_percent``), and
the share of the scoring ticks the pipeline thread spent on its own work
(``overhead_percent``, the "tick share", the daemon's figure in its stats): while the engine
ran on the same thread (before parallel runs) that share was the overhead; with parallel
runs the engine works during it, so it says how busy the thread is, not what it takes.

    python bench/listen_scale.py --streams 8 16 24 32 --seconds 60
    python bench/listen_scale.py --streams 32 --seconds 600     # RSS over 10 minutes
    python bench/listen_scale.py --find-max --probe-seconds 40  # most streams kept in real time
    python bench/listen_scale.py --streams 32 --seconds 40 --rss-steps --tracemalloc   # where memory goes

``--find-max`` bisects over stream counts, each probe a short run in a fresh process (so RSS and
allocator state do not carry over): a count is kept in real time when no window was skipped
and every stream scored its windows on time (at least 0.97 windows per second, less than two
hops of audio queued at the end). The daemon overhead is reported for the count found;
``--strict-overhead`` makes it part of the test. The RSS of ``--rss-streams``
(32) comes from its probe, or from one more run. Environment variables reach every probe
(``OPENBLAS_NUM_THREADS=1``, ``MALLOC_*``), and ``--ort-variant`` tries onnxruntime session
options without editing the backend (``bench/memory.py``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

# The random bundle that the tests use lives with the test fixtures (not product code).
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.machine import cpu_description
from bench.memory import (
    RssSteps,
    cpu_seconds,
    hwm_mib,
    patch_onnxruntime,
    rss_mib,
    tracemalloc_top,
)

if TYPE_CHECKING:
    from edge_asd.site.features import WindowFeatures

logger = logging.getLogger("bench.listen_scale")

HOP_S = 1.0
MAX_OVERHEAD_PERCENT = 10.0
"""The daemon's CPU budget outside the model (front end and engine; issue 13: overhead < 10 %)."""
MIN_RATE = 0.97
"""Windows per stream per second below this mean the scorer fell behind (1.0 = real time)."""


def default_bundle() -> Path:
    artifacts = Path(os.environ.get("EDGE_ASD_ARTIFACTS", Path(__file__).resolve().parents[1] / ".cache" / "test-artifacts"))
    trained = artifacts / "synth-bundle"
    if (trained / "model.json").is_file():
        return trained
    from tests.fixtures.random_bundle import ensure_random_bundle

    return ensure_random_bundle(artifacts / "bundle-random")


def real_time(row: dict) -> bool:
    """Real time at this stream count: no window skipped, none left behind.

    ``max_queue_s`` is the audio a stream holds past its last scored window when the run
    stops: one hop means its next window is due, up to two hops is a window that came due
    while a tick was scoring the others; more means the scorer is falling behind.
    """
    return row["skipped"] == 0 and row["windows_per_stream_per_s"] >= MIN_RATE and row["max_queue_s"] < 2.0 * HOP_S


def overhead_ok(row: dict) -> bool:
    """The daemon's own work under its budget (``daemon_cpu_share_percent``)."""
    overhead = row.get("daemon_cpu_share_percent")
    return overhead is not None and overhead < MAX_OVERHEAD_PERCENT


THREAD_GROUPS = (("edge-asd-onnxruntime", "engine"), ("MainThread", "pipeline"), ("capture-", "capture"),
                 ("source-", "source"))  # fmt: skip
"""Thread name prefix -> the group its CPU time is reported under (``cpu_percent_by_thread``)."""


def thread_cpu_seconds() -> dict[str, float]:
    """CPU seconds of this process's threads so far, summed per group (engine, pipeline,
    capture, other), from /proc/self/task/*/stat; empty where there is no /proc."""
    names = {t.native_id: t.name for t in threading.enumerate() if t.native_id is not None}
    tick = os.sysconf("SC_CLK_TCK")
    out: dict[str, float] = {}
    for task in Path("/proc/self/task").glob("*"):
        try:
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # the thread ended meanwhile
        name = names.get(int(task.name), "")
        group = next((g for prefix, g in THREAD_GROUPS if name.startswith(prefix)), "other")
        out[group] = out.get(group, 0.0) + (int(fields[11]) + int(fields[12])) / tick  # utime + stime
    return out


def daemon_cpu_share(used: dict[str, float], model_pipeline_s: float) -> float | None:
    """The daemon overhead in % from the CPU seconds per thread group while scoring (``used``)
    and the part of the pipeline thread's that went to the model (``Pipeline.model_cpu_s``:
    the windows' copy, the front end and the hand-over): everything but the model and the sources, over
    everything but the sources. The daemon's side thus also holds the pipeline thread's ticks
    that scored nothing, the bench's own loop on that thread (a few per cent of it) and any
    thread not named (``other``: 0 here; a native thread pool, e.g. onnxruntime's intra-op
    threads when a run gets more than one, would land there and count against the daemon)."""
    total = sum(v for g, v in used.items() if g != "source")
    model = used.get("engine", 0.0) + min(max(model_pipeline_s, 0.0), used.get("pipeline", 0.0))
    return round(100.0 * (total - model) / total, 1) if total > 0 else None


def keeps_up(row: dict, strict_overhead: bool = False) -> bool:
    """What ``--find-max`` bisects on: real time, and with ``strict_overhead`` the overhead budget too.

    The overhead is a per-window share (the daemon's work per window over the model's), about
    the same at every stream count except a handful (fixed per-tick costs), so it is judged
    apart by default: bisecting on it would flip on noise rather than on the stream count.
    """
    return real_time(row) and (overhead_ok(row) or not strict_overhead)


ENROL_MINUTES = 4.0
"""Normal audio each bench stream's enrolment is fitted on (``enrol_streams``)."""


def enrol_streams(
    bundle: Path, names: list[str], state_dir: Path, machine_type: str, machine_id: int, replayed_s: float
) -> WindowFeatures:
    """Enrol ``names`` as ``edge-asd enrol`` would, all on one recording of the bench's machine:
    the minutes that follow the ``replayed_s`` seconds the streams replay (the same machine and
    background, not the same audio). A site's streams are enrolled, and an enrolled stream's
    fused score costs the daemon more per window than the bundle's score (its components'
    nearest references and tail probabilities). Returns the features they were fitted on."""
    from edge_asd.core.constants import SAMPLE_RATE
    from edge_asd.core.synth import make_stream_recording
    from edge_asd.site.enrol import enrol_features, provenance
    from edge_asd.site.features import extract
    from edge_asd.site.storage import save_stream_enrolment
    from engines.bundle import load_bundle
    from engines.runtime import open_runtime

    loaded = load_bundle(bundle)
    cls = f"{machine_type}/id_{machine_id:02d}"
    audio, _ = make_stream_recording(machine_type, machine_id, replayed_s + ENROL_MINUTES * 60.0, None, seed=1)
    audio = audio[int(replayed_s * SAMPLE_RATE) :]
    with open_runtime(bundle, backend="onnxruntime") as runtime:
        features = extract([("bench-normal", audio)], runtime, class_indices=[loaded.classes.index(cls)])
    if not names:
        return features
    # One fit (the streams replay the same machine), stored under each stream's name.
    enrolment = enrol_features(features, loaded, stream=names[0], source=provenance("wav", features),
                               class_names=[cls])  # fmt: skip
    for name in names:
        enrolment.meta["stream"] = name
        save_stream_enrolment(enrolment, state_dir, name)
    return features


def run_once(
    bundle: Path, n: int, seconds: float, backend: str, anomaly_at: float, workdir: Path,
    *, runtime: dict | None = None, steps: RssSteps | None = None, site: bool = True, enrol: bool = True,
) -> dict:
    from edge_asd.config import validate_config
    from edge_asd.core.audio_io import write_wav
    from edge_asd.core.synth import make_stream_recording
    from edge_asd.daemon.listen import build_daemon
    from engines.bundle import load_bundle
    from tests.fixtures.comms import MemoryCommunicator

    if steps:
        steps.mark(f"{n} streams: imports done")
    cls = load_bundle(bundle).classes[0]
    machine_type, machine_id = cls.split("/")
    length = seconds + 15.0
    normal, _ = make_stream_recording(machine_type, int(machine_id[-2:]), length, None, seed=1)
    faulty, span = make_stream_recording(machine_type, int(machine_id[-2:]), length, anomaly_at, 20.0, "imbalance", seed=1)
    write_wav(workdir / "normal.wav", normal)
    write_wav(workdir / "faulty.wav", faulty)
    del normal, faulty
    if site and enrol and n > 1:
        # In a child process: its engine session and features must not count in this one's RSS.
        import multiprocessing

        child = multiprocessing.get_context("spawn").Process(
            target=enrol_streams, args=(bundle, [f"m{i}" for i in range(1, n)], workdir / "state", machine_type,
                                        int(machine_id[-2:]), length),
        )  # fmt: skip
        child.start()
        child.join()
        if child.exitcode != 0:
            raise SystemExit(f"enrolling the bench's streams failed (exit code {child.exitcode})")
        if steps:
            steps.mark(f"{n} streams: enrolled (in a child process)")

    class TimedCommunicator(MemoryCommunicator):
        def __init__(self) -> None:
            super().__init__()
            self.event_times: list[tuple[float, dict]] = []

        def publish_event(self, kind, before, after):
            if kind == "new":
                self.event_times.append((time.time(), after))
            super().publish_event(kind, before, after)

        def publish_score(self, stream, score, threshold=None):
            pass  # one call per window: recording them would grow the bench's own memory

    sources = [{"name": f"s{i}", "type": "file", "path": str(workdir / ("faulty.wav" if i == 0 else "normal.wav")),
                "realtime": True} for i in range(n)]
    # The bundle's threshold only where the bundle's score is used (an enrolled stream has its own).
    streams = [{"name": f"m{i}", "source": f"s{i}", "classes": [cls], "decision": {"warmup_windows": 0, "patience": 1},
                **({} if site and enrol and i > 0 else {"threshold": 1e9})} for i in range(n)]
    raw = {
        "bundle": str(bundle), "hop_s": HOP_S, "state_dir": str(workdir / "state"),
        "sources": sources, "streams": streams, "evidence": {"enabled": False}, "logging": {"level": "WARNING"},
        "site": {"enabled": site},
    }
    if runtime:
        raw["runtime"] = runtime
    else:
        raw["backend"] = backend
    cfg = validate_config(raw, where="bench")
    comms = TimedCommunicator()
    daemon = build_daemon(cfg, comms=comms)
    if steps:
        steps.mark(f"{n} streams: daemon built (engine open)")
    pipeline = daemon.pipeline
    enrolled = sum(1 for stream in pipeline.streams if stream.site is not None and stream.site.enrolled)
    if site and enrol and enrolled != n - 1:
        raise SystemExit(f"{enrolled} of the {n - 1} streams meant to be enrolled are: see the warnings above")
    t_start_wall = time.time()  # stream 0's source starts first: its audio clock starts here
    try:
        daemon.start_inputs()
    except BaseException:  # an input that cannot open: stop the ones that did, then say why
        daemon.inputs.stop()
        daemon.runtime.close()
        raise
    rss0, cpu0, t0 = rss_mib(), cpu_seconds(), time.monotonic()
    stop = threading.Timer(seconds, pipeline.stop)
    stop.start()
    calibrated = False
    first_batch_marked = False
    # From the first window on: (time, CPU per thread group, pipeline own CPU, its model CPU, its window copies)
    scoring_from: tuple[float, dict[str, float], float, float, float] | None = None
    try:
        while not pipeline.stop_event.is_set():
            scored = pipeline.tick()
            if scored and scoring_from is None:
                scoring_from = (time.monotonic(), thread_cpu_seconds(), pipeline.own_cpu_s, pipeline.model_cpu_s,
                                pipeline.window_cpu_s)
            if steps and scored and not first_batch_marked:
                first_batch_marked = True
                steps.mark(f"{n} streams: first windows scored")
            first = pipeline.streams[0]
            if not calibrated and first.last_score is not None:
                # Its first (normal) window's score + 50 %: the faulty stream is quiet until the
                # anomaly, then opens an event at once (patience 1, no warm-up).
                first.threshold_override = first.last_score * 1.5
                calibrated = True
            if scored == 0:
                pipeline.stop_event.wait(pipeline.poll_s)  # as Pipeline.run waits
    finally:
        stop.cancel()
        wall = time.monotonic() - t0
        cpu = cpu_seconds() - cpu0
        by_thread = own_share = daemon_share = copy_as_own = None
        if scoring_from is not None:
            span = time.monotonic() - scoring_from[0]
            now = thread_cpu_seconds()
            used = {g: now[g] - scoring_from[1].get(g, 0.0) for g in now}
            by_thread = {g: round(100.0 * used[g] / span, 1) for g in sorted(used)}
            own = pipeline.own_cpu_s - scoring_from[2]
            total = sum(used.values())
            own_share = round(100.0 * own / total, 1) if total > 0 else None
            model_s = pipeline.model_cpu_s - scoring_from[3]
            daemon_share = daemon_cpu_share(used, model_s)
            copy_as_own = daemon_cpu_share(used, model_s - (pipeline.window_cpu_s - scoring_from[4]))
        rss1 = rss_mib()
        stats = pipeline.stats()
        if steps:
            steps.mark(f"{n} streams: end of run")
        daemon.inputs.stop()
        daemon.runtime.close()
    per_stream = [s["windows"] for s in stats["streams"].values()]
    expected = max(1.0, seconds - 10.0)  # first window after 10 s of audio, then one per hop
    latency = None
    timed = [(published, after) for published, after in comms.event_times if after.get("stream") == "m0"]
    if timed:
        published, after = timed[0]
        arrival = t_start_wall + after["start_time"]  # the window that opened the event ends here
        latency = published - arrival
    return {
        "streams": n,
        "enrolled_streams": enrolled,
        # Events of the other streams (all normal audio): false alarms, each a cost the bench did not plan.
        "other_events": sum(1 for _, after in comms.event_times if after.get("stream") != "m0"),
        "seconds": round(wall, 1),
        "windows_per_stream_per_s": round(float(np.mean(per_stream)) / expected, 3),
        "min_windows_per_stream": int(min(per_stream)),
        "skipped": int(sum(s["skipped"] for s in stats["streams"].values())),
        "max_queue_s": max(s["queue_s"] for s in stats["streams"].values()),
        "cpu_percent": round(100.0 * cpu / wall, 1),
        # From the first scored window on (the first 10 s only fill the windows), per thread group.
        "cpu_percent_by_thread": by_thread,
        "inference_ms_mean": stats["detector"]["inference_ms"],
        "batches": stats["detector"]["batches"],
        "overhead_percent": stats["detector"]["overhead_percent"],
        # The pipeline thread's own work (not the windows' copy, the front end, the hand-over or
        # the engine) as a share of the CPU the whole process used while scoring (capture
        # threads included).
        "own_cpu_share_percent": own_share,
        # The daemon overhead: its own work (pipeline thread, capture workers, other threads)
        # over that and the model (engine threads; the windows' copy and the front end on the
        # pipeline thread), the file sources left out.
        "daemon_cpu_share_percent": daemon_share,
        # The same with the window's copy out of the stream buffer counted as the daemon's own
        # work, as it was before issue 13's sixth pass made it one copy for the model.
        "daemon_cpu_share_copy_as_own_percent": copy_as_own,
        "rss_start_mib": round(rss0, 1),
        "rss_end_mib": round(rss1, 1),
        "rss_peak_mib": round(hwm_mib(), 1),
        "event_latency_s": None if latency is None else round(latency, 3),
        "anomaly_span_s": span,
        "backend": stats["detector"]["engine"],
    }


def probe(n: int, seconds: float, args: argparse.Namespace) -> dict:
    """One run of ``n`` streams in a fresh process (clean RSS, allocator and thread state)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "row.json"
        cmd = [sys.executable, str(Path(__file__).resolve()), "--streams", str(n), "--seconds", str(seconds),
               "--backend", args.backend, "--out", str(out), "--ort-variant", args.ort_variant]
        if args.bundle:
            cmd += ["--bundle", str(args.bundle)]
        if args.max_batch:
            cmd += ["--max-batch", str(args.max_batch)]
        if args.threads:
            cmd += ["--threads", str(args.threads)]
        if args.no_site:
            cmd.append("--no-site")
        if args.no_enrol:
            cmd.append("--no-enrol")
        if args.poll_s is not None:
            cmd += ["--poll-s", str(args.poll_s)]
        if args.ring_s:
            cmd += ["--ring-s", str(args.ring_s)]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        row = json.loads(out.read_text())["rows"][0]
    row["keeps_up"] = keeps_up(row, args.strict_overhead)
    row["overhead_ok"] = overhead_ok(row)
    print(json.dumps(row), flush=True)
    return row


def find_max(args: argparse.Namespace) -> dict:
    """Bisection over stream counts: the largest N in [lo, hi] that ``keeps_up``.

    Doubling from ``lo`` finds a failing count first (unless ``hi`` keeps up), then halving the
    interval; each count is probed once (a noisy machine can flip a count near the limit, so
    the answer comes with every probe's figures).
    """
    probes: dict[int, dict] = {}

    def ok(n: int) -> bool:
        if n not in probes:
            probes[n] = probe(n, args.probe_seconds, args)
        return bool(probes[n]["keeps_up"])

    lo, hi = args.lo, args.hi
    if not ok(lo):
        good = 0
        bad = lo
    else:
        good, bad = lo, None
        n = lo
        while bad is None:
            n = min(hi, n * 2)
            if ok(n):
                good = n
                if n == hi:
                    break
            else:
                bad = n
    while bad is not None and bad - good > max(1, args.resolution):
        mid = (good + bad) // 2
        if ok(mid):
            good = mid
        else:
            bad = mid
    at_max = probes.get(good)
    return {"max_streams": good, "first_failing": bad, "probe_seconds": args.probe_seconds,
            "strict_overhead": args.strict_overhead,
            "daemon_cpu_share_percent_at_max": None if at_max is None else at_max["daemon_cpu_share_percent"],
            "daemon_cpu_share_copy_as_own_percent_at_max":
                None if at_max is None else at_max.get("daemon_cpu_share_copy_as_own_percent"),
            "tick_share_percent_at_max": None if at_max is None else at_max["overhead_percent"],
            "overhead_ok_at_max": None if at_max is None else overhead_ok(at_max),
            "probes": [probes[k] for k in sorted(probes)]}


def runtime_section(args: argparse.Namespace) -> dict | None:
    if args.max_batch is None and args.threads is None:
        return None
    section: dict = {"type": "onnxruntime" if args.backend == "auto" else args.backend}
    if args.max_batch is not None:
        section["max_batch"] = args.max_batch
    if args.threads is not None:
        section["threads"] = args.threads
    return section


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--streams", type=int, nargs="+", default=[8, 16, 24, 32])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--bundle", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--find-max", action="store_true", help="bisect for the most streams kept in real time")
    parser.add_argument("--probe-seconds", type=float, default=40.0, help="length of each --find-max probe")
    parser.add_argument("--lo", type=int, default=16, help="--find-max: smallest count probed")
    parser.add_argument("--hi", type=int, default=160, help="--find-max: largest count probed")
    parser.add_argument("--resolution", type=int, default=4, help="--find-max: stop when the interval is this narrow")
    parser.add_argument("--rss-streams", type=int, default=32, help="--find-max: stream count whose RSS is reported")
    parser.add_argument("--strict-overhead", action="store_true",
                        help=f"--find-max: a count must also keep the overhead under {MAX_OVERHEAD_PERCENT:g} %%")
    parser.add_argument("--max-batch", type=int, default=None, help="runtime max_batch (default: the backend's)")
    parser.add_argument("--threads", type=int, default=None, help="runtime threads (default: all cores)")
    parser.add_argument("--no-site", action="store_true", help="site learning off (no indicators per window)")
    parser.add_argument("--no-enrol", action="store_true",
                        help="leave the streams un-enrolled (scored by the bundle's score; by default all but "
                             "the first, which times the event latency, are enrolled)")
    parser.add_argument("--ort-variant", default="default",
                        help="onnxruntime session options to try, e.g. no-arena+no-spin (bench only, bench/memory.py)")
    parser.add_argument("--poll-s", type=float, default=None,
                        help="capture worker poll interval in seconds to try (bench only; default: the product's)")
    parser.add_argument("--ring-s", type=float, default=None,
                        help="capture ring length in seconds to try (bench only; default: the product's)")
    parser.add_argument("--rss-steps", action="store_true", help="print RSS after each step of each run")
    parser.add_argument("--tracemalloc", action="store_true", help="print the biggest Python/numpy allocations")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    bundle = args.bundle or default_bundle()
    machine = {**cpu_description(), "load_average_before": os.getloadavg()}

    if args.find_max:
        result = find_max(args)
        budget = ("met" if result["overhead_ok_at_max"] else "NOT met") if result["overhead_ok_at_max"] is not None else "-"
        print(f"\nmost streams kept in real time: {result['max_streams']} "
              f"(first failing: {result['first_failing']}; {args.probe_seconds:.0f} s probes); daemon overhead there "
              f"{result['daemon_cpu_share_percent_at_max']} % of the CPU (< {MAX_OVERHEAD_PERCENT:g} %: {budget}; "
              f"{result['daemon_cpu_share_copy_as_own_percent_at_max']} % with the window copy as its own); "
              f"tick share {result['tick_share_percent_at_max']} %")
        rss_row = next((p for p in result["probes"] if p["streams"] == args.rss_streams), None)
        if rss_row is None:
            rss_row = probe(args.rss_streams, args.probe_seconds, args)
        result["rss_row"] = rss_row
        print(f"RSS at {args.rss_streams} streams: {rss_row['rss_start_mib']} -> {rss_row['rss_end_mib']} MiB "
              f"(peak {rss_row['rss_peak_mib']} MiB)")
        machine["load_average_after"] = os.getloadavg()
        if args.out:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps({"machine": machine, "bundle": str(bundle), **result}, indent=2) + "\n")
        return

    steps = RssSteps() if args.rss_steps else None
    if steps:
        steps.mark("python + numpy + bench imports")
    if args.tracemalloc:
        import tracemalloc

        tracemalloc.start()
    patch_onnxruntime(args.ort_variant)
    if args.poll_s is not None:
        from edge_asd.audio.capture import Capture

        Capture.__init__.__kwdefaults__["poll_s"] = float(args.poll_s)
    if args.ring_s:
        # The capture ring holds ring_s seconds at the source's native rate per source; the
        # daemon builds its captures with the default, so the bench changes the default.
        from edge_asd.audio.capture import Capture

        Capture.__init__.__kwdefaults__["ring_s"] = float(args.ring_s)
    anomaly_at = max(12.0, args.seconds - 25.0)
    rows = []
    for n in args.streams:
        with tempfile.TemporaryDirectory() as tmp:
            row = run_once(bundle, n, args.seconds, args.backend, anomaly_at, Path(tmp),
                           runtime=runtime_section(args), steps=steps, site=not args.no_site,
                           enrol=not args.no_enrol)
        row["keeps_up"] = keeps_up(row, args.strict_overhead)
        row["overhead_ok"] = overhead_ok(row)
        row["ort_variant"] = args.ort_variant
        row["ring_s"] = args.ring_s
        row["poll_s"] = args.poll_s
        rows.append(row)
        print(json.dumps(row), flush=True)
    machine["load_average_after"] = os.getloadavg()
    print(f"\nMachine: {machine['cpu']}, {machine['logical_cores']} logical cores; bundle {bundle}\n")
    print("| streams | windows/stream/s (1.0 = real time) | skipped | CPU % | CPU % while scoring: engine / "
          "pipeline / capture / other / source | inference ms/batch | daemon overhead % of CPU (window copy as "
          "its own) | pipeline own % of process CPU | tick share % | RSS start → end (peak) MiB | event latency s |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        groups = r.get("cpu_percent_by_thread") or {}
        split = " / ".join(str(groups.get(g, "-")) for g in ("engine", "pipeline", "capture", "other", "source"))
        print(f"| {r['streams']} | {r['windows_per_stream_per_s']} | {r['skipped']} | {r['cpu_percent']} | {split} | "
              f"{r['inference_ms_mean']} | {r.get('daemon_cpu_share_percent') or '-'} "
              f"({r.get('daemon_cpu_share_copy_as_own_percent') or '-'}) | "
              f"{r.get('own_cpu_share_percent') or '-'} | {r['overhead_percent']} | {r['rss_start_mib']} → {r['rss_end_mib']} "
              f"({r['rss_peak_mib']}) | {r['event_latency_s']} |")
    extra: dict = {}
    if steps:
        print("\n" + steps.report())
        extra["rss_steps"] = steps.steps
    if args.tracemalloc:
        top = tracemalloc_top()
        extra["tracemalloc"] = top
        print("\nPython/numpy allocations alive at the end (tracemalloc):")
        for t in top:
            print("  ", t)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"machine": machine, "bundle": str(bundle), "rows": rows, **extra}, indent=2) + "\n")


if __name__ == "__main__":
    main()
