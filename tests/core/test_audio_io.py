"""edge_asd.core.audio_io: loading any sound file as 16 kHz mono float32, and the errors users see."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import soundfile as sf

from edge_asd.core.audio_io import (
    SAMPLE_RATE,
    WINDOW_SAMPLES,
    AudioFileError,
    fit_length,
    read_audio,
    resample,
    write_wav,
)
from edge_asd.core.errors import UserError

pytestmark = pytest.mark.device


def _peak_hz(x: np.ndarray, sr: int) -> float:
    seg = x[len(x) // 4 : 3 * len(x) // 4]
    spec = np.abs(np.fft.rfft(seg * np.hanning(len(seg))))
    k = int(np.argmax(spec))
    # parabolic interpolation of the peak for sub-bin accuracy
    a, b, c = np.log(spec[k - 1 : k + 2] + 1e-12)
    return (k + 0.5 * (a - c) / (a - 2 * b + c)) * sr / len(seg)


def _amplitude(x: np.ndarray) -> float:
    seg = x[len(x) // 4 : 3 * len(x) // 4].astype(np.float64)
    return float(np.sqrt(2 * np.mean(seg**2)))


@pytest.mark.parametrize("sr", [48000, 44100])
def test_read_audio_resamples_tone_to_16k(tmp_path, sr, no_torch_guard):
    t = np.arange(int(sr * 2.0)) / sr
    tone = 0.5 * np.sin(2 * np.pi * 1234.5 * t)
    path = tmp_path / f"tone_{sr}.wav"
    sf.write(path, tone.astype(np.float32), sr, subtype="FLOAT")
    x = read_audio(path)
    assert x.dtype == np.float32 and x.ndim == 1
    assert abs(len(x) - 2 * SAMPLE_RATE) <= 1
    assert _peak_hz(x, SAMPLE_RATE) == pytest.approx(1234.5, abs=0.5)
    assert _amplitude(x) == pytest.approx(0.5, rel=0.01)


def test_resample_removes_components_above_the_new_nyquist():
    sr = 48000
    t = np.arange(sr) / sr
    x = (0.5 * np.sin(2 * np.pi * 11000 * t)).astype(np.float32)  # would alias to 5 kHz
    y = resample(x, sr, SAMPLE_RATE)
    assert _amplitude(y) < 0.5 * 10 ** (-60 / 20)


def test_resample_upsamples_and_keeps_dc():
    x = np.full(8000, 0.25, dtype=np.float32)
    y = resample(x, 8000, SAMPLE_RATE)
    assert len(y) == 16000
    assert np.allclose(y[200:-200], 0.25, atol=1e-4)


def test_stereo_file_uses_channel_0_with_warning(tmp_path, caplog):
    sr = SAMPLE_RATE
    t = np.arange(sr) / sr
    left = 0.3 * np.sin(2 * np.pi * 440 * t)
    right = 0.3 * np.sin(2 * np.pi * 3000 * t)
    path = tmp_path / "stereo.wav"
    sf.write(path, np.stack([left, right], axis=1), sr, subtype="PCM_16")
    with caplog.at_level(logging.WARNING, logger="edge_asd.core.audio_io"):
        x = read_audio(path)
    assert _peak_hz(x, sr) == pytest.approx(440, abs=1)
    assert any("channel 0" in r.getMessage() and "stereo.wav" in r.getMessage() for r in caplog.records)


def test_corrupt_wav_names_the_path(tmp_path):
    path = tmp_path / "broken.wav"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8).tobytes())
    with pytest.raises(AudioFileError) as err:
        read_audio(path)
    assert str(path) in str(err.value)
    assert isinstance(err.value, UserError)


def test_empty_and_missing_files_are_user_errors(tmp_path):
    empty = tmp_path / "empty.wav"
    sf.write(empty, np.zeros(0, dtype=np.float32), SAMPLE_RATE, subtype="PCM_16")
    with pytest.raises(AudioFileError, match="no samples"):
        read_audio(empty)
    zero_bytes = tmp_path / "zero.wav"
    zero_bytes.write_bytes(b"")
    with pytest.raises(AudioFileError, match="zero.wav"):
        read_audio(zero_bytes)
    with pytest.raises(AudioFileError, match="does not exist"):
        read_audio(tmp_path / "missing.wav")


def test_truncated_wav_is_refused_not_read_short(tmp_path):
    """A copy interrupted half-way is not a shorter recording: refused, naming the file."""
    whole = tmp_path / "whole.wav"
    sf.write(whole, np.full(16000, 0.1, dtype=np.float32), SAMPLE_RATE, subtype="PCM_16")
    cut = tmp_path / "cut.wav"
    cut.write_bytes(whole.read_bytes()[:-10000])
    assert read_audio(whole).size == 16000
    with pytest.raises(AudioFileError, match=r"cut\.wav is truncated"):
        read_audio(cut)


def test_nan_content_is_rejected(tmp_path):
    x = np.zeros(1000, dtype=np.float32)
    x[10] = np.nan
    path = tmp_path / "nan.wav"
    sf.write(path, x, SAMPLE_RATE, subtype="FLOAT")
    with pytest.raises(AudioFileError, match="NaN"):
        read_audio(path)


def test_fit_length_crops_and_pads():
    x = np.arange(10, dtype=np.float32)
    assert np.array_equal(fit_length(x, 4), x[:4])
    padded = fit_length(x, 15)
    assert padded.shape == (15,) and np.array_equal(padded[:10], x) and not padded[10:].any()
    assert fit_length(np.zeros(200000, np.float32)).shape == (WINDOW_SAMPLES,)


def test_write_wav_is_int16_and_clips(tmp_path):
    x = np.array([0.0, 0.5, -0.5, 2.0, -2.0], dtype=np.float32)
    path = write_wav(tmp_path / "sub" / "out.wav", x)
    info = sf.info(path)
    assert info.subtype == "PCM_16" and info.samplerate == SAMPLE_RATE and info.channels == 1
    y = read_audio(path)
    assert np.allclose(y, [0.0, 0.5, -0.5, 1.0, -1.0], atol=1e-4)
