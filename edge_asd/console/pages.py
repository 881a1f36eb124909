"""The console's HTML: whole pages for the first load, fragments for live updates.

Why the server renders the HTML: a phone or a control-room screen shows the page at once
and without JavaScript (forms post and redirect back), and there is one place that formats
a number, a status or an age. The small script (static/app.js) only patches fields by
``data-field`` with the preformatted texts of :func:`stream_view`, draws the plots, and
swaps in fragments rendered here when events arrive. No external asset, no inline script
(the Content-Security-Policy forbids both).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterable
from html import escape
from typing import Any
from urllib.parse import urlencode

from edge_asd.console.files import evidence_url
from edge_asd.console.state import ConsoleState, NodeState, StreamState, effective_status
from edge_asd.console.store import UNLABELLED
from edge_asd.core.constants import OFFLINE, ONLINE

logger = logging.getLogger(__name__)

ENROL_MINUTES_DEFAULT = 10
ENROL_MINUTES_MAX = 240
"""Re-enrolment length the Streams page offers (minutes of normal operation recorded)."""

NAV = (("now", "/", "Now"), ("events", "/events", "Events"), ("streams", "/streams", "Streams"))


def e(value: Any) -> str:
    return escape("" if value is None else str(value), quote=True)


def fmt_num(value: Any, digits: int = 3) -> str:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return f"{value:.{digits}f}"
    return "–"


def fmt_time(ts: Any) -> str:
    """A ``<time>`` in the server's local time; the script rewrites it in the browser's."""
    if not isinstance(ts, (int, float)):
        return "–"
    text = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))
    return f'<time data-ts="{ts:.3f}">{text}</time>'


def fmt_span(seconds: float) -> str:
    seconds = max(0.0, float(seconds))
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.0f} d"


def event_url(node: str, eid: str) -> str:
    return "/event?" + urlencode({"node": node, "id": eid})


# --- streams --------------------------------------------------------------------------------


def enrolment_text(stream: StreamState, now: float) -> str:
    info = stream.enrolment
    state = info.get("state")
    if not state:
        return "not reported"
    parts = [str(state)]
    created = info.get("created")
    if isinstance(created, (int, float)):
        parts.append(f"enrolled {fmt_span(now - created)} ago")
    if isinstance(info.get("windows"), int):
        parts.append(f"{info['windows']} windows")
    if isinstance(info.get("minutes"), (int, float)):
        parts.append(f"{info['minutes']:g} min")
    if state == "missing":
        parts.append("bundle threshold in use")
    return " · ".join(parts)


def enrol_text(stream: StreamState) -> str:
    info = stream.enrol
    state = info.get("state")
    if not state:
        return ""
    text = str(state)
    progress = info.get("progress")
    if state == "enrolling" and isinstance(progress, (int, float)):
        text += f" {100 * progress:.0f} %"
    if info.get("message"):
        text += f": {info['message']}"
    return text


def stream_view(node: NodeState, stream: StreamState, now: float | None = None) -> dict[str, Any]:
    """One stream as JSON for the page script: raw values plus the texts it puts in place."""
    now = time.time() if now is None else now
    status = effective_status(node, stream)
    over = stream.score is not None and stream.threshold is not None and stream.score >= stream.threshold
    anomaly_on = stream.anomaly == "ON"
    classes = ["card", f"st-{status}"] + (["over"] if over else []) + (["anomaly-on"] if anomaly_on else [])
    message = stream.message
    if node.available == OFFLINE and not message:
        message = f"node {node.name} is offline"
    return {
        "key": stream.key, "node": node.name, "stream": stream.name, "status": status,
        "status_text": status, "message": message, "anomaly": stream.anomaly,
        "anomaly_text": "ANOMALY" if anomaly_on else ("normal" if stream.anomaly == "OFF" else "–"),
        "score": stream.score, "score_ts": stream.score_ts, "score_text": fmt_num(stream.score),
        "threshold": stream.threshold, "threshold_text": fmt_num(stream.threshold),
        "enabled": stream.enabled, "enabled_text": {"ON": "enabled", "OFF": "disabled"}.get(stream.enabled, "–"),
        "enrolment_text": enrolment_text(stream, now), "enrol_text": enrol_text(stream),
        "card_class": " ".join(classes), "over": over,
    }


def node_view(node: NodeState) -> dict[str, Any]:
    return {"node": node.name, "available": node.available, "available_text": node.available,
            "console_url": node.console_url}


# --- layout ---------------------------------------------------------------------------------


def layout(page: str, title: str, body: str, *, csrf: str, user: str | None, broker: tuple[bool, str]) -> str:
    nav = "".join(
        f'<a href="{href}"{" aria-current=page" if key == page else ""}>{label}</a>' for key, href, label in NAV
    ) if user else ""
    ok, why = broker
    broker_badge = ""
    if user:  # nothing about the plant's network for somebody who has not signed in
        broker_badge = (f'<span id="broker" class="badge {"ok" if ok else "bad"}" title="{e(why)}">'
                        f'{"broker connected" if ok else "broker unreachable"}</span>')
    who = ""
    if user:
        who = (f'<form class="who" method="post" action="/logout"><span>{e(user)}</span>'
               f'<input type="hidden" name="csrf" value="{e(csrf)}">'
               + ('<button type="submit" class="link">sign out</button>' if user != "localhost" else "")
               + "</form>")
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f'<meta name="csrf-token" content="{e(csrf)}">'
        f"<title>{e(title)} · edge-asd</title>"
        '<link rel="stylesheet" href="/static/app.css"><link rel="icon" href="/static/icon.svg">'
        '<script src="/static/app.js" defer></script></head>'
        f'<body data-page="{e(page)}"><header class="top"><a class="brand" href="/">edge-asd</a>'
        f"<nav>{nav}</nav>{broker_badge}{who}</header>"
        f'<main>{body}</main><p id="live" class="live" hidden>live</p></body></html>'
    )


# --- Now ------------------------------------------------------------------------------------


def stream_card(node: NodeState, stream: StreamState) -> str:
    v = stream_view(node, stream)
    return (
        f'<article class="{e(v["card_class"])}" data-key="{e(v["key"])}">'
        f'<header><h3>{e(stream.name)}</h3><span class="badge status" data-field="status_text">{e(v["status_text"])}</span>'
        f'<span class="badge anomaly" data-field="anomaly_text">{e(v["anomaly_text"])}</span></header>'
        f'<p class="why" data-field="message">{e(v["message"])}</p>'
        f'<p class="nums">score <b data-field="score_text">{v["score_text"]}</b> · threshold '
        f'<b data-field="threshold_text">{v["threshold_text"]}</b></p>'
        f'<canvas class="plot" data-plot="{e(v["key"])}" width="320" height="90" role="img" '
        f'aria-label="score of {e(stream.name)} against its threshold over the last hour"></canvas></article>'
    )


def node_section(node: NodeState) -> str:
    link = ""
    if node.console_url:
        link = f' <a class="small" href="{e(node.console_url)}">its console</a>'
    cards = "".join(stream_card(node, s) for _, s in sorted(node.streams.items()))
    if not cards:
        cards = '<p class="empty">no stream reported yet</p>'
    avail_cls = "ok" if node.available == ONLINE else "bad"
    return (
        f'<section class="node" data-node="{e(node.name)}"><h2>{e(node.name)} '
        f'<span class="badge {avail_cls}" data-node-field="available_text">{e(node.available)}</span>{link}</h2>'
        f'<div class="cards">{cards}</div></section>'
    )


def open_event_item(rec: dict[str, Any]) -> str:
    summary = f' <span class="summary">{e(rec["summary"])}</span>' if rec.get("summary") else ""
    return (
        f'<li data-event="{e(rec["node"])}/{e(rec["id"])}"><a href="{e(event_url(rec["node"], rec["id"]))}">'
        f'<b>{e(rec["node"])}/{e(rec["stream"])}</b> since {fmt_time(rec.get("start_wall"))} · peak '
        f'{fmt_num(rec.get("peak"))} / {fmt_num(rec.get("threshold"))}</a>{summary}</li>'
    )


def now_page(state: ConsoleState, open_events: list[dict[str, Any]]) -> str:
    items = "".join(open_event_item(r) for r in open_events) or '<li class="empty">no open event</li>'
    nodes = "".join(node_section(state.nodes[n]) for n in sorted(state.nodes))
    if not nodes:
        nodes = (f'<p class="empty">no node seen yet under <code>{e(state.prefix)}/</code>: is the daemon '
                 "running and connected to the same broker?</p>")
    return (
        f'<section class="open"><h2>Open events</h2><ul id="open-events" class="list">{items}</ul></section>'
        f'<div id="nodes">{nodes}</div>'
    )


# --- Events ---------------------------------------------------------------------------------


def duration_text(rec: dict[str, Any]) -> str:
    start, end = rec.get("start_wall"), rec.get("end_wall")
    if rec.get("active"):
        return "open"
    if isinstance(start, (int, float)) and isinstance(end, (int, float)):
        return fmt_span(end - start)
    return "–"


def label_badge(label: Any) -> str:
    if label == "normal":
        return '<span class="badge ok">false alarm</span>'
    if label == "anomaly":
        return '<span class="badge bad">confirmed</span>'
    return '<span class="badge">unlabelled</span>'


def event_row(rec: dict[str, Any]) -> str:
    return (
        f'<tr data-event="{e(rec["node"])}/{e(rec["id"])}"{" class=active" if rec.get("active") else ""}>'
        f'<td><a href="{e(event_url(rec["node"], rec["id"]))}">{fmt_time(rec.get("start_wall"))}</a></td>'
        f'<td>{e(rec["node"])}/{e(rec["stream"])}</td><td>{duration_text(rec)}</td>'
        f'<td>{fmt_num(rec.get("peak"))} / {fmt_num(rec.get("threshold"))}</td>'
        f'<td class="summary">{e(rec.get("summary") or "")}</td><td>{label_badge(rec.get("label"))}</td></tr>'
    )


def events_page(
    records: list[dict[str, Any]], streams: Iterable[tuple[str, str]], *, stream: str, node: str, label: str,
    limit: int = 100,
) -> str:
    choices = ['<option value="">all streams</option>']
    for n, s in sorted(set(streams)):
        value = f"{n}/{s}"
        selected = " selected" if (n, s) == (node, stream) else ""
        choices.append(f'<option value="{e(value)}"{selected}>{e(value)}</option>')
    labels = [("", "any label"), ("normal", "false alarm"), ("anomaly", "confirmed"), (UNLABELLED, "unlabelled")]
    label_opts = "".join(
        f'<option value="{v}"{" selected" if v == label else ""}>{t}</option>' for v, t in labels
    )
    rows = "".join(event_row(r) for r in records)
    more = ""
    if len(records) >= limit:  # a full page: there may be older ones
        q = {"stream": f"{node}/{stream}" if stream else "", "label": label,
             "before": f"{records[-1]['start_wall'] or records[-1]['first_seen']:.6f}"}
        more = f'<p><a href="/events?{e(urlencode({k: v for k, v in q.items() if v}))}">older events</a></p>'
    return (
        '<h1>Events</h1><form class="filters" method="get" action="/events">'
        f'<label>stream <select name="stream">{"".join(choices)}</select></label>'
        f'<label>label <select name="label">{label_opts}</select></label><button type="submit">filter</button></form>'
        '<div class="scroll"><table id="events-table"><thead><tr><th>time</th><th>stream</th><th>duration</th>'
        '<th>peak / threshold</th><th>explanation</th><th>label</th></tr></thead>'
        f'<tbody>{rows}</tbody></table></div>'
        + ('' if rows else '<p class="empty" id="no-events">no event yet</p>') + more
    )


# --- one event ------------------------------------------------------------------------------


def event_facts(rec: dict[str, Any]) -> str:
    end = "ongoing" if rec.get("active") else fmt_time(rec.get("end_wall"))
    return (
        f'<dl id="event-facts" class="facts" data-event="{e(rec["node"])}/{e(rec["id"])}">'
        f'<dt>stream</dt><dd>{e(rec["node"])}/{e(rec["stream"])}</dd>'
        f'<dt>start</dt><dd>{fmt_time(rec.get("start_wall"))}</dd><dt>end</dt><dd>{end}</dd>'
        f'<dt>duration</dt><dd>{duration_text(rec)}</dd>'
        f'<dt>peak / threshold</dt><dd>{fmt_num(rec.get("peak"))} / {fmt_num(rec.get("threshold"))}</dd>'
        f'<dt>label</dt><dd>{label_badge(rec.get("label"))}</dd><dt>id</dt><dd><code>{e(rec["id"])}</code></dd></dl>'
    )


def _indicators(explanation: Any) -> list[dict[str, Any]]:
    if not isinstance(explanation, dict):
        return []
    items = explanation.get("indicators", explanation.get("moved"))
    return [i for i in items if isinstance(i, dict)] if isinstance(items, list) else []


def explanation_html(data: dict[str, Any]) -> str:
    explanation = data.get("explanation")
    parts = ['<section class="explain"><h2>What moved</h2>']
    summary = explanation.get("summary") if isinstance(explanation, dict) else None
    parts.append(f'<p class="summary">{e(summary)}</p>' if summary else '<p class="empty">no explanation sent</p>')
    if isinstance(explanation, dict) and explanation.get("note"):
        parts.append(f'<p class="note">{e(explanation["note"])}</p>')
    rows = []
    for ind in _indicators(explanation):
        normal = ind.get("normal", ind.get("normal_median"))
        scale = ind.get("scale", ind.get("normal_scale"))
        unit = e(ind.get("unit") or "")
        rows.append(
            f'<tr><td>{e(ind.get("label") or ind.get("name"))}</td><td>{fmt_num(ind.get("value"), 2)} {unit}</td>'
            f'<td>{fmt_num(normal, 2)} ± {fmt_num(scale, 2)} {unit}</td><td>{fmt_num(ind.get("z"), 1)}</td>'
            f'<td>{e(ind.get("text") or "")}</td></tr>'
        )
    if rows:
        parts.append('<div class="scroll"><table class="indicators"><thead><tr><th>indicator</th><th>value</th>'
                     f'<th>normal</th><th>z</th><th></th></tr></thead><tbody>{"".join(rows)}</tbody></table></div>')
    components = data.get("components")
    if isinstance(components, dict) and components:
        bits = []
        for name, comp in sorted(components.items()):
            if isinstance(comp, dict):
                inner = ", ".join(f"{e(k)} {fmt_num(v)}" for k, v in sorted(comp.items())
                                  if isinstance(v, (int, float)))
                bits.append(f"<li><b>{e(name)}</b> {inner}</li>")
        if bits:
            parts.append(f'<h3>Score components</h3><ul class="components">{"".join(bits)}</ul>')
    parts.append("</section>")
    return "".join(parts)


def evidence_html(rec: dict[str, Any], local_node: str, remote_console: str | None) -> str:
    data = rec["data"]
    node = rec["node"]
    if node != local_node:
        if remote_console:
            link = remote_console.rstrip("/") + event_url(node, rec["id"])
            return (f'<section class="evidence"><p class="note">Evidence on node {e(node)}: '
                    f'<a href="{e(link)}">open this event on its console</a>.</p></section>')
        return (f'<section class="evidence"><p class="note">Evidence on node {e(node)} (its console has not '
                "announced an address; open the console running on that node).</p></section>")
    wav = evidence_url(node, data.get("evidence"))
    png = evidence_url(node, data.get("evidence_png"))
    if png is None and wav is not None:
        png = wav[: -len(".wav")] + ".png"  # EvidenceStore writes the PNG beside the WAV
    if wav is None:
        return '<section class="evidence"><p class="empty">no evidence recorded for this event</p></section>'
    return (
        '<section class="evidence"><h2>Evidence</h2>'
        f'<audio id="evidence-audio" controls preload="auto" src="{e(wav)}"></audio>'
        f'<p><a href="{e(wav)}" download>download the WAV</a></p>'
        f'<figure><img id="evidence-png" src="{e(png)}" alt="spectrogram of the triggering window" loading="lazy">'
        "<figcaption>spectrogram of the window that triggered the event (time to the right, "
        "frequency up)</figcaption></figure></section>"
    )


def feedback_log(node: str, event: str, rows: list[dict[str, Any]]) -> str:
    items = []
    latest = ""
    for r in rows:
        what = "false alarm: learn as normal" if r["label"] == "normal" else (
            "confirm anomaly" if r["label"] == "anomaly" else str(r["label"]))
        if r["ok"] is None:
            result = '<span class="badge">sent, waiting for the daemon</span>'
        elif r["ok"]:
            extra = f" · threshold now {fmt_num(r['threshold'])}" if r["threshold"] is not None else ""
            result = f'<span class="badge ok">done</span> {e(r["message"])}{extra}'
            if r["threshold"] is not None:
                latest = f"Threshold of {e(r['stream'])} is now {fmt_num(r['threshold'])}."
        else:
            result = f'<span class="badge bad">refused</span> {e(r["message"])}'
        items.append(f"<li>{fmt_time(r['ts'])} {e(what)} by <b>{e(r['by'])}</b>: {result}</li>")
    body = "".join(items) or '<li class="empty">no feedback sent yet</li>'
    result_line = f'<p id="feedback-result" class="result">{latest}</p>' if latest else ""
    return f'<div id="feedback-log" data-event="{e(node)}/{e(event)}">{result_line}<ul class="list">{body}</ul></div>'


def event_page(
    rec: dict[str, Any], feedback: list[dict[str, Any]], *, csrf: str, local_node: str, remote_console: str | None
) -> str:
    hidden = "".join(
        f'<input type="hidden" name="{k}" value="{e(v)}">'
        for k, v in (("node", rec["node"]), ("stream", rec["stream"]), ("event", rec["id"]), ("csrf", csrf))
    )
    return (
        f'<h1>Event on {e(rec["node"])}/{e(rec["stream"])}</h1>{event_facts(rec)}'
        f'{evidence_html(rec, local_node, remote_console)}{explanation_html(rec["data"])}'
        '<section class="feedback"><h2>Teach the monitor</h2>'
        f'<form id="feedback-form" method="post" action="/api/feedback" data-ajax>{hidden}'
        '<button type="submit" name="label" value="normal" class="primary">False alarm: learn as normal</button>'
        '<button type="submit" name="label" value="anomaly">Confirm anomaly</button></form>'
        '<p id="feedback-status" class="status" role="status" aria-live="polite"></p>'
        f'{feedback_log(rec["node"], rec["id"], feedback)}</section>'
    )


# --- Streams --------------------------------------------------------------------------------


def stream_row(node: NodeState, stream: StreamState, csrf: str) -> str:
    v = stream_view(node, stream)
    hidden = (f'<input type="hidden" name="node" value="{e(node.name)}">'
              f'<input type="hidden" name="stream" value="{e(stream.name)}">'
              f'<input type="hidden" name="csrf" value="{e(csrf)}">')
    return (
        f'<tr data-key="{e(v["key"])}"><td>{e(v["key"])}</td><td><span data-field="status_text">{e(v["status_text"])}'
        f'</span> <small data-field="message">{e(v["message"])}</small></td>'
        f'<td data-field="enrolment_text">{e(v["enrolment_text"])}</td>'
        f'<td data-field="threshold_text">{v["threshold_text"]}</td>'
        f'<td><span data-field="enabled_text">{e(v["enabled_text"])}</span>'
        f'<form method="post" action="/api/enabled" data-ajax class="inline">{hidden}'
        '<button type="submit" name="state" value="ON">enable</button>'
        '<button type="submit" name="state" value="OFF">disable</button></form></td>'
        f'<td><form method="post" action="/api/enrol" data-ajax class="inline">{hidden}'
        f'<input type="number" name="minutes" min="1" max="{ENROL_MINUTES_MAX}" value="{ENROL_MINUTES_DEFAULT}" '
        'aria-label="minutes of normal operation"> min <button type="submit">re-enrol</button></form>'
        f'<small data-field="enrol_text">{e(v["enrol_text"])}</small></td></tr>'
    )


def streams_page(state: ConsoleState, csrf: str) -> str:
    rows = "".join(stream_row(state.nodes[s.node], s, csrf) for s in state.streams())
    if not rows:
        rows = '<tr><td colspan="6" class="empty">no stream seen yet</td></tr>'
    return (
        "<h1>Streams</h1><p class=\"hint\">Re-enrol after moving or replacing a microphone, or after the "
        "machine's normal sound changed for good: the daemon records that many minutes of normal operation "
        "and learns them.</p><p id=\"action-status\" class=\"status\" role=\"status\" aria-live=\"polite\"></p>"
        '<div class="scroll"><table id="streams-table"><thead><tr><th>stream</th><th>status</th><th>enrolment</th>'
        f"<th>threshold</th><th>enabled</th><th>re-enrol</th></tr></thead><tbody>{rows}</tbody></table></div>"
    )


# --- sign in ----------------------------------------------------------------------------------


def login_page(csrf: str, next_url: str, error: str = "") -> str:
    err = f'<p class="error" role="alert">{e(error)}</p>' if error else ""
    return (
        '<h1>Sign in</h1><p class="hint">This console is reachable from other machines; sign in with a user '
        "of its credentials file.</p>"
        f'{err}<form class="login" method="post" action="/login"><input type="hidden" name="csrf" value="{e(csrf)}">'
        f'<input type="hidden" name="next" value="{e(next_url)}">'
        '<label>user <input name="user" autocomplete="username" required autofocus></label>'
        '<label>password <input name="password" type="password" autocomplete="current-password" required></label>'
        '<button type="submit" class="primary">sign in</button></form>'
    )


__all__ = [
    "ENROL_MINUTES_DEFAULT",
    "ENROL_MINUTES_MAX",
    "event_facts",
    "event_page",
    "event_row",
    "event_url",
    "events_page",
    "feedback_log",
    "layout",
    "login_page",
    "node_section",
    "node_view",
    "now_page",
    "open_event_item",
    "stream_row",
    "stream_view",
    "streams_page",
]
