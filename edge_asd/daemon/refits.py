"""Enrolment refits off the listen loop: one background thread, results applied between ticks.

Learning an event as normal or finishing a live re-enrolment refits a stream's enrolment
(cross-fitted components, gamma fits, covariance): seconds of CPU for a long enrolment. Done in
the pipeline thread, every stream of the node would skip windows for that long. So the fit runs
here, on one worker thread (fits of one node are serialised: a second feedback on the same
stream sees the first one's result), and what it produced is announced from the pipeline
thread, where everything that publishes lives.

A refit swaps the stream's new enrolment in with one reference assignment, so the pipeline
thread sees either the old enrolment or the new one, never a half-built one.

Offline runs (a file replayed as fast as possible, ``score --stream``) run refits inline, so a
replay gives the same windows and scores every time.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

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
        self._pool: ThreadPoolExecutor | None = None
        self._done: queue.SimpleQueue[Done] = queue.SimpleQueue()
        self._pending = 0
        self._lock = threading.Lock()

    @property
    def pending(self) -> int:
        """Refits submitted and not yet finished."""
        with self._lock:
            return self._pending

    def submit(self, job: Job, what: str) -> bool:
        """Run ``job`` (in the background unless inline); False when too many are waiting."""
        if self.inline:
            self._run(job, what, counted=False)
            return True
        with self._lock:
            if self._pending >= MAX_PENDING:
                logger.error("refit refused (%s): %d refits are already waiting", what, self._pending)
                return False
            self._pending += 1
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="edge-asd-refit")
        self._pool.submit(self._run, job, what, True)
        return True

    def _run(self, job: Job, what: str, counted: bool) -> None:
        try:
            done = job()
        except Exception:  # a failed fit must never take the monitor down
            logger.exception("refit failed: %s", what)
            done = None
        finally:
            if counted:
                with self._lock:
                    self._pending -= 1
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

    def close(self, timeout_s: float | None = None) -> None:
        """Let the running and waiting refits finish (they write the enrolment atomically)."""
        pool, self._pool = self._pool, None
        if pool is None:
            return
        if timeout_s is None:
            pool.shutdown(wait=True)
            return
        finished = threading.Event()

        def _wait() -> None:
            pool.shutdown(wait=True)
            finished.set()

        threading.Thread(target=_wait, name="edge-asd-refit-close", daemon=True).start()
        if not finished.wait(timeout_s):
            logger.warning("refits still running after %.0f s at shutdown: not waiting for them", timeout_s)


__all__ = ["Refits"]
