"""Where the pipeline thread's CPU goes inside `listen`, step by step (issue 13's profiles).

`bench/hop_overhead.py` times each step alone, with a stand-in engine; inside `listen` the
same steps cost more (the engine's threads share the caches and the memory bandwidth), so
this runs `bench/listen_scale.py` as it is and wraps the pipeline's steps with
``time.thread_time`` on the pipeline thread only: the CPU time of each step per scored window,
nested steps included in their callers (so the rows do not add up). Every argument but
``--profile-out PATH`` (where the table is also written) goes to ``listen_scale.py``; the
table goes to stderr at the end. Give one stream count: several are summed into one table.
``--find-max`` runs its probes in other processes, which this cannot see: refused. The
model's row ``_submit`` holds the front end, the hand-over and stacking the batch.

    OPENBLAS_NUM_THREADS=1 python bench/pipeline_profile.py --bundle /tmp/synth-bundle --streams 32 --seconds 60 \
        --profile-out bench/results/pipeline_profile.txt
"""

from __future__ import annotations

import atexit
import functools
import runpy
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import edge_asd.core.indicators as indicators  # noqa: E402
import edge_asd.core.site.enrolment as enrolment  # noqa: E402
import edge_asd.core.site.normalise as normalise  # noqa: E402
import edge_asd.core.spectra as spectra  # noqa: E402
import edge_asd.daemon.pipeline as pipeline  # noqa: E402
import edge_asd.daemon.site as site  # noqa: E402
import edge_asd.daemon.streams as streams  # noqa: E402
import edge_asd.levels as levels  # noqa: E402

STEPS = [
    (pipeline.Pipeline, "_submit", "model: front end and hand-over"),
    (streams.Stream, "due_window", "due window: its copy out of the buffer"),
    (pipeline, "features_many", "site features"),
    (indicators, "block_stats_many", "  block statistics"),
    (indicators, "combine_many", "  indicators from blocks"),
    (spectra, "profile_many", "  spectral profiles"),
    (pipeline.Pipeline, "_window_score", "window score"),
    (enrolment.Enrolment, "score", "  fused score"),
    (enrolment, "spectrum_component", "    spectrum component"),
    (enrolment, "knn_component", "    knn component"),
    (normalise.SurpriseFit, "surprise", "    surprise"),
    (site.StreamSite, "detail", "  event detail"),
    (levels.LevelMonitor, "check", "level check"),
    (pipeline.Pipeline, "_decide", "decisions and publishing"),
    (pipeline.Pipeline, "_publish_site_state", "enrolment state"),
    (pipeline.Pipeline, "_update_capture_status", "input status"),
    (pipeline.Pipeline, "run_commands", "operator commands"),
]
"""(owner, attribute, label): what is timed. Module functions are wrapped where the caller
looks them up (``pipeline.features_many``, ``enrolment.spectrum_component``)."""

cpu: dict[str, float] = {}
totals = {"tick": 0.0, "windows": 0}
pipeline_thread = threading.main_thread()  # listen_scale.py ticks the pipeline on its main thread


def timed(owner: object, name: str, label: str) -> None:
    original = getattr(owner, name)

    @functools.wraps(original)
    def wrapper(*args, **kwargs):
        if threading.current_thread() is not pipeline_thread:
            return original(*args, **kwargs)
        start = time.thread_time()
        try:
            return original(*args, **kwargs)
        finally:
            cpu[label] = cpu.get(label, 0.0) + time.thread_time() - start

    setattr(owner, name, wrapper)


def timed_tick() -> None:
    original = pipeline.Pipeline.tick

    @functools.wraps(original)
    def tick(self: pipeline.Pipeline) -> int:
        start = time.thread_time()
        scored = original(self)
        totals["tick"] += time.thread_time() - start
        totals["windows"] += scored
        return scored

    pipeline.Pipeline.tick = tick  # type: ignore[method-assign]


def report(out_path: Path | None, argv: list[str]) -> None:
    windows = totals["windows"] or 1
    out = [f"pipeline thread, CPU ms per scored window ({totals['windows']} windows; all ticks, "
           f"idle ones too): tick {1e3 * totals['tick'] / windows:.3f}"]
    out += [f"  {label:34s} {1e3 * cpu[label] / windows:.3f}" for _, _, label in STEPS if label in cpu]
    print("\n" + "\n".join(out), file=sys.stderr)
    if out_path is not None:
        head = [f"# bench/pipeline_profile.py {' '.join(argv)}", f"# {time.strftime('%Y-%m-%d %H:%M:%S %Z')}"]
        out_path.write_text("\n".join(head + out) + "\n")


def main() -> None:
    args = sys.argv[1:]
    if "--find-max" in args:
        raise SystemExit("pipeline_profile.py: --find-max probes run in other processes; give --streams N instead")
    out_path = None
    if "--profile-out" in args:
        at = args.index("--profile-out")
        if at + 1 >= len(args):
            raise SystemExit("pipeline_profile.py: --profile-out needs a path")
        out_path = Path(args[at + 1])
        del args[at : at + 2]
    for owner, name, label in STEPS:
        timed(owner, name, label)
    timed_tick()
    atexit.register(report, out_path, sys.argv[1:])
    sys.argv = [str(ROOT / "bench" / "listen_scale.py"), *args]
    runpy.run_path(sys.argv[0], run_name="__main__")


if __name__ == "__main__":
    main()
