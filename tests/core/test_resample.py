"""Streaming polyphase resampler: exactness against a direct convolution, block invariance,
amplitude/frequency of tones, and (if scipy is installed) agreement with resample_poly."""

from __future__ import annotations

import numpy as np
import pytest

from edge_asd.core.resample import StreamingResampler, design_filter

pytestmark = pytest.mark.device

RATIOS = [(48000, 16000), (44100, 16000), (22050, 16000), (8000, 16000)]


def _direct_reference(x: np.ndarray, r: StreamingResampler) -> np.ndarray:
    """float64 evaluation of y[m] = sum_i h[i] x_up[m*M + D - i], straight from the definition
    (zero-stuffed input, the resampler's own prototype filter), one output row at a time."""
    L, M = r.up, r.down
    h = design_filter(L, M)
    padded = np.zeros(r.taps * L)
    padded[: h.size] = h
    branches = padded.reshape(r.taps, L).T
    hn = (branches / branches.sum(axis=1, keepdims=True)).T.reshape(-1)  # per-branch DC gain 1
    n_out = -(-(x.size * L - r.delay) // M)
    n = np.arange(n_out)[:, None] * M + r.delay  # position at the upsampled rate
    j = n // L - np.arange(r.taps)[None, :]  # input samples whose zero-stuffed slot is in reach
    i = n - j * L  # filter tap that multiplies x[j]
    ok = (j >= 0) & (j < x.size) & (i < hn.size)
    return np.where(ok, hn[np.minimum(i, hn.size - 1)] * x[np.clip(j, 0, x.size - 1)], 0.0).sum(axis=1)


@pytest.mark.parametrize("rates", RATIOS)
def test_matches_direct_definition(rates: tuple[int, int]) -> None:
    fin, fout = rates
    x = np.random.default_rng(1).standard_normal(fin // 2).astype(np.float32) * 0.3
    r = StreamingResampler(fin, fout)
    y = r.process(x)
    ref = _direct_reference(x.astype(np.float64), StreamingResampler(fin, fout))
    assert y.shape == ref.shape
    # float32 data and taps: the error is rounding only
    assert np.max(np.abs(y - ref)) < 1e-5


@pytest.mark.parametrize("rates", RATIOS)
def test_block_by_block_equals_all_at_once(rates: tuple[int, int]) -> None:
    fin, fout = rates
    rng = np.random.default_rng(2)
    x = rng.standard_normal((fin, 3)).astype(np.float32)
    whole = StreamingResampler(fin, fout, channels=3).process(x)
    r = StreamingResampler(fin, fout, channels=3)
    parts, i = [], 0
    while i < x.shape[0]:
        n = int(rng.integers(1, 3000))
        parts.append(r.process(x[i : i + n]))
        i += n
    blocks = np.concatenate(parts)
    assert blocks.shape == whole.shape
    assert np.max(np.abs(blocks - whole)) < 1e-5
    assert r.produced == whole.shape[0] and r.consumed == fin


def test_swept_tone_amplitude_and_frequency_48k_to_16k() -> None:
    fin, fout = 48000, 16000
    t = np.arange(2 * fin) / fin
    # sweep 200 Hz -> 6 kHz: inside the pass band it must keep unit amplitude
    f0, f1 = 200.0, 6000.0
    phase = 2 * np.pi * (f0 * t + (f1 - f0) * t**2 / (2 * t[-1]))
    x = np.sin(phase).astype(np.float32)
    y = StreamingResampler(fin, fout).process(x)
    tout = np.arange(y.size) / fout
    expected = np.sin(2 * np.pi * (f0 * tout + (f1 - f0) * tout**2 / (2 * t[-1])))
    core = slice(200, y.size - 200)
    assert np.max(np.abs(y[core] - expected[core])) < 2e-3  # time-aligned, no delay

    # a 1 kHz tone lands on the 1 kHz bin; a 12 kHz tone (above the new Nyquist) is removed
    for freq, want in ((1000.0, 1.0), (12000.0, 0.0)):
        tone = np.sin(2 * np.pi * freq * np.arange(fin) / fin).astype(np.float32)
        out = StreamingResampler(fin, fout).process(tone)[1000:-1000]
        spec = np.abs(np.fft.rfft(out * np.hanning(out.size)))
        if want:
            peak_hz = np.argmax(spec) * fout / out.size
            assert abs(peak_hz - freq) < 2.0
            assert abs(np.sqrt(2) * np.std(out) - 1.0) < 1e-3
        else:
            assert np.max(np.abs(out)) < 1e-3  # more than 60 dB down


def test_dc_and_passthrough() -> None:
    y = StreamingResampler(44100, 16000).process(np.full(44100, 0.5, np.float32))
    assert np.allclose(y[200:], 0.5, atol=1e-6)
    x = np.random.default_rng(3).standard_normal((100, 2)).astype(np.float32)
    np.testing.assert_array_equal(StreamingResampler(16000, 16000, 2).process(x), x)


def test_flush_emits_the_tail() -> None:
    x = np.random.default_rng(4).standard_normal((48000, 1)).astype(np.float32)
    r = StreamingResampler(48000, 16000)
    y = np.concatenate([r.process(x), r.flush()])
    assert y.shape[0] == 16000
    ref = StreamingResampler(48000, 16000).process(np.concatenate([x, np.zeros((4800, 1), np.float32)]))
    np.testing.assert_allclose(y, ref[:16000], atol=1e-6)


def test_close_to_scipy_resample_poly() -> None:
    signal = pytest.importorskip("scipy.signal")
    x = np.random.default_rng(5).standard_normal(48000)
    # band-limit the noise to 6 kHz so both filters' (different) transition bands don't matter
    spec = np.fft.rfft(x)
    spec[int(6000 / 48000 * x.size) :] = 0
    x = np.fft.irfft(spec, x.size).astype(np.float32)
    ours = StreamingResampler(48000, 16000).process(x)
    theirs = signal.resample_poly(x.astype(np.float64), 1, 3)[: ours.size]
    core = slice(500, ours.size - 500)
    rel = np.sqrt(np.mean((ours[core] - theirs[core]) ** 2) / np.mean(theirs[core] ** 2))
    assert rel < 1e-3
