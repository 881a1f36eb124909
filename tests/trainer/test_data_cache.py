"""trainer.data.cache: the int16 memmap of decoded clips, its key, reuse and bad files."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest

from edge_asd.core import audio_io
from edge_asd.core.audio_io import AudioFileError, read_audio, write_wav
from edge_asd.core.constants import WINDOW_SAMPLES
from trainer.data import cache as cache_mod
from trainer.data.cache import build_cache, load_audio_cache


def _tone(freq: float, seconds: float = 10.5) -> np.ndarray:
    t = np.arange(int(16000 * seconds)) / 16000
    return (0.4 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


@pytest.fixture
def wavs(tmp_path):
    paths = []
    for i, freq in enumerate((300.0, 700.0, 1100.0)):
        paths.append(write_wav(tmp_path / "clips" / f"c{i}.wav", _tone(freq, 10.5 if i else 4.0)))
    return paths


def test_cache_holds_the_decoded_clips_in_given_order(tmp_path, wavs):
    progress: list[tuple[int, int]] = []
    order = [wavs[2], wavs[0], wavs[1]]
    cache = build_cache(order, tmp_path / "cache", progress=lambda d, t: progress.append((d, t)))
    assert not cache.reused and progress[-1] == (3, 3)
    assert cache.array.shape == (3, WINDOW_SAMPLES) and cache.array.dtype == np.int16
    assert len(cache) == 3 and cache.ok.all() and not cache.bad
    for i, path in enumerate(order):
        expected = audio_io.fit_length(read_audio(path))
        assert np.allclose(cache.audio[i] / 32768.0, expected, atol=1 / 32768)
        assert np.allclose(cache.clip_audio(path), expected, atol=1 / 32768)
    short = cache.clip_audio(wavs[0])  # 4 s clip: zero-padded to 10 s
    assert not short[4 * 16000 + 10 :].any() and short[: 4 * 16000].any()


def test_second_build_reuses_without_decoding(tmp_path, wavs, monkeypatch):
    first = build_cache(wavs, tmp_path / "cache")
    calls = []
    monkeypatch.setattr(cache_mod, "read_audio", lambda p: calls.append(p))
    again = build_cache(list(reversed(wavs)), tmp_path / "cache")
    assert again.reused and not calls
    assert again.npy_path == first.npy_path
    assert np.array_equal(again.audio[0], first.audio[2])


def test_a_changed_file_rebuilds(tmp_path, wavs):
    first = build_cache(wavs, tmp_path / "cache")
    write_wav(wavs[1], _tone(2000.0))
    st = os.stat(wavs[1])
    os.utime(wavs[1], ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    second = build_cache(wavs, tmp_path / "cache")
    assert not second.reused and second.npy_path != first.npy_path
    assert np.allclose(second.clip_audio(wavs[1]), audio_io.fit_length(read_audio(wavs[1])), atol=1 / 32768)
    # the key also depends on the length
    assert cache_mod.cache_key(wavs, 1000) != cache_mod.cache_key(wavs)


def test_corrupt_file_stops_with_its_path(tmp_path, wavs):
    bad = tmp_path / "clips" / "broken.wav"
    bad.write_bytes(np.random.default_rng(1).integers(0, 256, 3000, dtype=np.uint8).tobytes())
    with pytest.raises(AudioFileError, match="broken.wav"):
        build_cache([*wavs, bad], tmp_path / "cache")
    assert not list((tmp_path / "cache").glob("*")), "an aborted build leaves nothing behind"


def test_skip_bad_lists_the_bad_file(tmp_path, wavs):
    bad = tmp_path / "clips" / "broken.wav"
    bad.write_bytes(b"RIFF....not really a wav")
    cache = build_cache([wavs[0], bad, wavs[1]], tmp_path / "cache", skip_bad=True)
    assert [p for p, _ in cache.bad] == [bad.resolve()]
    assert "broken.wav" in cache.bad[0][1]
    assert cache.ok.tolist() == [True, False, True]
    assert cache.good_paths == [wavs[0], wavs[1]]
    assert not cache.audio[1].any()
    again = build_cache([wavs[0], bad, wavs[1]], tmp_path / "cache", skip_bad=True)
    assert again.reused and [p for p, _ in again.bad] == [bad.resolve()]
    with pytest.raises(AudioFileError, match="broken.wav"):
        build_cache([wavs[0], bad, wavs[1]], tmp_path / "cache")


def test_interrupted_build_is_not_reused(tmp_path, wavs, monkeypatch):
    real = cache_mod.read_audio
    seen = []

    def flaky(path):
        seen.append(path)
        if len(seen) == 2:
            raise KeyboardInterrupt
        return real(path)

    monkeypatch.setattr(cache_mod, "read_audio", flaky)
    with pytest.raises(KeyboardInterrupt):
        build_cache(wavs, tmp_path / "cache")
    monkeypatch.setattr(cache_mod, "read_audio", real)
    assert not list((tmp_path / "cache").glob("*"))
    cache = build_cache(wavs, tmp_path / "cache")
    assert not cache.reused and cache.ok.all()


def test_load_audio_cache_default_folder_and_pickling(tmp_path, wavs, monkeypatch):
    monkeypatch.setenv("EDGE_ASD_CACHE", str(tmp_path / "envcache"))
    cache = load_audio_cache(wavs)
    assert cache.npy_path.parent == tmp_path / "envcache"
    _ = cache.audio[0]  # open the memmap
    clone = pickle.loads(pickle.dumps(cache))
    assert clone._array is None and len(pickle.dumps(cache)) < 100_000
    assert np.array_equal(clone.audio[2], cache.audio[2])


def test_torch_dataset_over_the_cache(tmp_path, wavs):
    torch = pytest.importorskip("torch")
    from trainer.data.dataset import WaveDataset

    cache = build_cache(wavs, tmp_path / "cache")
    labels = [7, 5] + [0] * (len(wavs) - 2)  # label of each cache row (= each of ``wavs``)
    ds = WaveDataset(cache.audio, labels, rows=[1, 0])
    assert len(ds) == 2
    audio, label = ds[0]
    assert isinstance(audio, torch.Tensor) and audio.dtype == torch.float32 and audio.shape == (WINDOW_SAMPLES,)
    assert label == 5
    assert np.allclose(audio.numpy(), cache.clip_audio(wavs[1]))
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=2)))
    assert batch[0].shape == (2, WINDOW_SAMPLES) and batch[1].tolist() == [5, 7]
