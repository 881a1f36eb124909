"""Enrolment refits run off the listen loop and swap their result in whole.

A live re-enrolment's fit (and a feedback ``normal``) takes seconds; in the pipeline thread it
would make every stream of the node skip windows for that long. These tests hold the refit
worker busy on purpose and check that the stream keeps being scored against its old enrolment
meanwhile, says it is fitting, and takes the new enrolment once the fit is done.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import numpy as np
import pytest

from edge_asd.core.constants import SAMPLE_RATE, WINDOW_SAMPLES
from edge_asd.daemon.refits import MAX_PENDING, Refits

pytestmark = pytest.mark.device


def test_background_refits_do_not_block_and_are_announced_after() -> None:
    refits = Refits()
    gate = threading.Event()
    said: list[str] = []

    def job():
        assert gate.wait(10)
        return lambda: said.append("done")

    assert refits.submit(job, "slow fit")  # returns while the job waits on the gate
    assert refits.pending == 1 and refits.announce() == 0 and said == []
    gate.set()
    assert refits.wait_idle(10)
    refits.close(timeout_s=10)
    assert refits.announce() == 1 and said == ["done"]


def test_a_failing_refit_is_logged_and_the_next_one_runs(caplog: pytest.LogCaptureFixture) -> None:
    refits = Refits()

    def broken():
        raise ValueError("covariance is singular")

    with caplog.at_level(logging.ERROR):
        assert refits.submit(broken, "broken fit")
        assert refits.submit(lambda: (lambda: None), "fine fit")
        assert refits.wait_idle(10)
        refits.close(timeout_s=10)
    assert "refit failed: broken fit" in caplog.text and "singular" in caplog.text
    assert refits.announce() == 1  # the fit after the failed one ran


def test_a_stop_drops_waiting_refits_and_does_not_wait_for_ever() -> None:
    """Queued refits are dropped at a stop, and a running one cannot hold the process."""
    refits = Refits()
    gate, started = threading.Event(), threading.Event()
    ran: list[str] = []
    refits.submit(lambda: started.set() or gate.wait(30) and None, "running")
    refits.submit(lambda: ran.append("queued") and None, "queued")
    assert refits.pending == 2
    assert started.wait(10)  # the first one is on the worker, the second still waits
    refits.close(timeout_s=0.2)  # returns although the running one is still blocked
    assert not refits.submit(lambda: None, "after the stop")
    gate.set()
    assert refits.wait_idle(10)
    assert ran == []  # the queued refit never ran


def test_inline_refits_run_at_once_and_the_queue_is_bounded() -> None:
    inline = Refits(inline=True)
    ran: list[int] = []
    assert inline.submit(lambda: ran.append(1) and None, "now")
    assert ran == [1]

    refits = Refits()
    gate = threading.Event()
    try:
        for _ in range(MAX_PENDING):
            assert refits.submit(lambda: gate.wait(10) and None, "queued")
        assert not refits.submit(lambda: None, "one too many")
    finally:
        gate.set()
        refits.close(timeout_s=10)


@pytest.fixture(scope="module")
def runtime(cached_bundle: Path):
    pytest.importorskip("onnxruntime")
    from engines.runtime import open_runtime

    with open_runtime(cached_bundle, backend="onnxruntime", max_batch=8) as rt:
        yield rt


def test_live_re_enrolment_fits_in_the_background_and_swaps_in_whole(
    tmp_path: Path, runtime, cached_bundle: Path, no_torch_guard
) -> None:
    from edge_asd.core.synth import MachineSoundStream
    from edge_asd.daemon.site import StreamSite, WindowRow
    from edge_asd.site.enrol import enrol_features, provenance
    from edge_asd.site.features import extract
    from edge_asd.site.storage import bundle_sha, save_stream_enrolment
    from engines.bundle import load_bundle

    bundle = load_bundle(cached_bundle)
    machine = MachineSoundStream("fan", 0, seed=11)
    feats = extract([("rec", machine.read(120 * SAMPLE_RATE))], runtime)
    first = enrol_features(feats, bundle, stream="fan1", source=provenance("wav", feats))
    taught = first.add_normal(feats.indicators[:3], feats.embeddings[:3], profiles=feats.profiles[:3])
    save_stream_enrolment(taught, tmp_path, "fan1")  # an operator marked one event normal

    site = StreamSite("fan1", state_dir=tmp_path, bundle=bundle, bundle_sha=bundle_sha(bundle), class_names=[],
                      hop_s=1.0, false_alarms_per_day=1.0)  # fmt: skip
    old = site.enrolment
    assert old is not None
    site.refits = Refits()
    gate = threading.Event()
    site.refits.submit(lambda: gate.wait(30) and None, "an earlier refit")  # keeps the worker busy

    site.start_live_enrolment(1.0)  # 60 windows at a 1 s hop
    live = extract([("live", machine.read((60 + 9) * SAMPLE_RATE))], runtime)
    assert len(live) == 60
    for i in range(60):
        row = WindowRow(WINDOW_SAMPLES + i * SAMPLE_RATE, live.indicators[i], live.profiles[i], live.embeddings[i], None)
        score = site.score(row)
        assert score is not None and np.isfinite(score.fused)  # scored all along, by the old enrolment
    # All windows are in: the fit waits behind the earlier refit; the old enrolment still scores.
    assert site.live is None and site.fitting
    attrs = site.attributes()
    assert attrs["state"] == "enrolling" and attrs["progress"] == 1.0 and "fitting" in attrs["message"]
    assert site.enrolment is old
    assert site.score(row) is not None

    gate.set()
    assert site.refits.wait_idle(120)
    site.refits.close(timeout_s=10)
    assert not site.fitting
    assert site.enrolment is not None and site.enrolment is not old
    assert site.enrolment.meta["source"]["kind"] == "live" and site.enrolment.n_windows == 60
    assert site.attributes()["state"] == "ok"
    assert len(site.enrolment.exemplars) == 3  # what the operator taught survives the re-enrolment


def test_a_refit_the_worker_takes_during_a_stop_is_dropped_not_run() -> None:
    """The race CI once hit: the stop drains the queue while the worker takes the next job."""
    refits = Refits()
    gate, started = threading.Event(), threading.Event()
    ran: list[str] = []
    refits.submit(lambda: started.set() or gate.wait(30) and None, "running")
    assert started.wait(10)
    refits.submit(lambda: ran.append("queued") and None, "queued")
    with refits._lock:  # the stop has begun; the queue is not drained yet
        refits._closed = True
    gate.set()  # the worker finishes, then takes "queued" off the queue itself
    assert refits.wait_idle(10)
    assert ran == [] and refits.pending == 0
    refits.close(timeout_s=5)
