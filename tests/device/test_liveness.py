"""The daemon survives what a plant throws at it (issue 11, items 1, 5, 7, 8, 9):

- a microphone missing at start is a stream ``fault`` (not exit 2), retried with backoff,
  monitored by itself once plugged in; unplugged later: ``fault`` again, its open event ends
  (``end_reason``), and it comes back. READY once the loop runs, watchdog pings the whole time.
- windows over an audio gap are counted and make the stream ``fault`` until whole again.
- an input that hangs without an error is a ``fault`` (stalled), not a silent ``online``.
- ``enabled/set`` OFF ends the open event, is kept in the state directory and wins over the
  config at the next start (over a real mosquitto).
- one ``listen`` per state directory, also with a lock file this user cannot write; a file
  system without locks is a node fault, not exit 2.
- the default MQTT client id is kept per installation, keyed by the machine id alone (a
  randomised MAC must not change it).
- a device reopened after an outage is not "stalled" because of its last block before it.

The sound card is a fake PortAudio (``sounddevice`` stand-in) that plays a synthetic machine:
PortAudio's JACK host cannot survive its server going away (see test_portaudio_jack.py).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edge_asd.core.audio_io import write_wav
from tests.device.test_listen_systemd import NotifySocket
from tests.fixtures.bundles import recording_with_anomaly, synth_bundle
from tests.fixtures.comms import MemoryCommunicator
from tests.fixtures.mosquitto import Broker, Recorder, settled_retained

pytestmark = [pytest.mark.device, pytest.mark.timeout(300)]

EDGE_ASD = [sys.executable, "-c", "from edge_asd.cli import main; main()"]
# Every window is over this threshold: an event opens as soon as the decisions allow.
ALWAYS = {"threshold": 1e-6, "decision": {"warmup_windows": 0, "patience": 2, "max_quiet": 2, "cooldown_s": 0}}


def _wait(cond: Any, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.02)
    return bool(cond())


@pytest.fixture(scope="module")
def bundle_and_sound(artifacts_dir: Path) -> tuple[Path, str, np.ndarray]:
    from engines.bundle import load_bundle

    bundle = synth_bundle(artifacts_dir)
    cls = load_bundle(bundle).classes[0]
    machine_type, machine_id = cls.split("/")
    audio, _ = recording_with_anomaly(machine_type, int(machine_id[-2:]), 20.0, None, 1.0, "rattle", seed=5)
    return bundle, cls, np.asarray(audio, np.float32)


class FakePortAudio:
    """Just enough of ``sounddevice``: one USB mic playing ``audio`` at real-time pace, which
    can be missing (``index = None``), unplugged (``mode = "gone"``: PortAudio ends the stream),
    plugged back under another index and quiet for a while (``mode = "quiet"``: no blocks yet)."""

    def __init__(self, audio: np.ndarray, index: int | None) -> None:
        self.audio = audio
        self.index = index
        self.mode = "ok"
        self.opened = 0
        self.rates: list[int] = []
        self.hostapi = "ALSA"
        self.calls: list[tuple[str, float]] = []  # (abort|close, monotonic) of every stream

    def query_hostapis(self) -> list[dict]:
        return [{"name": self.hostapi}]

    def _device(self) -> dict:
        return {"name": "USB Mic: Audio (hw:2,0)", "index": self.index, "hostapi": 0,
                "max_input_channels": 1, "default_samplerate": 16000.0}

    def query_devices(self, kind: str | None = None) -> Any:
        if kind == "input":
            if self.index is None:
                raise RuntimeError("Error querying device -1")
            return self._device()
        return [] if self.index is None else [self._device()]

    def InputStream(self, device: int, channels: int, samplerate: int, callback: Any, finished_callback: Any, **kw: Any):
        if self.index is None or device != self.index:
            raise RuntimeError("Error opening InputStream: Invalid device [PaErrorCode -9996]")
        self.opened += 1
        self.rates.append(samplerate)
        return _FakeStream(self, samplerate, callback, finished_callback)


class _Flags:
    input_overflow = False


class _FakeStream:
    def __init__(self, pa: FakePortAudio, rate: int, callback: Any, finished: Any) -> None:
        self.pa, self.rate, self.callback, self.finished = pa, rate, callback, finished
        self.active = False
        self._stop = threading.Event()

    def start(self) -> None:
        self.active = True
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        block, pos, t0, sent = self.rate // 10, 0, time.monotonic(), 0
        while not self._stop.is_set():
            if self.pa.mode == "gone":
                self.active = False
                self.finished()
                return
            if self.pa.mode == "quiet":
                t0, sent = time.monotonic(), 0
                self._stop.wait(0.02)
                continue
            chunk = np.take(self.pa.audio, np.arange(pos, pos + block), mode="wrap")[:, None]
            pos += block
            self.callback(chunk, block, None, _Flags())
            sent += block
            self._stop.wait(max(0.0, t0 + sent / self.rate - time.monotonic()))

    def abort(self, ignore_errors: bool = True) -> None:
        self.pa.calls.append(("abort", time.monotonic()))
        self._stop.set()
        self.active = False

    def close(self, ignore_errors: bool = True) -> None:
        self.pa.calls.append(("close", time.monotonic()))
        self._stop.set()


def _config(tmp_path: Path, bundle: Path, cls: str, source: dict, **extra: Any) -> dict:
    return {
        "bundle": str(bundle),
        "backend": "onnxruntime",
        "hop_s": extra.pop("hop_s", 0.5),
        "state_dir": str(tmp_path / "state"),
        "node_id": "live",
        "sources": [{"name": "mic", **source}],
        "streams": [{"name": "m1", "source": "mic", "classes": [cls], **extra}],
        "evidence": {"enabled": False},
    }


def _events(comms: MemoryCommunicator, kind: str) -> list[dict]:
    return [e["after"] for e in list(comms.events) if e["type"] == kind]


def _one_second_file_daemon(bundle_and_sound: tuple[Path, str, np.ndarray], tmp_path: Path) -> tuple[Any, MemoryCommunicator]:
    """A daemon (not started) on one second of the machine's sound, reporting to memory."""
    from edge_asd.config import validate_config
    from edge_asd.daemon.listen import build_daemon

    bundle, cls, audio = bundle_and_sound
    wav = tmp_path / "machine.wav"
    write_wav(wav, audio[:16000])
    cfg = validate_config(_config(tmp_path, bundle, cls, {"type": "file", "path": str(wav)}))
    comms = MemoryCommunicator()
    return build_daemon(cfg, comms=comms), comms


def test_missing_then_unplugged_microphone_keeps_the_service_up(
    bundle_and_sound: tuple[Path, str, np.ndarray], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import edge_asd.audio.sources.device as device_source
    from edge_asd.config import validate_config
    from edge_asd.daemon.listen import build_daemon, run_daemon

    bundle, cls, audio = bundle_and_sound
    pa = FakePortAudio(audio, index=None)  # not plugged in when the service starts
    monkeypatch.setattr(device_source, "import_sounddevice", lambda: pa)
    monkeypatch.setattr(device_source, "refresh_portaudio", lambda: None)
    cfg = validate_config(_config(tmp_path, bundle, cls, {"type": "device", "device": "USB Mic"}, **ALWAYS))
    notify = NotifySocket(tmp_path / "notify.sock")
    monkeypatch.setenv("NOTIFY_SOCKET", str(notify.path))
    monkeypatch.setenv("WATCHDOG_USEC", "600000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    comms = MemoryCommunicator()
    daemon = build_daemon(cfg, comms=comms)  # no device: not an error for the service
    stream = daemon.pipeline.streams[0]
    source = daemon.captures[0].source
    assert source.backoff_max_s == 30.0  # the service's cap; shortened for the test
    source.backoff_s, source.backoff_max_s = 0.2, 0.5
    seen: dict[str, Any] = {}

    def script() -> None:
        try:
            assert notify.wait("READY", 60), "no READY while the microphone is missing"
            seen["windows_at_ready"] = stream.counters.windows
            assert _wait(lambda: comms.status.get("m1", ("", ""))[0] == "fault", 10)
            seen["missing"] = comms.status["m1"]
            t0 = time.monotonic()
            time.sleep(1.5)  # 2.5 x WatchdogSec without a single window
            seen["pings_missing"] = notify.count("WATCHDOG", t0)
            pa.index = 3  # plugged in: found by the retry, monitored by itself
            assert _wait(lambda: comms.status.get("m1", ("", ""))[0] == "online", 40), comms.status
            assert _wait(lambda: _events(comms, "new"), 20), "no event opened"
            pa.mode, pa.index = "gone", None  # unplugged mid-event
            assert _wait(lambda: _events(comms, "end"), 10), "the open event never ended"
            seen["unplugged"] = comms.status["m1"]
            seen["end"] = _events(comms, "end")[0]
            t1 = time.monotonic()
            time.sleep(1.5)
            seen["pings_unplugged"] = notify.count("WATCHDOG", t1)
            statuses_before = len(comms.calls)
            pa.mode, pa.index = "ok", 7  # back, under another index
            assert _wait(lambda: comms.status["m1"][0] == "online", 40), comms.status
            seen["after_replug"] = [c[1] for c in comms.calls[statuses_before:] if c[0] == "status"]
            seen["stats"] = daemon.pipeline.stats()["streams"]["m1"]
        finally:
            os.kill(os.getpid(), signal.SIGTERM)

    thread = threading.Thread(target=script, daemon=True)
    thread.start()
    try:
        rc = run_daemon(daemon)
    finally:
        thread.join(10)
        notify.close()
    assert rc == 0
    assert seen["windows_at_ready"] == 0
    status, message = seen["missing"]
    assert "audio input device:USB Mic unavailable" in message and "no input device matches" in message, message
    assert message.endswith("retrying")
    assert seen["pings_missing"] >= 3 and seen["pings_unplugged"] >= 3, seen
    assert seen["unplugged"][0] == "fault" and "unavailable" in seen["unplugged"][1], seen
    assert seen["end"]["end_reason"] == "stream fault" and seen["end"]["active"] is False
    # back after a re-plug: the windows over the splice are gapped (fault, said so), then online
    gap = [args for args in seen["after_replug"] if args[1] == "fault" and "audio gap" in args[2]]
    assert gap and seen["after_replug"][-1][1] == "online", seen["after_replug"]
    assert seen["stats"]["gapped"] > 0 and seen["stats"]["unavailable_s"] > 1.0, seen["stats"]
    assert seen["stats"]["restarts"] == 2 and pa.opened == 2
    assert pa.rates == [48000, 48000]  # missing at start: opened at the default rate, kept on reopen
    assert not any("EXTEND_TIMEOUT_USEC" in f for _, f in notify.messages), "extended a start that needed none"
    assert comms.anomaly.get("m1") is False


def test_stalled_input_is_a_fault(bundle_and_sound: tuple[Path, str, np.ndarray], tmp_path: Path) -> None:
    """A source that hangs without an error (its thread blocked, status still online)."""
    from edge_asd.config import validate_config
    from edge_asd.daemon.listen import build_daemon, run_daemon

    bundle, cls, audio = bundle_and_sound
    wav = tmp_path / "machine.wav"
    write_wav(wav, audio)
    cfg = validate_config(_config(tmp_path, bundle, cls, {"type": "file", "path": str(wav), "loop": True}))
    comms = MemoryCommunicator()
    daemon = build_daemon(cfg, comms=comms)
    daemon.pipeline.stall_s = 1.0
    source = daemon.captures[0].source
    hang = threading.Event()
    thread = threading.Thread(target=run_daemon, args=(daemon,), kwargs={"install_signals": False}, daemon=True)
    thread.start()
    try:
        assert _wait(lambda: daemon.captures[0].ring.written > 0, 10)
        source._next_block = lambda frames: None if hang.wait() else None  # type: ignore[method-assign]
        assert _wait(lambda: comms.status.get("m1", ("", ""))[0] == "fault", 10), comms.status
        assert "no audio from input file:machine.wav" in comms.status["m1"][1] and source.status == "online"
    finally:
        hang.set()
        daemon.pipeline.stop()
        thread.join(20)
    assert daemon.pipeline.stats()["streams"]["m1"]["unavailable_s"] > 0


def test_gapped_windows_are_published_and_end_the_event(
    bundle_and_sound: tuple[Path, str, np.ndarray], tmp_path: Path
) -> None:
    from edge_asd.config import validate_config
    from edge_asd.daemon.listen import build_daemon, run_daemon
    from edge_asd.daemon.pipeline import GAP_TEXT

    bundle, cls, audio = bundle_and_sound
    wav = tmp_path / "machine.wav"
    write_wav(wav, audio)
    cfg = validate_config(_config(tmp_path, bundle, cls, {"type": "file", "path": str(wav), "loop": True,
                                                          "realtime": False}, **ALWAYS))  # fmt: skip
    comms = MemoryCommunicator()
    daemon = build_daemon(cfg, comms=comms)
    stream = daemon.pipeline.streams[0]
    thread = threading.Thread(target=run_daemon, args=(daemon,), kwargs={"install_signals": False}, daemon=True)
    thread.start()
    try:
        assert _wait(lambda: _events(comms, "new"), 60), "no event opened"
        at = stream.buffer.end_index
        stream.buffer.mark_gap(at, at + 1)  # an input overflow, as the capture worker marks it
        assert _wait(lambda: _events(comms, "end"), 30)
        assert _wait(lambda: comms.status["m1"] == ("online", "") and stream.next_end > at + 160000, 30)
    finally:
        daemon.pipeline.stop()
        thread.join(20)
    statuses = [c[1][1:] for c in comms.calls if c[0] == "status"]
    assert ("fault", GAP_TEXT) in statuses, statuses
    assert _events(comms, "end")[0]["end_reason"] == "stream fault"
    stats = comms.stats[-1]["streams"]["m1"]
    assert stats["gapped"] >= 10, stats  # a 10 s window over the gap at every 0.5 s hop
    assert "delivery" in comms.stats[-1] and comms.stats[-1]["delivery"]["outbox_depth"] == 0


def test_enabled_off_ends_the_event_and_survives_a_restart(
    bundle_and_sound: tuple[Path, str, np.ndarray], tmp_path: Path
) -> None:
    """Over a real mosquitto: the operator's OFF ends the open event (end_reason), is kept in
    the state directory and is the stream's state after a restart; a second daemon on the same
    state directory is refused while the first runs; the client id stays the same."""
    from edge_asd.config import validate_config
    from edge_asd.daemon.installation import StateDirError
    from edge_asd.daemon.listen import build_daemon, run_daemon

    bundle, cls, audio = bundle_and_sound
    wav = tmp_path / "machine.wav"
    write_wav(wav, audio)
    broker = Broker(tmp_path / "broker").start()
    recorder = Recorder(broker.port, ["edge-asd/live/#"])
    data = _config(tmp_path, bundle, cls, {"type": "file", "path": str(wav), "loop": True, "realtime": False}, **ALWAYS)
    data["mqtt"] = {"url": broker.url, "discovery": {"enabled": False}}
    cfg = validate_config(data)
    try:
        daemon = build_daemon(cfg)
        client_id = daemon.comms.client_id
        thread = threading.Thread(target=run_daemon, args=(daemon,), kwargs={"install_signals": False}, daemon=True)
        thread.start()
        try:
            assert _wait(lambda: any(e["type"] == "new" for e in recorder.events("edge-asd/live/events")), 60)
            with pytest.raises(StateDirError, match=rf"another edge-asd listen \(pid {os.getpid()}\)"):
                build_daemon(cfg)
            recorder.client.publish("edge-asd/live/m1/enabled/set", "OFF", qos=1)
            recorder.client.publish("edge-asd/live/nosuch/enabled/set", "OFF", qos=1)
            assert _wait(lambda: any(e["type"] == "end" for e in recorder.events("edge-asd/live/events")), 20)
            assert _wait(lambda: recorder.last("edge-asd/live/m1/status") == "disabled", 10)
        finally:
            daemon.pipeline.stop()
            thread.join(30)
        end = [e["after"] for e in recorder.events("edge-asd/live/events") if e["type"] == "end"][0]
        assert end["end_reason"] == "stream disabled"
        assert json.loads((tmp_path / "state" / "enabled.json").read_text()) == {"m1": False}

        daemon = build_daemon(cfg)  # the config still says enabled: the operator's OFF wins
        try:
            assert daemon.pipeline.streams[0].enabled is False and daemon.comms.client_id == client_id
            daemon.comms.start()  # announces the streams' enabled states again on connect
            assert daemon.comms.wait_connected(10)
            # `available` goes online last on connect (the first run left it offline), so the
            # enabled state read after it is this run's, not the first run's retained copy
            retained = settled_retained(
                broker.port, "edge-asd/live/#",
                lambda snap: snap.get("edge-asd/live/available") == "online"
                and snap.get("edge-asd/live/m1/enabled/state") is not None,
            )
        finally:
            daemon.close()
        assert retained.get("edge-asd/live/m1/enabled/state") == "OFF", retained
        assert "edge-asd/live/nosuch/enabled/state" not in retained, retained
    finally:
        recorder.close()
        broker.stop()


def test_second_listen_on_a_state_dir_exits_2_naming_the_pid(
    bundle_and_sound: tuple[Path, str, np.ndarray], tmp_path: Path
) -> None:
    from edge_asd.daemon.listen import StateDirLock

    bundle, cls, _ = bundle_and_sound
    state = tmp_path / "state"
    lock = StateDirLock(state).acquire()
    try:
        proc = subprocess.run(
            EDGE_ASD + ["listen", "--source", "synth", "--bundle", str(bundle), "--class", cls, "--state-dir", str(state)],
            capture_output=True, text=True, timeout=120, env={**os.environ, "COLUMNS": "500"},
        )
    finally:
        lock.release()
    out = " ".join((proc.stdout + proc.stderr).split())
    assert proc.returncode == 2, out[-2000:]
    assert f"another edge-asd listen (pid {os.getpid()}) is using the state directory {state}" in out, out[-2000:]
    assert "Traceback" not in out
    # released: the next one may take it (and a crashed holder's lock is gone with its process)
    StateDirLock(state).acquire().release()


def test_default_mqtt_client_id_is_kept_per_installation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import edge_asd.daemon.installation as installation

    first = installation.installation_client_id(tmp_path, "press-hall")
    assert first.startswith("edge-asd-press-hall-") and len(first) > len("edge-asd-press-hall-")
    assert installation.installation_client_id(tmp_path, "press-hall") == first  # a restart keeps it
    other = installation.installation_client_id(tmp_path / "other", "press-hall")
    assert other != first  # another installation with the same host name
    monkeypatch.setattr(installation, "_machine_fingerprint", lambda: "a-cloned-image")
    clone = installation.installation_client_id(tmp_path, "press-hall")
    assert clone != first  # the same state directory copied to another machine
    assert installation.installation_client_id(tmp_path, "press-hall") == clone


def test_unset_device_is_the_default_input(monkeypatch: pytest.MonkeyPatch) -> None:
    import edge_asd.audio.sources.device as device_source
    from edge_asd.audio.devices import AudioDeviceError, InputDevice, resolve_device
    from edge_asd.config import DeviceSourceConfig
    from edge_asd.daemon.listen import make_source

    devs = [InputDevice(3, "usb-path:1-1.2:0", "USB Mic: Audio (hw:2,0)", "ALSA", 1, 48000.0),
            InputDevice(4, "alsa:pch:0", "HDA Intel PCH: ALC (hw:0,0)", "ALSA", 2, 44100.0)]
    assert resolve_device(None, devs, default_index=4).index == 4
    assert resolve_device("", devs, default_index=3).index == 3
    assert resolve_device(None, devs, default_index=None).index == 3  # PortAudio knows none: the first
    with pytest.raises(AudioDeviceError, match="no default input device"):
        resolve_device(None, [], default_index=None)
    pa = FakePortAudio(np.zeros(16000, np.float32), index=2)
    monkeypatch.setattr(device_source, "import_sounddevice", lambda: pa)
    source = make_source(DeviceSourceConfig(name="mic"), 1)  # `device:` unset in the config
    assert source.device is not None and source.device.index == 2 and source.sample_rate == 16000
    pa.index = None  # no input at all: the one-off commands say so, the service waits
    with pytest.raises(AudioDeviceError, match="no default input device"):
        make_source(DeviceSourceConfig(name="mic"), 1)
    waiting = make_source(DeviceSourceConfig(name="mic", channels=None), 2, wait_for_device=True)
    assert (waiting.name, waiting.channels, waiting.sample_rate) == ("the default input", 2, 48000)
    assert waiting.status == "offline" and "no default input device" in (waiting.last_error or "")


def test_a_state_dir_that_cannot_be_locked_is_a_node_fault(tmp_path: Path) -> None:
    import edge_asd.daemon.installation as installation
    import edge_asd.daemon.listen as listen

    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the state directory should be")
    lock = installation.StateDirLock(blocker / "state").acquire()  # not refused: nothing to protect there
    assert not lock.held and lock.error is not None and "cannot lock the state directory" in lock.error
    comms = MemoryCommunicator()
    listen._node_fault(comms, "lock", lock.error)
    assert comms.node_faults == {"lock": lock.error}
    listen._node_fault(object(), "lock", None)  # a communicator without node faults: nothing happens


def test_real_portaudio_device_missing_at_start_is_opened_when_it_appears(monkeypatch: pytest.MonkeyPatch) -> None:
    """Real PortAudio (JACK's dummy backend): no server when the source starts, as a USB
    interface that has not enumerated yet; the server comes up and the retry opens it."""
    from edge_asd.audio.capture import Capture
    from edge_asd.audio.devices import refresh_portaudio
    from edge_asd.audio.sources import SoundDeviceSource
    from tests.device import test_portaudio_jack as jack  # skips without jackd + libportaudio2

    server = f"edgeasdlive{os.getpid()}"
    for key, value in {"JACK_DEFAULT_SERVER": server, "JACK_NO_AUDIO_RESERVATION": "1",
                       "JACK_NO_START_SERVER": "1"}.items():  # fmt: skip
        monkeypatch.setenv(key, value)
    refresh_portaudio()
    src = SoundDeviceSource("jack:system", channels=2, sample_rate=16000, wait_for_device=True,
                            backoff_s=0.2, backoff_max_s=0.5)  # fmt: skip
    assert src.device is None and src.name == "device:jack:system" and "jack:system" in (src.last_error or "")
    cap = Capture(src)
    proc = None
    try:
        cap.start()  # not an error: offline, retried in the background
        assert src.status == "offline"
        time.sleep(1.0)
        assert src.status == "offline" and src.restarts == 0
        proc = jack._start_jackd(server)
        assert _wait(lambda: src.status == "online", 30), src.last_error
        written = cap.ring.written
        assert _wait(lambda: cap.ring.written > written + 16000, 10)
        assert src.device is not None and src.device.stable_id == "jack:system" and cap.ring.gaps.count == 0
    finally:
        cap.stop()  # PortAudio lets go of the server before it stops (test_portaudio_jack.py)
        monkeypatch.setenv("JACK_DEFAULT_SERVER", f"{server}_gone")
        refresh_portaudio()
        if proc is not None:
            jack._stop(proc)


def test_lock_file_of_another_user_is_locked_read_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A ``listen.lock`` left by a manual ``sudo edge-asd listen`` (root's, 0644): the service
    user cannot open it for writing, but ``flock`` needs no write access, so it still locks."""
    import edge_asd.daemon.installation as installation

    state = tmp_path / "state"
    state.mkdir()
    lock_file = state / installation.LOCK_FILE
    lock_file.write_text("4242\n")
    lock_file.chmod(0o444)
    real_open = os.open

    def open_as_service_user(path: Any, flags: int, *args: Any) -> int:
        if Path(path) == lock_file and flags & (os.O_RDWR | os.O_WRONLY):
            raise PermissionError(13, "Permission denied", str(path))  # what a non-root user gets
        return real_open(path, flags, *args)

    monkeypatch.setattr(os, "open", open_as_service_user)
    lock = installation.StateDirLock(state).acquire()
    try:
        assert lock.held and lock.error is None
        assert "not writable by this user" in caplog.text
        with pytest.raises(installation.StateDirError, match=r"another edge-asd listen \(pid 4242\)"):
            installation.StateDirLock(state).acquire()  # a second listen is still refused
    finally:
        lock.release()
    installation.StateDirLock(state).acquire().release()


@pytest.mark.parametrize("code", ["ENOLCK", "EOPNOTSUPP", "ENOSYS"])
def test_state_dir_without_locks_is_a_node_fault_not_exit_2(
    bundle_and_sound: tuple[Path, str, np.ndarray], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: str
) -> None:
    """NFS mounted ``nolock``: ``flock`` fails with ENOLCK (or EOPNOTSUPP/ENOSYS); the daemon
    starts and says so in a node fault."""
    import errno
    import fcntl

    import edge_asd.daemon.installation as installation

    def no_locks(fd: int, operation: int) -> None:
        raise OSError(getattr(errno, code), os.strerror(getattr(errno, code)))

    monkeypatch.setattr(fcntl, "flock", no_locks)
    lock = installation.StateDirLock(tmp_path / "plain").acquire()
    assert not lock.held and "has no locks" in (lock.error or "") and "not refused" in (lock.error or "")

    daemon, comms = _one_second_file_daemon(bundle_and_sound, tmp_path)
    try:
        assert daemon.lock is not None and not daemon.lock.held
        assert "has no locks" in comms.node_faults.get("lock", ""), comms.node_faults
    finally:
        daemon.close()


def test_shutdown_flushes_the_outbox_before_closing_the_inputs(
    bundle_and_sound: tuple[Path, str, np.ndarray], tmp_path: Path
) -> None:
    """Closing a sound device runs native driver code that can hang or crash the process; the
    last statistics and the outbox's flush go out first, and an input that fails to stop still
    lets the engine and the state-directory lock go."""
    from edge_asd.daemon.installation import StateDirLock

    daemon, comms = _one_second_file_daemon(bundle_and_sound, tmp_path)
    daemon.start_inputs()
    seen: dict[str, Any] = {}
    source = daemon.captures[0].source

    real_stop, real_runtime_close = source.stop, daemon.runtime.close

    def stop_that_fails(timeout: float = 2.0) -> None:
        seen["stats"], seen["comms_stopped"] = len(comms.stats), comms.stopped
        real_stop(timeout)
        raise OSError("the driver refused to close")

    def runtime_close() -> None:
        seen["runtime_closed"] = True
        real_runtime_close()

    source.stop = stop_that_fails  # type: ignore[method-assign]
    daemon.runtime.close = runtime_close  # type: ignore[method-assign]
    daemon.close()
    assert seen == {"stats": 1, "comms_stopped": True, "runtime_closed": True}
    assert daemon.lock is not None
    StateDirLock(tmp_path / "state").acquire().release()  # released although the input failed to stop


def test_client_id_follows_the_machine_id_not_the_mac(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Wi-Fi MAC randomisation or a USB network adapter changes the MAC: with a machine id the
    client id (and the broker session) stays; without one the MAC is all there is."""
    import hashlib
    import json
    import uuid

    import edge_asd.daemon.installation as installation

    machine_id = tmp_path / "machine-id"
    monkeypatch.setattr(installation, "MACHINE_ID_FILES", (str(machine_id), str(tmp_path / "dbus-machine-id")))
    macs = iter([0x02AA00000001, 0x02AA00000002, 0x02AA00000003, 0x02AA00000004])
    monkeypatch.setattr(uuid, "getnode", lambda: next(macs))

    machine_id.write_text("0123456789abcdef0123456789abcdef\n")
    first = installation.installation_client_id(tmp_path / "state", "press-hall")
    assert installation.installation_client_id(tmp_path / "state", "press-hall") == first  # another MAC: same id
    for unusable in ("", "uninitialized\n", "0" * 32):  # none yet, or a prepared image's placeholder
        machine_id.write_text(unusable)
        assert installation._machine_id() is None
    assert installation._machine_fingerprint() != installation._machine_fingerprint()  # the MAC stands in, and it changed

    # a state directory from a version that mixed the MAC in keeps its id over the upgrade
    machine_id.write_text("fedcba9876543210fedcba9876543210\n")
    monkeypatch.setattr(uuid, "getnode", lambda: 0x02BB00000001)
    legacy = hashlib.sha256(b"fedcba9876543210fedcba9876543210|02bb00000001").hexdigest()[:16]
    kept = tmp_path / "upgraded" / installation.CLIENT_ID_FILE
    kept.parent.mkdir()
    kept.write_text(json.dumps({"suffix": "c0ffee12", "machine": legacy}))
    assert installation.installation_client_id(kept.parent, "press-hall") == "edge-asd-press-hall-c0ffee12"
    assert json.loads(kept.read_text())["machine"] == installation._machine_fingerprint()
    monkeypatch.setattr(uuid, "getnode", lambda: 0x02BB00000002)
    assert installation.installation_client_id(kept.parent, "press-hall") == "edge-asd-press-hall-c0ffee12"


def test_reopened_input_is_not_stalled_by_its_last_block_before_the_unplug(monkeypatch: pytest.MonkeyPatch) -> None:
    """After a re-plug the ring's last block dates from before the outage: the pipeline
    measures a stall from the reopen, so the fresh stream is not ``fault (stalled)`` while its
    first blocks are on their way; a stream that stays quiet is still a stall."""
    from types import SimpleNamespace

    import edge_asd.audio.sources.device as device_source
    from edge_asd.audio.capture import Capture
    from edge_asd.daemon.pipeline import Pipeline

    pa = FakePortAudio(np.zeros(16000, np.float32), index=3)
    monkeypatch.setattr(device_source, "import_sounddevice", lambda: pa)
    monkeypatch.setattr(device_source, "refresh_portaudio", lambda: None)
    source = device_source.SoundDeviceSource("USB Mic", stall_s=60.0, backoff_s=0.1, backoff_max_s=0.1,
                                             check_interval_s=0.02)  # fmt: skip
    capture = Capture(source)
    pipeline = SimpleNamespace(realtime=True, stall_s=0.5, _captures={"mic": capture},
                               _loop_started_mono=time.monotonic())  # fmt: skip
    stream = SimpleNamespace(capture=capture, buffer=SimpleNamespace(end_index=0), next_end=0)
    capture.start()
    try:
        assert _wait(lambda: capture.ring.written > 0)
        pa.mode, pa.index = "gone", None  # unplugged for longer than the stall limit
        assert _wait(lambda: source.status == "offline")
        time.sleep(0.7)
        pa.mode, pa.index = "quiet", 5  # back; its first block is not there yet
        assert _wait(lambda: source.status == "online")
        assert time.monotonic() - (capture.last_block_monotonic or 0.0) > 0.5
        assert Pipeline._input_problem(pipeline, stream, time.monotonic()) is None  # type: ignore[arg-type]
        time.sleep(0.7)  # and then it stays quiet: that is a stall
        problem = Pipeline._input_problem(pipeline, stream, time.monotonic())  # type: ignore[arg-type]
        assert problem is not None and problem[0] == "fault" and "stalled" in problem[1], problem
    finally:
        capture.stop()


def test_a_disk_copy_with_the_same_machine_id_gets_its_own_client_id(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``dd`` keeps /etc/machine-id: the physical NICs' factory MACs tell the copy apart, while a
    randomised Wi-Fi MAC or an added USB adapter does not change the id."""
    import edge_asd.daemon.installation as installation

    machine_id = tmp_path / "machine-id"
    machine_id.write_text("0123456789abcdef0123456789abcdef\n")
    monkeypatch.setattr(installation, "MACHINE_ID_FILES", (str(machine_id),))
    net = tmp_path / "net"
    monkeypatch.setattr(installation, "NET_CLASS", str(net))

    def nics(**macs: str) -> None:
        for old in net.glob("*/address"):
            old.unlink()
        for name, mac in macs.items():
            (net / name / "device").mkdir(parents=True, exist_ok=True)
            (net / name / "address").write_text(mac + "\n")

    state = tmp_path / "state"
    nics(eth0="48:b0:2d:01:02:03", wlan0="4a:11:22:33:44:55")  # wlan0: locally administered (random)
    first = installation.installation_client_id(state, "press")
    nics(eth0="48:b0:2d:01:02:03", wlan0="d2:aa:bb:cc:dd:ee")  # Wi-Fi MAC re-randomised
    assert installation.installation_client_id(state, "press") == first
    nics(eth0="48:b0:2d:01:02:03", eth1="00:e0:4c:68:00:01")  # a USB adapter added
    assert installation.installation_client_id(state, "press") == first
    nics(eth0="48:b0:2d:09:09:09")  # the same disk in another box
    clone = installation.installation_client_id(state, "press")
    assert clone != first
    assert installation.installation_client_id(state, "press") == clone  # and it keeps its own


@pytest.mark.parametrize("hostapi", ["JACK Audio Connection Kit", "ALSA"])
def test_a_jack_stream_is_closed_only_after_its_disconnect_settles(monkeypatch: pytest.MonkeyPatch, hostapi: str) -> None:
    """JACK's client library walks its port list in a thread of its own after every
    connection change, and closing erases ports from that list: a stream on JACK pauses
    between stopping (which disconnects) and closing, ``JACK_CLOSE_SETTLE_PERIODS`` periods
    or at least ``JACK_CLOSE_SETTLE_S``; on a stop, and after a start that failed (it may
    have connected ports). Other host APIs close at once."""
    import edge_asd.audio.sources.device as device_source
    from edge_asd.audio.capture import Capture

    pauses: list[float] = []
    real_close = device_source._close_quietly

    def recording_close(stream: Any, name: str, settle_s: float = 0.0) -> None:
        pauses.append(settle_s)
        real_close(stream, name, settle_s)

    monkeypatch.setattr(device_source, "_close_quietly", recording_close)
    monkeypatch.setattr(device_source, "JACK_CLOSE_SETTLE_S", 0.05)  # under 4 of the fake's periods
    pa = FakePortAudio(np.zeros(16000, np.float32), index=3)
    pa.hostapi = hostapi
    monkeypatch.setattr(device_source, "import_sounddevice", lambda: pa)
    monkeypatch.setattr(device_source, "refresh_portaudio", lambda: None)
    source = device_source.SoundDeviceSource("USB Mic")
    capture = Capture(source)
    capture.start()
    try:
        assert _wait(lambda: capture.ring.written > 0)
    finally:
        capture.stop()
    on_jack = hostapi.startswith("JACK")
    period = 1600 / 16000  # the fake's blocks: a tenth of a second
    assert pauses == [pytest.approx(4 * period) if on_jack else 0.0]
    assert [name for name, _ in pa.calls] == ["abort", "close"]
    if on_jack:  # the pause is really taken (a lower bound only: a loaded machine is slower)
        assert pa.calls[1][1] - pa.calls[0][1] >= 4 * period

    def failing_start(self: _FakeStream) -> None:
        raise RuntimeError("Error starting stream: Unanticipated host error [PaErrorCode -9999]")

    monkeypatch.setattr(_FakeStream, "start", failing_start)
    with pytest.raises(RuntimeError, match="Unanticipated host error"):
        source._open()
    # no callback came from the failed stream: its period is unknown, the least pause holds
    assert pauses[1:] == [pytest.approx(0.05) if on_jack else 0.0]
