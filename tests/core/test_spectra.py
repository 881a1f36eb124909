"""edge_asd.core.spectra against hand-computed values (numpy only: device).

A sine's line in the fine spectrum, an AM tone's line in the envelope spectrum (level from a
line of algebra), level invariance, silence, and the exactness of the block decomposition the
live path relies on (``profile`` of cached blocks is ``compute_profile`` of the window).
"""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edge_asd.core import indicators as ind
from edge_asd.core import spectra as sp
from edge_asd.core.constants import SAMPLE_RATE, WINDOW_SAMPLES

pytestmark = pytest.mark.device

REPO = Path(__file__).resolve().parents[2]
T = np.arange(WINDOW_SAMPLES) / SAMPLE_RATE


def noise(std: float, seed: int = 0, n: int = WINDOW_SAMPLES) -> np.ndarray:
    return (std * np.random.default_rng(seed).standard_normal(n)).astype(np.float32)


def test_layout_and_axes() -> None:
    assert sp.PROFILE_SIZE == sp.N_POWER + sp.N_ENVELOPE == 1022 + 64
    assert sp.POWER_SLICE.stop == sp.ENVELOPE_SLICE.start and sp.ENVELOPE_SLICE.stop == sp.PROFILE_SIZE
    assert sp.POWER_FREQS_HZ[0] == pytest.approx(3 * ind.BIN_HZ) and sp.POWER_FREQS_HZ[0] >= sp.POWER_MIN_HZ
    assert sp.POWER_FREQS_HZ[-1] == pytest.approx(SAMPLE_RATE / 2)
    np.testing.assert_allclose(sp.ENVELOPE_FREQS_HZ, np.arange(1, 65))


def test_a_sine_is_one_line_at_its_frequency() -> None:
    p = sp.compute_profile((0.3 * np.sin(2 * np.pi * 1000.0 * T)).astype(np.float32))
    assert p.shape == (sp.PROFILE_SIZE,) and p.dtype == np.float32
    power = p[sp.POWER_SLICE]
    peak = int(np.argmax(power))
    assert sp.POWER_FREQS_HZ[peak] == pytest.approx(1000.0)
    # A Hann line holds almost all of the power within its main lobe (+/- 2 bins).
    lobe = 10 * np.log10(np.sum(10 ** (power[peak - 2 : peak + 3] / 10)))
    assert lobe == pytest.approx(0.0, abs=0.01)
    # the peak bin: a Hann line's centre holds 1/1.5 of it at native resolution; zero-padding
    # 2000 -> 2048 samples spaces the bins a little closer, so a little less (-1.9 dB)
    assert -2.5 < power[peak] < -1.5 and np.median(power) < -60.0


def test_an_am_tone_is_one_line_of_the_envelope_spectrum() -> None:
    """x = (1 + m sin(2 pi 7 t)) sin(2 pi 1 kHz t): the RMS envelope is (1 + m sin)/sqrt(2), whose
    variance m^2/4 over the mean square (1 + m^2/2)/2 is m^2/(2 + m^2); a bin-centred line puts
    1/1.5 of it (the Hann window's noise bandwidth is 1.5 bins) into its bin."""
    m = 0.5
    x = ((1 + m * np.sin(2 * np.pi * 7.0 * T)) * np.sin(2 * np.pi * 1000.0 * T) * 0.2).astype(np.float32)
    env = sp.compute_profile(x)[sp.ENVELOPE_SLICE]
    assert sp.ENVELOPE_FREQS_HZ[int(np.argmax(env))] == 7.0
    expected = 10 * math.log10(m**2 / (2 + m**2) / 1.5)
    assert env[6] == pytest.approx(expected, abs=0.3)
    far = np.r_[env[:4], env[10:]]  # beyond the Hann main lobe of the 7 Hz line
    assert far.max() < expected - 25.0
    # the unmodulated carrier: no line at all
    flat = sp.compute_profile((0.2 * np.sin(2 * np.pi * 1000.0 * T)).astype(np.float32))[sp.ENVELOPE_SLICE]
    assert flat.max() < expected - 25.0


def test_both_parts_are_level_free() -> None:
    x = noise(0.05, seed=1) + (0.02 * np.sin(2 * np.pi * 440.0 * T)).astype(np.float32)
    a = sp.compute_profile(x)
    b = sp.compute_profile((x * 8.0).astype(np.float32))  # +18 dB gain
    np.testing.assert_allclose(a[sp.POWER_SLICE], b[sp.POWER_SLICE], atol=1e-3)
    np.testing.assert_allclose(a[sp.ENVELOPE_SLICE], b[sp.ENVELOPE_SLICE], atol=1e-3)


def test_silence_and_dc_are_finite() -> None:
    for x in (np.zeros(WINDOW_SAMPLES, np.float32), np.full(WINDOW_SAMPLES, 0.25, np.float32)):
        p = sp.compute_profile(x)
        assert np.all(np.isfinite(p))
        power = p[sp.POWER_SLICE]
        assert np.ptp(power[:-1]) < 1e-3  # the floor is white (the Nyquist bin is half as wide)
        np.testing.assert_allclose(p[sp.ENVELOPE_SLICE], ind.RATIO_FLOOR_DB, atol=1e-3)


def test_white_noise_bins_scatter_as_a_ten_block_average() -> None:
    """The envelope part's per-bin scatter is what ENVELOPE_SCALE_FLOOR_DB is justified from:
    a mean of 10 exponential periodograms, 4.34 sqrt(trigamma(10)) = 1.41 dB."""
    from edge_asd.core.site.components import ENVELOPE_SCALE_FLOOR_DB

    profiles = np.stack([sp.compute_profile(noise(0.1, seed=s)) for s in range(30)])
    env_std = float(np.median(profiles[:, sp.ENVELOPE_SLICE].std(axis=0)))
    assert 1.1 < env_std < 1.7
    assert env_std / 2 > ENVELOPE_SCALE_FLOOR_DB
    power_std = float(np.median(profiles[:, sp.POWER_SLICE].std(axis=0)))
    assert 0.2 < power_std < 0.5  # 150 Welch frames per bin


def test_profile_of_blocks_is_compute_profile() -> None:
    x = noise(0.05, seed=2)
    blocks = [ind.block_stats(x[i * ind.BLOCK_SAMPLES : (i + 1) * ind.BLOCK_SAMPLES]) for i in range(10)]
    np.testing.assert_array_equal(sp.profile(blocks), sp.compute_profile(x))
    with pytest.raises(ValueError):
        sp.profile([])
    with pytest.raises(ValueError):
        sp.compute_profile(x[:-1])


def test_hops_share_blocks_and_equal_single_windows() -> None:
    x = noise(0.05, seed=3, n=13 * SAMPLE_RATE + SAMPLE_RATE // 2)  # a trailing partial block
    hops = sp.compute_profile_hops(x)
    assert hops.shape == (4, sp.PROFILE_SIZE) and hops.dtype == np.float32
    for i in range(4):
        np.testing.assert_array_equal(hops[i], sp.compute_profile(x[i * SAMPLE_RATE : i * SAMPLE_RATE + WINDOW_SAMPLES]))
    assert sp.compute_profile_hops(x[: WINDOW_SAMPLES - 1]).shape == (0, sp.PROFILE_SIZE)
    with pytest.raises(ValueError):
        sp.compute_profile_hops(x.reshape(1, -1))


def test_spectra_import_no_torch_or_scipy() -> None:
    """In a fresh interpreter: the device imports it."""
    code = (
        "import sys, edge_asd.core.spectra, edge_asd.core.site; "
        "bad = [m for m in ('torch', 'scipy', 'sklearn') if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


def test_profile_many_equals_each_window_alone() -> None:
    """The daemon profiles every stream's window of a tick at once: each row is the window's
    own profile, whatever else shares the batch (shuffled, repeated, more than one group)."""
    rng = np.random.default_rng(5)
    broken = noise(0.1, seed=9)
    broken[5 * ind.BLOCK_SAMPLES + 3] = np.nan
    impulses = np.zeros(WINDOW_SAMPLES, np.float32)
    impulses[50::1600] = 0.5
    windows = [
        noise(0.1, seed=8),
        (0.3 + 0.2 * np.sin(2 * np.pi * 440.0 * T)).astype(np.float32),
        impulses,
        (0.3 * (1 + 0.5 * np.cos(2 * np.pi * 6.0 * T)) * np.sin(2 * np.pi * 1600 * T)).astype(np.float32),
        np.zeros(WINDOW_SAMPLES, np.float32),
        broken,
        noise(math.sqrt(ind.POWER_FLOOR), seed=4),
        np.clip(4.0 * np.sign(np.sin(2 * np.pi * 50.0 * T)), -1.0, 1.0).astype(np.float32),
    ]
    stats = ind.block_stats_many(np.concatenate(windows).reshape(-1, ind.BLOCK_SAMPLES))
    per_window = [stats[i * 10 : (i + 1) * 10] for i in range(len(windows))]
    table = sp.profile_many(per_window)
    assert table.shape == (len(windows), sp.PROFILE_SIZE) and table.dtype == np.float32
    assert np.all(np.isfinite(table))
    for i, (x, blocks) in enumerate(zip(windows, per_window)):
        np.testing.assert_allclose(table[i], sp.profile(blocks), rtol=1e-10, atol=0, err_msg=str(i))
        np.testing.assert_allclose(table[i], sp.compute_profile(x), rtol=1e-10, atol=0, err_msg=str(i))
    # silence is at the floor, the AM tone has its 6 Hz line
    np.testing.assert_allclose(table[4, sp.ENVELOPE_SLICE], ind.RATIO_FLOOR_DB, atol=1e-3)
    assert sp.ENVELOPE_FREQS_HZ[int(np.argmax(table[3, sp.ENVELOPE_SLICE]))] == 6.0
    order = rng.permutation(np.tile(np.arange(len(windows)), 5))
    assert order.size > ind.GROUP_WINDOWS
    np.testing.assert_allclose(
        sp.profile_many([per_window[i] for i in order]), table[order], rtol=1e-10, atol=0
    )


def test_profile_many_shapes_and_mismatched_windows() -> None:
    empty = sp.profile_many([])
    assert empty.shape == (0, sp.PROFILE_SIZE) and empty.dtype == np.float32
    stats = ind.block_stats_many(noise(0.05, n=2 * ind.BLOCK_SAMPLES).reshape(2, -1))
    with pytest.raises(ValueError, match=r"block counts \[1, 2\]"):
        sp.profile_many([stats, stats[1:]])
    with pytest.raises(ValueError, match="at least one"):
        sp.profile_many([[]])
