"""How often closing a PortAudio stream on JACK crashes the process, with and without a pause
between stopping and closing it (``edge_asd.audio.sources.device.JACK_CLOSE_SETTLE_S``).

Why: stopping a PortAudio JACK stream disconnects its ports; at the next cycle jackd sends
every client latency notifications, which the client library handles in a thread of its own
by walking the client's port list; closing the stream unregisters its ports, erasing them
from that list without a lock (jack2 1.9.21). When the two meet, the process dies of
SIGSEGV: seen in CI as ``listen`` crashing on SIGTERM in the JACK tests. It is rare, so this
counts crashes over thousands of open/start/stop/close cycles, each worker on its own
``jackd`` (dummy backend, no other client: only the stream's own connection changes make
notifications, as in ``listen``).

Each worker is a child process running cycles until it has done its share or crashes; a
crashed worker is replaced and the count goes on. A crash counts as a close's when the main
thread's stack (faulthandler's, kept in the results) is in ``close``. ``--settle S`` makes the
pause exactly S seconds (the daemon's own is ``_close_pause``: ``JACK_CLOSE_SETTLE_S`` or
``JACK_CLOSE_SETTLE_PERIODS`` periods). Needs ``jackd`` (jackd2) and
libportaudio2 built with JACK (Debian's is). On the development VM the crash came only with
``--churn`` (another JACK server started and stopped alongside, over and over), not from CPU
load (``--burners``) alone; docs/reliability.md has the figures::

    python bench/jack_close_race.py --closes 4000 --workers 2 --churn --settle 0 --settle 0.6 \\
        --out bench/results/jack_close_race_churn.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

HANG_S = 60.0
"""A worker whose count has not moved for this long is hung (PortAudio's JACK host waits up
to 10 minutes on a condition): it gets SIGABRT, so faulthandler prints its stacks, and is
counted under ``hangs`` and replaced."""

MAX_FRUITLESS_CRASHES = 3
"""A worker that crashes this many times in a row before its first close ends the run: the
bench would otherwise respawn it forever."""


def _jackd(name: str, period: int) -> subprocess.Popen:
    env = dict(os.environ, JACK_NO_AUDIO_RESERVATION="1")
    return subprocess.Popen(
        ["jackd", "-n", name, "--no-realtime", "-d", "dummy", "-r", "16000", "-p", str(period), "-C", "2", "-P", "2"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def worker(server: str, closes: int, settle_s: float) -> int:
    """Open and close the daemon's own PortAudio source on ``server`` ``closes`` times (its
    callbacks, its ring, its close path, with a pause of exactly ``settle_s``); print the
    count as it goes."""
    os.environ.update(JACK_DEFAULT_SERVER=server, JACK_NO_AUDIO_RESERVATION="1", JACK_NO_START_SERVER="1")
    import edge_asd.audio.sources.device as device_source
    from edge_asd.audio.capture import Capture
    from edge_asd.audio.devices import AudioDeviceError, refresh_portaudio

    device_source.JACK_CLOSE_SETTLE_S, device_source.JACK_CLOSE_SETTLE_PERIODS = settle_s, 0
    source = None
    deadline = time.monotonic() + 30
    while source is None:
        refresh_portaudio()
        try:
            source = device_source.SoundDeviceSource("jack:system", channels=2, sample_rate=16000)
        except AudioDeviceError:
            if time.monotonic() > deadline:
                print("error: no JACK input appeared (is libportaudio2 built with JACK?)", flush=True)
                return 2
            time.sleep(0.3)
    source._attach(Capture(source).ring, "device")
    rng = random.Random(os.getpid())
    for i in range(closes):
        source._open()
        time.sleep(rng.random() * 0.1)  # anywhere in the first periods: a stop soon after a (re)open
        source._close_stream()
        print(f"closed {i + 1}", flush=True)
    return 0  # the server outlives the worker: PortAudio lets go of it at exit


class Churn:
    """Another JACK server's whole life over and over (start, a client, a connection, stop) in a
    thread, as the test suite's JACK tests do next to a daemon; counts its cycles."""

    def __init__(self, period: int) -> None:
        self.period = period
        self.cycles = 0  # whole cycles: the server up, the client connected, all stopped
        self.failed = 0  # cycles whose client did not run or connect
        self.error: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="churn", daemon=True)

    def start(self) -> None:
        if shutil.which("jack_metro") is None or shutil.which("jack_connect") is None:
            raise SystemExit("--churn needs jack_metro and jack_connect (jackd2's example clients)")
        self._thread.start()

    def alive(self) -> bool:
        return self._thread.is_alive()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(30)

    def _run(self) -> None:
        name = f"closechurn{os.getpid()}"
        env = dict(os.environ, JACK_DEFAULT_SERVER=name, JACK_NO_START_SERVER="1")
        try:
            while not self._stop.is_set():
                server = _jackd(name, self.period)
                try:
                    time.sleep(1.0)
                    metro = subprocess.Popen(["jack_metro", "-b", "300"], env=env, stdout=subprocess.DEVNULL,
                                             stderr=subprocess.DEVNULL)  # fmt: skip
                    time.sleep(0.5)
                    wired = subprocess.run(["jack_connect", "metro:300_bpm", "system:playback_1"], env=env,
                                           capture_output=True, timeout=10)  # fmt: skip
                    self._stop.wait(1.0)
                    alive = metro.poll() is None
                    _stop(metro)
                finally:
                    _stop(server)
                if wired.returncode == 0 and alive:
                    self.cycles += 1
                else:
                    self.failed += 1
        except Exception as err:  # reported: a run whose churn died is not a churn run
            self.error = f"{type(err).__name__}: {err}"


class _Worker:
    """One worker process, its stdout read as it comes (a pipe left unread would fill and
    block it) and its stderr kept in a file for faulthandler's stacks."""

    def __init__(self, server: str, closes: int, settle_s: float) -> None:
        cmd = [sys.executable, "-X", "faulthandler", __file__, "--worker", server, "--closes", str(closes),
               "--settle", str(settle_s)]  # fmt: skip
        self.errfile = tempfile.TemporaryFile("w+")  # noqa: SIM115 (closed in finish())
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=self.errfile, text=True)
        self.count = 0
        self.progressed = time.monotonic()
        self.hung = False
        self.tail: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.startswith("closed "):
                self.count = int(line.split()[1])
                self.progressed = time.monotonic()
            else:
                self.tail = (self.tail + [line])[-20:]

    def finish(self) -> str:
        """After the process ended: its stderr from faulthandler's report on (or its tail)."""
        self._reader.join(10)
        self.errfile.seek(0)
        text = self.errfile.read()
        self.errfile.close()
        at = text.find("Fatal Python error")
        return (text[at:] if at >= 0 else text[-2000:])[:3000]


def run_variant(settle_s: float, closes: int, workers: int, period: int) -> dict:
    """``closes`` cycles over ``workers`` concurrent children; crashed children are replaced."""
    remaining = [closes // workers + (1 if slot < closes % workers else 0) for slot in range(workers)]
    started = time.monotonic()
    tally: dict = {"closes": 0, "crashes": 0, "crashes_in_close": 0, "hangs": 0, "signals": [], "stacks": []}
    servers = [f"closerace{os.getpid()}x{slot}" for slot in range(workers)]
    jackds = [_jackd(name, period) for name in servers]
    running: dict[int, _Worker] = {}
    fruitless = [0] * workers
    try:
        for slot in range(workers):
            running[slot] = _Worker(servers[slot], remaining[slot], settle_s)
        while running:
            time.sleep(0.2)
            for slot, w in list(running.items()):
                if w.proc.poll() is None:
                    if time.monotonic() - w.progressed > HANG_S and not w.hung:
                        w.hung = True
                        w.proc.send_signal(signal.SIGABRT)  # faulthandler prints the stacks
                    continue
                del running[slot]
                stack = w.finish()
                tally["closes"] += w.count
                remaining[slot] -= w.count
                if w.proc.returncode >= 0:
                    if w.proc.returncode != 0:
                        raise SystemExit(f"worker failed (exit {w.proc.returncode}): {''.join(w.tail)}{stack}")
                    continue
                if w.hung:
                    tally["hangs"] += 1
                else:
                    tally["crashes"] += 1
                tally["signals"].append(signal.Signals(-w.proc.returncode).name)
                tally["crashes_in_close"] += not w.hung and " in close\n" in stack
                tally["stacks"].append(stack)
                fruitless[slot] = 0 if w.count else fruitless[slot] + 1
                if fruitless[slot] >= MAX_FRUITLESS_CRASHES:
                    raise SystemExit(f"a worker crashed {fruitless[slot]} times before its first close:\n{stack}")
                if remaining[slot] > 0:
                    running[slot] = _Worker(servers[slot], remaining[slot], settle_s)
    finally:
        for w in running.values():
            w.proc.kill()
            w.proc.wait(5)
        for jackd in jackds:
            _stop(jackd)
    return {"settle_s": settle_s, **tally, "wall_s": round(time.monotonic() - started, 1)}


def main() -> int:
    from edge_asd.audio.sources.device import JACK_CLOSE_SETTLE_S

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--closes", type=int, default=2000, help="Closes per variant (all workers together).")
    parser.add_argument("--workers", type=int, default=2, help="Concurrent workers, each with its own jackd.")
    parser.add_argument("--settle", type=float, action="append",
                        help=f"Pause(s) between stop and close to compare (default 0 and {JACK_CLOSE_SETTLE_S}).")
    parser.add_argument("--period", type=int, default=1024,
                        help="JACK period in frames at 16 kHz (the tests run jackd with 1024).")
    parser.add_argument("--burners", type=int, default=0, help="Busy-looping processes for CPU load during the run.")
    parser.add_argument("--churn", action="store_true", help="Meanwhile start and stop another JACK server, over and over.")
    parser.add_argument("--out", type=Path, help="Write the results as JSON here.")
    parser.add_argument("--worker", metavar="SERVER", help=argparse.SUPPRESS)
    args = parser.parse_args()  # fmt: skip
    settles = args.settle or [0.0, JACK_CLOSE_SETTLE_S]
    if args.worker:
        return worker(args.worker, args.closes, settles[0])
    if shutil.which("jackd") is None:
        print("jackd is not installed (apt install jackd2)", file=sys.stderr)
        return 2
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    burners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.burners)]
    churn = Churn(args.period) if args.churn else None
    results: list[dict] = []
    try:
        if churn is not None:
            churn.start()
        for settle in settles:
            result = run_variant(settle, args.closes, args.workers, args.period)
            if churn is not None:
                result["churn_cycles_so_far"], result["churn_failed_so_far"] = churn.cycles, churn.failed
                if not churn.alive():
                    results.append(result)
                    raise SystemExit(f"the churn stopped during the run: {churn.error}")
            print(json.dumps({k: v for k, v in result.items() if k != "stacks"}), flush=True)
            results.append(result)
    finally:
        if churn is not None:
            churn.stop()
        for burner in burners:
            burner.kill()
        if args.out and results:  # what was measured is kept, even when a later variant failed
            report = {"machine": f"{platform.node()} {platform.machine()}, {os.cpu_count()} CPUs",
                      "started": started, "finished": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                      "workers": args.workers, "burners": args.burners, "churn": args.churn,
                      "period_frames": args.period, "complete": len(results) == len(settles),
                      "results": results}  # fmt: skip
            args.out.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
