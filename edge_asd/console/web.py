"""The console's HTTP side (aiohttp): pages, JSON, server-sent events, evidence, commands.

Request pipeline (outermost first):

1. ``security``: every response gets a strict Content-Security-Policy (own assets only, no
   inline script), ``nosniff``, no framing, and the browser's CSRF cookie when it has none;
2. ``access``: a loopback client that addressed the console by a loopback name is
   "localhost"; anyone else needs a session (sign-in form) or HTTP Basic credentials of the
   credentials file, else 401 (the sign-in page for a browser). ``X-Forwarded-For`` is never
   read: the console trusts no proxy, so a forged header changes nothing;
3. ``csrf``: every POST needs the token of its cookie (form field ``csrf`` or header
   ``X-CSRF-Token``) and, when the browser sends ``Origin``, a same-origin one; else 403.

Live updates are one ``text/event-stream`` per page (``/api/stream``); the server pushes
stream states and scores at most once a second, events and feedback results at once.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web

from edge_asd.console import pages
from edge_asd.console.auth import (
    LOCAL_USER,
    BasicCache,
    Credentials,
    Csrf,
    Sessions,
    Throttle,
    is_local_request,
)
from edge_asd.console.files import CONTENT_TYPES, resolve_evidence
from edge_asd.console.link import Commands
from edge_asd.console.settings import ConsoleSettings
from edge_asd.console.state import ConsoleState
from edge_asd.console.store import LABELS, UNLABELLED, EventStore
from edge_asd.core import jsonsafe

logger = logging.getLogger(__name__)

CSRF_COOKIE = "edge_asd_csrf"
SESSION_COOKIE = "edge_asd_session"
CSRF_HEADER = "X-CSRF-Token"
SSE_PING_S = 20.0
SSE_QUEUE = 256
"""Messages waiting for one slow browser; beyond that it is told to reload instead."""

PUBLIC_PREFIXES = ("/static/", "/login")
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; media-src 'self'; "
    "connect-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'; object-src 'none'"
)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Hub:
    """The open event streams; ``publish`` formats once and queues to every browser."""

    def __init__(self, max_queue: int = SSE_QUEUE) -> None:
        self.max_queue = max_queue
        self.clients: set[asyncio.Queue[str | None]] = set()

    def subscribe(self) -> asyncio.Queue[str | None]:
        q: asyncio.Queue[str | None] = asyncio.Queue(self.max_queue)
        self.clients.add(q)
        return q

    def unsubscribe(self, q: asyncio.Queue[str | None]) -> None:
        self.clients.discard(q)

    def publish(self, event: str, data: Any) -> None:
        if not self.clients:
            return
        msg = f"event: {event}\ndata: {jsonsafe.dumps(data, separators=(',', ':'))}\n\n"
        for q in list(self.clients):
            try:
                q.put_nowait(msg)
            except asyncio.QueueFull:
                while not q.empty():
                    q.get_nowait()
                q.put_nowait("event: resync\ndata: {}\n\n")

    def close(self) -> None:
        for q in list(self.clients):
            while not q.empty():
                q.get_nowait()
            q.put_nowait(None)


@dataclass
class ConsoleContext:
    """What the handlers share; built by ``ConsoleServer``."""

    settings: ConsoleSettings
    state: ConsoleState
    store: EventStore
    commands: Commands | None
    broker_status: Callable[[], tuple[bool, str]]
    credentials: Credentials | None = None
    hub: Hub = field(default_factory=Hub)
    csrf: Csrf = field(default_factory=Csrf)
    sessions: Sessions = field(default_factory=Sessions)
    throttle: Throttle = field(default_factory=Throttle)
    basic_cache: BasicCache = field(default_factory=BasicCache)

    @property
    def extra_hosts(self) -> tuple[str, ...]:
        hosts = list(self.settings.extra_hosts)
        if self.settings.public_url:
            name = urlsplit(self.settings.public_url).hostname
            if name:
                hosts.append(name.lower())
        return tuple(hosts)


CTX = web.AppKey("console", ConsoleContext)


@dataclass
class RequestInfo:
    """Per request: the browser's CSRF nonce and token, whether to set the cookie, and who it is."""

    csrf_nonce: str
    csrf_token: str
    csrf_new: bool = False
    user: str | None = None


# aiohttp >= 3.12 wants typed request keys; older releases (a Jetson's pip may pick one) lack them.
_REQUEST_KEY: Any = getattr(web, "RequestKey", None)
INFO: Any = _REQUEST_KEY("edge_asd_console", RequestInfo) if _REQUEST_KEY is not None else "edge_asd_console"


def _info(request: web.Request) -> RequestInfo:
    return request[INFO]


def _ctx(request: web.Request) -> ConsoleContext:
    return request.app[CTX]


def _wants_json(request: web.Request) -> bool:
    return "application/json" in request.headers.get("Accept", "") or request.path.startswith(("/api/", "/fragment/"))


def _apply_headers(request: web.Request, resp: web.StreamResponse) -> None:
    resp.headers.setdefault("Content-Security-Policy", CSP)
    resp.headers.setdefault("X-Content-Type-Options", "nosniff")
    resp.headers.setdefault("X-Frame-Options", "DENY")
    resp.headers.setdefault("Referrer-Policy", "same-origin")
    if _ctx(request).settings.https:
        resp.headers.setdefault("Strict-Transport-Security", "max-age=31536000")
    info = _info(request)
    if info.csrf_new:
        resp.set_cookie(
            CSRF_COOKIE, info.csrf_nonce, httponly=True, samesite="Strict", secure=_ctx(request).settings.https,
            path="/",
        )
        info.csrf_new = False


@web.middleware
async def security_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    nonce = request.cookies.get(CSRF_COOKIE, "")
    new = not nonce or len(nonce) > 128
    if new:
        nonce = Csrf.new_nonce()
    request[INFO] = RequestInfo(nonce, _ctx(request).csrf.token(nonce), new)
    try:
        resp = await handler(request)
    except web.HTTPException as exc:
        _apply_headers(request, exc)
        raise
    if not resp.prepared:
        _apply_headers(request, resp)
    return resp


async def identify(request: web.Request) -> str | None:
    """The user behind a request: "localhost", a signed-in user, a Basic-auth user, or None."""
    ctx = _ctx(request)
    if ctx.settings.trust_localhost and is_local_request(request.remote, request.host, ctx.extra_hosts):
        return LOCAL_USER
    user = ctx.sessions.user(request.cookies.get(SESSION_COOKIE))
    if user is not None:
        return user
    auth = request.headers.get("Authorization", "")
    if ctx.credentials is not None and auth[:6].lower() == "basic ":
        try:
            name, _, password = base64.b64decode(auth[6:].strip(), validate=True).decode("utf-8").partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return None
        cached = ctx.basic_cache.get(name, password)
        if cached is not None:
            return cached
        peer = request.remote or "?"
        if ctx.throttle.blocked(peer):
            return None
        ok = await asyncio.get_running_loop().run_in_executor(None, ctx.credentials.check, name, password)
        if ok:
            ctx.basic_cache.put(name, password)
            ctx.throttle.succeeded(peer)
            return name
        ctx.throttle.failed(peer)
        logger.warning("console: wrong Basic credentials for %r from %s", name, peer)
    return None


@web.middleware
async def access_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    _info(request).user = await identify(request)
    if _info(request).user is not None or request.path.startswith(PUBLIC_PREFIXES):
        return await handler(request)
    if _ctx(request).credentials is None:
        raise web.HTTPForbidden(
            text="This console serves only this machine (no credentials file is configured).\n"
        )
    if request.method == "GET" and not _wants_json(request):
        body = pages.login_page(_info(request).csrf_token, _safe_next(request.path_qs))
        return _html(request, "login", "Sign in", body, status=401)
    raise web.HTTPUnauthorized(text="sign in first (session cookie or HTTP Basic credentials)\n")


@web.middleware
async def csrf_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.method in ("GET", "HEAD", "OPTIONS"):
        return await handler(request)
    origin = request.headers.get("Origin")
    if origin is not None and origin != "null":
        parts = urlsplit(origin)
        if parts.netloc.lower() != request.host.lower():
            logger.warning("console: refused a %s %s from origin %s", request.method, request.path, origin)
            raise web.HTTPForbidden(text="cross-origin request refused\n")
    token = request.headers.get(CSRF_HEADER)
    if token is None and request.content_type in ("application/x-www-form-urlencoded", "multipart/form-data"):
        form = await request.post()
        value = form.get("csrf")
        token = value if isinstance(value, str) else None
    if not _ctx(request).csrf.valid(request.cookies.get(CSRF_COOKIE), token):
        logger.warning("console: refused a %s %s without a valid CSRF token (from %s)",
                       request.method, request.path, request.remote)
        raise web.HTTPForbidden(text="missing or wrong CSRF token: reload the page and try again\n")
    return await handler(request)


def _safe_next(target: str) -> str:
    """Only same-site paths after sign-in (no ``//host`` or ``https://`` open redirect)."""
    if not target.startswith("/") or target.startswith("//") or "\\" in target or target.startswith("/login"):
        return "/"
    return target


def _html(request: web.Request, page: str, title: str, body: str, status: int = 200) -> web.Response:
    ctx = _ctx(request)
    text = pages.layout(page, title, body, csrf=_info(request).csrf_token, user=_info(request).user,
                        broker=ctx.broker_status())
    return web.Response(text=text, content_type="text/html", status=status, headers={"Cache-Control": "no-store"})


def _fragment(text: str) -> web.Response:
    return web.Response(text=text, content_type="text/html", headers={"Cache-Control": "no-store"})


def _json(data: Any, status: int = 200) -> web.Response:
    return web.json_response(data, status=status, dumps=lambda d: jsonsafe.dumps(d, separators=(",", ":")),
                             headers={"Cache-Control": "no-store"})


def _split_stream(value: str) -> tuple[str, str]:
    node, _, stream = value.partition("/")
    return (node, stream) if stream else ("", "")


def _event_or_404(request: web.Request) -> dict[str, Any]:
    rec = _ctx(request).store.get(request.query.get("node", ""), request.query.get("id", ""))
    if rec is None:
        raise web.HTTPNotFound(text="no such event in the console's history\n")
    return rec


# --- pages ----------------------------------------------------------------------------------


async def now_handler(request: web.Request) -> web.Response:
    ctx = _ctx(request)
    body = pages.now_page(ctx.state, ctx.store.query(active=True, limit=200))
    return _html(request, "now", "Now", body)


def _event_filters(request: web.Request) -> dict[str, Any]:
    node, stream = _split_stream(request.query.get("stream", ""))
    label = request.query.get("label", "")
    if label not in (*LABELS, UNLABELLED):
        label = ""
    before = request.query.get("before")
    try:
        before_f = float(before) if before else None
    except ValueError:
        before_f = None
    return {"node": node, "stream": stream, "label": label, "before": before_f}


async def events_handler(request: web.Request) -> web.Response:
    ctx = _ctx(request)
    f = _event_filters(request)
    records = ctx.store.query(node=f["node"] or None, stream=f["stream"] or None, label=f["label"] or None,
                              before=f["before"], limit=100)
    live = [(s.node, s.name) for s in ctx.state.streams()]
    body = pages.events_page(records, [*ctx.store.streams(), *live], stream=f["stream"], node=f["node"],
                             label=f["label"])
    return _html(request, "events", "Events", body)


async def event_handler(request: web.Request) -> web.Response:
    ctx = _ctx(request)
    rec = _event_or_404(request)
    node = ctx.state.nodes.get(rec["node"])
    body = pages.event_page(
        rec, ctx.store.feedback_for(rec["node"], rec["id"]), csrf=_info(request).csrf_token,
        local_node=ctx.settings.node_id, remote_console=node.console_url if node else None,
    )
    return _html(request, "event", f"Event {rec['node']}/{rec['stream']}", body)


async def streams_handler(request: web.Request) -> web.Response:
    ctx = _ctx(request)
    return _html(request, "streams", "Streams", pages.streams_page(ctx.state, _info(request).csrf_token))


async def login_get(request: web.Request) -> web.StreamResponse:
    if _info(request).user is not None:
        raise web.HTTPSeeOther(_safe_next(request.query.get("next", "/")))
    body = pages.login_page(_info(request).csrf_token, _safe_next(request.query.get("next", "/")))
    return _html(request, "login", "Sign in", body)


async def login_post(request: web.Request) -> web.StreamResponse:
    ctx = _ctx(request)
    form = await request.post()
    user, password = str(form.get("user", "")), str(form.get("password", ""))
    next_url = _safe_next(str(form.get("next", "/")))
    peer = request.remote or "?"
    if ctx.credentials is None:
        raise web.HTTPForbidden(text="no credentials file: this console serves only this machine\n")
    if ctx.throttle.blocked(peer):
        logger.warning("console: sign-in from %s blocked after repeated failures", peer)
        body = pages.login_page(_info(request).csrf_token, next_url, "too many failed attempts: wait a few minutes")
        return _html(request, "login", "Sign in", body, status=429)
    ok = await asyncio.get_running_loop().run_in_executor(None, ctx.credentials.check, user, password)
    if not ok:
        ctx.throttle.failed(peer)
        logger.warning("console: failed sign-in for %r from %s", user, peer)
        await asyncio.sleep(0.5)
        body = pages.login_page(_info(request).csrf_token, next_url, "wrong user name or password")
        return _html(request, "login", "Sign in", body, status=401)
    ctx.throttle.succeeded(peer)
    logger.info("console: %s signed in from %s", user, peer)
    resp = web.HTTPSeeOther(next_url)
    resp.set_cookie(SESSION_COOKIE, ctx.sessions.create(user), httponly=True, samesite="Strict",
                    secure=ctx.settings.https, path="/")
    raise resp


async def logout_post(request: web.Request) -> web.StreamResponse:
    ctx = _ctx(request)
    ctx.sessions.drop(request.cookies.get(SESSION_COOKIE))
    resp = web.HTTPSeeOther("/login")
    resp.del_cookie(SESSION_COOKIE, path="/")
    raise resp


# --- JSON and fragments ---------------------------------------------------------------------


async def api_now(request: web.Request) -> web.Response:
    ctx = _ctx(request)
    now = time.time()
    nodes = []
    for name in sorted(ctx.state.nodes):
        node = ctx.state.nodes[name]
        view = pages.node_view(node)
        view["streams"] = [pages.stream_view(node, s, now) for _, s in sorted(node.streams.items())]
        nodes.append(view)
    ok, why = ctx.broker_status()
    return _json({"nodes": nodes, "open_events": ctx.store.query(active=True, limit=200),
                  "broker": {"connected": ok, "message": why}, "node": ctx.settings.node_id})


async def api_series(request: web.Request) -> web.Response:
    ctx = _ctx(request)
    resp = _json({"now": time.time(), "history_s": ctx.settings.history_s,
                  "series": {s.key: s.series() for s in ctx.state.streams()}})
    resp.enable_compression()  # an hour of 32 streams: ~0.6 MB of JSON, ~0.1 MB gzipped
    return resp


async def api_events(request: web.Request) -> web.Response:
    ctx = _ctx(request)
    f = _event_filters(request)
    try:
        limit = int(request.query.get("limit", "100"))
    except ValueError:
        limit = 100
    records = ctx.store.query(node=f["node"] or None, stream=f["stream"] or None, label=f["label"] or None,
                              before=f["before"], limit=limit)
    return _json({"events": records})


async def api_event(request: web.Request) -> web.Response:
    rec = _event_or_404(request)
    return _json({"event": rec, "feedback": _ctx(request).store.feedback_for(rec["node"], rec["id"])})


async def api_csrf(request: web.Request) -> web.Response:
    """For scripts: the token that goes with the cookie this response sets (or the one sent)."""
    return _json({"token": _info(request).csrf_token, "header": CSRF_HEADER})


async def fragment_event(request: web.Request) -> web.Response:
    ctx = _ctx(request)
    rec = _event_or_404(request)
    view = request.query.get("view", "row")
    if view == "open":
        return _fragment(pages.open_event_item(rec)) if rec["active"] else web.Response(status=204)
    if view == "facts":
        return _fragment(pages.event_facts(rec))
    f = _event_filters(request)
    if not ctx.store.matches(rec, node=f["node"] or None, stream=f["stream"] or None, label=f["label"] or None):
        return web.Response(status=204)
    return _fragment(pages.event_row(rec))


async def fragment_feedback(request: web.Request) -> web.Response:
    rec = _event_or_404(request)
    return _fragment(pages.feedback_log(rec["node"], rec["id"], _ctx(request).store.feedback_for(rec["node"], rec["id"])))


async def fragment_node(request: web.Request) -> web.Response:
    node = _ctx(request).state.nodes.get(request.query.get("node", ""))
    if node is None:
        raise web.HTTPNotFound(text="no such node\n")
    return _fragment(pages.node_section(node))


async def fragment_stream_row(request: web.Request) -> web.Response:
    ctx = _ctx(request)
    node_name, stream_name = request.query.get("node", ""), request.query.get("stream", "")
    stream = ctx.state.find(node_name, stream_name)
    if stream is None:
        raise web.HTTPNotFound(text="no such stream\n")
    return _fragment(pages.stream_row(ctx.state.nodes[node_name], stream, _info(request).csrf_token))


async def sse_handler(request: web.Request) -> web.StreamResponse:
    ctx = _ctx(request)
    resp = web.StreamResponse(headers={
        "Content-Type": "text/event-stream", "Cache-Control": "no-store", "X-Accel-Buffering": "no",
    })
    _apply_headers(request, resp)
    await resp.prepare(request)
    q = ctx.hub.subscribe()
    try:
        await resp.write(b"retry: 3000\n\n")
        while True:
            try:
                msg = await asyncio.wait_for(q.get(), SSE_PING_S)
            except asyncio.TimeoutError:
                msg = ": ping\n\n"
            if msg is None:
                break
            await resp.write(msg.encode("utf-8"))
    except (ConnectionResetError, RuntimeError):
        pass  # the browser went away
    finally:
        ctx.hub.unsubscribe(q)
    return resp


# --- commands -------------------------------------------------------------------------------


async def _form(request: web.Request) -> dict[str, str]:
    if request.content_type == "application/json":
        try:
            data = await request.json()
        except ValueError:
            raise web.HTTPBadRequest(text="body is not JSON\n") from None
        return {k: str(v) for k, v in data.items()} if isinstance(data, dict) else {}
    form = await request.post()
    return {k: v for k, v in form.items() if isinstance(v, str)}


def _answer(request: web.Request, ok: bool, message: str, redirect: str, status: int = 200) -> web.StreamResponse:
    if "application/json" in request.headers.get("Accept", ""):  # the page script's fetch()
        return _json({"ok": ok, "message": message}, status=status if not ok else 200)
    if not ok:
        raise web.HTTPServiceUnavailable(text=message + "\n") if status == 503 else web.HTTPBadRequest(text=message + "\n")
    raise web.HTTPSeeOther(redirect)


def _commands(request: web.Request) -> Commands:
    commands = _ctx(request).commands
    if commands is None:
        raise web.HTTPServiceUnavailable(text="this console has no MQTT connection\n")
    return commands


async def feedback_post(request: web.Request) -> web.StreamResponse:
    ctx = _ctx(request)
    form = await _form(request)
    node, eid, label = form.get("node", ""), form.get("event", ""), form.get("label", "")
    if label not in LABELS:
        raise web.HTTPBadRequest(text=f"label must be one of {', '.join(LABELS)}\n")
    rec = ctx.store.get(node, eid)
    if rec is None:
        raise web.HTTPNotFound(text="no such event in the console's history\n")
    by = str(_info(request).user)
    stream = rec["stream"]
    redirect = pages.event_url(node, eid)
    problem = _commands(request).feedback(node, stream, eid, label, by)
    if problem is not None:
        logger.warning("console: feedback %s on %s/%s event %s by %s NOT sent: %s", label, node, stream, eid, by, problem)
        return _answer(request, False, f"not sent: {problem}", redirect, status=503)
    ctx.store.add_feedback(node, stream, eid, label, by)
    logger.info("console: feedback %s on %s/%s event %s sent by %s", label, node, stream, eid, by)
    ctx.hub.publish("feedback", {"node": node, "event": eid, "stream": stream})
    return _answer(request, True, "sent; waiting for the daemon's answer", redirect)


def _stream_or_404(request: web.Request, form: dict[str, str]) -> tuple[str, str]:
    node, stream = form.get("node", ""), form.get("stream", "")
    if _ctx(request).state.find(node, stream) is None:
        raise web.HTTPNotFound(text="no such stream\n")
    return node, stream


async def enrol_post(request: web.Request) -> web.StreamResponse:
    form = await _form(request)
    node, stream = _stream_or_404(request, form)
    try:
        minutes = float(form.get("minutes", ""))
    except ValueError:
        minutes = math.nan
    if not 1 <= minutes <= pages.ENROL_MINUTES_MAX:
        raise web.HTTPBadRequest(text=f"minutes must be between 1 and {pages.ENROL_MINUTES_MAX}\n")
    minutes = int(minutes) if minutes == int(minutes) else minutes
    problem = _commands(request).enrol(node, stream, minutes)
    who = _info(request).user
    if problem is not None:
        return _answer(request, False, f"not sent: {problem}", "/streams", status=503)
    logger.info("console: re-enrolment of %s/%s for %s min asked by %s", node, stream, minutes, who)
    return _answer(request, True, f"re-enrolment of {node}/{stream} asked ({minutes} min)", "/streams")


async def enabled_post(request: web.Request) -> web.StreamResponse:
    form = await _form(request)
    node, stream = _stream_or_404(request, form)
    state = form.get("state", "").upper()
    if state not in ("ON", "OFF"):
        raise web.HTTPBadRequest(text="state must be ON or OFF\n")
    problem = _commands(request).enabled(node, stream, state == "ON")
    if problem is not None:
        return _answer(request, False, f"not sent: {problem}", "/streams", status=503)
    logger.info("console: %s/%s switched %s by %s", node, stream, state, _info(request).user)
    return _answer(request, True, f"{node}/{stream}: {'enable' if state == 'ON' else 'disable'} sent", "/streams")


# --- evidence -------------------------------------------------------------------------------


async def evidence_handler(request: web.Request) -> web.StreamResponse:
    ctx = _ctx(request)
    node = request.match_info["node"]
    folder, name = request.match_info["folder"], request.match_info["name"]
    if node != ctx.settings.node_id:
        raise web.HTTPNotFound(text=f"evidence on node {node}: open it on that node's console\n")
    path = resolve_evidence(ctx.settings.evidence_root, folder, name)
    if path is None:
        raise web.HTTPNotFound(text="no such evidence file\n")
    return web.FileResponse(path, headers={
        "Content-Type": CONTENT_TYPES[path.suffix.lower()], "Cache-Control": "private, max-age=3600",
    })


def static_dir() -> Path:
    """The packaged assets (plain files inside the package: no CDN, no build step)."""
    return Path(str(resources.files("edge_asd.console") / "static"))


def make_app(ctx: ConsoleContext) -> web.Application:
    app = web.Application(middlewares=[security_middleware, access_middleware, csrf_middleware],
                          client_max_size=64 * 1024)
    app[CTX] = ctx
    app.router.add_get("/", now_handler)
    app.router.add_get("/events", events_handler)
    app.router.add_get("/event", event_handler)
    app.router.add_get("/streams", streams_handler)
    app.router.add_get("/login", login_get)
    app.router.add_post("/login", login_post)
    app.router.add_post("/logout", logout_post)
    app.router.add_get("/api/now", api_now)
    app.router.add_get("/api/series", api_series)
    app.router.add_get("/api/events", api_events)
    app.router.add_get("/api/event", api_event)
    app.router.add_get("/api/csrf", api_csrf)
    app.router.add_get("/api/stream", sse_handler)
    app.router.add_post("/api/feedback", feedback_post)
    app.router.add_post("/api/enrol", enrol_post)
    app.router.add_post("/api/enabled", enabled_post)
    app.router.add_get("/fragment/event", fragment_event)
    app.router.add_get("/fragment/feedback", fragment_feedback)
    app.router.add_get("/fragment/node", fragment_node)
    app.router.add_get("/fragment/stream-row", fragment_stream_row)
    app.router.add_get("/evidence/{node}/{folder}/{name}", evidence_handler)
    app.router.add_static("/static/", static_dir(), follow_symlinks=False, show_index=False)
    return app


__all__ = ["CSRF_COOKIE", "CSRF_HEADER", "CTX", "SESSION_COOKIE", "ConsoleContext", "Hub", "identify", "make_app"]
