// edge-asd console: live updates over server-sent events, score plots, and forms sent
// without leaving the page. The server renders every page and fragment; this script only
// patches the fields marked data-field with texts the server formatted, swaps fragments in
// when events arrive, and draws each stream's score against its threshold on a <canvas>.
// Plain ES2017, no library, no build step: it ships inside the Python package.
"use strict";

(function () {
  const meta = document.querySelector('meta[name="csrf-token"]');
  const csrf = meta ? meta.content : "";
  const page = document.body.dataset.page || "";
  const series = new Map(); // "node/stream" -> [[t, score, threshold], ...]
  let historyS = 3600;

  function q(selector, root) { return (root || document).querySelector(selector); }
  function qa(selector, root) { return Array.from((root || document).querySelectorAll(selector)); }
  function attr(name, value) { return "[" + name + '="' + CSS.escape(value) + '"]'; }

  function localTimes(root) {
    qa("time[data-ts]", root).forEach(function (t) {
      const d = new Date(parseFloat(t.dataset.ts) * 1000);
      t.textContent = d.toLocaleString();
      t.title = d.toISOString();
    });
  }

  function fragment(html) {
    const tpl = document.createElement("template");
    tpl.innerHTML = html.trim();
    return tpl.content.firstElementChild;
  }

  async function getFragment(url) {
    const r = await fetch(url, { credentials: "same-origin", headers: { Accept: "text/html" } });
    if (r.status === 204 || !r.ok) return null;
    const el = fragment(await r.text());
    if (el) localTimes(el);
    return el;
  }

  // --- plots -----------------------------------------------------------------------------

  function cssVar(el, name, fallback) {
    const v = getComputedStyle(el).getPropertyValue(name).trim();
    return v || fallback;
  }

  function trim(points, now) {
    const cutoff = now - historyS;
    let i = 0;
    while (i < points.length && points[i][0] < cutoff) i++;
    if (i) points.splice(0, i);
    if (points.length > 5000) points.splice(0, points.length - 5000);
  }

  function draw(canvas) {
    const key = canvas.dataset.plot;
    const points = series.get(key) || [];
    const dpr = window.devicePixelRatio || 1;
    const w = canvas.clientWidth || 320;
    const h = canvas.clientHeight || 90;
    if (canvas.width !== Math.round(w * dpr) || canvas.height !== Math.round(h * dpr)) {
      canvas.width = Math.round(w * dpr);
      canvas.height = Math.round(h * dpr);
    }
    const ctx = canvas.getContext("2d");
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, w, h);
    const now = Date.now() / 1000;
    // The last hour; zoomed in while there is less history than that (a console just started).
    const first = points.length ? points[0][0] : now;
    const span = Math.min(historyS, Math.max(300, now - first));
    const t0 = now - span;
    const muted = cssVar(canvas, "--muted", "#888");
    ctx.font = "10px system-ui, sans-serif";
    ctx.fillStyle = muted;
    const visible = points.filter(function (p) { return p[0] >= t0; });
    if (!visible.length) {
      ctx.fillText("no score in the last hour", 6, h / 2);
      return;
    }
    let lo = Infinity;
    let hi = -Infinity;
    visible.forEach(function (p) {
      lo = Math.min(lo, p[1]);
      hi = Math.max(hi, p[1]);
      if (p[2] !== null && p[2] !== undefined) { lo = Math.min(lo, p[2]); hi = Math.max(hi, p[2]); }
    });
    if (hi - lo < 1e-9) { hi += 1; lo -= 1; }
    const pad = (hi - lo) * 0.12;
    lo -= pad; hi += pad;
    const x = function (t) { return ((t - t0) / span) * w; };
    const y = function (v) { return h - ((v - lo) / (hi - lo)) * h; };
    ctx.fillText(hi.toFixed(2), 2, 10);
    ctx.fillText(lo.toFixed(2), 2, h - 3);
    ctx.fillText("now", w - 22, h - 3);
    ctx.fillText("-" + Math.round(span / 120) + " min", w / 2 - 14, h - 3);
    // threshold: a dashed step line (it changes when the site learns)
    ctx.strokeStyle = cssVar(canvas, "--plot-threshold", "#d33");
    ctx.lineWidth = 1;
    ctx.setLineDash([4, 3]);
    ctx.beginPath();
    let started = false;
    visible.forEach(function (p) {
      if (p[2] === null || p[2] === undefined) return;
      if (!started) { ctx.moveTo(x(p[0]), y(p[2])); started = true; } else { ctx.lineTo(x(p[0]), y(p[2])); }
    });
    if (started) { const last = visible[visible.length - 1]; if (last[2] !== null) ctx.lineTo(w, y(last[2])); }
    ctx.stroke();
    ctx.setLineDash([]);
    // score
    ctx.strokeStyle = cssVar(canvas, "--plot-score", "#2a7");
    ctx.lineWidth = 1.5;
    ctx.beginPath();
    visible.forEach(function (p, i) { if (i === 0) ctx.moveTo(x(p[0]), y(p[1])); else ctx.lineTo(x(p[0]), y(p[1])); });
    ctx.stroke();
    ctx.fillStyle = cssVar(canvas, "--plot-threshold", "#d33");
    visible.forEach(function (p) {
      if (p[2] !== null && p[2] !== undefined && p[1] >= p[2]) ctx.fillRect(x(p[0]) - 1.5, y(p[1]) - 1.5, 3, 3);
    });
  }

  function drawAll() { qa("canvas[data-plot]").forEach(draw); }

  async function loadSeries() {
    const r = await fetch("/api/series", { credentials: "same-origin", headers: { Accept: "application/json" } });
    if (!r.ok) return;
    const data = await r.json();
    historyS = data.history_s || historyS;
    Object.keys(data.series).forEach(function (key) { series.set(key, data.series[key]); });
    drawAll();
  }

  // --- live state ------------------------------------------------------------------------

  function patchFields(root, view) {
    qa("[data-field]", root).forEach(function (f) {
      const name = f.dataset.field;
      if (Object.prototype.hasOwnProperty.call(view, name) && typeof view[name] !== "object") {
        f.textContent = view[name] === null ? "" : String(view[name]);
      }
    });
  }

  async function refreshNode(node) {
    const el = await getFragment("/fragment/node?" + new URLSearchParams({ node: node }));
    if (!el) return;
    const old = q("section.node" + attr("data-node", node));
    const holder = q("#nodes");
    if (old) old.replaceWith(el);
    else if (holder) { const empty = q(":scope > p.empty", holder); if (empty) empty.remove(); holder.appendChild(el); }
    qa("canvas[data-plot]", el).forEach(draw);
  }

  async function addStreamRow(view) {
    const body = q("#streams-table tbody");
    if (!body) return;
    const el = await getFragment("/fragment/stream-row?" + new URLSearchParams({ node: view.node, stream: view.stream }));
    if (!el || q("tr" + attr("data-key", view.key), body)) return;
    const empty = q("td.empty", body);
    if (empty) empty.parentElement.remove();
    body.appendChild(el);
  }

  function patchStream(view) {
    const els = qa(attr("data-key", view.key));
    if (!els.length) {
      if (page === "now") refreshNode(view.node);
      else if (page === "streams") addStreamRow(view);
      return;
    }
    els.forEach(function (el) {
      if (el.classList.contains("card")) el.className = view.card_class;
      patchFields(el, view);
    });
  }

  function patchNode(view) {
    const section = q("section.node" + attr("data-node", view.node));
    if (page === "now" && !section) { refreshNode(view.node); return; }
    if (section) {
      patchFields(section, view);
      qa("[data-node-field]", section).forEach(function (f) {
        f.textContent = view[f.dataset.nodeField] || "";
        f.className = "badge " + (view.available === "online" ? "ok" : "bad");
      });
    }
    (view.streams || []).forEach(patchStream);
  }

  function onScores(msg) {
    Object.keys(msg.s).forEach(function (key) {
      const p = msg.s[key];
      let points = series.get(key);
      if (!points) { points = []; series.set(key, points); }
      points.push([p[0], p[1], p[2]]);
      trim(points, msg.t);
      qa(attr("data-key", key)).forEach(function (el) {
        qa('[data-field="score_text"]', el).forEach(function (f) { f.textContent = p[3]; });
        if (el.classList.contains("card")) el.classList.toggle("over", p[2] !== null && p[1] >= p[2]);
      });
      qa("canvas" + attr("data-plot", key)).forEach(draw);
    });
  }

  async function onEvent(ev) {
    const id = ev.node + "/" + ev.id;
    const params = { node: ev.node, id: ev.id };
    if (page === "now") {
      const list = q("#open-events");
      if (!list) return;
      const old = q("li" + attr("data-event", id), list);
      if (!ev.active) { if (old) old.remove(); }
      else {
        const el = await getFragment("/fragment/event?" + new URLSearchParams(Object.assign({ view: "open" }, params)));
        if (el) { const again = q("li" + attr("data-event", id), list); if (again) again.replaceWith(el); else list.prepend(el); }
      }
      const empty = q("li.empty", list);
      if (empty && q("li:not(.empty)", list)) empty.remove();
      if (!q("li", list)) list.appendChild(fragment('<li class="empty">no open event</li>'));
    } else if (page === "events") {
      const body = q("#events-table tbody");
      if (!body) return;
      const filters = Object.fromEntries(new URLSearchParams(location.search));
      if (filters.before) return; // an older page: new events belong on the first one
      const el = await getFragment("/fragment/event?" + new URLSearchParams(Object.assign(filters, { view: "row" }, params)));
      const old = q("tr" + attr("data-event", id), body);
      if (!el) { if (old) old.remove(); return; }
      if (old) old.replaceWith(el); else body.prepend(el);
      const none = q("#no-events");
      if (none) none.remove();
    } else if (page === "event") {
      const facts = q("#event-facts");
      if (facts && facts.dataset.event === id) {
        const el = await getFragment("/fragment/event?" + new URLSearchParams(Object.assign({ view: "facts" }, params)));
        if (el) facts.replaceWith(el);
      }
    }
  }

  async function refreshFeedback(node, event) {
    const log = q("#feedback-log");
    if (!log || log.dataset.event !== node + "/" + event) return;
    const el = await getFragment("/fragment/feedback?" + new URLSearchParams({ node: node, id: event }));
    if (el) q("#feedback-log").replaceWith(el);
  }

  function onFeedback(fb) {
    if (page !== "event") return;
    refreshFeedback(fb.node, fb.event);
    const status = q("#feedback-status");
    const log = q("#feedback-log");
    if (status && log && log.dataset.event === fb.node + "/" + fb.event && fb.ok !== undefined && fb.ok !== null) {
      let text = (fb.ok ? "Done: " : "Refused: ") + (fb.message || "");
      if (fb.ok && fb.threshold !== null && fb.threshold !== undefined) text += " New threshold " + Number(fb.threshold).toFixed(3) + ".";
      status.textContent = text;
      status.className = "status " + (fb.ok ? "ok" : "bad");
    }
  }

  // --- forms -----------------------------------------------------------------------------

  document.addEventListener("submit", async function (e) {
    const form = e.target;
    if (!(form instanceof HTMLFormElement) || !form.hasAttribute("data-ajax")) return;
    e.preventDefault();
    const data = new URLSearchParams(new FormData(form));
    if (e.submitter && e.submitter.name) data.set(e.submitter.name, e.submitter.value);
    const out = q("#feedback-status") || q("#action-status");
    const buttons = qa("button", form);
    buttons.forEach(function (b) { b.disabled = true; });
    try {
      const r = await fetch(form.action, {
        method: "POST", body: data, credentials: "same-origin",
        headers: { Accept: "application/json", "X-CSRF-Token": csrf },
      });
      const text = await r.text();
      let message = text;
      try { message = JSON.parse(text).message; } catch (err) { /* a plain-text error */ }
      if (out) { out.textContent = message; out.className = "status " + (r.ok ? "ok" : "bad"); }
      if (r.ok && page === "event") {
        const log = q("#feedback-log");
        if (log) { const parts = log.dataset.event.split("/"); refreshFeedback(parts[0], parts.slice(1).join("/")); }
      }
    } catch (err) {
      if (out) { out.textContent = "not sent: " + err; out.className = "status bad"; }
    } finally {
      buttons.forEach(function (b) { b.disabled = false; });
    }
  });

  // --- server-sent events ----------------------------------------------------------------

  function connect() {
    const live = q("#live");
    const es = new EventSource("/api/stream");
    es.addEventListener("open", function () {
      document.documentElement.dataset.live = "open";
      if (live) { live.hidden = false; live.textContent = "live"; live.className = "live ok"; }
    });
    es.addEventListener("error", function () {
      document.documentElement.dataset.live = "reconnecting";
      if (live) { live.hidden = false; live.textContent = "reconnecting…"; live.className = "live bad"; }
    });
    function on(name, fn) { es.addEventListener(name, function (m) { fn(JSON.parse(m.data)); }); }
    on("scores", onScores);
    on("streams", function (m) { m.streams.forEach(patchStream); });
    on("node", patchNode);
    on("event", onEvent);
    on("feedback", onFeedback);
    es.addEventListener("resync", function () { location.reload(); });
  }

  localTimes(document);
  if (page === "now") {
    loadSeries();
    let pending = 0;
    window.addEventListener("resize", function () {
      clearTimeout(pending);
      pending = setTimeout(drawAll, 150);
    });
  }
  if (page !== "login") connect();
})();
