"""The console in a real browser: headless Chromium (Debian's package) driven by Selenium.

What an operator does, end to end: the Now page shows the streams; an event appears live
(server-sent events, no reload); its page plays the evidence WAV (the <audio> element loads
it: metadata and duration); "False alarm: learn as normal" publishes the feedback command,
and the page shows the daemon's answer with the stream's new threshold, which the Now page
then shows too. Screenshots go to the test artifacts (console-now.png, console-event.png)
for the README.

The daemon is a fixture (``console_daemon``) with a small interface (``node``,
``state_dir``, ``streams``, ``trigger_event(stream) -> event id``, ``threshold(stream)``,
``wait_command``), so a variant with the real ``edge-asd listen`` can replace the fake one.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.device.test_console_fakes import FakeDaemon, console_settings, start_console
from tests.fixtures.mosquitto import Broker

pytestmark = [pytest.mark.timeout(600)]

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
CHROME_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--window-size=1280,900", "--autoplay-policy=no-user-gesture-required",
)


class FakeConsoleDaemon:
    """The fake daemon behind the interface the browser test uses."""

    def __init__(self, broker: Broker, state_dir: Path) -> None:
        self.node = "n1"
        self.state_dir = state_dir
        self.streams = ["press1", "fan2", "pump3"]
        self.fake = FakeDaemon(broker.port, state_dir, node=self.node)
        self.fake.announce(self.streams)
        self.fake.fault("pump3", "microphone silent (muted or unplugged?): RMS -96 dBFS, peak -90.3 dBFS")
        self._n = 0

    def tick(self, seconds: float) -> None:
        """Scores at 1 Hz-ish (faster here), so the plots have a line."""
        end = time.monotonic() + seconds
        i = 0
        while time.monotonic() < end:
            for k, s in enumerate(self.streams[:2]):
                self.fake.score(s, 11.0 + 2.0 * ((i + 3 * k) % 7) / 7.0)
            i += 1
            time.sleep(0.1)

    def trigger_event(self, stream: str) -> str:
        self._n += 1
        eid = f"{time.time():.6f}-ev{self._n}"
        self.fake.score(stream, 19.2)
        self.fake.pub(f"{stream}/anomaly", "ON", retain=True)
        self.fake.event(stream, eid)
        return eid

    def threshold(self, stream: str) -> float:
        return self.fake.threshold[stream]

    def wait_command(self, predicate: Any, timeout_s: float = 10.0) -> tuple[str, str] | None:
        return self.fake.wait_command(predicate, timeout_s)

    def close(self) -> None:
        self.fake.close()


@pytest.fixture
def console_daemon(broker: Broker, tmp_path: Path) -> Iterator[FakeConsoleDaemon]:
    d = FakeConsoleDaemon(broker, tmp_path / "state")
    yield d
    d.close()


@pytest.fixture
def driver() -> Iterator[Any]:
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.skip("selenium is not installed (pip install selenium)")
    for exe, package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not exe.exists() and shutil.which(exe.name) is None:
            pytest.skip(f"{exe} is not installed (apt-get install {package})")
    import tempfile

    profile = tempfile.mkdtemp(prefix="edge-asd-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM if CHROMIUM.exists() else shutil.which("chromium"))
    for flag in (*CHROME_FLAGS, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    service = Service(executable_path=str(CHROMEDRIVER if CHROMEDRIVER.exists() else shutil.which("chromedriver")))
    drv = webdriver.Chrome(service=service, options=options)
    drv.set_page_load_timeout(30)
    try:
        yield drv
    finally:
        drv.quit()
        shutil.rmtree(profile, ignore_errors=True)


def _seed_last_hour(state: Any, node: str, streams: list[str]) -> None:
    """An hour of past scores in the console's memory (MQTT cannot deliver the past), for the plots."""
    now = time.time()
    for k, name in enumerate(streams):
        stream = state.find(node, name)
        for i in range(720):
            t = now - 3600 + 5 * i
            wobble = math.sin(i / 9.0 + k) * 0.6 + math.sin(i / 53.0) * 0.9
            bump = 2.2 * math.exp(-(((i - 260 - 90 * k) / 12.0) ** 2))
            stream.add_score(11.5 + k + wobble + bump, t)


def _wait_streams(console: Any, daemon: FakeConsoleDaemon, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not console.call(lambda: all(console.server.state.find(daemon.node, s) for s in daemon.streams)):
        assert time.monotonic() < deadline, "the console did not see the daemon's streams"
        time.sleep(0.05)


def _wait(drv: Any, script: str, timeout_s: float = 15.0, what: str = "") -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = drv.execute_script(script)
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"browser: {what or script} not true after {timeout_s} s")
        time.sleep(0.1)


def test_console_in_a_real_browser(
    broker: Broker, tmp_path: Path, console_daemon: FakeConsoleDaemon, driver: Any, artifacts_dir: Path
) -> None:
    from selenium.webdriver.common.by import By

    shots = artifacts_dir / "console"
    shots.mkdir(parents=True, exist_ok=True)
    console = start_console(console_settings(broker.url, tmp_path, state_dir=console_daemon.state_dir,
                                             node_id=console_daemon.node))
    try:
        _wait_streams(console, console_daemon)
        console.call(lambda: _seed_last_hour(console.server.state, console_daemon.node, console_daemon.streams[:2]))
        console_daemon.tick(1.5)
        t0 = time.monotonic()
        driver.get(console.url)
        _wait(driver, "return document.documentElement.dataset.live === 'open'", what="the live stream opened")
        load_s = time.monotonic() - t0
        cards = {el.get_attribute("data-key"): el for el in driver.find_elements(By.CSS_SELECTOR, "article.card")}
        assert set(cards) == {f"n1/{s}" for s in console_daemon.streams}, cards.keys()
        assert "microphone silent" in cards["n1/pump3"].text and "fault" in cards["n1/pump3"].text
        assert "15.000" in cards["n1/press1"].text
        assert load_s < 5.0, f"the Now page took {load_s:.2f} s"

        # an event appears live: no reload (the marker set on this document survives)
        driver.execute_script("window.__sameDocument = true")
        console_daemon.tick(1.0)
        eid = console_daemon.trigger_event("press1")
        selector = f'#open-events li[data-event="n1/{eid}"]'
        _wait(driver, f"return !!document.querySelector({json.dumps(selector)})", what="the open event")
        assert driver.execute_script("return window.__sameDocument === true")
        _wait(driver, "return document.querySelector('[data-key=\"n1/press1\"]').classList.contains('anomaly-on')",
              what="the anomaly badge")
        driver.save_screenshot(str(shots / "console-now.png"))

        # the event page: audio loads the WAV, then "False alarm" teaches the daemon
        driver.find_element(By.CSS_SELECTOR, f"{selector} a").click()
        _wait(driver, "return document.body.dataset.page === 'event'", what="the event page")
        _wait(driver, "const a = document.getElementById('evidence-audio'); return a && a.readyState >= 1",
              what="the <audio> element loaded the WAV's metadata")
        duration = driver.execute_script("return document.getElementById('evidence-audio').duration")
        assert duration == pytest.approx(10.0, abs=0.05)
        _wait(driver, "const i = document.getElementById('evidence-png'); return i && i.complete && i.naturalWidth > 0",
              what="the spectrogram PNG")
        _wait(driver, "return document.documentElement.dataset.live === 'open'", what="the live stream opened")
        before = console_daemon.threshold("press1")
        driver.find_element(By.CSS_SELECTOR, "#feedback-form button[value=normal]").click()
        sent = console_daemon.wait_command(lambda t, p: t == "edge-asd/n1/press1/feedback/set")
        assert sent is not None and json.loads(sent[1]) == {"event": eid, "label": "normal", "by": "localhost"}
        after = before + 1.5
        _wait(driver, f"return document.getElementById('feedback-status').textContent.includes('{after:.3f}')",
              what="the daemon's answer with the new threshold")
        assert f"threshold now {after:.3f}" in driver.find_element(By.ID, "feedback-log").text
        driver.set_window_size(1280, 1500)
        driver.execute_script("window.scrollTo(0, 0)")
        driver.save_screenshot(str(shots / "console-event.png"))
        driver.set_window_size(1280, 900)

        driver.get(console.url)
        _wait(driver, "return document.querySelector('[data-key=\"n1/press1\"] [data-field=threshold_text]')"
                      f".textContent === '{after:.3f}'", what="the new threshold on the Now page")

        # the Events list (labelled now) and the Streams page render, with no script error anywhere
        driver.get(console.url + "events")
        row = driver.find_element(By.CSS_SELECTOR, f'#events-table tr[data-event="n1/{eid}"]')
        assert "false alarm" in row.text and "crest factor" in row.text
        driver.save_screenshot(str(shots / "console-events.png"))
        driver.get(console.url + "streams")
        table = driver.find_element(By.ID, "streams-table").text
        assert "n1/press1" in table and "enrolled 3 d ago" in table and f"{after:.3f}" in table
        driver.save_screenshot(str(shots / "console-streams.png"))
        errors = [e for e in driver.get_log("browser") if e.get("level") == "SEVERE"]
        assert not errors, errors
    finally:
        console.stop()


def test_console_with_the_real_daemon(broker: Broker, tmp_path: Path, driver: Any, cached_bundle: Path) -> None:
    """The same operator loop against the real `edge-asd listen` (an enrolled synthetic fan,
    a new bearing whine from 40 s, audio at real time) and the real mosquitto."""
    import subprocess
    import sys

    import yaml
    from selenium.webdriver.common.by import By

    from edge_asd.core.audio_io import write_wav
    from edge_asd.core.synth import make_site_recording

    edge_asd = [sys.executable, "-c", "from edge_asd.cli import main; main()"]
    state = tmp_path / "state"
    normal, _ = make_site_recording("tone", 300.0, None, seed=3, take=0)
    monitored, _ = make_site_recording("tone", 75.0, 40.0, None, seed=3, take=1)
    subprocess.run(
        edge_asd + ["enrol", "--bundle", str(cached_bundle), "--wav", str(write_wav(tmp_path / "n.wav", normal)),
                    "--stream", "fan1", "--state-dir", str(state), "--backend", "onnxruntime"],
        check=True, capture_output=True, timeout=600,
    )  # fmt: skip
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({
        "bundle": str(cached_bundle), "backend": "onnxruntime", "state_dir": str(state), "node_id": "site",
        "mqtt": {"url": broker.url, "stats_interval_s": 5},
        "sources": [{"name": "line", "type": "file", "path": str(write_wav(tmp_path / "m.wav", monitored)),
                     "realtime": True}],
        "streams": [{"name": "fan1", "source": "line"}],
    }))  # fmt: skip
    console = start_console(console_settings(broker.url, tmp_path, state_dir=state, node_id="site"))
    log = tmp_path / "listen.log"
    daemon = subprocess.Popen(edge_asd + ["listen", "--config", str(config)], stdout=log.open("w"),
                              stderr=subprocess.STDOUT)  # fmt: skip
    try:
        driver.get(console.url)
        _wait(driver, "return document.documentElement.dataset.live === 'open'", what="the live stream opened")
        _wait(driver, "return !!document.querySelector('[data-key=\"site/fan1\"]')", 60, "the daemon's stream")
        driver.execute_script("window.__sameDocument = true")
        _wait(driver, "return !!document.querySelector('#open-events li[data-event^=\"site/\"]')", 120,
              "the whine's event, live")  # fmt: skip
        assert driver.execute_script("return window.__sameDocument === true")
        driver.find_element(By.CSS_SELECTOR, '#open-events li[data-event^="site/"] a').click()
        _wait(driver, "return document.body.dataset.page === 'event'", what="the event page")
        _wait(driver, "const a = document.getElementById('evidence-audio'); return a && a.readyState >= 1",
              what="the <audio> element loaded the WAV's metadata")
        assert driver.execute_script("return document.getElementById('evidence-audio').duration") == pytest.approx(
            10.0, abs=0.05)
        _wait(driver, "return document.documentElement.dataset.live === 'open'", what="the live stream opened")
        driver.find_element(By.CSS_SELECTOR, "#feedback-form button[value=normal]").click()
        # The daemon learns the open event's windows and answers with its re-derived threshold.
        _wait(driver, "return /threshold now [0-9.]+/.test(document.getElementById('feedback-log').textContent)",
              60, "the daemon's answer")  # fmt: skip
        text = driver.find_element(By.ID, "feedback-log").text
        attributes = console.call(lambda: console.server.state.find("site", "fan1").threshold)
        assert f"threshold now {attributes:.3f}" in text, (text, attributes)
        driver.save_screenshot(str(tmp_path / "real-daemon-event.png"))
    finally:
        daemon.terminate()
        daemon.wait(timeout=60)
        console.stop()
        print(log.read_text()[-2000:])
