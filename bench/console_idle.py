"""The console's cost on the device: page load time and CPU while idle with N live streams.

A real mosquitto on loopback, a publisher that acts as N daemon streams (retained status and
attributes, a score per stream every second), and ``edge-asd console`` in its own process, so
its CPU time is read from /proc for that process alone. Measured, each for ``--seconds``:

* CPU of the console with no page open (it folds N messages a second into its state);
* CPU with one page open (the server-sent event stream pushes the changed scores once a second);
* page load: the Now page, its CSS/JS and the score history over HTTP (median of 20), and,
  when Chromium and Selenium are installed, in a real headless browser (navigation to the
  live stream being open and the plots drawn).

    python bench/console_idle.py --streams 32 --seconds 60 --out bench/results/console_idle.json

Everything is bounded (fixed durations) and loopback only.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the mosquitto fixture lives with the tests

CLK_TCK = os.sysconf("SC_CLK_TCK")


def proc_cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime


def proc_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class Publisher:
    """N streams of one fake node: retained state once, then one score per stream per second."""

    def __init__(self, port: int, streams: int, node: str = "bench") -> None:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

        self.node, self.n = node, streams
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-pub-{os.getpid()}",
                                  protocol=MQTTProtocolVersion.MQTTv5)
        self.client.connect("127.0.0.1", port, keepalive=30)
        self.client.loop_start()
        self.stop = threading.Event()
        base = f"edge-asd/{node}"
        self.client.publish(f"{base}/available", "online", qos=1, retain=True)
        for i in range(streams):
            s = f"mic{i:02d}"
            self.client.publish(f"{base}/{s}/status", "online", qos=1, retain=True)
            self.client.publish(f"{base}/{s}/anomaly", "OFF", qos=1, retain=True)
            self.client.publish(f"{base}/{s}/enabled/state", "ON", qos=1, retain=True)
            attrs = {"threshold": 15.0, "classes": ["fan/id_00"], "source": "bench",
                     "enrolment": {"state": "ok", "created": time.time() - 86400, "windows": 600, "minutes": 10}}
            self.client.publish(f"{base}/{s}/attributes", json.dumps(attrs), qos=1, retain=True)
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        tick = 0
        next_t = time.monotonic()
        while not self.stop.is_set():
            for i in range(self.n):
                value = 11.0 + ((tick * 7 + i * 3) % 23) / 10.0
                self.client.publish(f"edge-asd/{self.node}/mic{i:02d}/score", f"{value:.3f}", qos=0)
            tick += 1
            next_t += 1.0
            self.stop.wait(max(0.0, next_t - time.monotonic()))

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        self.client.disconnect()
        self.client.loop_stop()


def wait_http(port: int, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/api/now")
            if conn.getresponse().status == 200:
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("the console did not answer")


def http_load_s(port: int) -> float:
    """One page load as a browser without cache does it: page, CSS, JS, icon, score history."""
    t0 = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    for path in ("/", "/static/app.css", "/static/app.js", "/static/icon.svg", "/api/series"):
        conn.request("GET", path)
        resp = conn.getresponse()
        resp.read()
        assert resp.status == 200, (path, resp.status)
    conn.close()
    return time.perf_counter() - t0


class SseClient:
    """One open page's event stream, read and thrown away."""

    def __init__(self, port: int) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        self.conn.request("GET", "/api/stream")
        self.resp = self.conn.getresponse()
        self.bytes = 0
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            while True:
                chunk = self.resp.fp.read1(65536) if hasattr(self.resp.fp, "read1") else self.resp.read(1024)
                if not chunk:
                    return
                self.bytes += len(chunk)
        except (OSError, ValueError):
            return

    def close(self) -> None:
        self.conn.close()


def measure_cpu(pid: int, seconds: float) -> float:
    c0, t0 = proc_cpu_s(pid), time.monotonic()
    time.sleep(seconds)
    return 100.0 * (proc_cpu_s(pid) - c0) / (time.monotonic() - t0)


def browser_load(url: str, runs: int) -> dict[str, Any] | None:
    chromium, driver_exe = shutil.which("chromium"), shutil.which("chromedriver")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        return None
    if not chromium or not driver_exe:
        return None
    profile = tempfile.mkdtemp(prefix="bench-chromium-")
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--window-size=1280,900", f"--user-data-dir={profile}"):
        opts.add_argument(flag)
    drv = webdriver.Chrome(service=Service(executable_path=driver_exe), options=opts)
    ready, dom = [], []
    try:
        for _ in range(runs):
            drv.execute_cdp_cmd("Network.clearBrowserCache", {})
            t0 = time.perf_counter()
            drv.get(url)
            while drv.execute_script("return document.documentElement.dataset.live !== 'open'"):
                time.sleep(0.005)
            ready.append(time.perf_counter() - t0)
            dom.append(drv.execute_script(
                "const n = performance.getEntriesByType('navigation')[0]; return n.domContentLoadedEventEnd / 1000"))
    finally:
        drv.quit()
        shutil.rmtree(profile, ignore_errors=True)
    return {"runs": runs, "dom_content_loaded_s_median": statistics.median(dom),
            "live_s_median": statistics.median(ready), "live_s_max": max(ready)}


def full_hour_load(broker_url: str, streams: int, work: Path) -> dict[str, Any]:
    """Page load with a full hour of history for every stream (MQTT cannot replay the past, so
    the history is put into an in-process console's memory, as an hour of 1 Hz scores leaves it)."""
    from edge_asd.config import MqttConfig
    from edge_asd.console.server import ConsoleThread
    from edge_asd.console.settings import ConsoleSettings

    settings = ConsoleSettings(mqtt=MqttConfig.model_validate({"url": broker_url}), state_dir=work / "state2",
                               node_id="bench", port=0)
    console = ConsoleThread(settings)
    console.start()
    try:
        assert console.server.link is not None and console.server.link.wait_connected(10)
        deadline = time.monotonic() + 10
        while console.call(lambda: len(console.server.state.streams())) < streams:
            assert time.monotonic() < deadline, "the in-process console did not see the streams"
            time.sleep(0.1)

        def seed() -> int:
            now = time.time()
            for k, stream in enumerate(console.server.state.streams()):
                for i in range(3600):
                    stream.add_score(11.0 + ((i * 7 + k * 3) % 23) / 10.0, now - 3600 + i)
            return sum(len(s.history) for s in console.server.state.streams())

        points = console.call(seed, timeout_s=60)
        port = int(console.url.rsplit(":", 1)[1].strip("/"))
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("GET", "/api/series", headers={"Accept-Encoding": "gzip"})
        resp = conn.getresponse()
        wire = len(resp.read())
        conn.close()
        loads = [http_load_s(port) for _ in range(20)]
        return {"points": points, "series_bytes_gzip": wire, "http_load_s_median": statistics.median(loads),
                "http_load_s_max": max(loads), "browser": browser_load(console.url, runs=5)}
    finally:
        console.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--streams", type=int, default=32)
    ap.add_argument("--seconds", type=float, default=60.0, help="each CPU measurement")
    ap.add_argument("--warmup", type=float, default=5.0)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()

    from tests.fixtures.mosquitto import Broker, free_port

    work = Path(tempfile.mkdtemp(prefix="bench-console-"))
    broker = Broker(work / "broker").start()
    port = free_port()
    console = subprocess.Popen(
        [sys.executable, "-c", "from edge_asd.cli import main; main()", "console", "--broker", broker.url,
         "--state-dir", str(work / "state"), "--node", "bench", "--port", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    pub = None
    try:
        wait_http(port)
        pub = Publisher(broker.port, args.streams)
        time.sleep(args.warmup)
        result: dict[str, Any] = {
            "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                        "python": platform.python_version()},
            "streams": args.streams, "seconds": args.seconds,
        }
        print(f"{args.streams} streams at 1 Hz, {args.seconds:.0f} s per measurement", flush=True)
        result["cpu_pct_no_page"] = measure_cpu(console.pid, args.seconds)
        print(f"console CPU, no page open:  {result['cpu_pct_no_page']:.2f} % of one core", flush=True)
        sse = SseClient(port)
        time.sleep(1.0)
        result["cpu_pct_one_page"] = measure_cpu(console.pid, args.seconds)
        result["sse_bytes_per_s"] = sse.bytes / (args.seconds + 1.0)
        print(f"console CPU, one page open: {result['cpu_pct_one_page']:.2f} % of one core "
              f"({result['sse_bytes_per_s']:.0f} B/s of live updates)", flush=True)
        loads = [http_load_s(port) for _ in range(20)]
        result["http_load_s_median"] = statistics.median(loads)
        result["http_load_s_max"] = max(loads)
        print(f"page load over HTTP (page, CSS, JS, icon, history): median {1000 * statistics.median(loads):.1f} ms, "
              f"max {1000 * max(loads):.1f} ms", flush=True)
        sse.close()
        hour = full_hour_load(broker.url, args.streams, work)
        result["full_hour"] = hour
        print(f"page load with a full hour of history ({hour['points']} points, /api/series "
              f"{hour['series_bytes_gzip'] / 1024:.0f} KiB gzipped): median {1000 * hour['http_load_s_median']:.1f} ms, "
              f"max {1000 * hour['http_load_s_max']:.1f} ms", flush=True)
        if hour["browser"] is not None:
            print(f"headless Chromium with that history, navigation to live: median "
                  f"{hour['browser']['live_s_median'] * 1000:.0f} ms, max {hour['browser']['live_s_max'] * 1000:.0f} ms",
                  flush=True)
        browser = browser_load(f"http://127.0.0.1:{port}/", runs=5)
        if browser is not None:
            result["browser"] = browser
            print(f"headless Chromium, navigation to live: median {browser['live_s_median'] * 1000:.0f} ms "
                  f"(DOMContentLoaded {browser['dom_content_loaded_s_median'] * 1000:.0f} ms)", flush=True)
        else:
            print("headless Chromium: not installed, skipped", flush=True)
        result["rss_mib"] = proc_rss_mib(console.pid)
        print(f"console RSS {result['rss_mib']:.0f} MiB", flush=True)
        if args.out is not None:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(result, indent=2) + "\n")
    finally:
        if pub is not None:
            pub.close()
        console.terminate()
        try:
            console.wait(10)
        except subprocess.TimeoutExpired:
            console.kill()
        broker.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
