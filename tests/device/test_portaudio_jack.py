"""Real PortAudio without sound hardware: the JACK dummy backend gives a device with a real
clock (``jackd --no-realtime -d dummy``). Checks `edge-asd devices` and a SoundDeviceSource
delivering into StreamBuffers at real-time pace.

PortAudio's JACK host API cannot survive its server dying (Pa_Terminate asserts, closing the
stream hangs), so the server is always stopped *after* PortAudio let go of it, and the
device-vanishes/reopen watchdog is tested with a fake PortAudio in test_sources.py."""

from __future__ import annotations

import ctypes.util
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

pytestmark = pytest.mark.device

JACKD = shutil.which("jackd")
HAVE_PA = ctypes.util.find_library("portaudio") is not None
if not JACKD or not HAVE_PA:
    pytest.skip("needs jackd (apt-get install jackd2) and libportaudio2", allow_module_level=True)


def _start_jackd(name: str) -> subprocess.Popen:
    env = dict(os.environ, JACK_NO_AUDIO_RESERVATION="1")
    return subprocess.Popen(
        [JACKD, "-n", name, "--no-realtime", "-d", "dummy", "-r", "16000", "-p", "1024", "-C", "2", "-P", "2"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )


def _wait_for_jack_input(timeout: float = 10.0):
    from edge_asd.audio.devices import list_inputs, refresh_portaudio

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        refresh_portaudio()
        found = [d for d in list_inputs() if d.hostapi.startswith("JACK")]
        if found:
            return found[0]
        time.sleep(0.3)
    return None


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@pytest.fixture
def jack(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict]:
    name = f"edgeasd{os.getpid()}"
    monkeypatch.setenv("JACK_DEFAULT_SERVER", name)
    monkeypatch.setenv("JACK_NO_AUDIO_RESERVATION", "1")
    monkeypatch.setenv("JACK_NO_START_SERVER", "1")
    state = {"name": name, "proc": _start_jackd(name)}
    try:
        dev = _wait_for_jack_input()
        if dev is None:
            pytest.skip("jackd started but PortAudio shows no JACK input (PortAudio built without JACK?)")
        state["device"] = dev
        yield state
    finally:
        from edge_asd.audio.devices import refresh_portaudio

        # Let PortAudio drop its JACK client while the server still runs, re-initialise it
        # pointing at no server (as without jackd), and only then stop the server.
        monkeypatch.setenv("JACK_DEFAULT_SERVER", f"{name}_gone")
        refresh_portaudio()
        _stop(state["proc"])


def test_devices_command_lists_jack_input(jack: dict) -> None:
    out = subprocess.run(
        [sys.executable, "-c", "from edge_asd.cli import main; main()", "devices", "--json"],
        capture_output=True, text=True, timeout=60, env=dict(os.environ),
    )
    assert out.returncode == 0, out.stderr
    devices = json.loads(out.stdout)
    jack_inputs = [d for d in devices if d["hostapi"].startswith("JACK")]
    assert jack_inputs and jack_inputs[0]["channels"] == 2 and jack_inputs[0]["default_samplerate"] == 16000
    assert jack_inputs[0]["stable_id"] == "jack:system"


def test_sounddevice_source_streams_at_real_time_pace(jack: dict) -> None:
    from edge_asd.audio.capture import Capture
    from edge_asd.audio.sources import SoundDeviceSource

    src = SoundDeviceSource("jack:system")
    assert (src.sample_rate, src.channels) == (16000, 2)
    cap = Capture(src)
    cap.start()
    try:
        t0 = time.monotonic()
        time.sleep(3.0)
        got = min(s.end_index for s in cap.streams)
        elapsed = time.monotonic() - t0
        # real-time pace: about `elapsed` seconds of audio (JACK delivers 1024-frame periods);
        # a file-like source without a clock would have delivered far more
        assert 0.5 * 16000 * elapsed < got < 1.5 * 16000 * elapsed + 4096
        stats = cap.stats()
        assert cap.status == "online" and stats["samples"] >= got and stats["last_block_age_s"] < 1.0
        assert src.alive()
        window = cap.streams[1].get(0, 16000)
        assert window is not None and window[0].shape == (16000,) and not window[1]
    finally:
        cap.stop()
    assert src.status == "offline"


def test_listen_opens_the_jack_device_and_scores_windows(jack: dict, cached_bundle, tmp_path) -> None:
    """`edge-asd listen --device jack:system` on real PortAudio. The dummy backend captures
    silence (a dead microphone, which is never scored), so a JACK metronome client is wired
    into PortAudio's input ports to give it sound to score."""
    from engines.bundle import load_bundle

    metro_exe, connect, lsp = shutil.which("jack_metro"), shutil.which("jack_connect"), shutil.which("jack_lsp")
    if not (metro_exe and connect and lsp):
        pytest.skip("jack_metro/jack_connect/jack_lsp not installed (jackd2 example clients)")
    env = dict(os.environ)
    metro = subprocess.Popen([metro_exe, "-n", "metro", "-b", "300", "-f", "700", "-A", "0.3", "-D", "80"],
                             env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    cls = load_bundle(cached_bundle).classes[0]
    listen = subprocess.Popen(
        # -X faulthandler: a crash in native code (PortAudio, JACK, onnxruntime) prints every thread's stack
        [sys.executable, "-X", "faulthandler", "-c", "from edge_asd.cli import main; main()", "listen", "--device", "jack:system",
         "--bundle", str(cached_bundle), "--class", cls, "--state-dir", str(tmp_path / "state")],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        deadline, wired = time.monotonic() + 20, False
        while time.monotonic() < deadline and not wired:
            ports = subprocess.run([lsp], capture_output=True, text=True, env=env).stdout.split("\n")
            metro_out = [p for p in ports if p.startswith("metro:")]
            pa_in = [p for p in ports if p.startswith("PortAudio") and "in" in p.split(":")[-1]]
            if metro_out and pa_in:
                for port in pa_in:
                    subprocess.run([connect, metro_out[0], port], env=env, capture_output=True)
                wired = True
            time.sleep(0.3)
        assert wired, f"PortAudio's JACK ports never appeared: {ports}"
        time.sleep(14.0)  # the first 10 s window, then a few hops
    finally:
        listen.terminate()
        out, _ = listen.communicate(timeout=30)
        _stop(metro)
    assert listen.returncode == 0, out[-3000:]
    assert "first windows scored" in out, out[-3000:]
    assert "Traceback" not in out
