"""The ``spectrum`` and ``envelope`` components on synthetic spectral profiles: what each catches,
the nearest-baseline search, cross-fitting, feedback exemplars, and save/load."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edge_asd.core import spectra as sp
from edge_asd.core.constants import SAMPLE_RATE
from edge_asd.core.errors import UserError
from edge_asd.core.indicators import INDICATORS
from edge_asd.core.site import WindowRef, WindowSet, fit_enrolment, load_enrolment
from edge_asd.core.site.components import (
    ENVELOPE,
    SPECTRUM,
    SpectrumBank,
    fit_envelope_model,
    outside_band,
    top_mean,
)
from edge_asd.core.site.enrolment import ENROLMENT_JSON
from edge_asd.core.site.holdout import cross_fit_plan

pytestmark = pytest.mark.device

K = len(INDICATORS)
SPEEDS = (1.0, 0.93, 1.07)
"""Three operating modes: the harmonics and the modulation rate follow the speed (the lines
the tests add lie between every mode's harmonics: bins 25, 43 and 59)."""
F0_BIN = 17  # shaft harmonic spacing in power-part bins (about 133 Hz)
LOBE_DB = np.array([-6.0, -1.9, 0.0, -1.9, -6.0])  # a Hann line over +/- 2 bins


def _line(power: np.ndarray, centre: float, level_db: float) -> None:
    b = int(round(centre))
    for offset, rel in zip(range(-2, 3), LOBE_DB):
        if 0 <= b + offset < power.size:
            power[b + offset] = max(power[b + offset], level_db + rel)


def _profiles(n: int, seed: int, *, tone_bin: int | None = None, am_hz: float = 6.0) -> np.ndarray:
    """Profiles of a machine with harmonics and one modulation line, in three speed modes."""
    rng = np.random.default_rng(seed)
    out = np.empty((n, sp.PROFILE_SIZE), np.float32)
    for i in range(n):
        speed = SPEEDS[i % 3] * rng.uniform(0.998, 1.002)
        power = np.full(sp.N_POWER, -60.0)
        for k in range(1, 25):
            _line(power, k * F0_BIN * speed, -25.0 - k)
        if tone_bin is not None:
            _line(power, tone_bin, -45.0)  # a new line 15 dB over the floor, between harmonics
        power += rng.normal(0.0, 0.35, sp.N_POWER)
        env = np.full(sp.N_ENVELOPE, -40.0) + rng.normal(0.0, 1.4, sp.N_ENVELOPE)
        rate = am_hz * speed
        env[int(round(rate)) - 1] = -20.0 + rng.normal(0.0, 0.3)
        out[i, sp.POWER_SLICE] = power
        out[i, sp.ENVELOPE_SLICE] = env
    return out


def _indicators(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(0.0, 0.3, (n, K)) + np.linspace(-30, 10, K)


def _clips(n: int) -> list[WindowRef]:
    return [WindowRef(f"clip-{i:03d}", 0) for i in range(n)]


@pytest.fixture(scope="module")
def enrolment():
    return fit_enrolment(_indicators(90, 0), None, None, _clips(90), profiles=_profiles(90, 0))


def test_components_need_and_use_profiles(enrolment) -> None:
    assert enrolment.components == ("indicators", "spectrum", "envelope")
    with pytest.raises(ValueError, match="profiles"):
        enrolment.score(_indicators(2, 1))
    normal = enrolment.score(_indicators(30, 1), profiles=_profiles(30, 1))
    assert set(normal.components) == set(enrolment.components)
    assert not normal.anomalous.any()
    # an enrolment without profiles ignores them (old callers keep working)
    plain = fit_enrolment(_indicators(90, 0), None, None, _clips(90))
    assert plain.components == ("indicators",)
    assert set(plain.score(_indicators(2, 1), profiles=_profiles(2, 1)).components) == set(plain.components)


def test_a_new_line_between_harmonics_drives_the_spectrum_component(enrolment) -> None:
    tone = enrolment.score(_indicators(12, 2), profiles=_profiles(12, 2, tone_bin=43))
    assert tone.anomalous.all()
    assert all(tone.row(i).driver == SPECTRUM for i in range(len(tone)))


def test_a_modulation_rate_change_drives_the_envelope_component(enrolment) -> None:
    moved = enrolment.score(_indicators(12, 3), profiles=_profiles(12, 3, am_hz=11.0))  # same band (4-16 Hz)
    assert moved.anomalous.all()
    assert all(moved.row(i).driver == ENVELOPE for i in range(len(moved)))


def test_outside_band_forgives_a_line_within_its_main_lobe() -> None:
    ref = np.full((1, 1, 60), -60.0, np.float32)
    _line(ref[0, 0], 30, -20.0)
    same = np.full((1, 60), -60.0, np.float32)
    _line(same[0], 31, -20.0)  # drifted by one bin
    assert outside_band(same, ref).max() == pytest.approx(0.0)
    moved = np.full((1, 60), -60.0, np.float32)
    _line(moved[0], 36, -20.0)  # six bins away: another line
    assert outside_band(moved, ref).max() == pytest.approx(40.0)
    np.testing.assert_allclose(outside_band(moved, ref, tolerance=0)[0, 0], np.abs(moved[0] - ref[0, 0]))


@pytest.mark.parametrize("vectorised_sort", [True, False])
def test_top_mean_is_the_mean_of_the_largest_values(vectorised_sort: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """``spectrum``'s deviations are mostly exact zeros: the top-k mean must be exact there, with
    ties, with fewer non-zero values than k, and with k larger than the row, on both paths
    (numpy 2's sort, numpy 1's partition)."""
    from edge_asd.core.site import components

    monkeypatch.setattr(components, "_VECTORISED_SORT", vectorised_sort)
    rng = np.random.default_rng(4)
    v = np.maximum(rng.standard_normal((3, 16, 1022)).astype(np.float32) - 0.7, 0.0)
    v[0, 0] = 0.0  # a reference the window lies inside of everywhere
    v[0, 1] = 0.0
    v[0, 1, [5, 9]] = [2.0, 3.0]  # two values out of the band, k = 5
    v[1, 2] = 0.0
    v[1, 2, :8] = 1.5  # ties at the top
    expected = np.sort(v.astype(np.float64), axis=-1)[..., -5:].mean(axis=-1)
    got = top_mean(v, 5)
    assert got.shape == (3, 16)
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    assert got[0, 0] == 0.0 and got[0, 1] == pytest.approx(1.0) and got[1, 2] == pytest.approx(1.5)
    np.testing.assert_allclose(top_mean(v[:, :, :3], 5), v[:, :, :3].astype(np.float64).mean(axis=-1), rtol=1e-6)


def test_nearest_baseline_search() -> None:
    bank_profiles = _profiles(120, 4)[:, sp.POWER_SLICE]
    bank = SpectrumBank(bank_profiles)
    assert np.all(bank.nearest(bank_profiles[:5]) == 0.0)  # a reference is its own baseline
    queries = _profiles(40, 5)[:, sp.POWER_SLICE]
    fast = bank.nearest(queries)
    exhaustive = bank.nearest(queries, candidates=len(bank))
    assert np.all(fast >= exhaustive - 1e-6)
    assert np.max(fast - exhaustive) < 0.2  # the pre-selection loses little
    # The bank keeps each reference's tolerance band, made once: the distance to every
    # reference computed here from the raw spectra, band by band, is the same.
    direct = top_mean(outside_band(queries, np.broadcast_to(bank_profiles, (len(queries), *bank_profiles.shape))), 5)
    np.testing.assert_array_equal(exhaustive, direct.min(axis=1))
    assert np.all(np.isinf(SpectrumBank(np.zeros((0, sp.N_POWER), np.float32)).nearest(queries[:2])))
    with pytest.raises(ValueError, match="bins"):
        bank.nearest(queries[:, :10])


def test_profile_components_are_cross_fitted_on_the_holdout_plan(enrolment) -> None:
    profiles = enrolment.data.profiles
    assert profiles is not None
    for held, ref_idx in cross_fit_plan(enrolment.refs):
        expected = SpectrumBank(profiles[ref_idx][:, sp.POWER_SLICE]).nearest(profiles[held][:, sp.POWER_SLICE])
        np.testing.assert_allclose(enrolment.oof[SPECTRUM][held], expected)
        env = fit_envelope_model(profiles[ref_idx][:, sp.ENVELOPE_SLICE])
        np.testing.assert_allclose(enrolment.oof[ENVELOPE][held], env.score(profiles[held][:, sp.ENVELOPE_SLICE]))
    assert np.all(enrolment.oof[SPECTRUM] > 0.0)  # no window is its own reference


def test_feedback_exemplars_silence_the_same_sound(enrolment) -> None:
    tone_bin = 59
    sound = _profiles(6, 6, tone_bin=tone_bin, am_hz=11.0)  # a harmless new line and belt rate
    ind = _indicators(6, 6)
    assert enrolment.score(ind, profiles=sound).anomalous.all()
    with pytest.raises(ValueError, match="profiles"):
        enrolment.add_normal(ind[:3])
    updated = enrolment.add_normal(ind[:3], profiles=sound[:3])
    assert len(updated.exemplars) == 3 and updated.exemplars.profiles is not None
    after = updated.score(ind[3:], profiles=sound[3:])
    assert not after.anomalous.any(), after.fused
    assert np.all(updated.oof[SPECTRUM] <= enrolment.oof[SPECTRUM] + 1e-6)
    # another fault still alerts
    other = updated.score(_indicators(3, 7), profiles=_profiles(3, 7, tone_bin=25))
    assert other.anomalous.all()


def test_save_load_with_profiles(tmp_path: Path, enrolment) -> None:
    en = enrolment.add_normal(_indicators(2, 8), profiles=_profiles(2, 8, am_hz=11.0))
    en.save(tmp_path / "e")
    back = load_enrolment(tmp_path / "e")
    assert back.components == en.components
    ind, prof = _indicators(6, 9), _profiles(6, 9, tone_bin=43)
    a, b = en.score(ind, profiles=prof), back.score(ind, profiles=prof)
    np.testing.assert_allclose(a.fused, b.fused)
    for name in a.components:
        np.testing.assert_allclose(a.components[name].raw, b.components[name].raw, rtol=1e-6)
    doc = json.loads((tmp_path / "e" / ENROLMENT_JSON).read_text())
    assert doc["version"] == 2 and doc["profile_size"] == sp.PROFILE_SIZE
    # a version-1 enrolment (before spectral profiles) asks to re-enrol
    doc["version"] = 1
    (tmp_path / "e" / ENROLMENT_JSON).write_text(json.dumps(doc))
    with pytest.raises(UserError, match="re-enrol"):  # EnrolmentError (another test reloads its module)
        load_enrolment(tmp_path / "e")
    # profiles of another size (another edge-asd) too
    doc["version"] = 2
    doc["profile_size"] = sp.PROFILE_SIZE + 1
    (tmp_path / "e" / ENROLMENT_JSON).write_text(json.dumps(doc))
    with pytest.raises(UserError, match="re-enrol"):  # EnrolmentError (another test reloads its module)
        load_enrolment(tmp_path / "e")


def test_window_set_checks_profiles() -> None:
    with pytest.raises(ValueError, match="profiles"):
        WindowSet(_indicators(3, 0), profiles=np.zeros((3, 10)))
    with pytest.raises(ValueError, match="finite"):
        WindowSet(_indicators(1, 0), profiles=np.full((1, sp.PROFILE_SIZE), np.nan))
    with_profiles = WindowSet(_indicators(2, 0), profiles=_profiles(2, 0))
    with pytest.raises(ValueError, match="profiles"):
        with_profiles.append(WindowSet(_indicators(1, 1)))
    assert len(with_profiles.append(WindowSet(_indicators(1, 1), profiles=_profiles(1, 1)))) == 3


def test_continuous_recording_refs_are_accepted() -> None:
    """Windows on a 1 s hop of one recording: the guard band keeps a window's neighbours out of
    its references, so an out-of-fold spectrum score is never a window's distance to itself."""
    n = 200
    refs = [WindowRef("rec", i * SAMPLE_RATE) for i in range(n)]
    profiles = _profiles(n, 10)
    en = fit_enrolment(_indicators(n, 10), None, None, refs, profiles=profiles)
    assert en.components[1:] == (SPECTRUM, ENVELOPE)
    assert np.all(en.oof[SPECTRUM] > 0.0)
