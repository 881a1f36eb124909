"""The listen pipeline with the streaming log-mel (issue 13): the same scores as the
self-contained CPU graph, window for window, from a 48 kHz file replayed through the capture
and resampler; each stream's cache is reused between hops. Torch-free."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from edge_asd.core.audio_io import write_wav

pytestmark = pytest.mark.device
pytest.importorskip("onnxruntime")


def _scores(cached_bundle: Path, wav: Path, tmp_path: Path, onnx_file: str | None) -> tuple[list[float], object]:
    from edge_asd.config import load_config
    from edge_asd.daemon.listen import build_daemon, run_daemon
    from engines.runtime import open_runtime
    from tests.fixtures.comms import MemoryCommunicator

    state = tmp_path / f"state-{onnx_file or 'default'}"
    config = tmp_path / f"config-{onnx_file or 'default'}.yaml"
    config.write_text(yaml.safe_dump({
        "bundle": str(cached_bundle),
        "backend": "onnxruntime",
        "state_dir": str(state),
        "sources": [{"name": "line", "type": "file", "path": str(wav), "realtime": False}],
        "streams": [{"name": "press1", "source": "line", "classes": ["fan/section_00"]}],
    }))  # fmt: skip
    settings = {"max_batch": 4} if onnx_file is None else {"max_batch": 4, "onnx_file": onnx_file}
    runtime = open_runtime(cached_bundle, backend="onnxruntime", **settings)
    comms = MemoryCommunicator()
    daemon = build_daemon(load_config(config), comms=comms, runtime=runtime)
    assert run_daemon(daemon, install_signals=False) == 0
    stream = daemon.pipeline.streams[0]
    return [s for name, s, _ in comms.scores if name == "press1"], stream


def test_pipeline_scores_equal_with_and_without_the_logmel_graph(cached_bundle: Path, tmp_path: Path) -> None:
    from engines.bundle import load_bundle

    if load_bundle(cached_bundle).logmel_onnx_path is None:
        pytest.skip(f"{cached_bundle} predates model_cpu_logmel.onnx: run the main suite (with torch) first")
    rng = np.random.default_rng(0)
    sr = 48000
    t = np.arange(18 * sr) / sr
    audio = 0.3 * np.sin(2 * np.pi * (180 + 20 * np.sin(2 * np.pi * 0.1 * t)) * t) + 0.03 * rng.standard_normal(t.size)
    wav = tmp_path / "line48k.wav"
    write_wav(wav, audio.astype(np.float32), sr)
    ref, ref_stream = _scores(cached_bundle, wav, tmp_path, "model_cpu.onnx")
    got, stream = _scores(cached_bundle, wav, tmp_path, None)
    # Both runs score the same hop grid; a run whose file raced ahead of its first tick skipped
    # its oldest windows (counted in `skipped`), so the windows both scored are the last ones.
    n = min(len(got), len(ref))
    assert n >= 5
    assert len(got) + stream.counters.skipped == len(ref) + ref_stream.counters.skipped
    np.testing.assert_allclose(got[-n:], ref[-n:], rtol=1e-4, atol=1e-4)
    assert ref_stream.logmel.stats.windows == 0  # the self-contained graph computes its own front end
    assert stream.logmel.stats.windows == len(got) and stream.logmel.stats.reused > 0
    # the model's windows are moved onto the frame grid: after the first, about 35 new frames each
    assert stream.logmel.stats.computed <= 313 + 40 * (len(got) - 1), stream.logmel.stats


def test_the_model_window_moves_onto_the_frame_grid_unless_it_cannot() -> None:
    """``Stream.model_window``: the 10 s the model scores start on the 512-sample frame grid,
    at most 511 samples before the hop's window; the window itself where the samples before it
    are gone or hold a gap."""
    from edge_asd.audio.stream_buffer import StreamBuffer
    from edge_asd.core.constants import WINDOW_SAMPLES
    from edge_asd.core.logmel import HOP
    from edge_asd.daemon.streams import Stream

    buffer = StreamBuffer(capacity=WINDOW_SAMPLES + 40000)
    audio = np.arange(3 * 16000 + WINDOW_SAMPLES, dtype=np.float32) / 1e6
    buffer.append(audio)  # 8000 samples have left the buffer
    stream = Stream("s", None, buffer, [], [], None, None, None, 16000)  # type: ignore[arg-type]
    for end in (WINDOW_SAMPLES + 16000, WINDOW_SAMPLES + 3 * 16000):
        window, _ = buffer.get(end - WINDOW_SAMPLES, WINDOW_SAMPLES)
        moved, start = stream.model_window(window, end)
        assert start % HOP == 0 and 0 < end - WINDOW_SAMPLES - start < HOP
        np.testing.assert_array_equal(moved, audio[start : start + WINDOW_SAMPLES])
    oldest = buffer.first_index  # 8000 = 15.6 x 512: the samples to move back to are gone
    window, _ = buffer.get(oldest, WINDOW_SAMPLES)
    same, start = stream.model_window(window, oldest + WINDOW_SAMPLES)
    assert same is window and start == oldest and oldest % HOP
    start = 32000  # 62.5 x 512: the model window would start at 31744
    buffer.mark_gap(31800, 31801)  # a gap before the window, inside the moved one
    window, _ = buffer.get(start, WINDOW_SAMPLES)
    same, got = stream.model_window(window, start + WINDOW_SAMPLES)
    assert same is window and got == start


def test_a_due_window_and_its_model_window_come_out_of_one_copy() -> None:
    """``Stream.due_window`` reads the buffer once for the hop's window and the model's: the
    model window is the moved 10 s where the samples before the window are held and free of
    gaps (a view of the same copy, no second read), else the window itself, as
    ``model_window`` decides for a window it is handed on its own."""
    from edge_asd.audio.stream_buffer import StreamBuffer
    from edge_asd.core.constants import WINDOW_SAMPLES
    from edge_asd.core.logmel import HOP, grid_start
    from edge_asd.daemon.streams import Stream, StreamCounters

    buffer = StreamBuffer(capacity=WINDOW_SAMPLES + 40000)
    audio = np.arange(6 * 16000 + WINDOW_SAMPLES, dtype=np.float32) / 1e6
    buffer.append(audio[: WINDOW_SAMPLES + 16000])
    stream = Stream("s", None, buffer, [], [], None, None, None, 16000)  # type: ignore[arg-type]
    stream.counters = StreamCounters()
    stream.next_end = WINDOW_SAMPLES + 16000  # start 16000 = 31.25 x 512: moved back 128 samples
    window, end, has_gap = stream.due_window()
    assert not has_gap and end == WINDOW_SAMPLES + 16000
    np.testing.assert_array_equal(window, audio[end - WINDOW_SAMPLES : end])
    moved, start = stream.model_window(window, end)
    assert start == grid_start(end - WINDOW_SAMPLES) and start % HOP == 0 and start < end - WINDOW_SAMPLES
    np.testing.assert_array_equal(moved, audio[start : start + WINDOW_SAMPLES])
    assert np.shares_memory(moved, window)  # one copy serves both
    again, start_again = stream.model_window(window, end)  # handed on its own: read again, same samples
    np.testing.assert_array_equal(again, moved)
    assert start_again == start and not np.shares_memory(again, window)
    # A gap before the window, inside the moved span: the model scores the window itself.
    buffer.append(audio[WINDOW_SAMPLES + 16000 : WINDOW_SAMPLES + 2 * 16000])
    buffer.mark_gap(32000 - 100, 32000 - 99)
    window, end, has_gap = stream.due_window()
    same, start = stream.model_window(window, end)
    assert not has_gap and same is window and start == end - WINDOW_SAMPLES
    # The samples before the window have left the buffer: the window itself again.
    buffer.append(audio[WINDOW_SAMPLES + 2 * 16000 :])
    stream.next_end = buffer.first_index + WINDOW_SAMPLES
    window, end, has_gap = stream.due_window()
    same, start = stream.model_window(window, end)
    assert (end - WINDOW_SAMPLES) % HOP and same is window and start == end - WINDOW_SAMPLES
    np.testing.assert_array_equal(window, audio[end - WINDOW_SAMPLES : end])


def test_each_stream_gets_its_own_features_and_engine_rows_in_parallel_chunks(
    cached_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Three streams, one window per chunk, two runs at once: each window is scored with its
    own stream's indicator features and its own row of the engine's output."""
    from edge_asd.config import load_config
    from edge_asd.daemon import pipeline as pipeline_mod
    from edge_asd.daemon.listen import build_daemon, run_daemon
    from engines.runtime import open_runtime
    from tests.fixtures.comms import MemoryCommunicator

    rng = np.random.default_rng(1)
    names = ["quiet", "tone", "loud"]
    sounds = {
        "quiet": 0.01 * rng.standard_normal(16000 * 14),
        "tone": 0.3 * np.sin(2 * np.pi * 440 * np.arange(16000 * 14) / 16000) + 0.01 * rng.standard_normal(16000 * 14),
        "loud": 0.1 * rng.standard_normal(16000 * 14),
    }
    sources, streams = [], []
    for name in names:
        wav = tmp_path / f"{name}.wav"
        write_wav(wav, np.clip(sounds[name], -1, 1).astype(np.float32))
        sources.append({"name": name, "type": "file", "path": str(wav), "realtime": False})
        streams.append({"name": name, "source": name, "classes": ["fan/section_00"]})
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({
        "bundle": str(cached_bundle), "backend": "onnxruntime", "state_dir": str(tmp_path / "state"),
        "sources": sources, "streams": streams,
    }))  # fmt: skip
    runtime = open_runtime(cached_bundle, backend="onnxruntime", max_batch=1, threads=2, parallel_runs=2)
    daemon = build_daemon(load_config(config), comms=MemoryCommunicator(), runtime=runtime)
    pipeline = daemon.pipeline
    embeddings = {}
    for stream in pipeline.streams:
        assert stream.site is not None

    def marked(items):  # each stream's features say whose they are (the pipeline computes a tick's together)
        return [(np.full(3, float(names.index(site.stream))),) * 2 for site, _, _ in items]

    monkeypatch.setattr(pipeline_mod, "features_many", marked)
    seen: list[tuple[str, float, np.ndarray]] = []
    window_score = pipeline._window_score

    def recording(stream, window, end_index, out, i, bundle_rows, features=None):
        seen.append((stream.name, float(features[0][0]), np.array(out.embedding[i])))
        return window_score(stream, window, end_index, out, i, bundle_rows, None)

    pipeline._window_score = recording  # type: ignore[method-assign]
    for stream in pipeline.streams:  # each stream's own embedding of its first window, alone
        moved, _ = stream.model_window(sounds[stream.name][:160000].astype(np.float32), 160000)
        embeddings[stream.name] = runtime.infer(np.clip(moved, -1, 1)[None].astype(np.float32)).embedding[0]
    threads: set[str] = set()  # the inputs share one worker thread (CaptureWorker)
    assert run_daemon(daemon, install_signals=False, on_started=lambda _: threads.update(
        t.name for t in threading.enumerate())) == 0  # fmt: skip
    assert "capture-worker" in threads and not any(n.startswith("capture-") and n != "capture-worker" for n in threads)
    assert {name for name, _, _ in seen} == set(names) and len(seen) >= 3 * 3
    for name, marker, _ in seen:
        assert marker == names.index(name), f"{name} was scored with another stream's features"
    for name in names:  # the first window of each stream: its own engine row
        first = next(e for n, _, e in seen if n == name)
        others = [embeddings[o] for o in names if o != name]
        own = np.abs(first - embeddings[name]).max()
        # a random model: embeddings of different sounds differ by ~1e-5, the same window's by ~1e-9
        assert own < 1e-6 and all(np.abs(first - o).max() > 20 * max(own, 1e-8) for o in others), name


def _burn_cpu(seconds: float) -> None:
    """Spin until this thread has used ``seconds`` of CPU time."""
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass


def test_the_pipeline_threads_cpu_is_split_between_the_model_and_its_own_work(
    cached_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``own_cpu_s`` (stats, ``edge_asd_own_cpu_seconds_total``) counts the CPU the pipeline
    thread spends on its own work (here the site features) and not what it spends on the
    model: copying each due window out of its buffer (``Stream.due_window``, also kept apart as
    ``window_cpu_s``), the front end and the hand-over (``_submit``). Read from another thread
    meanwhile (a metrics scrape) it never goes down: Prometheus would call that a reset."""
    from edge_asd.config import load_config
    from edge_asd.daemon import pipeline as pipeline_mod
    from edge_asd.daemon.listen import build_daemon, run_daemon
    from edge_asd.daemon.streams import Stream
    from engines.runtime import open_runtime
    from tests.fixtures.comms import MemoryCommunicator

    wav = tmp_path / "line.wav"
    write_wav(wav, (0.05 * np.random.default_rng(2).standard_normal(16000 * 13)).astype(np.float32))
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({
        "bundle": str(cached_bundle), "backend": "onnxruntime", "state_dir": str(tmp_path / "state"),
        "sources": [{"name": "line", "type": "file", "path": str(wav), "realtime": False}],
        "streams": [{"name": "press1", "source": "line", "classes": ["fan/section_00"]}],
    }))  # fmt: skip
    runtime = open_runtime(cached_bundle, backend="onnxruntime", max_batch=1)
    daemon = build_daemon(load_config(config), comms=MemoryCommunicator(), runtime=runtime)
    pipeline = daemon.pipeline
    stream = pipeline.streams[0]
    assert stream.site is not None
    model_burn, own_burn, window_burn = 0.03, 0.02, 0.01
    submit, features_many, due_window = pipeline._submit, pipeline_mod.features_many, Stream.due_window

    def slow_submit(batch):
        _burn_cpu(model_burn)
        return submit(batch)

    def slow_features(items):  # a tick's site features, computed together
        _burn_cpu(own_burn * len(items))
        return features_many(items)

    def slow_due_window(self):  # the window's copy, the model's
        got = due_window(self)
        if got is not None:
            _burn_cpu(window_burn)
        return got

    pipeline._submit = slow_submit  # type: ignore[method-assign]
    monkeypatch.setattr(pipeline_mod, "features_many", slow_features)
    monkeypatch.setattr(Stream, "due_window", slow_due_window)
    seen: list[float] = []
    done = threading.Event()

    def scrape() -> None:
        while not done.is_set():
            seen.append(pipeline.stats()["detector"]["own_cpu_s"])
            time.sleep(0.002)

    scraper = threading.Thread(target=scrape, daemon=True)
    scraper.start()
    try:
        assert run_daemon(daemon, install_signals=False) == 0
    finally:
        done.set()
        scraper.join(5)
    assert len(seen) > 10 and seen == sorted(seen) and seen[0] >= 0, seen
    windows, batches = stream.counters.windows, pipeline.batches
    assert windows >= 3 and batches >= 3
    detector = pipeline.stats()["detector"]
    own = detector["own_cpu_s"]
    assert pipeline.window_cpu_s >= window_burn * windows and detector["window_cpu_s"] == round(pipeline.window_cpu_s, 3)
    assert pipeline.model_cpu_s >= model_burn * batches + pipeline.window_cpu_s
    assert own >= own_burn * windows
    assert own <= pipeline.busy_cpu_s - model_burn * batches - window_burn * windows + 1e-3  # rounded to 1 ms
