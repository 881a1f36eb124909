"""edge_asd.core.synth: deterministic, distinct machine IDs, visible anomalies, seamless streams."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf

from edge_asd.core import synth
from edge_asd.core.constants import SAMPLE_RATE, WINDOW_SAMPLES

pytestmark = pytest.mark.device


def _logspec(x: np.ndarray, n_fft: int = 1024, hop: int = 512) -> np.ndarray:
    """(frames, 64 bands) log power: a coarse numpy stand-in for the model's log-mel."""
    frames = np.lib.stride_tricks.sliding_window_view(x, n_fft)[::hop] * np.hanning(n_fft)
    power = np.abs(np.fft.rfft(frames, axis=1)) ** 2
    edges = np.unique(np.geomspace(2, n_fft // 2, 65).astype(int))
    bands = np.add.reduceat(power, edges[:-1], axis=1)
    return 10 * np.log10(bands + 1e-10)


def _profile(x: np.ndarray) -> np.ndarray:
    """Mean and spread over time of each band: what a clip 'sounds like' on average."""
    s = _logspec(x)
    return np.concatenate([s.mean(axis=0), s.std(axis=0)])


def test_same_seed_same_audio_other_seed_other_audio(no_torch_guard):
    a = synth.render_clip("fan", 0, seed=3)
    b = synth.render_clip("fan", 0, seed=3)
    c = synth.render_clip("fan", 0, seed=4)
    assert a.dtype == np.float32 and a.shape == (WINDOW_SAMPLES,)
    assert np.array_equal(a, b)
    assert not np.allclose(a, c)
    assert np.abs(a).max() <= 1.0 and 0.01 < np.sqrt(np.mean(a**2)) < 0.3


@pytest.mark.parametrize("machine_type", synth.MACHINE_TYPES)
def test_ids_of_a_type_are_distinguishable(machine_type):
    """Clips of one ID are closer to each other than to any clip of another ID of the type."""
    ids = synth.DEFAULT_IDS[machine_type][:3]
    profiles = {i: [_profile(synth.render_clip(machine_type, i, seed)) for seed in range(3)] for i in ids}
    for i in ids:
        own = max(np.linalg.norm(p - q) for p in profiles[i] for q in profiles[i])
        other = min(np.linalg.norm(p - q) for j in ids if j != i for p in profiles[i] for q in profiles[j])
        assert other > 1.2 * own, (machine_type, i, own, other)


@pytest.mark.parametrize("machine_type", ["fan", "valve", "ToyCar"])
def test_every_anomaly_kind_moves_the_clip_away_from_its_id(machine_type):
    mid = synth.DEFAULT_IDS[machine_type][0]
    normals = [_profile(synth.render_clip(machine_type, mid, seed)) for seed in range(6)]
    centre = np.mean(normals, axis=0)
    spread = max(np.linalg.norm(p - centre) for p in normals)
    ratios = {}
    for kind in synth.ANOMALY_KINDS:
        x = synth.render_clip(machine_type, mid, seed=100, anomaly=kind)
        ratios[kind] = np.linalg.norm(_profile(x) - centre) / spread
    # This coarse profile ignores timing, so a few kinds only just leave the normal cloud;
    # most leave it far behind.
    assert min(ratios.values()) > 1.15, ratios
    assert np.median(list(ratios.values())) > 2.0, ratios


def test_subtle_anomalies_are_smaller_than_strong_ones():
    centre = np.mean([_profile(synth.render_clip("pump", 0, s)) for s in range(4)], axis=0)
    strong = np.linalg.norm(_profile(synth.render_clip("pump", 0, 9, anomaly="bearing", severity=1.2)) - centre)
    subtle = np.linalg.norm(_profile(synth.render_clip("pump", 0, 9, anomaly="bearing", severity=0.35)) - centre)
    assert subtle < strong


@pytest.mark.parametrize(
    ("machine_type", "kind"),
    [("valve", "rattle"), ("ToyConveyor", "impact_missing"), ("slider", "impact_extra"), ("fan", "drift")],
)
def test_stream_is_independent_of_block_sizes(machine_type, kind):
    one = synth.MachineSoundStream(machine_type, 2, seed=5)
    one.schedule_anomaly(kind, 1.3, 1.5)
    whole = one.read(4 * SAMPLE_RATE)
    blocks = synth.MachineSoundStream(machine_type, 2, seed=5)
    blocks.schedule_anomaly(kind, 1.3, 1.5)
    sizes = [1000, 777, 16000, 5, *([1024] * 60)]
    pieces = np.concatenate([blocks.read(n) for n in sizes])[: len(whole)]
    assert np.allclose(whole[: len(pieces)], pieces, atol=1e-4)


def test_clip_is_the_start_of_the_stream():
    clip = synth.render_clip("slider", 0, seed=11, seconds=3.0)
    stream = synth.MachineSoundStream("slider", 0, seed=11)
    assert np.allclose(clip, np.concatenate([stream.read(SAMPLE_RATE) for _ in range(3)]), atol=1e-4)


@pytest.mark.parametrize("kind", ["rattle", "bearing"])
def test_stream_recording_has_anomaly_only_in_its_span(kind):
    audio, span = synth.make_stream_recording(
        "ToyCar", 1, seconds=30.0, anomaly_at_s=12.0, anomaly_seconds=6.0, anomaly_kind=kind, seed=2
    )
    assert audio.shape == (30 * SAMPLE_RATE,) and span == (12.0, 18.0)
    normal, _ = synth.make_stream_recording("ToyCar", 1, 30.0, None, seed=2)
    before = slice(0, 12 * SAMPLE_RATE)
    inside = slice(13 * SAMPLE_RATE, 17 * SAMPLE_RATE)
    after = slice(19 * SAMPLE_RATE, None)
    assert np.allclose(audio[before], normal[before], atol=1e-4)
    assert not np.allclose(audio[inside], normal[inside], atol=1e-3)
    # afterwards the machine sounds as before (the fault's slowdown leaves its phase shifted)
    ref = _profile(normal[after])
    assert np.linalg.norm(_profile(audio[after]) - ref) < np.linalg.norm(_profile(audio[inside]) - _profile(normal[inside]))


def test_stream_recording_has_no_seams_at_clip_boundaries():
    """Sample-to-sample jumps at the 10 s boundaries look like any other sample's."""
    audio, _ = synth.make_stream_recording("fan", 0, seconds=30.0, anomaly_at_s=None, seed=4)
    d = np.abs(np.diff(audio.astype(np.float64)))
    typical = np.quantile(d, 0.999)
    for boundary in (10 * SAMPLE_RATE, 20 * SAMPLE_RATE):
        assert d[boundary - 3 : boundary + 3].max() <= typical


def test_normal_parts_of_the_stream_sound_like_training_clips():
    train = [_profile(synth.render_clip("pump", 2, seed)) for seed in range(4)]
    centre = np.mean(train, axis=0)
    spread = max(np.linalg.norm(p - centre) for p in train)
    audio, _ = synth.make_stream_recording("pump", 2, seconds=40.0, anomaly_at_s=None, seed=77)
    for k in range(4):
        window = audio[k * WINDOW_SAMPLES : (k + 1) * WINDOW_SAMPLES]
        assert np.linalg.norm(_profile(window) - centre) < 1.5 * spread


def test_make_dataset_writes_the_dcase2020_tree(tmp_path):
    done: list[tuple[int, int]] = []
    summary = synth.make_dataset(
        tmp_path, types=["fan", "ToyCar"], ids=1, train_clips=2, test_clips=1, seed=1,
        progress=lambda d, t: done.append((d, t)),
    )
    assert summary["files"] == 8 and summary["train_clips"] == 4 and summary["test_anomaly"] == 2
    assert done[-1] == (8, 8)
    files = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.wav"))
    assert files == [
        "dev_data/ToyCar/test/anomaly_id_01_00000000.wav",
        "dev_data/ToyCar/test/normal_id_01_00000000.wav",
        "dev_data/ToyCar/train/normal_id_01_00000000.wav",
        "dev_data/ToyCar/train/normal_id_01_00000001.wav",
        "dev_data/fan/test/anomaly_id_00_00000000.wav",
        "dev_data/fan/test/normal_id_00_00000000.wav",
        "dev_data/fan/train/normal_id_00_00000000.wav",
        "dev_data/fan/train/normal_id_00_00000001.wav",
    ]
    info = sf.info(tmp_path / files[0])
    assert (info.samplerate, info.channels, info.subtype, info.frames) == (16000, 1, "PCM_16", WINDOW_SAMPLES)


def test_make_dataset_is_deterministic(tmp_path):
    a = synth.make_dataset(tmp_path / "a", types=1, ids=1, train_clips=1, test_clips=1, seed=7)
    b = synth.make_dataset(tmp_path / "b", types=1, ids=1, train_clips=1, test_clips=1, seed=7)
    assert a["anomaly_kinds"] == b["anomaly_kinds"]
    for path in (tmp_path / "a").rglob("*.wav"):
        other = tmp_path / "b" / path.relative_to(tmp_path / "a")
        assert path.read_bytes() == other.read_bytes()


def test_bad_requests_are_user_errors():
    with pytest.raises(synth.SynthError, match="unknown machine type"):
        synth.render_clip("drill", 0, 0)
    with pytest.raises(synth.SynthError, match="unknown anomaly kind"):
        synth.render_clip("fan", 0, 0, anomaly="explosion")
    with pytest.raises(synth.SynthError, match="ToyConveyor has 6 machine IDs"):
        synth.resolve_ids("ToyConveyor", 7)
    with pytest.raises(synth.SynthError):
        synth.resolve_types(7)


# --------------------------------------------------------------------------------------------
# Site machines (site learning): families, sets, streams
# --------------------------------------------------------------------------------------------


def _rms_db(x: np.ndarray) -> float:
    return float(10 * np.log10(np.mean(x.astype(np.float64) ** 2)))


def _crest_db(x: np.ndarray) -> float:
    x = x.astype(np.float64)
    return float(20 * np.log10(np.abs(x).max() / np.sqrt(np.mean(x**2))))


def _kurtosis(x: np.ndarray) -> float:
    x = x.astype(np.float64) - x.mean()
    return float(np.mean(x**4) / np.mean(x**2) ** 2)


def _psd(x: np.ndarray, n_fft: int = 1024) -> np.ndarray:
    """Welch power spectrum (Hann, 50 % overlap)."""
    frames = np.lib.stride_tricks.sliding_window_view(x.astype(np.float64), n_fft)[:: n_fft // 2] * np.hanning(n_fft)
    return np.mean(np.abs(np.fft.rfft(frames, axis=1)) ** 2, axis=0)


def _shape_db(x: np.ndarray) -> np.ndarray:
    """Level-normalised spectral shape in 48 log bands (dB relative to the total)."""
    p = _psd(x)
    edges = np.unique(np.geomspace(3, len(p), 49).astype(int))
    bands = np.add.reduceat(p, edges[:-1])
    return 10 * np.log10(bands / p.sum())


def _envelope_peak(x: np.ndarray) -> tuple[float, float]:
    """(frequency, relative height) of the strongest 0.5-20 Hz line of the loudness envelope."""
    env = np.sqrt(np.mean(np.lib.stride_tricks.sliding_window_view(x.astype(np.float64), 160)[::80] ** 2, axis=1))
    spec = np.abs(np.fft.rfft((env - env.mean()) * np.hanning(len(env))))
    freqs = np.fft.rfftfreq(len(env), 1 / 200.0)
    band = (freqs > 0.5) & (freqs < 20.0)
    k = int(np.argmax(spec[band]))
    return float(freqs[band][k]), float(spec[band][k] / (env.mean() * len(env)))


def _stroke_count(x: np.ndarray) -> int:
    """Strokes: 10 ms frames more than 9 dB above the median frame, counted once per 0.2 s."""
    energy = np.mean(x.astype(np.float64)[: len(x) // 160 * 160].reshape(-1, 160) ** 2, axis=1)
    loud = np.flatnonzero(10 * np.log10(energy / np.median(energy)) > 9.0)
    return int(np.sum(np.diff(loud, prepend=-100) > 20))


_SITE = {"seed": 1, "take": 5, "mode": 0}  # the site, take and operating mode the family checks use


def _site_pair(family: str, variant: str):
    """The same take of a site machine without and with the anomaly (only the anomaly differs)."""
    normal = synth.render_site_clip(family, _SITE["seed"], _SITE["take"], mode=_SITE["mode"])
    stream = synth.SiteMachineStream(family, _SITE["seed"], _SITE["take"], mode=_SITE["mode"])
    stream.schedule_anomaly(variant, 0.0, None)
    return normal, stream.read(WINDOW_SAMPLES), stream.anomalies[0]


def test_site_families_are_named_and_say_what_catches_them():
    assert synth.SITE_FAMILIES == ("impacts", "tone", "level", "modulation")
    for family in synth.SITE_FAMILIES:
        assert synth.SITE_VARIANTS[family]
        assert "Caught by" in synth.family_doc(family)
    with pytest.raises(synth.SynthError, match="unknown site family 'drill'"):
        synth.family_doc("drill")


def test_site_clip_is_deterministic_per_seed_and_take(no_torch_guard):
    a = synth.render_site_clip("tone", seed=2, take=7)
    assert a.dtype == np.float32 and a.shape == (WINDOW_SAMPLES,) and np.abs(a).max() <= 1.0
    assert np.array_equal(a, synth.render_site_clip("tone", seed=2, take=7))
    assert not np.allclose(a, synth.render_site_clip("tone", seed=2, take=8))  # another take
    assert not np.allclose(a, synth.render_site_clip("tone", seed=3, take=7))  # another site
    assert -45.0 < _rms_db(a) < -15.0


def test_site_modes_differ_in_speed_and_level():
    """A site's normal is multimodal: the modes' hum pitch and level differ, takes of a mode agree."""
    machine = synth.SiteMachineStream("level", seed=0).machine
    speeds = sorted(m.speed for m in machine.modes)
    assert speeds[0] < 0.96 and speeds[-1] > 1.04
    levels = [[_rms_db(synth.render_site_clip("level", 0, take, mode=mode)) for take in range(2)] for mode in range(3)]
    per_mode = [np.mean(v) for v in levels]
    assert max(per_mode) - min(per_mode) > 1.0
    assert max(abs(a - b) for a, b in levels) < 1.2
    # a continuous stream goes through several modes in two minutes
    stream = synth.SiteMachineStream("level", seed=0)
    assert len({stream.mode_at(s) for s in range(0, 120, 5)}) >= 2


@pytest.mark.parametrize(("family", "kind"), [("impacts", "missing"), ("tone", "tone"), ("modulation", "faster")])
def test_site_stream_is_independent_of_block_sizes(family, kind):
    def stream():
        s = synth.SiteMachineStream(family, 3, 7, mode_seconds=1.5)  # mode changes inside
        s.schedule_anomaly(kind, 1.3, 1.5)
        return s

    whole = stream().read(4 * SAMPLE_RATE)
    blocks = stream()
    pieces = np.concatenate([blocks.read(n) for n in [1000, 777, 16000, 5, *([1024] * 45)]])
    assert np.allclose(whole[: len(pieces)], pieces, atol=1e-5)


def test_site_recording_has_the_anomaly_from_its_start():
    audio, span = synth.make_site_recording("level", 30.0, 12.0, None, "louder", seed=4)
    normal, none = synth.make_site_recording("level", 30.0, None, seed=4)
    assert audio.shape == (30 * SAMPLE_RATE,) and span == (12.0, float("inf")) and none is None
    assert np.array_equal(audio[: 12 * SAMPLE_RATE], normal[: 12 * SAMPLE_RATE])
    after = slice(13 * SAMPLE_RATE, None)
    assert 3.4 < _rms_db(audio[after]) - _rms_db(normal[after]) < 5.1
    # a random variant of the family when no kind is named, and a bad kind is a user error
    stream = synth.SiteMachineStream("impacts", seed=4)
    stream.schedule_anomaly("impacts", 1.0)
    assert stream.anomalies[0]["variant"] in synth.SITE_VARIANTS["impacts"]
    with pytest.raises(synth.SynthError, match="unknown impacts anomaly 'louder'"):
        stream.schedule_anomaly("louder", 2.0)


@pytest.mark.parametrize("variant", ["louder", "quieter"])
def test_level_anomaly_changes_the_level_and_nothing_else(variant):
    normal, anomaly, info = _site_pair("level", variant)
    assert 3.5 <= abs(info["gain_db"]) <= 5.0 and (info["gain_db"] > 0) == (variant == "louder")
    assert abs(_rms_db(anomaly) - _rms_db(normal) - info["gain_db"]) < 0.02
    assert np.max(np.abs(_shape_db(anomaly) - _shape_db(normal))) < 0.01  # same shape
    assert abs(_crest_db(anomaly) - _crest_db(normal)) < 0.01


def test_tone_anomaly_is_a_narrow_peak_that_barely_moves_the_level():
    normal, anomaly, info = _site_pair("tone", "tone")
    assert 2000.0 <= info["freq_hz"] <= 5000.0
    rise = 10 * np.log10(_psd(anomaly) / _psd(normal))
    k = int(np.argmax(rise))
    # a line stands out of its surroundings, where the tone is at this mode's speed ...
    speed = synth.SiteMachineStream("tone", _SITE["seed"]).machine.modes[_SITE["mode"]].speed
    assert rise[k] > 5.0 and k * SAMPLE_RATE / 1024 == pytest.approx(info["freq_hz"] * speed, rel=0.015)
    far = np.abs(np.arange(len(rise)) - k) > 4
    assert np.max(np.abs(rise[far])) < 0.5  # ... and nothing else changes
    assert abs(_rms_db(anomaly) - _rms_db(normal)) < 0.3
    assert abs(_kurtosis(anomaly) - _kurtosis(normal)) < 0.05


def test_impact_anomalies_change_the_strokes():
    normal, weaker, info_w = _site_pair("impacts", "weaker")
    _, stronger, info_s = _site_pair("impacts", "stronger")
    _, missing, info_m = _site_pair("impacts", "missing")
    assert -8.0 <= info_w["gain_db"] <= -5.0 and 4.0 <= info_s["gain_db"] <= 7.0 and info_m["drop_prob"] >= 0.35
    assert _crest_db(weaker) < _crest_db(normal) - 2.0 and np.abs(weaker).max() < np.abs(normal).max()
    assert 20 * np.log10(np.abs(stronger).max() / np.abs(normal).max()) > 3.0
    assert _crest_db(stronger) > _crest_db(normal) + 1.0 and _kurtosis(stronger) > 1.5 * _kurtosis(normal)
    assert _stroke_count(missing) <= _stroke_count(normal) - 2  # strokes that are not there
    # the overall level moves less than the strokes do
    assert abs(_rms_db(weaker) - _rms_db(normal)) < 3.0 and abs(_rms_db(missing) - _rms_db(normal)) < 2.5


def test_modulation_anomalies_move_the_envelope_not_the_spectrum():
    normal, faster, info_f = _site_pair("modulation", "faster")
    _, slower, info_s = _site_pair("modulation", "slower")
    _, deeper, info_d = _site_pair("modulation", "deeper")
    other_take = synth.render_site_clip("modulation", _SITE["seed"], _SITE["take"] + 1, mode=_SITE["mode"])
    f_normal, h_normal = _envelope_peak(normal)
    assert abs(_envelope_peak(other_take)[0] - f_normal) < 0.3  # the normal belt rate is stable
    assert _envelope_peak(faster)[0] / f_normal == pytest.approx(info_f["rate_factor"], rel=0.06)
    assert _envelope_peak(slower)[0] / f_normal == pytest.approx(info_s["rate_factor"], rel=0.06)
    f_deep, h_deep = _envelope_peak(deeper)
    assert abs(f_deep - f_normal) < 0.2 and h_deep > 1.3 * h_normal
    # the same average spectrum and level: no more different than another take of the same mode
    take_to_take = np.max(np.abs(_shape_db(other_take) - _shape_db(normal)))
    for x in (faster, slower, deeper):
        assert np.max(np.abs(_shape_db(x) - _shape_db(normal))) < max(1.0, take_to_take)
        assert abs(_rms_db(x) - _rms_db(normal)) < 0.3


def test_make_site_set_writes_the_layout(tmp_path):
    done: list[tuple[int, int]] = []
    normal_dir, test_dir = synth.make_site_set(
        tmp_path / "a", "modulation", n_normal=2, n_test_normal=1, n_test_anomaly=3, seed=5,
        seconds=2.0, progress=lambda d, t: done.append((d, t)),
    )
    assert (normal_dir, test_dir) == (tmp_path / "a" / "normal", tmp_path / "a" / "test")
    assert sorted(p.name for p in normal_dir.iterdir()) == ["normal_id_00_00000000.wav", "normal_id_00_00000001.wav"]
    assert sorted(p.name for p in test_dir.iterdir()) == [
        "anomaly_id_00_00000000.wav", "anomaly_id_00_00000001.wav", "anomaly_id_00_00000002.wav",
        "normal_id_00_00000000.wav",
    ]
    assert done[-1] == (6, 6)
    info = sf.info(test_dir / "anomaly_id_00_00000000.wav")
    assert (info.samplerate, info.channels, info.subtype, info.frames) == (16000, 1, "PCM_16", 2 * SAMPLE_RATE)
    manifest = json.loads((tmp_path / "a" / "site.json").read_text())
    assert manifest["family"] == "modulation" and manifest["seed"] == 5
    anomalies = [c for c in manifest["clips"] if c["label"] == "anomaly"]
    assert sorted(c["variant"] for c in anomalies) == ["deeper", "faster", "slower"]  # every variant
    assert all(0.7 <= c["severity"] <= 1.3 for c in anomalies)

    # the same arguments write the same bytes; writing again over the same set is fine
    synth.make_site_set(tmp_path / "b", "modulation", n_normal=2, n_test_normal=1, n_test_anomaly=3, seed=5, seconds=2.0)
    for path in (tmp_path / "a").rglob("*.wav"):
        assert path.read_bytes() == (tmp_path / "b" / path.relative_to(tmp_path / "a")).read_bytes()
    synth.make_site_set(tmp_path / "a", "modulation", n_normal=2, n_test_normal=1, n_test_anomaly=3, seed=5, seconds=2.0)
    # but clips of a bigger earlier set would join the new one unseen
    with pytest.raises(synth.SynthError, match="already holds clips"):
        synth.make_site_set(tmp_path / "a", "modulation", n_normal=1, n_test_normal=1, n_test_anomaly=1, seconds=2.0)
    with pytest.raises(synth.SynthError, match="unknown site family"):
        synth.make_site_set(tmp_path / "c", "drill")
    with pytest.raises(synth.SynthError, match="counts must be >= 0"):
        synth.make_site_set(tmp_path / "c", "tone", n_normal=-1)


def test_synth_cli_writes_a_site_set(tmp_path):
    from typer.testing import CliRunner

    from edge_asd.cli import app

    runner = CliRunner()
    res = runner.invoke(app, ["synth", str(tmp_path / "s"), "--site", "level", "--train-clips", "1", "--test-clips", "1"])
    assert res.exit_code == 0, res.output
    assert sorted(p.relative_to(tmp_path / "s").as_posix() for p in (tmp_path / "s").rglob("*.wav")) == [
        "normal/normal_id_00_00000000.wav", "test/anomaly_id_00_00000000.wav", "test/normal_id_00_00000000.wav",
    ]
    res = runner.invoke(app, ["synth", str(tmp_path / "t"), "--site", "drill"])
    assert isinstance(res.exception, synth.SynthError) and "unknown site family" in str(res.exception)
