"""Enrolment refits off the listen loop: one background thread, results applied between ticks.

Learning an event as normal or finishing a live re-enrolment refits a stream's enrolment
(cross-fitted components, gamma fits, covariance): seconds of CPU for a long enrolment. Done in
the pipeline thread, every stream of the node would skip windows for that long. So the fit runs
here, on one worker thread (fits of one node are serialised: a second feedback on the same
stream sees the first one's result), and what it produced is announced from the pipeline
thread, where everything that publishes lives.

A refit swaps the stream's new enrolment in with one reference assignment, so the pipeline
thread sees either the old enrolment or the new one, never a half-built one.

At a stop, refits still waiting are dropped and the running one gets a short wait (its save is
atomic: a fit cut short loses only its result, never the stored enrolment); the worker is a
daemon thread, so nothing here can hold the process past systemd's stop timeout.

Offline runs (a file replayed as fast as possible, ``score --stream``) run refits inline, so a
replay gives the same windows and scores every time.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable

logger = logging.getLogger(__name__)

Done = Callable[[], None]
"""What a finished refit asks the pipeline thread to do (publish its result); may be a no-op."""

Job = Callable[[], Done | None]
"""A refit: runs on the worker, returns what to announce afterwards."""

MAX_PENDING = 64
"""Refits waiting at once; more are refused (an operator clicking through a long list of
events is served in order; a flood of commands is not allowed to pile up without bound)."""


class Refits:
    """Runs refit jobs on one worker thread (or inline) and hands back their announcements."""

    def __init__(self, *, inline: bool = False) -> None:
        self.inline = inline
        self._jobs: queue.Queue[tuple[Job, str] | None] = queue.Queue()
        self._done: queue.SimpleQueue[Done] = queue.SimpleQueue()
        self._pending = 0
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._closed = False

    @property
    def pending(self) -> int:
        """Refits submitted and not yet finished."""
        with self._lock:
            return self._pending

    def submit(self, job: Job, what: str) -> bool:
        """Run ``job`` (in the background unless inline); False when too many are waiting or
        the node is stopping."""
        if self.inline:
            self._run(job, what)
            return True
        with self._lock:
            if self._closed:
                logger.warning("refit refused (%s): the node is stopping", what)
                return False
            if self._pending >= MAX_PENDING:
                logger.error("refit refused (%s): %d refits are already waiting", what, self._pending)
                return False
            self._pending += 1
            if self._thread is None:
                self._thread = threading.Thread(target=self._work, name="edge-asd-refit", daemon=True)
                self._thread.start()
        self._jobs.put((job, what))
        return True

    def _work(self) -> None:
        while True:
            item = self._jobs.get()
            if item is None:
                return
            job, what = item
            with self._lock:
                closed = self._closed
            if closed:  # taken off the queue while a stop was draining it: dropped, not run
                logger.warning("refit dropped at stop: %s", what)
                with self._lock:
                    self._pending -= 1
                continue
            try:
                self._run(job, what)
            finally:
                with self._lock:
                    self._pending -= 1

    def _run(self, job: Job, what: str) -> None:
        try:
            done = job()
        except Exception:  # a failed fit must never take the monitor down
            logger.exception("refit failed: %s", what)
            done = None
        if done is not None:
            self._done.put(done)

    def announce(self) -> int:
        """Run the announcements of finished refits (pipeline thread); returns how many."""
        n = 0
        while True:
            try:
                done = self._done.get_nowait()
            except queue.Empty:
                return n
            n += 1
            try:
                done()
            except Exception:
                logger.exception("announcing a refit failed")

    def wait_idle(self, timeout_s: float) -> bool:
        """Wait until every submitted refit has finished (True) or ``timeout_s`` passed."""
        deadline = time.monotonic() + timeout_s
        while self.pending:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.01)
        return True

    def close(self, timeout_s: float | None = None) -> None:
        """Drop the refits still waiting and give the running one ``timeout_s`` to finish."""
        with self._lock:
            self._closed = True
            thread = self._thread
        dropped = 0
        while True:
            try:
                item = self._jobs.get_nowait()
            except queue.Empty:
                break
            if item is not None:
                dropped += 1
                logger.warning("refit dropped at stop: %s", item[1])
        with self._lock:
            self._pending -= dropped
        if thread is None:
            return
        self._jobs.put(None)
        thread.join(timeout_s)
        if thread.is_alive():
            logger.warning("a refit was still running after %.0f s at stop: its result is lost "
                           "(the stored enrolment is unchanged)", timeout_s or 0.0)  # fmt: skip


__all__ = ["Refits"]
