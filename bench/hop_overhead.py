"""What `listen` spends per window outside the engine, step by step (the daemon-overhead budget).

Why: the daemon must keep its own work under 10 % of a scoring tick. That share grows as the
engine gets faster (the streaming front end cuts the engine's time per window, the daemon's
work per window stays), so each step's cost is measured on its own here: copying the window
out of the stream buffer (one copy of the model's window and the hop's, counted as the model's
input by ``Pipeline.model_cpu_s``), stacking the batch and validating it, the microphone level
check (its newest second), the site features (indicator blocks cached across hops), the bundle's score (knn or ce
against the bundle's references), the decisions and what is published, and, for comparison,
the streaming log-mel of a window (``edge_asd.core.logmel``) where it exists.

The real daemon is built (``build_daemon``) with N file streams, but its captures are not
started: every hop the script appends one second of synthetic machine sound to each stream's
buffer and runs one ``Pipeline.tick`` with a stand-in engine that returns fixed outputs at
once, so the timings are the daemon's own. Timers wrap the steps' functions.

    python bench/hop_overhead.py --streams 32 --hops 40
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import os
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.listen_scale import HOP_S, default_bundle, enrol_streams
from bench.machine import cpu_description

logger = logging.getLogger("bench.hop_overhead")

TIMES: dict[str, list[float]] = defaultdict(list)
CALLS: dict[str, int] = defaultdict(int)


def timed_method(owner: object, name: str, label: str) -> None:
    """Replace ``owner.name`` with a wrapper that adds its wall time to ``TIMES[label]``."""
    original = getattr(owner, name)

    @functools.wraps(original)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            TIMES[label].append(time.perf_counter() - t0)

    setattr(owner, name, wrapper)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--streams", type=int, default=32)
    parser.add_argument("--hops", type=int, default=40, help="hops timed (after 10 s of audio and 4 warm-up hops)")
    parser.add_argument("--bundle", type=Path, default=None)
    parser.add_argument("--no-site", action="store_true", help="site learning off (no indicators per window)")
    parser.add_argument("--enrolled", action="store_true",
                        help="enrol every stream first (bench.listen_scale.enrol_streams): the site score is then "
                             "the fused score of an enrolled stream, as on a site")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    # ERROR: the captures are never started, so every stream reports its input offline once.
    logging.basicConfig(level=logging.ERROR, format="%(levelname)s %(name)s: %(message)s")

    import edge_asd.daemon.pipeline as pipeline_mod
    import engines.runtime.base as runtime_base
    from edge_asd.config import validate_config
    from edge_asd.core.audio_io import write_wav
    from edge_asd.core.constants import EMBEDDING_DIM, SAMPLE_RATE, WINDOW_SAMPLES
    from edge_asd.core.synth import make_stream_recording
    from edge_asd.daemon.listen import build_daemon
    from edge_asd.daemon.site import StreamSite
    from edge_asd.daemon.streams import Stream
    from edge_asd.levels import LevelMonitor
    from engines.bundle import load_bundle
    from engines.runtime.base import Runtime
    from engines.scorer import Scorer
    from tests.fixtures.comms import MemoryCommunicator

    bundle = args.bundle or default_bundle()
    classes = load_bundle(bundle).classes
    cls = classes[0]
    machine_type, machine_id = cls.split("/")
    hop = int(HOP_S * SAMPLE_RATE)
    seconds = WINDOW_SAMPLES // SAMPLE_RATE + 4 + args.hops + 1
    audio, _ = make_stream_recording(machine_type, int(machine_id[-2:]), float(seconds), None, seed=1)
    audio = np.asarray(audio, dtype=np.float32)

    class FixedEngine(Runtime):
        """Returns the same outputs at once: the tick's time is then the daemon's own."""

        type_key = "fixed"

        def __init__(self, embeddings: np.ndarray | None = None) -> None:
            super().__init__(classes, max_batch=8)
            rng = np.random.default_rng(0)
            emb = rng.standard_normal((256, EMBEDDING_DIM)).astype(np.float32)
            if embeddings is not None:  # the enrolment's own: the streams look normal, no event opens
                emb = np.resize(np.asarray(embeddings, np.float32), (256, EMBEDDING_DIM))
            self._emb = emb / np.linalg.norm(emb, axis=1, keepdims=True)
            self._scores = np.abs(rng.standard_normal((256, len(classes)))).astype(np.float32)

        def _infer_batch(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            return self._scores[: batch.shape[0]], self._emb[: batch.shape[0]]

    with tempfile.TemporaryDirectory() as tmp:
        write_wav(Path(tmp) / "a.wav", audio[: SAMPLE_RATE])
        embeddings = None
        if args.enrolled and not args.no_site:
            features = enrol_streams(bundle, [f"m{i}" for i in range(args.streams)], Path(tmp) / "state",
                                     machine_type, int(machine_id[-2:]), replayed_s=float(seconds))  # fmt: skip
            embeddings = features.embeddings
        raw = {
            "bundle": str(bundle), "hop_s": HOP_S, "state_dir": str(Path(tmp) / "state"),
            "sources": [{"name": f"s{i}", "type": "file", "path": str(Path(tmp) / "a.wav"), "realtime": True}
                        for i in range(args.streams)],
            "streams": [{"name": f"m{i}", "source": f"s{i}", "classes": [cls], "threshold": 1e9}
                        for i in range(args.streams)],
            "evidence": {"enabled": False}, "logging": {"level": "WARNING"}, "site": {"enabled": not args.no_site},
        }
        daemon = build_daemon(validate_config(raw, where="bench"), comms=MemoryCommunicator(), runtime=FixedEngine(embeddings))
        pipeline = daemon.pipeline
        timed_method(Stream, "due_window", "window out of the stream buffer (one copy, with the model's)")
        timed_method(Stream, "model_window", "model window moved onto the frame grid (view of that copy)")
        timed_method(runtime_base, "validate_audio", "batch validation (finite check)")
        timed_method(LevelMonitor, "check", "level check")
        # The pipeline computes a tick's site features together (``features_many``, imported by name).
        timed_method(pipeline_mod, "features_many", "site features (indicator blocks, profile)")
        site_label = "site score (enrolled: the fused score)" if embeddings is not None else "site score (not enrolled: bookkeeping)"
        timed_method(StreamSite, "score", site_label)
        timed_method(Scorer, "score_rows", "bundle score (per batch)")
        timed_method(pipeline_mod.Pipeline, "_decide", "decisions + publish")
        timed_method(pipeline_mod.Pipeline, "_score", "_score total (per batch)")
        timed_method(pipeline_mod.Pipeline, "tick", "tick total")
        try:
            from edge_asd.core.logmel import LogMelStream

            streams_lm = [LogMelStream(hop_samples=hop) for _ in range(args.streams)]
        except ImportError:
            streams_lm = []
        pos = 0
        for s in pipeline.streams:
            s.buffer.append(audio[: WINDOW_SAMPLES - hop])
        pos = WINDOW_SAMPLES - hop
        warmup = 4
        for h in range(warmup + args.hops):
            if h == warmup:
                TIMES.clear()
            block = audio[pos : pos + hop]
            for s in pipeline.streams:
                s.buffer.append(block)
            pos += hop
            scored = pipeline.tick()
            if scored != args.streams:
                raise SystemExit(f"hop {h}: {scored} windows scored, expected {args.streams}")
            if streams_lm:
                window = audio[pos - WINDOW_SAMPLES : pos]
                t0 = time.perf_counter()
                for lm in streams_lm:
                    lm.window(window, pos - WINDOW_SAMPLES)
                TIMES["streaming log-mel (if the daemon computed it)"].append(time.perf_counter() - t0)
        for capture in daemon.captures:
            capture.source.stop()

    windows = args.streams * args.hops
    rows = {label: {"ms_per_window": 1000.0 * sum(v) / windows, "calls": len(v)} for label, v in TIMES.items()}
    inside_score = ("site features (indicator blocks, profile)", site_label,
                    "bundle score (per batch)", "decisions + publish")
    engine_ms = 1000.0 * (sum(TIMES["_score total (per batch)"]) - sum(sum(TIMES[k]) for k in inside_score)) / windows
    rows["_score remainder: stack, stand-in engine, publish score"] = {"ms_per_window": engine_ms, "calls": 0}
    print(f"\n{args.streams} streams, {args.hops} hops of {HOP_S:g} s, bundle {bundle.name}, "
          f"site learning {'off' if args.no_site else ('on, enrolled' if embeddings is not None else 'on (not enrolled)')}; load average {os.getloadavg()[0]:.1f}\n")
    print("| step | ms per window |")
    print("|---|---:|")
    for label, r in sorted(rows.items(), key=lambda kv: -kv[1]["ms_per_window"]):
        print(f"| {label} | {r['ms_per_window']:.3f} |")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"machine": cpu_description(), "streams": args.streams, "hops": args.hops,
                                        "bundle": str(bundle), "site": not args.no_site,
                                        "enrolled": embeddings is not None, "steps": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
