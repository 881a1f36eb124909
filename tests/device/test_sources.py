"""Sources (file, synthetic, device errors), the Capture glue and `edge-asd record`."""

from __future__ import annotations

import builtins
import threading
import time
import wave
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from typer.testing import CliRunner

from edge_asd.audio.capture import FAST_POLL_S, POLL_S, Capture, CaptureWorker
from edge_asd.audio.devices import (
    AudioDeviceError,
    InputDevice,
    import_sounddevice,
    resolve_device,
    stable_id,
)
from edge_asd.audio.recorder import record_clips
from edge_asd.audio.ring import CaptureRing
from edge_asd.audio.sources import AudioSource, AudioSourceError, FileSource, SyntheticSource, open_source
from edge_asd.core.errors import UserError

pytestmark = pytest.mark.device


def _wav(path: Path, seconds: float, sr: int = 16000, channels: int = 1, seed: int = 0) -> np.ndarray:
    x = (np.random.default_rng(seed).standard_normal((int(seconds * sr), channels)) * 0.1).astype(np.float32)
    sf.write(str(path), x, sr, subtype="FLOAT")
    return x


def _drain(source: AudioSource, timeout: float = 30.0) -> tuple[np.ndarray, float]:
    cap = Capture(source)
    t0 = time.monotonic()
    cap.start()
    assert cap.finished.wait(timeout)
    elapsed = time.monotonic() - t0
    cap.stop()
    audio = cap.streams[0].get(cap.streams[0].first_index, cap.streams[0].end_index - cap.streams[0].first_index)
    return audio[0], elapsed


def test_file_source_realtime_vs_fast(tmp_path: Path) -> None:
    x = _wav(tmp_path / "a.wav", 1.0)
    audio, elapsed = _drain(FileSource(tmp_path / "a.wav", realtime=True))
    assert elapsed >= 0.9  # paced: one second of audio cannot arrive sooner
    np.testing.assert_allclose(audio, x[:, 0], atol=1e-6)
    long = _wav(tmp_path / "b.wav", 8.33)  # the last read chunk is partial, and so is its last block
    audio, elapsed = _drain(FileSource(tmp_path / "b.wav", realtime=False))
    assert elapsed < 8.0  # not paced
    np.testing.assert_allclose(audio, long[:, 0], atol=1e-6)


def test_a_fast_replay_is_polled_often_and_a_paced_source_once_a_block(tmp_path: Path) -> None:
    """The worker's idle poll bounds how fast a replay that is not paced can go (a ring per
    poll), so such a source gets the short poll; a paced one (a microphone, a real-time file)
    the long one that saves the wake-ups."""
    _wav(tmp_path / "a.wav", 1.0)
    paced = Capture(FileSource(tmp_path / "a.wav", realtime=True))
    fast = Capture(FileSource(tmp_path / "a.wav", realtime=False))
    assert paced.idle_wait_s() == POLL_S > FAST_POLL_S
    assert fast.idle_wait_s() == FAST_POLL_S
    fast.source.realtime = True  # read at every wait (`enrol` sets it on a source it has made)
    assert fast.idle_wait_s() == POLL_S
    for cap in (paced, fast):
        cap.source.stop()


def test_one_worker_moves_every_capture_to_the_end_of_its_input(tmp_path: Path) -> None:
    """The daemon's inputs share one thread (``CaptureWorker``): each input still ends up whole
    in its streams (two mono files of different lengths, one 48 kHz stereo file), each
    capture says when it is finished, and no capture starts a thread of its own."""
    short, long = _wav(tmp_path / "a.wav", 1.3, seed=1), _wav(tmp_path / "b.wav", 4.7, seed=2)
    _wav(tmp_path / "c.wav", 2.0, sr=48000, channels=2, seed=3)
    caps = [Capture(FileSource(tmp_path / name, realtime=False)) for name in ("a.wav", "b.wav", "c.wav")]
    worker = CaptureWorker(caps)
    worker.start()
    try:
        assert all(c.finished.wait(30) for c in caps)
        names = {t.name for t in threading.enumerate()}
        assert not any(name.startswith("capture-") and name != "capture-worker" for name in names), names
    finally:
        worker.stop()
    assert all(c.error is None and c.started for c in caps)
    for cap, x in ((caps[0], short), (caps[1], long)):
        stream = cap.streams[0]
        audio, has_gap = stream.get(stream.first_index, stream.end_index - stream.first_index)
        assert stream.end_index == len(x) and not has_gap
        np.testing.assert_allclose(audio, x[:, 0], atol=1e-6)
    assert [s.end_index for s in caps[2].streams] == [32000, 32000]
    assert worker._thread is None  # joined


def test_a_capture_that_fails_stops_alone_and_the_others_go_on(tmp_path: Path) -> None:
    """One input's failure (here its resampler) is that capture's ``error`` (the pipeline makes
    it a fault of its streams); the worker keeps moving the other inputs' audio."""
    good, bad = _OverflowingSource(16000), _OverflowingSource(16000)
    caps = [Capture(good), Capture(bad)]
    worker = CaptureWorker(caps)
    for cap in caps:
        cap.source.start(cap.ring)  # driven without threads: ``run_once`` is one turn of the worker

    def broken(block: np.ndarray) -> np.ndarray:
        raise RuntimeError("resampler broke")

    caps[1].resampler.process = broken  # type: ignore[method-assign]
    block = np.full((1600, 1), 0.1, np.float32)
    for _ in range(3):
        for cap in caps:
            cap.ring.write(block)
        assert worker.run_once() is False  # paced sources: the worker waits its poll between turns
    assert isinstance(caps[1].error, RuntimeError) and caps[1].done
    assert caps[0].error is None and caps[0].streams[0].end_index == 3 * 1600
    assert caps[1].streams[0].end_index == 0


def test_the_worker_turns_again_at_once_only_for_a_fast_source(tmp_path: Path) -> None:
    """A paced input (a microphone) is served once per poll; a replay that is not paced gets
    the next turn at once while it delivers, so a shared worker replays as fast as one of its own."""
    paced, fast = _OverflowingSource(16000), _OverflowingSource(16000)
    fast.realtime = False  # type: ignore[attr-defined]
    caps = [Capture(paced), Capture(fast)]
    worker = CaptureWorker(caps)
    for cap in caps:
        cap.source.start(cap.ring)
    caps[0].ring.write(np.zeros((1600, 1), np.float32))
    assert worker.run_once() is False
    caps[1].ring.write(np.zeros((1600, 1), np.float32))
    assert worker.run_once() is True
    assert worker.run_once() is False  # nothing new
    assert min(c.idle_wait_s() for c in caps) == FAST_POLL_S < POLL_S


def test_the_worker_waits_its_poll_between_turns_for_paced_inputs(monkeypatch: pytest.MonkeyPatch) -> None:
    """The one thread must not spin: with paced inputs it takes a turn every ``poll_s``."""
    caps = [Capture(_OverflowingSource(16000), poll_s=0.1) for _ in range(3)]
    worker = CaptureWorker(caps)
    turns = []
    run_once = worker.run_once
    monkeypatch.setattr(worker, "run_once", lambda: turns.append(time.monotonic()) or run_once())
    worker.start()
    try:
        time.sleep(0.55)
        for cap in caps:
            cap.ring.write(np.zeros((1600, 1), np.float32))  # audio arrives: still one turn a poll
        time.sleep(0.5)
    finally:
        worker.stop()
    assert 5 <= len(turns) <= 13, len(turns)
    assert all(cap.streams[0].end_index == 1600 for cap in caps)


def test_a_worker_starts_once_and_never_beside_a_captures_own_thread(tmp_path: Path) -> None:
    """Two threads reading one ring would tear its audio apart; a stopped worker is not reused."""
    _wav(tmp_path / "a.wav", 1.0)
    own = Capture(FileSource(tmp_path / "a.wav", realtime=False))
    own.start()
    try:
        with pytest.raises(RuntimeError, match="already moved by another thread"):
            CaptureWorker([own]).start()
    finally:
        own.stop()
    worker = CaptureWorker([Capture(FileSource(tmp_path / "a.wav", realtime=False))])
    worker.start()
    worker.stop()
    with pytest.raises(RuntimeError, match="starts once"):
        worker.start()


def test_a_worker_that_dies_makes_every_input_a_fault() -> None:
    """Whatever ends the loop itself (not one capture's work, which ``pump`` catches), every
    capture still running gets the error: the pipeline then makes each stream a fault, so no
    stream stays ``online`` while nothing reads its input."""
    caps = [Capture(_OverflowingSource(16000)) for _ in range(2)]
    worker = CaptureWorker(caps)

    def broken() -> bool:
        raise MemoryError("no memory left")

    worker.run_once = broken  # type: ignore[method-assign]
    worker.start()
    try:
        deadline = time.monotonic() + 5
        while not all(c.error is not None for c in caps) and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        worker.stop()
    assert all(isinstance(c.error, MemoryError) for c in caps)


def test_file_source_48k_stereo_resampled_per_channel(tmp_path: Path) -> None:
    sr = 48000
    t = np.arange(2 * sr) / sr
    x = np.stack([0.5 * np.sin(2 * np.pi * 440 * t), 0.25 * np.sin(2 * np.pi * 1000 * t)], axis=1)
    sf.write(str(tmp_path / "s.wav"), x.astype(np.float32), sr, subtype="FLOAT")
    src = FileSource(tmp_path / "s.wav", realtime=False)
    assert (src.sample_rate, src.channels) == (sr, 2)
    cap = Capture(src)
    cap.start()
    assert cap.finished.wait(20)
    cap.stop()
    assert [s.end_index for s in cap.streams] == [32000, 32000]
    left = cap.streams[0].get(1000, 30000)[0]
    right = cap.streams[1].get(1000, 30000)[0]
    assert abs(np.sqrt(2) * left.std() - 0.5) < 1e-3 and abs(np.sqrt(2) * right.std() - 0.25) < 1e-3


def test_file_source_loops(tmp_path: Path) -> None:
    x = _wav(tmp_path / "l.wav", 0.5)
    src = FileSource(tmp_path / "l.wav", realtime=False, loop=True)
    cap = Capture(src)
    cap.hold_index = 0  # backpressure: keep the stream from sample 0 on
    cap.start()
    deadline = time.monotonic() + 20
    while cap.streams[0].end_index < 24000 and time.monotonic() < deadline:
        time.sleep(0.01)
    cap.stop()
    audio, has_gap = cap.streams[0].get(0, 24000)
    np.testing.assert_allclose(audio[8000:16000], x[:, 0], atol=1e-6)  # second pass = the file again
    np.testing.assert_allclose(audio[16000:24000], x[:, 0], atol=1e-6)
    assert not has_gap and src.status != "finished"


def test_truncated_and_corrupt_wav_are_user_errors(tmp_path: Path) -> None:
    good = tmp_path / "g.wav"
    with wave.open(str(good), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(np.zeros(16000, "<i2").tobytes())
    data = good.read_bytes()
    (tmp_path / "t.wav").write_bytes(data[: len(data) // 2])
    with pytest.raises(AudioSourceError, match="truncated"):
        FileSource(tmp_path / "t.wav")
    (tmp_path / "c.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk")
    with pytest.raises(UserError, match=r"c\.wav"):
        FileSource(tmp_path / "c.wav")
    (tmp_path / "n.wav").write_bytes(b"not a sound file at all")
    with pytest.raises(UserError, match=r"n\.wav"):
        FileSource(tmp_path / "n.wav")
    with pytest.raises(UserError, match="does not exist"):
        open_source(f"file:{tmp_path / 'missing.wav'}")


def test_synthetic_source_is_deterministic_and_finite() -> None:
    a, _ = _drain(SyntheticSource("fan", "id_00", seed=3, realtime=False, duration_s=2.0))
    b, _ = _drain(SyntheticSource("fan", 0, seed=3, realtime=False, duration_s=2.0))
    assert a.shape == (32000,) and np.array_equal(a, b) and np.std(a) > 1e-3
    src = open_source("synth:pump:2", realtime=False, channels=2, synth_seconds=1.0)
    assert src.channels == 2 and src.name == "synth:pump:2"


def test_missing_device_is_a_user_error_listing_inputs() -> None:
    devs = [InputDevice(3, "usb-path:1-1.2:0", "USB Mic: Audio (hw:2,0)", "ALSA", 1, 48000.0),
            InputDevice(4, "usb-path:1-1.3:0", "USB Mic: Audio (hw:3,0)", "ALSA", 1, 48000.0)]
    with pytest.raises(AudioDeviceError, match=r"(?s)no input device matches 'nope'.*usb-path:1-1.2:0"):
        resolve_device("nope", devs)
    with pytest.raises(AudioDeviceError, match="ambiguous"):
        resolve_device("USB Mic", devs)
    with pytest.raises(AudioDeviceError, match="index 9"):
        resolve_device("9", devs)
    assert resolve_device("usb-path:1-1.3:0", devs).index == 4
    assert resolve_device("4", devs).index == 4
    assert resolve_device("hw:3", devs).index == 4
    # the real PortAudio: a name that cannot exist
    with pytest.raises(AudioDeviceError, match="no input device"):
        open_source("no-such-device-xyz-123")


def test_device_without_requested_channels(monkeypatch: pytest.MonkeyPatch) -> None:
    import edge_asd.audio.sources.device as device_source

    dev = InputDevice(0, "jack:system", "system", "JACK Audio Connection Kit", 2, 16000.0)
    monkeypatch.setattr(device_source, "list_inputs", lambda sd=None: [dev])
    with pytest.raises(AudioDeviceError, match="has 2 channel.*4 requested"):
        device_source.SoundDeviceSource("system", channels=4)


def test_missing_portaudio_says_apt_get(monkeypatch: pytest.MonkeyPatch) -> None:
    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name == "sounddevice":
            raise OSError("PortAudio library not found")
        return real_import(name, *args, **kwargs)

    monkeypatch.delitem(__import__("sys").modules, "sounddevice", raising=False)
    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(AudioDeviceError, match="apt-get install libportaudio2"):
        import_sounddevice()


def test_stable_id_from_sysfs(tmp_path: Path) -> None:
    cards = tmp_path / "cards"
    cards.write_text(" 0 [tegrahda       ]: tegra-hda - NVIDIA Jetson\n 2 [Device         ]: USB-Audio - USB Mic\n")
    usbdev = tmp_path / "devices" / "usb1" / "1-1" / "1-1.2"
    iface = usbdev / "1-1.2:1.0"
    iface.mkdir(parents=True)
    (usbdev / "idVendor").write_text("0d8c\n")
    (usbdev / "idProduct").write_text("0014\n")
    sys_sound = tmp_path / "sound"
    (sys_sound / "card2").mkdir(parents=True)
    (sys_sound / "card2" / "device").symlink_to(iface)
    assert stable_id("USB Mic: Audio (hw:2,0)", "ALSA", cards, sys_sound) == "usb-path:1-1.2:0"
    assert stable_id("NVIDIA Jetson: HDA (hw:0,3)", "ALSA", cards, sys_sound) == "alsa:tegrahda:3"
    assert stable_id("system", "JACK Audio Connection Kit", cards, sys_sound) == "jack:system"


class _OverflowingSource(AudioSource):
    """Writes a fixed script of (block, overflow flag) into the ring from the test thread."""

    def __init__(self, sr: int) -> None:
        super().__init__()
        self.sample_rate, self.channels, self.name = sr, 1, "script"

    def start(self, ring: CaptureRing) -> None:
        self._ring = ring
        self.status = "online"

    def stop(self, timeout: float = 2.0) -> None:
        self.status = "offline"


@pytest.mark.parametrize("sr", [16000, 48000])
def test_overflow_gap_travels_to_stream_windows(sr: int) -> None:
    src = _OverflowingSource(sr)
    cap = Capture(src)
    src.start(cap.ring)  # drive it without threads
    rng = np.random.default_rng(0)
    flags = {}
    for k in range(30):  # 30 x 1 s, an overflow flagged on the block that starts at t = 12 s
        cap.ring.write(rng.standard_normal((sr, 1)).astype(np.float32) * 0.1, overflow=(k == 12))
        cap.process_available()
        window = cap.streams[0].latest_window()
        flags[k + 1] = None if window is None else window[2]
    assert cap.ring.overflows == 1 and cap.stats()["gaps"] == 1
    assert [flags[s] for s in range(1, 10)] == [None] * 9  # not 10 s yet
    assert flags[10] is not True and flags[11] is False  # (48 kHz: the filter delays the 10th s)
    assert all(flags[s] is True for s in range(13, 22))  # every window spanning t = 12 s
    assert all(flags[s] is False for s in range(24, 31))
    assert cap.stats()["gapped_windows"] >= 9


def test_capture_reader_overrun_counts_lost_and_gaps() -> None:
    src = _OverflowingSource(16000)
    cap = Capture(src, ring_s=1.0)
    src.start(cap.ring)
    cap.ring.write(np.zeros((8000, 1), np.float32) + 0.1)
    cap.process_available()
    cap.ring.write(np.zeros((40000, 1), np.float32) + 0.1)  # 2.5 s into a 1 s ring: reader lapped
    cap.process_available()
    stats = cap.stats()
    assert stats["overruns"] == 1 and stats["lost_samples"] == 24000
    assert cap.streams[0].has_gap(7000, 9000)


def test_record_clips_keeps_finished_clips_on_interrupt(tmp_path: Path) -> None:
    src = SyntheticSource("fan", 0, realtime=False, duration_s=60.0)
    cap = Capture(src)
    calls = {"n": 0}

    def progress(result) -> None:
        calls["n"] += 1
        if len(result.saved) == 2:
            raise KeyboardInterrupt

    try:
        result = record_clips(cap, tmp_path / "fan", 6, on_progress=progress)
    finally:
        cap.stop()
    assert result.interrupted and len(result.saved) == 2
    files = sorted((tmp_path / "fan").iterdir())
    assert files == sorted(result.saved)
    for f in files:
        info = sf.info(str(f))
        assert (info.samplerate, info.frames, info.subtype) == (16000, 160000, "PCM_16")


def test_record_cli_from_file_and_synth(tmp_path: Path) -> None:
    from edge_asd.cli import app

    x = _wav(tmp_path / "in.wav", 25.0, sr=48000)
    runner = CliRunner()
    out = tmp_path / "data"
    res = runner.invoke(app, ["record", "--source", f"file:{tmp_path / 'in.wav'}", "--minutes", "1",
                              "--out", str(out), "--machine", "press", "--id", "id_01"])
    assert res.exit_code == 0, res.output
    clips = sorted((out / "press" / "id_01").glob("*.wav"))
    assert len(clips) == 2 and "source ended early" in res.output
    first, _ = sf.read(str(clips[0]), dtype="float32")
    # white noise at 48 kHz keeps ~1/3 of its power below the new 8 kHz Nyquist
    assert first.shape == (160000,) and abs(first.std() - float(x.std()) / np.sqrt(3)) < 0.004
    # a second run never overwrites
    res = runner.invoke(app, ["record", "--source", "synth:fan:0", "--minutes", "0.3", "--out", str(out),
                              "--machine", "press", "--id", "id_01"])
    assert res.exit_code == 0, res.output
    assert len(list((out / "press" / "id_01").glob("*.wav"))) == 4
    res = runner.invoke(app, ["record", "--out", str(out), "--machine", "m"])
    assert res.exit_code != 0 and isinstance(res.exception, UserError)


def test_stop_event_ends_recording(tmp_path: Path) -> None:
    src = SyntheticSource("fan", 0, realtime=True)
    cap = Capture(src)
    stop = threading.Event()
    threading.Timer(0.3, stop.set).start()
    try:
        result = record_clips(cap, tmp_path / "x", 100, stop=stop)
    finally:
        cap.stop()
    assert result.saved == [] and not result.interrupted


class _FakePortAudio:
    """Just enough of the sounddevice module for SoundDeviceSource: a USB mic that can be
    unplugged (PortAudio ends the stream), stall (stream stays active, no blocks) and be
    plugged back in under a new index."""

    class _Flags:
        input_overflow = False

    def __init__(self) -> None:
        self.index: int | None = 3
        self.mode = "ok"  # ok | stall | gone
        self.opened = 0
        self.fail_start = False  # InputStream works, start() raises (a busy or broken card)
        self.active_raises = False  # stream.active raises PortAudioError
        self.streams: list[_FakeStream] = []

    def query_hostapis(self):
        return [{"name": "ALSA"}]

    def query_devices(self):
        if self.index is None:
            return []
        return [{"name": "USB Mic: Audio (hw:2,0)", "index": self.index, "hostapi": 0,
                 "max_input_channels": 1, "default_samplerate": 16000.0}]

    def InputStream(self, device, channels, samplerate, callback, finished_callback, **kw):
        if self.index is None or device != self.index:
            raise RuntimeError("Error opening InputStream: Invalid device")
        self.opened += 1
        stream = _FakeStream(self, channels, callback, finished_callback)
        self.streams.append(stream)
        return stream


class _FakeStream:
    def __init__(self, pa: _FakePortAudio, channels: int, callback, finished) -> None:
        self.pa, self.channels, self.callback, self.finished = pa, channels, callback, finished
        self._active = False
        self.closed = False
        self._stop = threading.Event()

    @property
    def active(self) -> bool:
        if self.pa.active_raises:
            raise RuntimeError("Error checking stream active: Unanticipated host error [PaErrorCode -9999]")
        return self._active

    @active.setter
    def active(self, value: bool) -> None:
        self._active = value

    def start(self) -> None:
        if self.pa.fail_start:
            raise RuntimeError("Error starting stream: Device unavailable [PaErrorCode -9985]")
        self.active = True
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        block = np.full((160, self.channels), 0.1, np.float32)
        while not self._stop.wait(0.01):
            if self.pa.mode == "gone":
                self.active = False
                self.finished()
                return
            if self.pa.mode == "ok":
                self.callback(block, 160, None, _FakePortAudio._Flags())

    def abort(self, ignore_errors: bool = True) -> None:
        self._stop.set()
        self.active = False

    def close(self, ignore_errors: bool = True) -> None:
        self._stop.set()
        self.closed = True


def _wait(cond, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.02)
    return cond()


def test_device_watchdog_reopens_after_unplug_and_stall(monkeypatch: pytest.MonkeyPatch) -> None:
    import edge_asd.audio.sources.device as device_source

    pa = _FakePortAudio()
    monkeypatch.setattr(device_source, "import_sounddevice", lambda: pa)
    monkeypatch.setattr(device_source, "refresh_portaudio", lambda: None)
    src = device_source.SoundDeviceSource("USB Mic", stall_s=0.3, backoff_s=0.1, backoff_max_s=0.2, check_interval_s=0.05)
    assert src.name.startswith(("usb-", "alsa:"))  # a stable id, not the index
    cap = Capture(src)
    cap.start()
    try:
        assert _wait(lambda: cap.ring.written > 1600) and src.status == "online"
        # unplugged: PortAudio finishes the stream -> offline, retries fail while it is gone
        pa.mode, pa.index = "gone", None
        assert _wait(lambda: src.status == "offline")
        time.sleep(0.5)
        assert src.status == "offline" and src.restarts == 0 and src.last_error
        # plugged back in under a new index: found again by its stable id
        pa.mode, pa.index = "ok", 7
        assert _wait(lambda: src.status == "online" and src.restarts == 1)
        assert src.device.index == 7 and cap.ring.gaps.count == 1
        # stalled: active but silent for longer than stall_s -> reopened
        pa.mode = "stall"
        assert _wait(lambda: src.status == "offline")
        pa.mode = "ok"
        assert _wait(lambda: src.status == "online" and src.restarts == 2)
        written = cap.ring.written
        assert _wait(lambda: cap.ring.written > written)
        assert cap.stats()["restarts"] == 2 and pa.opened == 3
    finally:
        cap.stop()


def test_device_stream_that_fails_to_start_is_closed(monkeypatch: pytest.MonkeyPatch) -> None:
    """``InputStream`` opens but ``start()`` raises: the stream is closed at every retry
    (sounddevice streams have no finaliser; each leaked one keeps the ALSA card busy)."""
    import edge_asd.audio.sources.device as device_source

    pa = _FakePortAudio()
    pa.fail_start = True
    monkeypatch.setattr(device_source, "import_sounddevice", lambda: pa)
    monkeypatch.setattr(device_source, "refresh_portaudio", lambda: None)
    src = device_source.SoundDeviceSource("USB Mic", wait_for_device=True, backoff_s=0.05, backoff_max_s=0.1,
                                          check_interval_s=0.02)  # fmt: skip
    cap = Capture(src)
    cap.start()
    try:
        assert _wait(lambda: len(pa.streams) >= 3)
        assert src.status == "offline" and "Error starting stream" in (src.last_error or "")
        assert all(s.closed for s in pa.streams), [s.closed for s in pa.streams]
        pa.fail_start = False
        assert _wait(lambda: src.status == "online")
        assert [s.closed for s in pa.streams].count(False) == 1  # only the one that runs
    finally:
        cap.stop()
    assert all(s.closed for s in pa.streams)


def test_device_supervisor_survives_failing_liveness_checks(monkeypatch: pytest.MonkeyPatch) -> None:
    """``stream.active`` raising (PortAudioError), or any other error in a check, must not
    kill the supervisor (the source would stay ``online`` and never be reopened)."""
    import edge_asd.audio.sources.device as device_source

    pa = _FakePortAudio()
    monkeypatch.setattr(device_source, "import_sounddevice", lambda: pa)
    monkeypatch.setattr(device_source, "refresh_portaudio", lambda: None)
    src = device_source.SoundDeviceSource("USB Mic", stall_s=0.3, backoff_s=0.05, backoff_max_s=0.1, check_interval_s=0.02)
    cap = Capture(src)
    cap.start()
    try:
        assert _wait(lambda: src.status == "online" and cap.ring.written > 0)
        pa.active_raises = True  # treated as a dead stream: closed and reopened
        assert _wait(lambda: src.restarts >= 1)
        pa.active_raises = False
        pa.mode = "gone"  # and then the device really goes: still noticed
        assert _wait(lambda: src.status == "offline")
        assert src._thread is not None and src._thread.is_alive()
        pa.mode = "ok"
        assert _wait(lambda: src.status == "online")

        calls = {"n": 0}
        real_alive = src.alive

        def broken_alive() -> bool:  # an unexpected error anywhere in the check
            calls["n"] += 1
            if calls["n"] <= 2:
                raise ValueError("a bug in the check")
            return real_alive()

        monkeypatch.setattr(src, "alive", broken_alive)
        restarts = src.restarts
        assert _wait(lambda: calls["n"] > 2 and src.status == "online" and src.restarts > restarts)
        assert src._thread is not None and src._thread.is_alive() and src.last_error is None
        written = cap.ring.written
        assert _wait(lambda: cap.ring.written > written)
        assert sum(not s.closed for s in pa.streams) == 1
    finally:
        cap.stop()


def test_reopen_sets_the_stall_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    """After a re-plug the last block dates from before the unplug: the stall reference is
    the reopen, so the pipeline does not call the fresh stream stalled."""
    import edge_asd.audio.sources.device as device_source

    pa = _FakePortAudio()
    monkeypatch.setattr(device_source, "import_sounddevice", lambda: pa)
    monkeypatch.setattr(device_source, "refresh_portaudio", lambda: None)
    src = device_source.SoundDeviceSource("USB Mic", backoff_s=0.3, backoff_max_s=0.3, check_interval_s=0.02)
    cap = Capture(src)
    assert cap.stall_reference_monotonic is None
    cap.start()
    try:
        assert _wait(lambda: cap.ring.written > 0)
        pa.mode, pa.index = "gone", None
        assert _wait(lambda: src.status == "offline")
        before = cap.last_block_monotonic
        assert before is not None
        pa.mode, pa.index = "stall", 7  # back, but no block yet
        assert _wait(lambda: src.status == "online")
        assert cap.last_block_monotonic == before
        assert src.opened_monotonic is not None and src.opened_monotonic > before + 0.2
        assert cap.stall_reference_monotonic == src.opened_monotonic
    finally:
        cap.stop()


class _TwoMicPortAudio:
    """Two USB mics behind one fake PortAudio, for the process-wide rules: a re-scan
    (terminate + initialise) must never happen while a stream is open or being opened."""

    class _Flags:
        input_overflow = False

    def __init__(self, present: set[str]) -> None:
        self.present = set(present)
        self.live: set[_TwoMicStream] = set()  # created and not closed yet
        self.rescans_with_open_streams = 0
        self.rescans = 0
        self.list = sorted(self.present)  # PortAudio's list: only a re-scan updates it
        self._guard = threading.Lock()

    def rescan(self) -> None:
        with self._guard:
            self.rescans += 1
            if self.live:
                self.rescans_with_open_streams += 1
            self.list = sorted(self.present)

    def query_hostapis(self):
        return [{"name": "ALSA"}]

    def query_devices(self, kind=None):
        if kind == "input":
            raise RuntimeError("Error querying device -1")
        return [{"name": f"{name} (hw:{9 + i},0)", "index": 20 + i, "hostapi": 0, "max_input_channels": 1,
                 "default_samplerate": 16000.0} for i, name in enumerate(["Mic A", "Mic B"]) if name in self.list]  # fmt: skip

    def InputStream(self, device, channels, samplerate, callback, finished_callback, **kw):
        name = ["Mic A", "Mic B"][device - 20]
        if name not in self.present:
            raise RuntimeError("Error opening InputStream: Invalid device")
        stream = _TwoMicStream(self, callback)
        with self._guard:
            self.live.add(stream)
        time.sleep(0.1)  # opening a real card takes a while: the window a re-scan must not hit
        return stream


class _TwoMicStream:
    def __init__(self, pa: _TwoMicPortAudio, callback) -> None:
        self.pa, self.callback = pa, callback
        self.active = False
        self._stop = threading.Event()

    def start(self) -> None:
        self.active = True
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        block = np.full((160, 1), 0.1, np.float32)
        while not self._stop.wait(0.01):
            self.callback(block, 160, None, _TwoMicPortAudio._Flags())

    def abort(self, ignore_errors: bool = True) -> None:
        self._stop.set()
        self.active = False

    def close(self, ignore_errors: bool = True) -> None:
        self._stop.set()
        with self.pa._guard:
            self.pa.live.discard(self)


def _two_mic_source(device_source, name: str):
    return device_source.SoundDeviceSource(name, wait_for_device=True, backoff_s=0.05, backoff_max_s=0.1,
                                           check_interval_s=0.02, sample_rate=16000)  # fmt: skip


def test_portaudio_rescan_never_races_another_sources_open(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two inputs missing at start retry at the same moment: one's re-scan must not terminate
    PortAudio while the other is opening its stream (one lock around re-scan, open, close)."""
    import edge_asd.audio.sources.device as device_source

    pa = _TwoMicPortAudio(present=set())
    monkeypatch.setattr(device_source, "import_sounddevice", lambda: pa)
    monkeypatch.setattr(device_source, "refresh_portaudio", pa.rescan)
    caps = [Capture(_two_mic_source(device_source, name)) for name in ("Mic A", "Mic B")]
    for cap in caps:
        cap.start()
    try:
        pa.present = {"Mic A", "Mic B"}  # both plugged in: the retries race
        assert _wait(lambda: all(c.source.status == "online" for c in caps), 10)
        assert pa.rescans >= 1 and pa.rescans_with_open_streams == 0, (pa.rescans, pa.rescans_with_open_streams)
    finally:
        for cap in caps:
            cap.stop()
    assert not pa.live


def test_missing_device_behind_open_inputs_asks_for_a_restart(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """While another input is open PortAudio's device list cannot be re-scanned, so a device
    plugged in later is never seen: after ``rescan_escalate_s`` that is an error in the log and
    in the stream's fault (a service restart re-scans); the daemon does not exit by itself."""
    import edge_asd.audio.sources.device as device_source

    pa = _TwoMicPortAudio(present={"Mic A"})
    monkeypatch.setattr(device_source, "import_sounddevice", lambda: pa)
    monkeypatch.setattr(device_source, "refresh_portaudio", pa.rescan)
    a, b = Capture(_two_mic_source(device_source, "Mic A")), Capture(_two_mic_source(device_source, "Mic B"))
    b.source.rescan_escalate_s = 0.4
    a.start()
    b.start()
    try:
        assert a.source.status == "online" and b.source.status == "offline"
        pa.present.add("Mic B")  # plugged in, but the list PortAudio holds is stale
        assert _wait(lambda: device_source.RESCAN_HINT in (b.source.last_error or ""), 5), b.source.last_error
        assert "no input device matches" in (b.source.last_error or "")
        assert pa.rescans == 0 and b.source.status == "offline"
        errors = [r for r in caplog.records if r.levelname == "ERROR" and "restart the service" in r.getMessage()]
        time.sleep(0.3)
        assert len(errors) == 1  # said once, not at every retry
        a.stop()  # nothing open any more: the next retry re-scans and finds it
        assert _wait(lambda: b.source.status == "online", 5), b.source.last_error
        assert pa.rescans >= 1 and pa.rescans_with_open_streams == 0 and b.source.last_error is None
    finally:
        a.stop()
        b.stop()


def test_real_clip_replayed_through_capture_equals_the_file(shared_data) -> None:
    from edge_asd.core.audio_io import read_audio

    clips = sorted(shared_data.rglob("*.wav"))
    if not clips:
        pytest.skip("no clips in shared data")
    clip = clips[0]
    cap = Capture(FileSource(clip, realtime=False))
    cap.hold_index = 0
    cap.start()
    assert cap.finished.wait(30)
    cap.stop()
    want = read_audio(clip)
    window = cap.streams[0].latest_window(160000)
    assert window is not None
    audio, end, has_gap = window
    assert not has_gap and end == want.shape[0]
    np.testing.assert_allclose(audio, want[end - 160000 : end], atol=1e-4)


def test_a_capture_belongs_to_one_worker(tmp_path: Path) -> None:
    """A capture that a ``CaptureWorker`` moves joins no other worker and starts no thread of its own."""
    _wav(tmp_path / "a.wav", 1.0)
    cap = Capture(FileSource(tmp_path / "a.wav", realtime=False))
    first = CaptureWorker([cap])
    first.start()
    try:
        with pytest.raises(RuntimeError, match="already moved by another thread"):
            CaptureWorker([cap]).start()
        with pytest.raises(RuntimeError, match="already started"):
            cap.start()
    finally:
        first.stop()
    fresh = Capture(FileSource(tmp_path / "a.wav", realtime=False))
    fresh._worker = first  # claimed by a worker that has not started it yet
    with pytest.raises(RuntimeError, match="moved by a CaptureWorker"):
        fresh.start()
    fresh.source.stop()
    alone = Capture(FileSource(tmp_path / "a.wav", realtime=False))
    alone.start()
    try:
        with pytest.raises(RuntimeError, match="already started"):
            alone.start()  # a second thread on its ring would tear its audio apart
    finally:
        alone.stop()
