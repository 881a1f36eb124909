"""One console: the MQTT link, the live state, the history database and the web server, on one loop.

paho delivers messages on its own thread; each one is handed to the asyncio loop
(``call_soon_threadsafe``), so the state, the database and the browsers' queues are only
ever touched from the loop's thread and need no lock. Scores (about one a second per
stream) only mark their stream dirty; a one-second tick sends the changed streams to the
browsers in one message, so 32 streams cost one small write a second per open page and
nothing at all when no page is open.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import ssl
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from aiohttp import web

from edge_asd.console.auth import Credentials
from edge_asd.console.link import Commands, ConsoleLink
from edge_asd.console.pages import node_view, stream_view
from edge_asd.console.settings import ConsoleError, ConsoleSettings
from edge_asd.console.state import CONSOLE_LEAF, EVENT, FEEDBACK, NODE, SCORE, STREAM, ConsoleState, Update
from edge_asd.console.store import EventStore
from edge_asd.console.web import ConsoleContext, make_app

logger = logging.getLogger(__name__)

FLUSH_S = 1.0
"""How often changed streams and scores are pushed to open pages."""

T = TypeVar("T")


class ConsoleServer:
    """Start with ``await start()``, stop with ``await stop()``; ``url`` is where it listens."""

    def __init__(self, settings: ConsoleSettings) -> None:
        settings.check()
        self.settings = settings
        self.credentials = Credentials.load(settings.credentials_file) if settings.credentials_file else None
        self.state = ConsoleState(settings.prefix, settings.history_s, settings.bucket_s)
        self.store: EventStore | None = None
        self.link: ConsoleLink | None = None
        self.ctx: ConsoleContext | None = None
        self.url = ""
        self._runner: web.AppRunner | None = None
        self._flusher: asyncio.Task[None] | None = None
        self._seen: set[tuple[str, str]] = set()
        self._dirty_nodes: set[str] = set()
        self._dirty_streams: set[tuple[str, str]] = set()
        self._dirty_scores: set[tuple[str, str]] = set()

    def _ssl_context(self) -> ssl.SSLContext | None:
        s = self.settings
        if s.cert_file is None or s.key_file is None:
            return None
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        try:
            ctx.load_cert_chain(certfile=str(s.cert_file), keyfile=str(s.key_file))
        except (ssl.SSLError, OSError, ValueError) as err:
            raise ConsoleError(f"--cert {s.cert_file} / --key {s.key_file}: not a valid PEM certificate and "
                               f"matching key ({err})") from None
        return ctx

    def _broker_status(self) -> tuple[bool, str]:
        if self.link is None:
            return False, "not started"
        return self.link.connected, self.link.last_error

    async def start(self) -> None:
        s = self.settings
        loop = asyncio.get_running_loop()
        ssl_ctx = self._ssl_context()
        self.store = EventStore(s.database, s.max_events)
        self.ctx = ConsoleContext(s, self.state, self.store, None, self._broker_status, self.credentials)
        self._runner = web.AppRunner(make_app(self.ctx), shutdown_timeout=2.0, access_log=None)
        await self._runner.setup()
        try:
            await web.TCPSite(self._runner, s.host, s.port, ssl_context=ssl_ctx).start()
        except OSError as err:
            await self._runner.cleanup()
            self.store.close()
            raise ConsoleError(f"cannot listen on {s.host}:{s.port}: {err.strerror or err}; "
                               "choose another --port or stop what uses it") from None
        port = self._runner.addresses[0][1]
        s.port = int(port)
        host = f"[{s.host}]" if ":" in s.host else s.host
        self.url = f"{'https' if s.https else 'http'}://{host}:{port}/"
        announced = s.announced_url()
        announce = None
        if announced:
            announce = (f"{s.prefix}/{s.node_id}/{CONSOLE_LEAF}", json.dumps({"url": announced}))

        def hand_over(topic: str, payload: str, retained: bool, ts: float) -> None:
            loop.call_soon_threadsafe(self.on_message, topic, payload, ts)

        self.link = ConsoleLink(s.mqtt, s.prefix, f"edge-asd-console-{s.node_id}-{port}", hand_over, announce)
        self.ctx.commands = Commands(self.link, s.prefix)
        self.link.start()
        self._flusher = asyncio.create_task(self._flush_loop())
        logger.info("console on %s (node %s, evidence %s, history %s)", self.url, s.node_id, s.evidence_root,
                    s.database)

    async def stop(self) -> None:
        if self._flusher is not None:
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
        if self.ctx is not None:
            self.ctx.hub.close()
        if self.link is not None:
            await asyncio.get_running_loop().run_in_executor(None, self.link.stop)
        if self._runner is not None:
            await self._runner.cleanup()
        if self.store is not None:
            self.store.close()

    # --- messages -------------------------------------------------------------------------

    def on_message(self, topic: str, payload: str, ts: float | None = None) -> Update | None:
        """Fold one MQTT message in (on the loop's thread) and note what the pages must learn."""
        update = self.state.apply(topic, payload, ts)
        if update is None or self.ctx is None or self.store is None:
            return update
        if update.stream and update.kind in (STREAM, SCORE) and (update.node, update.stream) not in self._seen:
            self._seen.add((update.node, update.stream))
            self._dirty_streams.add((update.node, update.stream))
        if update.kind == EVENT:
            self._event(update, ts)
        elif update.kind == FEEDBACK:
            self._feedback(update)
        elif update.kind == SCORE:
            self._dirty_scores.add((update.node, update.stream))
        elif update.kind == STREAM:
            self._dirty_streams.add((update.node, update.stream))
        elif update.kind == NODE:
            self._dirty_nodes.add(update.node)
        return update

    def _event(self, update: Update, ts: float | None) -> None:
        assert self.store is not None and self.ctx is not None
        event = update.data
        kind = str(event.get("type") or "update")
        rec = self.store.upsert(update.node, kind, event["after"], ts)
        if rec is None:
            logger.warning("console: event without an id from node %s ignored", update.node)
            return
        self.ctx.hub.publish("event", {"node": rec["node"], "id": rec["id"], "stream": rec["stream"],
                                       "type": kind, "active": rec["active"], "label": rec["label"]})

    def _feedback(self, update: Update) -> None:
        assert self.store is not None and self.ctx is not None
        row = self.store.feedback_result(update.node, update.stream, update.data)
        if row is None:
            return
        logger.info("console: %s answered feedback %s on event %s: ok=%s, %s, threshold %s",
                    update.node, row["label"], row["event"], row["ok"], row["message"], row["threshold"])
        self.ctx.hub.publish("feedback", {"node": update.node, "event": row["event"], "stream": update.stream,
                                          "ok": row["ok"], "threshold": row["threshold"], "message": row["message"]})

    async def _flush_loop(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_S)
            try:
                self.flush()
            except Exception:
                logger.exception("console: could not push updates to the pages")

    def flush(self) -> None:
        """Push what changed since the last tick to the open pages (nothing when none is open)."""
        assert self.ctx is not None
        hub = self.ctx.hub
        nodes, streams, scores = self._dirty_nodes, self._dirty_streams, self._dirty_scores
        self._dirty_nodes, self._dirty_streams, self._dirty_scores = set(), set(), set()
        if not hub.clients:
            return
        now = time.time()
        for name in sorted(nodes):
            node = self.state.nodes.get(name)
            if node is not None:
                view = node_view(node)
                view["streams"] = [stream_view(node, s, now) for _, s in sorted(node.streams.items())]
                hub.publish("node", view)
        views = []
        for node_name, stream_name in sorted(streams - {(n, s) for n in nodes for s in self._streams_of(n)}):
            stream = self.state.find(node_name, stream_name)
            if stream is not None:
                views.append(stream_view(self.state.nodes[node_name], stream, now))
        if views:
            hub.publish("streams", {"streams": views})
        points: dict[str, list[Any]] = {}
        for node_name, stream_name in scores:
            stream = self.state.find(node_name, stream_name)
            if stream is not None and stream.score is not None:
                text = f"{stream.score:.3f}"
                points[stream.key] = [stream.score_ts, stream.score, stream.threshold, text]
        if points:
            hub.publish("scores", {"t": now, "s": points})

    def _streams_of(self, node: str) -> list[str]:
        found = self.state.nodes.get(node)
        return list(found.streams) if found else []


def run_console(settings: ConsoleSettings, on_ready: Callable[[str], None] | None = None) -> None:
    """Serve until SIGINT or SIGTERM (the CLI and the systemd unit)."""

    async def main() -> None:
        server = ConsoleServer(settings)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, stop.set)
        await server.start()
        try:
            if on_ready is not None:
                on_ready(server.url)
            await stop.wait()
        finally:
            await server.stop()

    asyncio.run(main())


class ConsoleThread:
    """A console on a loop of its own thread: for tests, benchmarks and the demo."""

    def __init__(self, settings: ConsoleSettings) -> None:
        self.server = ConsoleServer(settings)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="edge-asd-console", daemon=True)

    @property
    def url(self) -> str:
        return self.server.url

    def _run(self) -> None:
        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            try:
                await self.server.start()
            except BaseException as err:
                self._error = err
                self._ready.set()
                return
            self._ready.set()
            try:
                await self._stop.wait()
            finally:
                await self.server.stop()

        asyncio.run(main())

    def start(self, timeout_s: float = 10.0) -> str:
        self._thread.start()
        if not self._ready.wait(timeout_s):
            raise RuntimeError("the console did not start in time")
        if self._error is not None:
            raise self._error
        return self.url

    def call(self, fn: Callable[[], T], timeout_s: float = 5.0) -> T:
        """Run ``fn`` on the console's loop thread (where its state lives) and return its result."""
        assert self._loop is not None

        async def wrapper() -> T:
            return fn()

        return asyncio.run_coroutine_threadsafe(wrapper(), self._loop).result(timeout_s)

    def stop(self, timeout_s: float = 10.0) -> None:
        if self._loop is not None and self._stop is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout_s)


__all__ = ["FLUSH_S", "ConsoleServer", "ConsoleThread", "run_console"]
