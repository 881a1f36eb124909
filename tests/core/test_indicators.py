"""edge_asd.core.indicators against hand-computed values (numpy only: device).

Synthetic signals whose indicators follow from a line of algebra (sines, impulse trains, white
noise, AM tones, silence), the exactness of the 1 s block decomposition that the live path
relies on, and plausibility on the real DCASE clips in ../shared/data.
"""

from __future__ import annotations

import math
import re
import subprocess
import sys
from collections import deque
from pathlib import Path

import numpy as np
import pytest

from edge_asd.core import indicators as ind
from edge_asd.core.constants import SAMPLE_RATE, WINDOW_SAMPLES

pytestmark = pytest.mark.device

REPO = Path(__file__).resolve().parents[2]
T = np.arange(WINDOW_SAMPLES) / SAMPLE_RATE
NYQUIST = SAMPLE_RATE / 2


def values(x: np.ndarray) -> dict[str, float]:
    v = ind.compute(np.asarray(x, dtype=np.float32))
    assert v.shape == (len(ind.INDICATORS),) and v.dtype == np.float64
    assert np.all(np.isfinite(v))
    return dict(zip(ind.INDICATOR_NAMES, v.tolist()))


def bands(v: dict[str, float]) -> np.ndarray:
    return np.array([v[n] for n in ind.INDICATOR_NAMES if n.startswith("band_")])


def band_edges() -> list[tuple[float, float]]:
    """IEC 61260 base-ten third-octave edges, the 8 kHz band clipped at Nyquist."""
    return [(c * 10 ** (-1 / 20), min(c * 10 ** (1 / 20), NYQUIST)) for c in ind.BAND_CENTRES_HZ]


def white(std: float, seed: int = 0) -> np.ndarray:
    return (std * np.random.default_rng(seed).standard_normal(WINDOW_SAMPLES)).astype(np.float32)


def impulse_train(period: int, amplitude: float = 0.5) -> np.ndarray:
    x = np.zeros(WINDOW_SAMPLES, dtype=np.float32)
    x[50::period] = amplitude
    return x


# --- metadata -----------------------------------------------------------------------------


def test_indicators_import_no_torch_or_scipy():
    """In a fresh interpreter (reloading here would swap the classes other tests hold)."""
    code = (
        "import sys, edge_asd.core.indicators; "
        "bad = [m for m in ('torch', 'scipy', 'sklearn') if m in sys.modules]; "
        "sys.exit(f'imported {bad}' if bad else 0)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr + result.stdout


def test_every_indicator_is_declared():
    names = [i.name for i in ind.INDICATORS]
    assert len(names) == len(set(names)), "names must be unique"
    assert tuple(names) == ind.INDICATOR_NAMES
    for i in ind.INDICATORS:
        assert re.fullmatch(r"[a-z][a-z0-9]*(_[a-z0-9]+)*", i.name), i.name
        assert i.unit in ind.UNITS, (i.name, i.unit)  # "" is declared there as a ratio
        assert ind.UNITS[i.unit].strip()
        assert i.label.strip() and i.reveals.strip().endswith("."), i.name
        assert i.kind in ind.KINDS, (i.name, i.kind)
    assert {i.kind for i in ind.INDICATORS} == set(ind.KINDS)
    by_name = {i.name: i for i in ind.INDICATORS}
    assert by_name["band_2500hz"].label == "2.5 kHz band"
    assert by_name["band_31_5hz"].label == "31.5 Hz band"
    assert by_name["crest_factor"].unit == "dB" and by_name["rms_level"].unit == "dBFS"
    band_names = [n for n in names if n.startswith("band_")]
    assert len(band_names) == len(ind.BAND_NOMINAL_HZ) == 26
    assert band_names[0] == "band_25hz" and band_names[-1] == "band_8000hz"
    # The nominal centres round the exact base-ten ones.
    for nominal, exact in zip(ind.BAND_NOMINAL_HZ, ind.BAND_CENTRES_HZ):
        assert abs(nominal / exact - 1) < 0.015


def test_block_stats_are_small_and_inputs_are_checked():
    stats = ind.block_stats(white(0.1)[: ind.BLOCK_SAMPLES])
    assert stats.nbytes < 8 * 1024
    with pytest.raises(ValueError):
        ind.block_stats(np.zeros(ind.BLOCK_SAMPLES + 1, dtype=np.float32))
    with pytest.raises(ValueError):
        ind.compute(np.zeros(WINDOW_SAMPLES - 1, dtype=np.float32))
    with pytest.raises(ValueError):
        ind.compute_batch(np.zeros(WINDOW_SAMPLES, dtype=np.float32))
    with pytest.raises(ValueError):
        ind.combine([])


# --- sines --------------------------------------------------------------------------------


@pytest.mark.parametrize("amplitude, rms_dbfs", [(1.0, -3.0103), (0.1, -23.0103)])
def test_sine_levels_crest_kurtosis_and_tone(amplitude, rms_dbfs):
    f0 = 1234.5  # off-bin (bins are 7.8125 Hz), inside the 1.25 kHz band (1122-1413 Hz)
    v = values(amplitude * np.sin(2 * np.pi * f0 * T))
    # RMS of A sin is A / sqrt 2; sampled peak of 160000 samples reaches A within 0.001 dB.
    assert v["rms_level"] == pytest.approx(rms_dbfs, abs=0.005)
    assert v["peak_level"] == pytest.approx(20 * math.log10(amplitude), abs=0.005)
    assert v["crest_factor"] == pytest.approx(3.0103, abs=0.005)
    assert v["kurtosis"] == pytest.approx(1.5, abs=1e-3)  # E sin^4 / (E sin^2)^2 = (3/8) / (1/4)
    # Steady: every 12.5 ms frame holds the same energy, the envelope is flat, no flux.
    assert v["impulsiveness_p95"] < 0.1 and v["impulsiveness_max"] < 0.1
    assert v["modulation_depth"] < 0.02
    assert v["spectral_flux"] < 0.01
    # Spectral shape: all power at f0.
    assert v["spectral_centroid"] == pytest.approx(f0, abs=2.0)
    assert v["spectral_rolloff"] == pytest.approx(f0, abs=ind.BIN_HZ)
    assert v["spectral_flatness"] < -60.0  # white noise is 0 dB; only the floor is left
    levels = bands(v)
    k = ind.INDICATOR_NAMES.index("band_1250hz") - ind.INDICATOR_NAMES.index("band_25hz")
    assert levels[k] == pytest.approx(0.0, abs=0.05)
    assert np.all(np.delete(levels, k) < -40.0)
    # Tonal: one peak, tens of dB above the local floor, at f0.
    assert v["tonal_prominence"] > 60.0
    assert v["tonal_peak_count"] == 1
    freqs, prominence = ind.tonal_peaks(amplitude * np.sin(2 * np.pi * f0 * T).astype(np.float32))
    assert freqs.shape == (1,) and freqs[0] == pytest.approx(f0, abs=1.0)
    assert prominence[0] == pytest.approx(v["tonal_prominence"])


def test_level_moves_only_the_level_indicators():
    """Scaling by 0.1 lowers rms and peak by exactly 20 dB and changes no shape indicator."""
    rng = np.random.default_rng(5)
    x = (0.2 * np.sin(2 * np.pi * 440 * T) + 0.05 * rng.standard_normal(WINDOW_SAMPLES)).astype(np.float32)
    a, b = ind.compute(x), ind.compute(x * np.float32(0.1))
    level = [ind.INDICATOR_NAMES.index(n) for n in ("rms_level", "peak_level")]
    np.testing.assert_allclose(a[level] - b[level], 20.0, atol=1e-4)
    rest = np.setdiff1d(np.arange(a.size), level)
    np.testing.assert_allclose(a[rest], b[rest], rtol=1e-4, atol=1e-3)


def test_two_tones_in_noise_are_two_peaks():
    x = 0.1 * np.sin(2 * np.pi * 500 * T) + 0.05 * np.sin(2 * np.pi * 2000 * T) + white(0.01, seed=3)
    v = values(x)
    assert v["tonal_peak_count"] == 2
    freqs, prominence = ind.tonal_peaks(x.astype(np.float32))
    assert freqs == pytest.approx([500.0, 2000.0], abs=1.0)
    assert prominence[0] > prominence[1] > 20.0


# --- impulse trains -----------------------------------------------------------------------


@pytest.mark.parametrize("period", [1600, 6400])  # 10 Hz and 2.5 Hz
def test_impulse_train_crest_kurtosis_impulsiveness(period):
    a = 0.5
    v = values(impulse_train(period, a))
    q = 1 / period  # fraction of samples that are impulses
    mu = a * q
    # Mean-removed: peak a(1-q), rms a sqrt(q(1-q)) -> crest 10 log10((1-q)/q) = 10 log10(P-1).
    assert v["crest_factor"] == pytest.approx(10 * math.log10(period - 1), abs=1e-3)
    # Bernoulli kurtosis: ((1-q)^3 + q^3) / (q (1-q)), about P - 2.
    assert v["kurtosis"] == pytest.approx(((1 - q) ** 3 + q**3) / (q * (1 - q)), rel=1e-6)
    # A 200-sample frame with the impulse over one without: ((a-mu)^2 + 199 mu^2) / (200 mu^2).
    impulse_db = 10 * math.log10(((a - mu) ** 2 + 199 * mu**2) / (200 * mu**2))
    assert v["impulsiveness_max"] == pytest.approx(impulse_db, abs=0.01)
    # 1 frame in 8 holds an impulse at 10 Hz (so the 95th percentile is one), 1 in 32 at 2.5 Hz.
    expected_p95 = impulse_db if period == 1600 else 0.0
    assert v["impulsiveness_p95"] == pytest.approx(expected_p95, abs=0.01)


def test_impulse_train_modulation_lands_at_its_rate():
    """A spike train's envelope has equal lines at every harmonic of its rate.

    Envelope (6.25 ms RMS): value e1 in one frame of M, e0 in the others; each harmonic holds
    2 ((e1 - e0) / M)^2 of power, relative to the squared mean envelope.
    """
    a = 0.5
    noise = values(white(0.01, seed=1))
    for period, rate_band, quiet_band in ((1600, "modulation_4_16hz", "modulation_0_5_4hz"),
                                          (6400, "modulation_0_5_4hz", None)):  # fmt: skip
        v = values(impulse_train(period, a))
        mu = a / period
        m = period // 100
        e1 = math.sqrt(((a - mu) ** 2 + 99 * mu**2) / 100 + ind.POWER_FLOOR)
        e0 = math.sqrt(mu**2 + ind.POWER_FLOOR)
        mean = e0 + (e1 - e0) / m
        per_line_db = 10 * math.log10(2 * ((e1 - e0) / m) ** 2 / mean**2)
        # 10 Hz: 10 Hz in 4-16 Hz, 20..60 Hz (5 lines) in 16-64 Hz, nothing below 4 Hz.
        # 2.5 Hz: 2.5 Hz alone in 0.5-4 Hz.
        assert v[rate_band] == pytest.approx(per_line_db, abs=0.3), period
        assert v[rate_band] > noise[rate_band] + 20
        if quiet_band is not None:
            assert v[quiet_band] < noise[quiet_band]
            assert v["modulation_16_64hz"] == pytest.approx(per_line_db + 10 * math.log10(5), abs=0.3)
    assert v["modulation_depth"] > 1.0  # mostly-silent envelope with spikes: deeper than full AM


# --- white noise --------------------------------------------------------------------------


def test_white_noise():
    std = 0.1
    v = values(white(std))
    assert v["rms_level"] == pytest.approx(20 * math.log10(std), abs=0.05)
    # Sample kurtosis of 160000 Gaussian samples: 3 +/- sqrt(24/n) = 3 +/- 0.012.
    assert v["kurtosis"] == pytest.approx(3.0, abs=0.06)
    # Largest |x| of n = 160000 Gaussians: P(max < t sigma) = (1 - 2Q(t))^n is 0.1 % at
    # t = 4.09 and 99.9 % at t = 5.8, so the crest lies between 12.2 and 15.3 dB; the median
    # is t = 4.6 (13.3 dB).
    assert 20 * math.log10(4.0) < v["crest_factor"] < 20 * math.log10(6.0)
    # Frame energies of 200 samples: chi-square with 200 dof, 0.43 dB spread: p95 - p50 ~ 0.7 dB.
    assert 0.3 < v["impulsiveness_p95"] < 1.2
    assert v["impulsiveness_max"] < 2.5
    # Flat spectrum: flatness ~0 dB (Welch average of 150 frames), centroid at 4 kHz, 85 %
    # of the power below 6.8 kHz, no tones.
    assert -0.2 < v["spectral_flatness"] <= 0.0
    assert v["spectral_centroid"] == pytest.approx(NYQUIST / 2, abs=50)
    assert v["spectral_rolloff"] == pytest.approx(0.85 * NYQUIST, abs=50)
    assert v["tonal_peak_count"] == 0 and v["tonal_prominence"] < 3.0
    # Band power is proportional to band width: 10 log10(width / 8000). A band of width B
    # measured for 10 s holds about 10 B independent samples, so its level has a standard
    # deviation of about 4.34 / sqrt(10 B) dB (0.6 dB at 25 Hz, 0.03 dB at 5 kHz): allow 4 of them.
    widths = np.array([hi - lo for lo, hi in band_edges()])
    expected = 10 * np.log10(widths / NYQUIST)
    tolerance = 4 * 4.34 / np.sqrt(10 * widths) + 0.05
    assert np.all(np.abs(bands(v) - expected) < tolerance), bands(v) - expected
    # Envelope: 100-sample RMS of Gaussian noise has relative std 1/sqrt(2 * 100) = 0.0707,
    # i.e. an AM index of 0.1, its power (depth^2 / 2) spread evenly over 0-80 Hz. A band of
    # width B over 10 s with a Hann window (1.5 bins of noise bandwidth) holds about 10 B / 1.5
    # independent samples: allow 4 standard deviations of 4.34 / sqrt(that) dB.
    depth = v["modulation_depth"]
    assert depth == pytest.approx(0.1, abs=0.01)
    for name, (lo, hi) in zip(("modulation_0_5_4hz", "modulation_4_16hz", "modulation_16_64hz"),
                              ind.MODULATION_BANDS_HZ):  # fmt: skip
        expected_db = 10 * math.log10(depth**2 / 2 * (hi - lo) / (ind.ENV_RATE / 2))
        assert v[name] == pytest.approx(expected_db, abs=4 * 4.34 / math.sqrt(10 * (hi - lo) / 1.5)), name


def test_mean_spectrum_and_band_levels_agree_with_the_vector():
    x = white(0.1) + 0.05 * np.sin(2 * np.pi * 300 * T).astype(np.float32)
    v = ind.compute(x)
    centres, levels = ind.band_levels(x)
    assert centres.tolist() == list(ind.BAND_NOMINAL_HZ)
    first = ind.INDICATOR_NAMES.index("band_25hz")
    np.testing.assert_array_equal(levels, v[first:])
    freqs, spectrum_db = ind.mean_spectrum_db(x)
    assert freqs.shape == spectrum_db.shape == (1024,)
    assert freqs[0] == pytest.approx(ind.BIN_HZ) and freqs[-1] == pytest.approx(NYQUIST)
    # Parseval: the bins add up to the mean square (0.01 + 0.05^2 / 2).
    total = np.sum(10 ** (spectrum_db / 10))
    assert 10 * math.log10(total) == pytest.approx(10 * math.log10(0.01 + 0.05**2 / 2), abs=0.1)
    assert freqs[np.argmax(spectrum_db)] == pytest.approx(300, abs=ind.BIN_HZ)


# --- amplitude modulation -----------------------------------------------------------------


@pytest.mark.parametrize("fm, band", [(2.0, "modulation_0_5_4hz"), (6.0, "modulation_4_16hz"),
                                      (30.0, "modulation_16_64hz")])  # fmt: skip
def test_am_tone_modulation_band_and_depth(fm, band):
    m = 0.5
    # Carrier of 1600 Hz: exactly 10 periods per 100-sample envelope frame, so the frame RMS is
    # the modulating amplitude / sqrt 2; its AC power relative to its mean^2 is m^2 / 2.
    x = 0.3 * (1 + m * np.cos(2 * np.pi * fm * T)) * np.sin(2 * np.pi * 1600 * T)
    v = values(x)
    # 6.25 ms frames average the envelope: the line is attenuated by sinc(fm * 6.25 ms) (0.5 dB
    # at 30 Hz).
    smear = np.sinc(fm * ind.ENV_FRAME_SAMPLES / SAMPLE_RATE)
    assert v["modulation_depth"] == pytest.approx(m * smear, abs=0.01)
    assert v[band] == pytest.approx(10 * math.log10((m * smear) ** 2 / 2), abs=0.3)
    for other in ("modulation_0_5_4hz", "modulation_4_16hz", "modulation_16_64hz"):
        if other != band:
            assert v[other] < v[band] - 30, other


# --- silence and broken input -------------------------------------------------------------


@pytest.mark.parametrize("level", [0.0, 0.5])  # silence, and a pure DC offset
def test_silence_is_finite(level):
    v = values(np.full(WINDOW_SAMPLES, level, dtype=np.float32))
    # The floor (-120 dBFS of notional white noise) is all that is left after mean removal.
    assert v["rms_level"] == pytest.approx(-120.0, abs=0.01)
    assert v["kurtosis"] == pytest.approx(3.0, abs=0.01)
    assert v["tonal_peak_count"] == 0
    assert v["spectral_flatness"] == pytest.approx(0.0, abs=0.01)
    assert all(v[n] == pytest.approx(-120.0) for n in ("modulation_0_5_4hz", "modulation_4_16hz"))


def test_non_finite_samples_do_not_poison_the_vector(caplog):
    x = white(0.1)
    x[12345] = np.nan
    x[99999] = np.inf
    with caplog.at_level("WARNING", logger="edge_asd.core.indicators"):
        v = ind.compute(x)
    assert np.all(np.isfinite(v))
    assert "NaN or infinite" in caplog.text


# --- the block decomposition --------------------------------------------------------------


def test_sliding_blocks_equal_compute_exactly():
    """The live path keeps the last ten BlockStats and adds one per hop: bit-identical to
    recomputing the window (a drifting DC offset and a level change exercise the shifts)."""
    rng = np.random.default_rng(7)
    n_blocks = 14
    t = np.arange(n_blocks * ind.BLOCK_SAMPLES) / SAMPLE_RATE
    gain = np.where(t < 6.3, 0.05, 0.2)
    x = (0.03 + 0.01 * t + gain * rng.standard_normal(t.size) + 0.1 * np.sin(2 * np.pi * 97 * t)).astype(
        np.float32
    )
    x[70000:70010] += 0.6
    recent: deque[ind.BlockStats] = deque(maxlen=ind.BLOCKS_PER_WINDOW)
    hops = 0
    for i in range(n_blocks):
        recent.append(ind.block_stats(x[i * ind.BLOCK_SAMPLES : (i + 1) * ind.BLOCK_SAMPLES]))
        if len(recent) == ind.BLOCKS_PER_WINDOW:
            start = (i + 1 - ind.BLOCKS_PER_WINDOW) * ind.BLOCK_SAMPLES
            np.testing.assert_array_equal(
                ind.combine(list(recent)), ind.compute(x[start : start + WINDOW_SAMPLES])
            )
            hops += 1
    assert hops == n_blocks - ind.BLOCKS_PER_WINDOW + 1
    hopped = ind.compute_hops(x[: -ind.BLOCK_SAMPLES // 2])  # a trailing partial block is ignored
    assert hopped.shape == (n_blocks - ind.BLOCKS_PER_WINDOW, len(ind.INDICATORS))
    np.testing.assert_array_equal(
        hopped[2], ind.compute(x[2 * ind.BLOCK_SAMPLES : 2 * ind.BLOCK_SAMPLES + WINDOW_SAMPLES])
    )
    assert ind.compute_hops(x[: WINDOW_SAMPLES - 1]).shape == (0, len(ind.INDICATORS))
    windows = np.stack([x[:WINDOW_SAMPLES], x[ind.BLOCK_SAMPLES : ind.BLOCK_SAMPLES + WINDOW_SAMPLES]])
    batch = ind.compute_batch(windows)
    assert batch.shape == (2, len(ind.INDICATORS))
    np.testing.assert_array_equal(batch[1], ind.compute(windows[1]))


def test_merged_moments_match_a_direct_computation():
    """The binomial shift of block sums equals the textbook statistics of the whole window."""
    rng = np.random.default_rng(11)
    x = (0.3 + 0.1 * rng.standard_t(4, WINDOW_SAMPLES)).astype(np.float32)
    v = values(x)
    d = x.astype(np.float64) - x.mean(dtype=np.float64)
    var = np.mean(d**2)
    assert v["rms_level"] == pytest.approx(10 * math.log10(var + ind.POWER_FLOOR), abs=1e-9)
    assert v["kurtosis"] == pytest.approx(np.mean(d**4) / var**2, rel=1e-9)
    assert v["peak_level"] == pytest.approx(20 * math.log10(np.abs(d).max()), abs=1e-9)


# --- real clips ---------------------------------------------------------------------------


def test_real_clips_are_finite_and_plausible(shared_data):
    from edge_asd.core.audio_io import fit_length, read_audio

    files = sorted(shared_data.rglob("*.wav"))
    if not files:
        pytest.skip(f"no WAV clips under {shared_data}")
    windows = np.stack([fit_length(read_audio(f)) for f in files])
    table = ind.compute_batch(windows)
    assert np.all(np.isfinite(table))
    for path, row in zip(files, table):
        v = dict(zip(ind.INDICATOR_NAMES, row.tolist()))
        where = path.name
        assert -90.0 < v["rms_level"] < 0.0, where
        assert v["rms_level"] < v["peak_level"] <= 0.01, where
        assert 3.0 < v["crest_factor"] < 40.0, where
        assert 1.0 <= v["kurtosis"] < 1000.0, where
        assert 0.0 <= v["impulsiveness_p95"] <= v["impulsiveness_max"], where
        assert 0.0 < v["spectral_centroid"] < NYQUIST and 0.0 < v["spectral_rolloff"] <= NYQUIST, where
        assert -80.0 < v["spectral_flatness"] <= 0.0, where
        assert 0.0 <= v["spectral_flux"] <= math.sqrt(2), where
        assert v["tonal_prominence"] >= 0.0 and 0 <= v["tonal_peak_count"] < 200, where
        assert 0.0 <= v["modulation_depth"] < 5.0, where
        levels = bands(v)
        assert np.all(levels <= 0.0), where
        assert np.sum(10 ** (levels / 10)) <= 1.0 + 1e-9, where


# --- batched functions (the live daemon's path) ---------------------------------------------


def varied_windows() -> list[np.ndarray]:
    """Windows that exercise every branch of the indicators: noise, tone on a DC offset,
    impulses, AM, exact silence, a broken sample, noise at the power floor, clipping."""
    broken = white(0.1, seed=9)
    broken[3 * ind.BLOCK_SAMPLES + 77] = np.nan
    quiet = white(math.sqrt(ind.POWER_FLOOR), seed=4)  # mean square at the floor
    am = 0.3 * (1 + 0.5 * np.cos(2 * np.pi * 6.0 * T)) * np.sin(2 * np.pi * 1600 * T)
    square = np.clip(4.0 * np.sign(np.sin(2 * np.pi * 50.0 * T)), -1.0, 1.0)
    windows = [
        white(0.1, seed=8),
        0.3 + 0.2 * np.sin(2 * np.pi * 440.0 * T),
        impulse_train(1600),
        am,
        np.zeros(WINDOW_SAMPLES),
        broken,
        quiet,
        square,
    ]
    return [np.asarray(w, dtype=np.float32) for w in windows]


def batch_stats(windows: list[np.ndarray]) -> list[list[ind.BlockStats]]:
    """Every block of every window through one block_stats_many call, split back per window."""
    blocks = np.concatenate(windows).reshape(-1, ind.BLOCK_SAMPLES)
    stats = ind.block_stats_many(blocks)
    n = ind.BLOCKS_PER_WINDOW
    return [stats[i * n : (i + 1) * n] for i in range(len(windows))]


def test_batched_windows_equal_each_window_alone(caplog):
    windows = varied_windows()
    with caplog.at_level("WARNING", logger="edge_asd.core.indicators"):
        per_window = batch_stats(windows)
    assert "1 of 80 blocks hold NaN or infinite samples" in caplog.text
    table = ind.combine_many(per_window)
    assert table.shape == (len(windows), len(ind.INDICATORS)) and table.dtype == np.float64
    assert np.all(np.isfinite(table))
    count = ind.INDICATOR_NAMES.index("tonal_peak_count")
    for i, (x, blocks) in enumerate(zip(windows, per_window)):
        for alone in (ind.combine(blocks), ind.compute(x)):
            np.testing.assert_allclose(table[i], alone, rtol=1e-10, atol=0, err_msg=f"window {i}")
            assert table[i, count] == alone[count]
    # The branches were reached: a tone, impulses, silence at the floor, the quiet noise above it.
    v = [dict(zip(ind.INDICATOR_NAMES, row.tolist())) for row in table]
    assert v[1]["tonal_peak_count"] == 1 and v[2]["crest_factor"] > 30.0
    assert v[4]["rms_level"] == pytest.approx(-120.0, abs=0.01)
    assert -118.0 < v[6]["rms_level"] < -116.0  # noise of the floor's power plus the floor: +3 dB
    assert v[7]["peak_level"] == pytest.approx(0.0, abs=0.01)  # clipped at full scale


def test_batched_rows_do_not_depend_on_their_neighbours():
    """Shuffled, repeated and spread over more than one internal group of windows, every row
    is still its own window's vector."""
    per_window = batch_stats(varied_windows())
    table = ind.combine_many(per_window)
    rng = np.random.default_rng(3)
    order = rng.permutation(np.tile(np.arange(len(per_window)), 5))  # 40 windows > GROUP_WINDOWS
    assert order.size > ind.GROUP_WINDOWS
    shuffled = ind.combine_many([per_window[i] for i in order])
    np.testing.assert_allclose(shuffled, table[order], rtol=1e-10, atol=0)
    count = ind.INDICATOR_NAMES.index("tonal_peak_count")
    np.testing.assert_array_equal(shuffled[:, count], table[order, count])


def test_block_stats_many_equals_block_stats_row_by_row(caplog):
    rows = np.stack([w[: ind.BLOCK_SAMPLES] for w in varied_windows()])
    rows[4, 100] = np.inf
    rows[6, :50] = np.nan
    with caplog.at_level("WARNING", logger="edge_asd.core.indicators"):
        many = ind.block_stats_many(rows)
    assert len(many) == rows.shape[0]
    warnings = [r for r in caplog.records if "NaN or infinite" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].getMessage().startswith("2 of 8 blocks"), warnings
    for row, batched in zip(rows, many):
        alone = ind.block_stats(row)
        for field in ("mean", "m2", "m3", "m4", "vmax", "vmin", "flux_sum"):
            assert getattr(batched, field) == pytest.approx(getattr(alone, field), rel=1e-12, abs=1e-300), (
                field
            )
        for field in ("frame_sum", "frame_sq"):
            np.testing.assert_allclose(
                getattr(batched, field), getattr(alone, field), rtol=1e-12, atol=1e-300
            )
        assert batched.power.dtype == np.float32 and batched.power.shape == (1024,)
        np.testing.assert_allclose(batched.power, alone.power, rtol=1e-6)
        assert batched.flux_count == alone.flux_count == ind.FRAMES_PER_BLOCK - 1
        assert np.isfinite(batched.mean) and np.isfinite(batched.vmax)
    # The repaired rows are the rows with their non-finite samples set to 0.
    repaired = rows[6].copy()
    repaired[:50] = 0.0
    assert many[6].m2 == pytest.approx(ind.block_stats(repaired).m2, rel=1e-12)
    # Any float dtype: float64 input gives the float32 input's numbers.
    as64 = ind.block_stats_many(rows[:2].astype(np.float64))
    assert as64[1].m4 == many[1].m4


def test_empty_batches_and_mismatched_windows():
    assert ind.block_stats_many(np.empty((0, ind.BLOCK_SAMPLES), dtype=np.float32)) == []
    for bad in (np.zeros(ind.BLOCK_SAMPLES), np.zeros((2, ind.BLOCK_SAMPLES - 1)), np.zeros((1, 2, 3))):
        with pytest.raises(ValueError, match="block_stats_many"):
            ind.block_stats_many(bad)
    empty = ind.combine_many([])
    assert empty.shape == (0, len(ind.INDICATORS)) and empty.dtype == np.float64
    stats = ind.block_stats_many(white(0.1)[: 2 * ind.BLOCK_SAMPLES].reshape(2, -1))
    with pytest.raises(ValueError, match=r"block counts \[1, 2\]"):
        ind.combine_many([stats, stats[:1]])
    with pytest.raises(ValueError, match="at least one"):
        ind.combine_many([[], []])
    # Fewer than ten blocks are allowed (the statistics stay exact), when all windows agree.
    two = ind.combine_many([stats, stats])
    np.testing.assert_array_equal(two[0], ind.combine(stats))


def test_hops_across_the_offline_batches_equal_compute():
    """compute_hops takes blocks in slices of BATCH_BLOCKS and combine_many takes windows in
    groups of GROUP_WINDOWS; a window straddling either boundary is still compute of that window."""
    n_blocks = ind.BATCH_BLOCKS + 12
    rng = np.random.default_rng(12)
    t = np.arange(n_blocks * ind.BLOCK_SAMPLES) / SAMPLE_RATE
    x = (0.05 * rng.standard_normal(t.size) + 0.1 * np.sin(2 * np.pi * 97 * t) * (t % 7 < 3)).astype(
        np.float32
    )
    hops = ind.compute_hops(x)
    n_windows = n_blocks - ind.BLOCKS_PER_WINDOW + 1
    assert hops.shape == (n_windows, len(ind.INDICATORS)) and n_windows > ind.GROUP_WINDOWS
    straddling = ind.BATCH_BLOCKS - ind.BLOCKS_PER_WINDOW // 2  # its blocks come from two slices
    for i in (0, straddling, ind.GROUP_WINDOWS - 1, ind.GROUP_WINDOWS, n_windows - 1):
        start = i * ind.BLOCK_SAMPLES
        np.testing.assert_array_equal(hops[i], ind.compute(x[start : start + WINDOW_SAMPLES]), err_msg=str(i))


def test_block_stats_match_a_straightforward_reference():
    """Every statistic of a block against a plain float64 computation written here (fresh
    arrays, a frame at a time), on blocks with a DC offset, a tone, an impulse and silence:
    the batched, in-place steps of the module must change no number."""
    rows = np.stack([w[: ind.BLOCK_SAMPLES] for w in varied_windows()])
    rows[1] += np.float32(0.25)  # a DC offset: moments about the mean, frames detrended
    rows[2, :] = 0.0
    hann = 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(ind.FRAME_SAMPLES) / ind.FRAME_SAMPLES)
    scale = np.full(ind.N_BINS, 2.0 / (ind.N_FFT * np.sum(hann**2)))
    scale[-1] /= 2.0  # one-sided: the Nyquist bin has no mirror image
    for row, got in zip(rows, ind.block_stats_many(rows)):
        x = row.astype(np.float64)
        d = x - x.mean()
        assert got.mean == pytest.approx(x.mean(), rel=1e-12, abs=1e-300)
        for order, value in ((2, got.m2), (3, got.m3), (4, got.m4)):
            # abs: a sum of odd powers cancels to near 0; rounding is relative to the terms
            assert value == pytest.approx(np.sum(d**order), rel=1e-9, abs=1e-12 * np.sum(np.abs(d) ** order)), order
        assert (got.vmax, got.vmin) == (x.max(), x.min())
        frames_d = d.reshape(ind.ENV_FRAMES_PER_BLOCK, ind.ENV_FRAME_SAMPLES)
        np.testing.assert_allclose(got.frame_sum, frames_d.sum(axis=1), rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(got.frame_sq, (frames_d**2).sum(axis=1), rtol=1e-9, atol=1e-300)
        powers, mags = [], []
        for k in range(ind.FRAMES_PER_BLOCK):
            frame = x[k * ind.FRAME_HOP : k * ind.FRAME_HOP + ind.FRAME_SAMPLES] * hann
            frame = frame - frame.sum() / hann.sum() * hann
            p = np.abs(np.fft.rfft(frame, n=ind.N_FFT)[1:]) ** 2 * scale
            powers.append(p)
            m = np.sqrt(p + ind._BIN_FLOOR)
            mags.append(m / np.linalg.norm(m))
        np.testing.assert_allclose(got.power, np.mean(powers, axis=0), rtol=1e-5, atol=1e-30)
        flux = sum(np.linalg.norm(a - b) for a, b in zip(mags[1:], mags[:-1]))
        # sqrt(2 - 2 cos): rounding near cos = 1 leaves ~sqrt(eps) per pair where the flux is 0
        assert got.flux_sum == pytest.approx(flux, rel=1e-7, abs=1e-5)
        assert got.flux_count == ind.FRAMES_PER_BLOCK - 1
        for kept in (got.frame_sum, got.frame_sq, got.power):
            assert not kept.flags.writeable


def test_block_stats_many_rows_stay_independent_in_larger_groups(monkeypatch):
    """The statistics are vectorised over rows; analysing several blocks together (a larger
    internal group, e.g. on a machine where that pays) must not change any row."""
    rows = np.stack([w[: ind.BLOCK_SAMPLES] for w in varied_windows()])
    rows[5, 10] = np.nan
    alone = ind.block_stats_many(rows)
    monkeypatch.setattr(ind, "_CACHE_BLOCKS", 3)  # 8 rows: groups of 3, 3 and 2
    grouped = ind.block_stats_many(rows)
    for a, b in zip(alone, grouped):
        for field in ("mean", "m2", "m3", "m4", "vmax", "vmin", "flux_sum", "frame_sum", "frame_sq", "power"):
            np.testing.assert_allclose(
                getattr(b, field), getattr(a, field), rtol=1e-12, atol=1e-300, err_msg=field
            )


def test_batched_steps_match_independent_references():
    """The vectorised steps of ``combine_many`` against straightforward one-window references
    (written here, not shared with the module), on windows where their edge cases bite: the
    percentiles, the interpolated band powers, the roll-off bin (ties, silence) and the tonal
    peaks' reflected neighbourhood medians at both ends of the spectrum."""
    t = np.arange(ind.WINDOW_SAMPLES) / SAMPLE_RATE
    noise = np.random.default_rng(13).standard_normal(t.size)
    slope = np.cumsum(noise) / 300.0  # a steep low-frequency spectrum: reflection at bin 0 matters
    edge_tones = [
        0.3 * np.sin(2 * np.pi * 27.0 * t) + 0.2 * np.sin(2 * np.pi * 55.0 * t) + slope - slope.mean() + 0.01 * noise,
        0.3 * np.sin(2 * np.pi * 7960.0 * t) + 0.05 * np.diff(noise, prepend=0.0),  # near Nyquist
    ]
    windows = varied_windows() + [w.astype(np.float32) for w in edge_tones]
    blocks = [ind._window_blocks(w) for w in windows]
    vectors = ind.combine_many(blocks)
    names = list(ind.INDICATOR_NAMES)

    rng = np.random.default_rng(12)
    values = rng.standard_normal((5, 800))
    scratch = values.copy()  # overwrite=True partitions the caller's temporary: the same percentiles
    for got, in_place, q in zip(ind._percentiles(values, (50.0, 95.0)),
                                ind._percentiles(scratch, (50.0, 95.0), overwrite=True), (50.0, 95.0)):  # fmt: skip
        np.testing.assert_allclose(got, np.percentile(values, q, axis=1), rtol=1e-12, atol=1e-12)
        np.testing.assert_array_equal(in_place, got)

    edges = np.linspace(0.0, 10.0, 11)
    cumulative = np.cumsum(rng.random((3, 11)), axis=1)
    points = np.array([-1.0, 0.0, 0.25, 3.0, 3.5, 9.99, 10.0, 12.0])
    table = ind._interp_table(points, edges)
    lower, upper, offset, spacing = table
    got = (cumulative[:, upper] - cumulative[:, lower]) / spacing * offset + cumulative[:, lower]
    for row, expected_row in zip(got, cumulative):
        np.testing.assert_allclose(row, np.interp(points, edges, expected_row), rtol=1e-12, atol=1e-12)

    h, r = ind.TONAL_PEAK_HALFWIDTH_BINS, ind.TONAL_NEIGHBOURHOOD_BINS
    first = int(np.searchsorted(ind._FREQS, ind.TONAL_MIN_HZ))
    for window_blocks, vector in zip(blocks, vectors):
        power = np.mean([b.power for b in window_blocks], axis=0, dtype=np.float64) + ind._BIN_FLOOR
        n = power.size
        total = power.sum()
        cumulative_power = np.cumsum(power)
        target = ind.ROLLOFF_FRACTION * total
        k = min(int(np.searchsorted(cumulative_power, target)), n - 1)
        before = cumulative_power[k - 1] if k > 0 else 0.0
        rolloff = ind._BIN_LO[k] + (target - before) / power[k] * (ind._BIN_HI[k] - ind._BIN_LO[k])
        assert vector[names.index("spectral_rolloff")] == pytest.approx(rolloff, rel=1e-12)
        peaks, prominences = [], []
        for i in range(first, n):
            if power[i] < power[max(0, i - h) : i + h + 1].max():
                continue
            hood = [abs(j) if j < n else 2 * (n - 1) - j for j in range(i - r, i + r + 1)]
            peaks.append(i)
            prominences.append(10.0 * np.log10(power[i] / np.median(power[hood])))
        prominences = np.array(prominences)
        _, got_peaks, got_prominences = ind._tonal_candidates(power[None])
        np.testing.assert_array_equal(got_peaks, peaks)
        np.testing.assert_allclose(got_prominences, prominences, rtol=1e-12, atol=1e-12)
        assert vector[names.index("tonal_prominence")] == pytest.approx(max(prominences.max(initial=0.0), 0.0), rel=1e-12)
        assert vector[names.index("tonal_peak_count")] == np.count_nonzero(prominences > ind.TONAL_COUNT_DB)
