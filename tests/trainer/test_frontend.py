"""The log-mel front end against an independent numpy reference (issue: foundation)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import soundfile as sf
import torch

from trainer.frontend import HOP, N_FFT, LogMel, mel_filterbank

EPS = 2.220446049250313e-16
WINDOW = 160000


def reference_logmel(audio: np.ndarray, fb: np.ndarray) -> np.ndarray:
    """Float64 numpy: zero padding of n_fft/2 each side, periodic Hann, rfft, power, mel, dB."""
    padded = np.pad(audio.astype(np.float64), (N_FFT // 2, N_FFT // 2))
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(N_FFT) / N_FFT)
    frames = 1 + (padded.size - N_FFT) // HOP
    idx = np.arange(N_FFT)[None, :] + HOP * np.arange(frames)[:, None]
    power = np.abs(np.fft.rfft(padded[idx] * window, axis=1)) ** 2  # (T, 1025)
    mel = fb.astype(np.float64) @ power.T  # (128, T)
    return 10.0 * np.log10(mel + EPS)


@pytest.fixture(scope="module")
def librosa_fb() -> np.ndarray:
    librosa = pytest.importorskip("librosa")
    return librosa.filters.mel(sr=16000, n_fft=2048, n_mels=128, htk=False, norm="slaney")


def fit(x: np.ndarray) -> np.ndarray:
    return np.pad(x, (0, max(0, WINDOW - x.size)))[:WINDOW].astype(np.float32)


def synthetic_clips() -> dict[str, np.ndarray]:
    """Tones and noise. The chirp carries a -60 dBFS noise floor: a noiseless sweep spans about
    140 dB between its peak band and its far bands, past what any float32 DFT resolves (about
    110 dB; the conv lowering needs about 100 dB), whereas every real microphone has a floor."""
    t = np.arange(WINDOW) / 16000
    rng = np.random.default_rng(0)
    return {
        "sine_1k_fullscale": np.sin(2 * np.pi * 1000 * t),
        "sine_440_quiet": 0.01 * np.sin(2 * np.pi * 440 * t),
        "chirp": 0.5 * np.sin(2 * np.pi * (50 * t + 350 * t**2)) + 1e-3 * rng.standard_normal(WINDOW),
        "noise_rms_0.1": 0.1 * rng.standard_normal(WINDOW),
        "tones_plus_noise": 0.3 * np.sin(2 * np.pi * 3000 * t) + 0.02 * rng.standard_normal(WINDOW),
    }


def test_filterbank_equals_librosa(librosa_fb: np.ndarray) -> None:
    ours = mel_filterbank()
    assert ours.shape == (1025, 128)
    np.testing.assert_allclose(ours.T, librosa_fb, atol=1e-6, rtol=0)


def max_error_db(ours: np.ndarray, ref: np.ndarray) -> float:
    mask = ref > -100.0
    assert mask.any()
    return float(np.abs(ours[mask] - ref[mask]).max())


@pytest.mark.parametrize("lowering", ["conv", "stft"])
def test_synthetic_tones_match_reference(lowering: str, librosa_fb: np.ndarray) -> None:
    front = LogMel(lowering)
    for name, clip in synthetic_clips().items():
        audio = fit(clip)
        ours = front(torch.from_numpy(audio)[None])[0].numpy()
        assert ours.shape == (128, 313)
        err = max_error_db(ours, reference_logmel(audio, librosa_fb))
        assert err <= 0.01, f"{name}: {err:.5f} dB"


@pytest.mark.parametrize("lowering", ["conv", "stft"])
def test_real_dcase_clips_match_reference(lowering: str, shared_data, librosa_fb: np.ndarray) -> None:
    wavs = sorted(shared_data.rglob("*.wav"))
    assert len(wavs) >= 20
    front = LogMel(lowering)
    worst = 0.0
    for path in wavs:
        data, sr = sf.read(path, dtype="float32", always_2d=True)
        assert sr == 16000
        audio = fit(data[:, 0])
        ours = front(torch.from_numpy(audio)[None])[0].numpy()
        err = max_error_db(ours, reference_logmel(audio, librosa_fb))
        worst = max(worst, err)
        assert err <= 0.01, f"{path.name}: {err:.5f} dB"
    print(f"front end ({lowering}) vs numpy reference on {len(wavs)} real clips: max |diff| {worst:.5f} dB")


def test_lowerings_equal_on_a_batch() -> None:
    batch = torch.from_numpy(np.stack([fit(c) for c in synthetic_clips().values()]))
    conv = LogMel("conv")(batch)
    stft = LogMel("stft")(batch)
    mask = conv > -100
    assert (conv[mask] - stft[mask]).abs().max().item() <= 0.01


def test_full_scale_sine_is_finite_in_float16() -> None:
    t = torch.arange(WINDOW) / 16000
    audio = torch.sin(2 * math.pi * 1000 * t)[None]
    front = LogMel("conv").half()
    out = front(audio.half())
    assert out.dtype == torch.float16
    assert torch.isfinite(out).all()
    # The scaled power itself stays inside float16's range (max 65504).
    power = front.power(audio.half())
    assert torch.isfinite(power).all() and power.max().item() < 65504


def test_unknown_lowering_is_rejected() -> None:
    front = LogMel("conv")
    front.lowering = "fft"  # type: ignore[assignment]
    with pytest.raises(ValueError, match="lowering"):
        front(torch.zeros(1, WINDOW))
