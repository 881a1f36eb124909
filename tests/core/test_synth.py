"""edge_asd.core.synth: deterministic, distinct machine IDs, visible anomalies, seamless streams."""

from __future__ import annotations

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
