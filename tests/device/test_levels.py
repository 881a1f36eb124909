"""Level measurement and classification of windows (the stream-fault detector)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from edge_asd.config import LevelsConfig
from edge_asd.levels import LevelMonitor, clip_level, measure

pytestmark = pytest.mark.device

N = 160000


def _noise(level: float, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(N) * level).astype(np.float32)


def test_normal_noise_is_ok_with_right_levels() -> None:
    r = measure(_noise(0.1))
    assert r.state == "ok" and r.scorable and not r.fault
    assert abs(r.rms_dbfs - (-20.0)) < 0.1
    assert r.peak_dbfs > r.rms_dbfs and 10.0 < r.crest_db < 16.0  # gaussian crest ~ 12-14 dB


def test_silence_is_silent() -> None:
    r = measure(_noise(1e-5))
    assert r.state == "silent" and r.fault and not r.scorable
    assert r.rms_dbfs < -80.0
    assert measure(_noise(1e-5), LevelsConfig(silent_dbfs=-120.0)).state == "ok"


def test_digital_zero_and_constant_are_dead() -> None:
    r = measure(np.zeros(N, np.float32))
    assert r.state == "dead" and math.isfinite(r.rms_dbfs)
    assert measure(np.full(N, 0.25, np.float32)).state == "dead"  # stuck ADC


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nonfinite_is_dead_and_never_scorable(bad: float) -> None:
    x = _noise(0.1)
    x[1234] = bad
    r = measure(x)
    assert r.state == "dead" and r.nonfinite == 1 and not r.scorable
    assert all(math.isfinite(v) for v in (r.rms_dbfs, r.peak_dbfs, r.crest_db))


def test_levels_of_a_window_with_broken_samples_are_those_of_its_finite_ones() -> None:
    """The extremes tell a whole window from a broken one without an isfinite pass; a broken
    one is measured on its finite samples alone (peak and RMS as if the bad ones were not
    there), and one with no finite sample at all is dead with floor levels."""
    x = _noise(0.1, seed=3)
    x[[10, 500, 90000]] = [np.nan, np.inf, -np.inf]
    r = measure(x)
    finite = np.delete(x, [10, 500, 90000])
    assert r.nonfinite == 3 and r.state == "dead"
    assert r.peak_dbfs == pytest.approx(20 * math.log10(float(np.abs(finite).max())))
    assert r.rms_dbfs == pytest.approx(10 * math.log10(float(np.mean(finite.astype(np.float64) ** 2))), abs=1e-3)
    gone = measure(np.full(N, np.nan, np.float32))
    assert gone.state == "dead" and gone.nonfinite == N and gone.rms_dbfs == gone.peak_dbfs == -200.0


def test_a_report_as_a_dict_has_every_field() -> None:
    from dataclasses import asdict

    for x in (_noise(0.1), np.zeros(N, np.float32)):
        r = measure(x)
        assert r.to_dict() == asdict(r)


def test_clipped_sine_is_clipping() -> None:
    t = np.arange(N) / 16000
    x = np.clip(1.5 * np.sin(2 * np.pi * 440 * t), -1.0, 1.0).astype(np.float32)
    r = measure(x)
    assert r.state == "clipping" and r.clipped_fraction > 0.3
    clean = (0.9 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    rc = measure(clean)
    assert rc.state == "ok" and abs(rc.crest_db - 20 * math.log10(math.sqrt(2))) < 0.05


def test_thresholds_come_from_the_config() -> None:
    """measure() without a config uses the config's defaults: -70 dBFS silence, -0.1 dBFS clipping."""
    assert measure(_noise(10 ** (-75 / 20))).state == "silent"  # -75 dBFS RMS
    assert measure(_noise(10 ** (-65 / 20))).state == "ok"
    assert clip_level(LevelsConfig()) == pytest.approx(10 ** (-0.1 / 20))
    t = np.arange(N) / 16000
    near_full = (0.995 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)  # peaks above -0.1 dBFS
    assert measure(near_full).state == "clipping"
    assert measure(near_full, LevelsConfig(clip_fraction=0.5)).state == "ok"
    assert LevelMonitor().debounce == LevelsConfig().debounce_windows


def test_monitor_debounces_stream_state() -> None:
    mon = LevelMonitor(LevelsConfig(debounce_windows=3))
    assert mon.check("m", np.zeros(N, np.float32)).state == "dead"
    assert mon.state("m") == "ok"  # one bad window does not flip the stream
    mon.check("m", np.zeros(N, np.float32))
    mon.check("m", np.zeros(N, np.float32))
    assert mon.state("m") == "dead" and mon.faulted("m")
    for _ in range(3):
        mon.check("m", _noise(0.1))
    assert mon.state("m") == "ok"
    stats = mon.stats("m")
    assert stats["counts"]["dead"] == 3 and stats["counts"]["ok"] == 3 and stats["dbfs"] == pytest.approx(-20, abs=0.2)


def test_real_dcase_clips_are_ok(shared_data) -> None:
    from edge_asd.core.audio_io import read_audio

    clips = sorted(shared_data.rglob("*.wav"))[:12]
    if not clips:
        pytest.skip("no clips in shared data")
    for clip in clips:
        r = measure(read_audio(clip)[:N])
        assert r.state == "ok", (clip, r)


def _reference(window: np.ndarray, config: LevelsConfig) -> tuple[float, float, float, int, str]:
    """Whole-window levels in float64, written here: (RMS dBFS, peak dBFS, clipped fraction,
    non-finite count, state), the RMS and peak of the finite samples alone."""
    x = window.astype(np.float64)
    finite = x[np.isfinite(x)]
    nonfinite = x.size - finite.size
    rms = math.sqrt(np.mean(finite**2)) if finite.size else 0.0
    peak = float(np.abs(finite).max()) if finite.size else 0.0
    clipped = np.count_nonzero(np.abs(finite) >= clip_level(config)) / x.size
    db = [20 * math.log10(v) if v > 0 else -200.0 for v in (rms, peak)]
    if nonfinite or not finite.size or finite.max() == finite.min():
        state = "dead"
    elif clipped > config.clip_fraction:
        state = "clipping"
    elif db[0] < config.silent_dbfs:
        state = "silent"
    else:
        state = "ok"
    return db[0], db[1], clipped, nonfinite, state


def test_hop_by_hop_levels_equal_each_whole_window() -> None:
    """The daemon's check measures only the newest block of each window (end_index on the
    block grid) and must report what the whole window holds (an independent float64
    reference) and exactly what ``measure`` reports, through a level step, clipping bursts, a
    NaN, a silent stretch and a digital zero; a hop that skips ahead and a window off the
    grid (measured whole) agree too."""
    fs = 16000
    rng = np.random.default_rng(8)
    x = (0.05 * rng.standard_normal(44 * fs)).astype(np.float32)
    x[12 * fs : 14 * fs] *= 4.0
    x[15 * fs + 100 : 15 * fs + 400] = 1.0  # clipping burst in one block
    x[17 * fs - 150 : 17 * fs + 150] = -1.0  # and across a block boundary
    x[21 * fs + 7] = np.nan
    x[22 * fs + 9] = np.inf
    x[25 * fs : 36 * fs] = 1e-6  # silent
    x[36 * fs : 44 * fs] = 0.0  # a digital zero
    config = LevelsConfig(debounce_windows=1, clip_fraction=0.0005)
    mon = LevelMonitor(config)
    ends = list(range(N, x.size + 1, fs))
    ends = ends[:10] + [ends[10] + 512] + ends[10:20] + ends[25:]  # off the grid once; then 5 blocks ahead
    states = set()
    for end in ends:
        window = x[end - N : end]
        got = mon.check("m", window, end_index=end)
        assert got == measure(window, config), end
        rms_db, peak_db, clipped, nonfinite, state = _reference(window, config)
        assert (got.state, got.nonfinite) == (state, nonfinite), end
        assert got.rms_dbfs == pytest.approx(rms_db, abs=1e-4) and got.peak_dbfs == pytest.approx(peak_db, abs=1e-9)
        assert got.clipped_fraction == pytest.approx(clipped, abs=1e-12), end
        states.add(got.state)
    assert states == {"ok", "clipping", "dead", "silent"}


def test_blocks_of_a_wrongly_sized_or_empty_window_are_measured_whole() -> None:
    mon = LevelMonitor()
    short = _noise(0.1)[: N - 100]
    assert mon.check("m", short, end_index=N) == measure(short)
    assert mon.check("m", np.zeros(0, np.float32), end_index=N).state == "dead"
    assert measure(_noise(0.1)[:2500]).state == "ok"  # shorter than a block
