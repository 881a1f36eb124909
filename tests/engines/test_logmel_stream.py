"""The streaming log-mel front end (edge_asd.core.logmel) and the CPU graph it feeds (issue 13).

Equality, never speed: the streaming log-mel equals the in-graph front end (the log-mel tensor
of ``model_cpu.onnx``, read out of the graph itself) within 0.01 dB on every shared clip and on
synthetic streams, across gaps, resets, non-contiguous audio and a 48 kHz source; the scores of
``model_cpu_logmel.onnx`` equal those of the self-contained ``model_cpu.onnx``; a bundle
without the new graph keeps working. Torch-free (also run in the Python 3.10 venv).
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from edge_asd.audio.stream_buffer import StreamBuffer
from edge_asd.core.audio_io import fit_length, read_audio
from edge_asd.core.constants import SAMPLE_RATE, WINDOW_SAMPLES
from edge_asd.core.logmel import (
    EPS,
    FRAMES,
    HOP,
    N_FFT,
    N_MELS,
    LogMelStream,
    grid_start,
    hann_window,
    logmel,
    mel_filterbank,
)
from edge_asd.core.resample import StreamingResampler

pytestmark = pytest.mark.device

TOL_DB = 0.01
FLOOR_DB = -100.0  # below this the float32 graphs themselves disagree (as in tests/trainer/test_frontend.py)


def reference(audio: np.ndarray) -> np.ndarray:
    """Float64 numpy, written out independently of the module: pad, frame, Hann, rfft, mel, dB."""
    padded = np.pad(np.asarray(audio, np.float64), (N_FFT // 2, N_FFT // 2))
    idx = np.arange(N_FFT)[None, :] + HOP * np.arange(1 + (padded.size - N_FFT) // HOP)[:, None]
    power = np.abs(np.fft.rfft(padded[idx] * hann_window(), axis=1)) ** 2
    return (10.0 * np.log10(np.maximum(power @ mel_filterbank().astype(np.float64), EPS))).T


def max_error_db(ours: np.ndarray, ref: np.ndarray) -> float:
    mask = ref > FLOOR_DB
    assert ours.shape == ref.shape and mask.any()
    assert np.all(ours[~mask] <= FLOOR_DB + 1.0), "a frame at the floor in one is not at the floor in the other"
    return float(np.abs(ours[mask] - ref[mask]).max())


def synth_audio(seconds: float, seed: int, sr: int = SAMPLE_RATE) -> np.ndarray:
    """A machine-like stream: a drifting tone with harmonics, noise, clicks and a silent stretch."""
    rng = np.random.default_rng(seed)
    n = int(seconds * sr)
    t = np.arange(n) / sr
    f0 = 120.0 + 15.0 * np.sin(2 * np.pi * 0.05 * t)
    phase = 2 * np.pi * np.cumsum(f0) / sr
    x = sum(0.2 / k * np.sin(k * phase) for k in range(1, 6)) + 0.02 * rng.standard_normal(n)
    clicks = rng.integers(0, n, size=int(seconds))
    x[clicks] += 0.5
    quiet = rng.integers(0, max(1, n - 2 * sr))
    x[quiet : quiet + sr] = 0.0  # exact digital silence: the log floor
    return np.clip(x, -1, 1).astype(np.float32)


def stream_windows(audio: np.ndarray, hop: int, first: int = 0):
    """(start, window) of every window on the hop grid of a contiguous stream."""
    for start in range(first, audio.size - WINDOW_SAMPLES + 1, hop):
        yield start, audio[start : start + WINDOW_SAMPLES]


# -- the streaming cache against the stateless front end and the float64 reference ----------
@pytest.mark.parametrize("hop", [16000, 15872, 16384, 8000, 16001])
def test_streaming_equals_whole_window_on_synth_streams(hop: int) -> None:
    audio = synth_audio(40.0, seed=hop)
    cache = LogMelStream(hop)
    worst = 0.0
    for start, window in stream_windows(audio, hop):
        ours = cache.window(window, start)
        assert ours.shape == (N_MELS, FRAMES) and ours.dtype == np.float32
        np.testing.assert_allclose(ours, logmel(window[None])[0], atol=1e-3, rtol=0)
        worst = max(worst, max_error_db(ours, reference(window)))
    assert worst <= TOL_DB, f"hop {hop}: {worst:.5f} dB"
    assert cache.stats.resets == 0


def test_without_scipy_numpys_fft_gives_the_same_log_mel(monkeypatch: pytest.MonkeyPatch) -> None:
    """scipy only speeds the front end up (the ``onnx`` extra installs it); without it numpy's
    FFT computes the same numbers."""
    from edge_asd.core.logmel import LogMelFrontEnd

    with_scipy = LogMelFrontEnd()
    if importlib.util.find_spec("scipy") is not None:
        assert with_scipy.fft_library == "scipy"
    monkeypatch.setitem(sys.modules, "scipy", None)  # `from scipy import fft` now fails
    without = LogMelFrontEnd()
    assert without.fft_library == "numpy"
    audio = synth_audio(30.0, seed=11)
    streams = LogMelStream(16000, front_end=with_scipy), LogMelStream(16000, front_end=without)
    for start, window in stream_windows(audio, 16000):
        a, b = (s.window(window, start) for s in streams)
        np.testing.assert_allclose(a, b, atol=1e-3, rtol=0)
        assert max_error_db(b, reference(window)) <= TOL_DB


@pytest.mark.parametrize(
    ("hop", "computed", "cached_max"),
    [
        (16000, 129, 4 * 184),  # 1 s: the grid repeats every 4 windows; 125 new interior + 4 edges
        (15872, 35, 300),  # 31 x 512: every window on one grid; 31 new + 4 edges
        (16384, 36, 300),  # 32 x 512
        (16001, FRAMES, 0),  # never on a shared grid: everything computed, nothing kept
    ],
)
def test_frames_computed_per_window_and_cache_bound(hop: int, computed: int, cached_max: int) -> None:
    audio = synth_audio(30.0, seed=1)
    cache = LogMelStream(hop)
    per_window = []
    for start, window in stream_windows(audio, hop):
        before = cache.stats.computed
        cache.window(window, start)
        per_window.append(cache.stats.computed - before)
        assert cache.cached_frames <= cached_max
    assert per_window[0] == FRAMES
    assert per_window[8:] and all(n == computed for n in per_window[8:]), per_window


@pytest.mark.parametrize("hop", [16000, 8000, 24000, 16001])
def test_windows_moved_onto_the_frame_grid_share_their_frames(hop: int) -> None:
    """What listen does (``Stream.model_window``): each window moved back onto the 512-sample
    grid, at most 511 samples; then a 1 s hop computes 31 or 32 new frames + 4 edges, not 129,
    and the log-mel still equals the reference of the moved window."""
    audio = synth_audio(40.0, seed=hop + 1)
    cache = LogMelStream(hop, on_grid=True)
    per_window, worst = [], 0.0
    for start, _ in stream_windows(audio, hop, first=hop):
        moved = grid_start(start)
        assert 0 <= start - moved < HOP and moved % HOP == 0
        window = audio[moved : moved + WINDOW_SAMPLES]
        before = cache.stats.computed
        ours = cache.window(window, moved)
        per_window.append(cache.stats.computed - before)
        worst = max(worst, max_error_db(ours, reference(window)))
        assert cache.cached_frames <= FRAMES
    assert worst <= TOL_DB and cache.stats.resets == 0
    new_interior = -(-hop // HOP)  # at most this many frames of a later window are new
    assert per_window[1:] and all(n <= new_interior + 4 for n in per_window[1:]), per_window
    if hop == 16000:
        assert np.mean(per_window[1:]) < 37  # against 129 for windows left where they are


def test_every_shared_clip_streamed_equals_the_reference(shared_data: Path) -> None:
    """Each clip as its own window, and all clips as one long stream (windows across clip joins)."""
    wavs = sorted(shared_data.rglob("*.wav"))
    assert wavs, f"no WAV under {shared_data}"
    clips = [read_audio(p) for p in wavs]
    worst = 0.0
    for path, clip in zip(wavs, clips):
        window = fit_length(clip)
        err = max_error_db(LogMelStream(SAMPLE_RATE).window(window, 0), reference(window))
        assert err <= TOL_DB, f"{path.name}: {err:.5f} dB"
        worst = max(worst, err)
    joined = np.concatenate(clips).astype(np.float32)
    cache = LogMelStream(SAMPLE_RATE)
    for start, window in list(stream_windows(joined, SAMPLE_RATE))[::3]:
        err = max_error_db(cache.window(window, start), reference(window))
        assert err <= TOL_DB, f"window at {start}: {err:.5f} dB"
        worst = max(worst, err)
    print(f"streaming log-mel vs float64 reference on {len(wavs)} shared clips: max |diff| {worst:.5f} dB")


def test_non_contiguous_audio_and_a_clock_going_back_drop_the_cache() -> None:
    a, b = synth_audio(20.0, seed=2), synth_audio(20.0, seed=3)
    cache = LogMelStream(SAMPLE_RATE)
    for start in (0, 16000, 32000):
        cache.window(a[start : start + WINDOW_SAMPLES], start)
    spliced = np.concatenate([a[:48000 + 80000], b[:80000]])[48000:]  # same clock, other audio after 80000
    out = cache.window(spliced, 48000)
    assert cache.stats.resets == 1 and "differs" in cache.stats.last_reset
    assert max_error_db(out, reference(spliced)) <= TOL_DB
    out = cache.window(b[:WINDOW_SAMPLES], 0)  # a restarted clock
    assert cache.stats.resets == 2 and "went back" in cache.stats.last_reset
    assert max_error_db(out, reference(b[:WINDOW_SAMPLES])) <= TOL_DB
    cache.reset("test")
    assert cache.cached_frames == 0 and cache.stats.resets == 3


def test_48k_source_with_a_gap_through_the_resampler_and_stream_buffer() -> None:
    """The capture's path: 48 kHz blocks -> streaming resampler -> StreamBuffer (with a gap)
    -> windows on the hop grid; gapped windows are skipped and drop the cache, as in ``Stream``."""
    native = synth_audio(36.0, seed=4, sr=48000)
    resampler = StreamingResampler(48000, SAMPLE_RATE, 1)
    buffer = StreamBuffer(capacity=40 * SAMPLE_RATE)
    for lo in range(0, native.size, 4800):
        buffer.append(resampler.process(native[lo : lo + 4800, None])[:, 0])
    buffer.mark_gap(20 * SAMPLE_RATE, 20 * SAMPLE_RATE + 1600)
    cache = LogMelStream(SAMPLE_RATE)
    scored = gapped = 0
    for end in range(WINDOW_SAMPLES, buffer.end_index + 1, SAMPLE_RATE):
        got = buffer.get(end - WINDOW_SAMPLES, WINDOW_SAMPLES)
        assert got is not None
        window, has_gap = got
        if has_gap:
            cache.reset("gap")
            gapped += 1
            continue
        err = max_error_db(cache.window(window, end - WINDOW_SAMPLES), reference(window))
        assert err <= TOL_DB, f"window ending at {end}: {err:.5f} dB"
        scored += 1
    assert scored >= 10 and gapped >= 5 and cache.stats.resets >= 1
    assert cache.stats.reused > 0


def test_stream_resets_its_cache_on_a_gapped_window() -> None:
    """``Stream.due_window`` drops the stream's cache when it hands out a window with a gap."""
    from edge_asd.daemon.streams import Stream

    buffer = StreamBuffer()
    buffer.append(synth_audio(11.0, seed=5))
    stream = Stream.__new__(Stream)  # only the fields due_window touches
    stream.buffer, stream.hop_samples, stream.next_end = buffer, SAMPLE_RATE, WINDOW_SAMPLES
    stream.counters = type("C", (), {"skipped": 0})()
    stream.logmel = LogMelStream(SAMPLE_RATE)
    audio, end, has_gap = stream.due_window()
    stream.logmel.window(audio, end - WINDOW_SAMPLES)
    buffer.mark_gap(end + 100, end + 200)
    buffer.append(synth_audio(1.0, seed=6))
    _, _, has_gap = stream.due_window()
    assert has_gap and stream.logmel.cached_frames == 0 and stream.logmel.stats.resets == 1


# -- the graphs ------------------------------------------------------------------------------
def in_graph_logmel(onnx_path: Path, audio: np.ndarray) -> np.ndarray:
    """The log-mel tensor computed inside ``model_cpu.onnx`` (its front end's Log -> Mul -> Add)."""
    onnx = pytest.importorskip("onnx")
    import onnxruntime as ort

    model = onnx.load(str(onnx_path))
    consumers: dict[str, list] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    log = next(n for n in model.graph.node if n.op_type == "Log" and "frontend" in n.name)
    out = log.output[0]
    while len(consumers.get(out, [])) == 1 and consumers[out][0].op_type in ("Mul", "Add"):
        out = consumers[out][0].output[0]
    model.graph.output.append(onnx.helper.make_tensor_value_info(out, onnx.TensorProto.FLOAT, None))
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run([out], {"audio": audio})[0]


@pytest.fixture(scope="module")
def graph_bundle(cached_bundle: Path):
    from engines.bundle import load_bundle

    bundle = load_bundle(cached_bundle)
    if bundle.logmel_onnx_path is None:
        pytest.skip(f"{cached_bundle} predates model_cpu_logmel.onnx: run the main suite (with torch) first")
    return bundle


def test_streaming_equals_the_cpu_graphs_own_front_end(graph_bundle, shared_data: Path) -> None:
    pytest.importorskip("onnxruntime")
    clips = np.stack([fit_length(read_audio(p)) for p in sorted(shared_data.rglob("*.wav"))])
    joined = synth_audio(24.0, seed=7)
    starts = list(range(0, joined.size - WINDOW_SAMPLES + 1, SAMPLE_RATE))
    streamed = np.stack([w for _, w in stream_windows(joined, SAMPLE_RATE)])
    audio = np.concatenate([clips, streamed])
    cache = LogMelStream(SAMPLE_RATE)
    ours = np.concatenate([
        np.stack([LogMelStream().window(c, 0) for c in clips]),
        np.stack([cache.window(w, s) for s, w in zip(starts, streamed)]),
    ])
    graph = np.concatenate([in_graph_logmel(graph_bundle.cpu_onnx_path, audio[i : i + 8]) for i in range(0, len(audio), 8)])
    errors = [max_error_db(o, g) for o, g in zip(ours, graph)]
    assert max(errors) <= TOL_DB, f"max |diff| {max(errors):.5f} dB (window {int(np.argmax(errors))})"
    assert cache.stats.reused > 0


def test_logmel_graph_scores_equal_the_self_contained_graph(graph_bundle, shared_data: Path, no_torch_guard) -> None:
    pytest.importorskip("onnxruntime")
    from edge_asd.config import OnnxRuntimeConfig
    from engines.runtime.onnxruntime_backend import OnnxRuntimeBackend

    clips = np.stack([fit_length(read_audio(p)) for p in sorted(shared_data.rglob("*.wav"))])
    stream = synth_audio(16.0, seed=8)
    windows = [(s, w) for s, w in stream_windows(stream, SAMPLE_RATE)]
    audio = np.concatenate([clips, np.stack([w for _, w in windows])])
    cache = LogMelStream(SAMPLE_RATE)
    features = np.concatenate([logmel(clips), np.stack([cache.window(w, s) for s, w in windows])])
    with OnnxRuntimeBackend(graph_bundle, OnnxRuntimeConfig(onnx_file="model_cpu.onnx", max_batch=8)) as ref, \
            OnnxRuntimeBackend(graph_bundle, OnnxRuntimeConfig(max_batch=8)) as rt:  # fmt: skip
        assert rt.accepts_logmel and not ref.accepts_logmel
        assert "model_cpu_logmel.onnx" in rt.describe()
        want = ref.infer(audio)
        fed = rt.infer(audio, logmel=features)
        own = rt.infer(audio)  # audio only: the stateless numpy front end
        ignored = ref.infer(audio, logmel=features)  # a self-contained graph ignores a given log-mel
    for got in (fed, own):
        np.testing.assert_allclose(got.scores, want.scores, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(got.embedding, want.embedding, rtol=1e-3, atol=1e-5)
    np.testing.assert_array_equal(ignored.scores, want.scores)


def test_logmel_input_is_validated(graph_bundle) -> None:
    pytest.importorskip("onnxruntime")
    from engines.errors import InputError
    from engines.runtime import open_runtime

    audio = synth_audio(10.0, seed=9)[None]
    with open_runtime(graph_bundle, backend="onnxruntime", max_batch=2) as rt:
        with pytest.raises(InputError, match=r"expected a float32 array of shape \(1, 128, 313\)"):
            rt.infer(audio, logmel=np.zeros((1, 128, 300), np.float32))
        bad = logmel(audio)
        bad[0, 3, 4] = np.inf
        with pytest.raises(InputError, match="NaN or infinite"):
            rt.infer(audio, logmel=bad)


def test_bundle_without_the_logmel_graph_runs_the_self_contained_one(graph_bundle, tmp_path: Path) -> None:
    """A bundle exported before issue 13 (no model_cpu_logmel.onnx) loads and scores as before."""
    pytest.importorskip("onnxruntime")
    from engines.bundle import MODEL_CPU_LOGMEL_ONNX, MODEL_JSON, load_bundle
    from engines.runtime import open_runtime

    old = tmp_path / "old-bundle"
    shutil.copytree(graph_bundle.path, old, ignore=shutil.ignore_patterns(MODEL_CPU_LOGMEL_ONNX, "engines"))
    doc = json.loads((old / MODEL_JSON).read_text())
    del doc["files"][MODEL_CPU_LOGMEL_ONNX]
    doc["frontend"]["lowering"].pop(MODEL_CPU_LOGMEL_ONNX)
    (old / MODEL_JSON).write_text(json.dumps(doc))
    bundle = load_bundle(old)
    assert bundle.logmel_onnx_path is None and set(bundle.graphs) == {"model.onnx", "model_cpu.onnx"}
    assert graph_bundle.graphs == {"model.onnx": "conv", "model_cpu.onnx": "stft", "model_cpu_logmel.onnx": "input"}
    audio = synth_audio(10.0, seed=10)[None]
    with open_runtime(bundle, backend="onnxruntime") as rt, open_runtime(graph_bundle, backend="onnxruntime") as new:
        assert not rt.accepts_logmel and "model_cpu.onnx" in rt.describe()
        out = rt.infer(audio, logmel=logmel(audio))  # ignored: this graph has its own front end
        np.testing.assert_allclose(out.scores, new.infer(audio).scores, rtol=1e-4, atol=1e-4)


def test_a_bundle_with_another_front_end_does_not_get_our_logmel(graph_bundle, tmp_path: Path, caplog) -> None:
    pytest.importorskip("onnxruntime")
    from engines.bundle import MODEL_JSON, load_bundle
    from engines.runtime import open_runtime

    other = tmp_path / "other"
    shutil.copytree(graph_bundle.path, other, ignore=shutil.ignore_patterns("engines"))
    doc = json.loads((other / MODEL_JSON).read_text())
    doc["frontend"]["n_mels"] = 64
    (other / MODEL_JSON).write_text(json.dumps(doc))
    with caplog.at_level("WARNING"), open_runtime(load_bundle(other), backend="onnxruntime") as rt:
        assert not rt.accepts_logmel and "model_cpu.onnx" in rt.describe()
    assert "n_mels" in caplog.text
