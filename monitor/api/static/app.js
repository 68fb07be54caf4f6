// deepfake monitor dashboard: streams (polled), alerts (CloudEvents websocket, resumable),
// per-track score timelines, and "monitor my camera" over WHIP. Plain JS, no build step.
"use strict";

const POLL_MS = 1000;
// A poll unanswered this long is aborted: the service is hung (or the path to it is), and what
// is on screen is no longer current. The poll is the heartbeat: a healthy service may send no
// event for hours, so a quiet websocket proves nothing either way.
const POLL_TIMEOUT_MS = 4000;
const STALE_MS = POLL_TIMEOUT_MS + POLL_MS; // no good poll for this long: stale, whatever else
// The poll's answer names the newest event the service sent its live alert clients. An open
// websocket that has delivered nothing for this long while that event is still missing died
// without a close (a proxy or NAT dropped it): it is reopened and resumes after the newest id.
const WS_BEHIND_MS = 10000;
const TIMELINE_S = 60;
const FEED_MAX = 200;
const REFILL_LAST = 30; // events shown on load
const REFILL_PAGE = 1000; // /api/events' largest page, to look further back for open alerts
const REFILL_SCAN_MAX = 5000; // how far back a load looks for the alert.opened of open alerts
const ANNOUNCED_MAX = 10; // alert announcements kept in the live region
const STATE_COLOURS = { clear: "#2ea043", suspicious: "#e3a008", alert: "#f85149", inconclusive: "#8b949e" };
const REASON_TEXT = {
  no_face: "no face", occluded: "face occluded", low_resolution: "face too small", low_fps: "frame rate too low",
  multiple_faces: "several faces", low_quality: "poor image", blurred: "blurred", out_of_frame: "face leaves the frame",
  window_too_short: "collecting evidence", warming_up: "collecting evidence", track_ended: "face left", stale: "frames late",
  no_frames: "no video", unusable_frame: "face unreadable",
};

const $ = (id) => document.getElementById(id);
// Every request is relative to the page, so the dashboard also works behind a reverse proxy
// that serves the monitor under a path prefix (https://host/monitor/ -> /monitor/api/...).
const BASE = new URL(".", location.href);
const here = (path) => new URL(path, BASE).href;
const timelines = new Map(); // "stream/track" -> [{t, score, state}]
const explanations = new Map(); // "stream/track" -> {reasons, signals} of its last state change
const cards = new Map(); // stream id -> its card in #streams, updated in place
const EVENT_IDS_MAX = 2 * FEED_MAX;
// Ids already shown: a refill and a resumed replay overlap. A set, not "id <= last", so an
// older event that arrives after a newer one still shows. Bounded: the oldest ids go first.
const seenIds = new Set();
let lastEventId = null; // the newest id held: the websocket resumes after it
let lastEpoch = null; // the logepoch of the events held: a replaced log is noticed (4409)
let lastEventTime = NaN; // when the newest event held happened (its `time`), in ms
let latestStreams = [];
let lastGoodPoll = null; // Date.now() of the last poll the service answered with its streams
let pollProblem = null; // why the last poll failed ("API not answering"...); null after a good one
let tokenRefused = false; // the API answered 401: polling stops until the token changes
let inflight = null; // the poll under way, {ctl, done}: never two at once

// --- token: #token= (or ?token=) in the URL, or the field (kept for this tab only) ----------
// #token= is never sent to the server: ?token= reaches it, and any proxy's log, on the first load.
// Read by hand, not with URLSearchParams, which turns a "+" (base64 tokens have them) into a space.
const TOKEN_PARAM = /(^|&)token=([^&]*)/;
const fromPart = (part) => {
  const m = part.match(TOKEN_PARAM);
  if (!m) return null;
  try { return decodeURIComponent(m[2]); } catch (e) { return m[2]; } // a "%" as typed, not an escape
};
const withoutToken = (part) => part.replace(TOKEN_PARAM, "$1").replace(/^&|&$/g, "").replace("&&", "&");
const query = location.search.slice(1);
const fragment = location.hash.slice(1);
const tokenInput = $("token");
const given = fromPart(fragment) ?? fromPart(query);
tokenInput.value = given || sessionStorage.getItem("token") || "";
if (given !== null) {
  // Out of the address bar, history and bookmarks: the tab keeps it in sessionStorage.
  sessionStorage.setItem("token", tokenInput.value);
  const q = withoutToken(query);
  const h = withoutToken(fragment);
  history.replaceState(null, "", location.pathname + (q ? "?" + q : "") + (h ? "#" + h : ""));
}
tokenInput.addEventListener("change", async () => {
  sessionStorage.setItem("token", tokenInput.value);
  tokenRefused = false;
  const previous = inflight; // sent with the old token: its answer says nothing about this one
  if (previous) { previous.ctl.abort(); await previous.done; }
  await poll();
  if (tokenRefused) return; // said so; the websocket waits for a token the API takes
  // Events held: resume after the newest, so what happened while the token was refused shows
  // too (a refill would jump to the newest 30 and skip the rest). None held: start as on load.
  if (lastEventId === null) await refill();
  connectAlerts();
});
const token = () => tokenInput.value.trim();
// Never in a URL: servers and proxies log URLs. HTTP requests carry the token in a header; the
// websocket, which cannot set one, offers it as the subprotocol bearer.<base64url(token)> (as
// Kubernetes does). The server answers with "cloudevents.json" only.
const authHeaders = () => (token() ? { Authorization: "Bearer " + token() } : {});
const base64url = (text) => btoa(String.fromCharCode(...new TextEncoder().encode(text))).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
const wsProtocols = () => ["cloudevents.json", ...(token() ? ["bearer." + base64url(token())] : [])];

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v; else if (k === "text") node.textContent = v; else node.setAttribute(k, v);
  }
  for (const c of children) if (c != null) node.append(c);
  return node;
}
const fmt = (v, digits = 0, unit = "") => (v == null ? "–" : Number(v).toFixed(digits) + unit);
const pct = (v) => (v == null ? "–" : Math.round(v * 100) + "%");
const threshold = (v) => +(v * 100).toFixed(1) + "%"; // 0.675 -> "67.5%": a threshold is not rounded away
const reasonText = (codes) => (codes || []).map((c) => REASON_TEXT[c] || c.replace(/_/g, " ")).join(", ");
const clock = (ms) => new Date(ms).toLocaleTimeString([], { hourCycle: "h23" });
const ago = (ms) => {
  const s = Math.max(Math.round(ms / 1000), 0);
  return s < 90 ? s + " s ago" : s < 5400 ? Math.round(s / 60) + " min ago" : s < 172800 ? Math.round(s / 3600) + " h ago" : Math.round(s / 86400) + " days ago";
};
const refusedText = () => (token() ? "token rejected" : "token needed");

// --- streams ----------------------------------------------------------------------------
// One poll at a time, aborted after POLL_TIMEOUT_MS: a hung service no longer piles up requests
// that never end, and its silence shows. A 401 stops polling until the token changes.
function poll() {
  if (inflight) return inflight.done;
  if (tokenRefused) return Promise.resolve();
  const ctl = new AbortController();
  let timedOut = false;
  const timer = setTimeout(() => { timedOut = true; ctl.abort(); }, POLL_TIMEOUT_MS);
  const run = async () => {
    // Back after a failure: an open websocket may have died with the path to the service
    // without a close (a proxy, a network drop). It resumes after the newest id, losing nothing.
    const recovering = apiFailing();
    let streams, head;
    try {
      const r = await fetch(here("api/streams"), { cache: "no-store", headers: authHeaders(), signal: ctl.signal });
      if (r.status === 401) { refuseToken(); return; }
      if (!r.ok) throw Object.assign(new Error("HTTP " + r.status), { status: r.status });
      streams = await r.json();
      head = [Number(r.headers.get("x-last-event-id") || NaN), r.headers.get("x-last-event-epoch")];
    } catch (e) {
      if (ctl.signal.aborted && !timedOut) return; // the token changed: another poll follows
      pollProblem = timedOut ? "API not answering" : e.status ? "API error " + e.status : "API unreachable";
      return;
    } finally {
      clearTimeout(timer);
    }
    latestStreams = streams;
    lastGoodPoll = Date.now();
    pollProblem = null;
    record(streams);
    renderStreams(streams);
    if (recovering && wsState === "open" && lastEventId !== null) connectAlerts();
    else checkAlertsBehind(...head);
  };
  const done = run().finally(() => { inflight = null; renderStatus(); });
  inflight = { ctl, done };
  return done;
}

function refuseToken() {
  tokenRefused = true;
  // Nor alerts: what the page shows follows the token typed in, not one that worked before.
  clearTimeout(wsTimer);
  if (ws) { ws.onclose = null; ws.close(); ws = null; }
  wsState = "refused";
}

const apiFailing = () => tokenRefused || pollProblem !== null || (lastGoodPoll !== null && Date.now() - lastGoodPoll > STALE_MS);
const apiFresh = () => lastGoodPoll !== null && !apiFailing();

function record(streams) {
  const now = Date.now() / 1000;
  const live = new Set();
  for (const s of streams) {
    for (const tr of s.tracks) {
      const key = s.id + "/" + tr.track_id;
      live.add(key);
      const series = timelines.get(key) || [];
      series.push({ t: now, score: tr.score, state: tr.state });
      while (series.length && now - series[0].t > TIMELINE_S) series.shift();
      timelines.set(key, series);
    }
  }
  for (const key of timelines.keys()) if (!live.has(key)) timelines.delete(key);
}

// Every second, after each poll and on the tick: the pills, and whether what is shown is
// current. Every write below is skipped when nothing changed (selection, screen readers).
function renderStatus() {
  const now = Date.now();
  const age = lastGoodPoll === null ? null : now - lastGoodPoll;
  const fresh = apiFresh(), failing = apiFailing();
  const since = age === null ? "" : ` · last answer ${ago(age)}`;
  if (tokenRefused) setPill("api-state", "API: " + refusedText(), "bad");
  else if (pollProblem) setPill("api-state", pollProblem + since, "bad");
  else if (age === null) setPill("api-state", "API …", "grey");
  else if (!fresh) setPill("api-state", "API: no answer" + since, "bad");
  else setPill("api-state", "API live", "ok");
  setTitle("api-state", "stream list, polled every second" + (age === null ? "" : `; last answer at ${clock(lastGoodPoll)}`));

  const reason = tokenRefused ? refusedText() : pollProblem || "no answer";
  // Shown but no longer current: greyed, dated, and no counts that read as live ones.
  const stale = lastGoodPoll !== null && !fresh;
  $("streams").classList.toggle("stale", stale);
  setText("stale-note", stale ? `Stale since ${clock(lastGoodPoll)} (${reason}): the cards show the service's last answer.` : "");
  $("stale-note").hidden = !stale;
  if (lastGoodPoll === null) {
    const wait = tokenRefused ? (token() ? "Token rejected: enter the service's token above to see its streams." : "This service needs a token: enter it above to see its streams.")
      : pollProblem ? `No answer from the service yet (${pollProblem}).` : "Loading streams…";
    const p = $("streams").querySelector("p.empty");
    if (p) { if (p.textContent !== wait) p.textContent = wait; } else $("streams").replaceChildren(el("p", { class: "empty", text: wait }));
  }
  renderSummary(fresh ? latestStreams : null);
  renderCameraVerdict(stale || failing ? reason : null);

  if (tokenRefused) setPill("ws-state", "alerts: " + refusedText(), "bad");
  else if (wsState === "open") setPill("ws-state", failing ? "alerts stale" : "alerts live", failing ? "bad" : "ok");
  else if (wsState === "closed") setPill("ws-state", "alerts reconnecting…", "bad");
  else setPill("ws-state", "alerts …", "grey");
  const heard = lastEventAt === null ? "no event received on it yet" : `last event received on it ${ago(now - lastEventAt)}`;
  setTitle("ws-state", `alert websocket: ${heard}` + (wsState === "open" && failing ? "; the service does not answer, so alerts may not arrive" : ""));
  // How old the newest event is (a quiet service may have none for hours: no alarm, a fact).
  if (lastEventId) setText("last-id", `last event #${lastEventId}` + (Number.isNaN(lastEventTime) ? "" : ` · ${ago(now - lastEventTime)}`));
}

function renderSummary(streams) {
  let chips;
  if (streams) {
    const counts = { alert: 0, suspicious: 0, clear: 0, other: 0 };
    for (const s of streams) counts[s.verdict in counts ? s.verdict : "other"]++;
    chips = [["alert", counts.alert + " alert"], ["suspicious", counts.suspicious + " suspicious"],
      ["clear", counts.clear + " clear"], ["inconclusive", counts.other + " no verdict"]];
  } else {
    chips = lastGoodPoll === null && !apiFailing() ? [] : [["inconclusive", "no current counts"]];
  }
  // An aria-live region: rewritten only when its text changes, or it is read out every second.
  const box = $("summary"), key = JSON.stringify(chips);
  if (box.dataset.shown === key) return;
  box.dataset.shown = key;
  box.replaceChildren(...chips.map(([cls, text]) => el("span", { class: "chip " + cls, text })));
}

function renderStreams(streams) {
  const box = $("streams");
  if (!streams.length) {
    cards.clear();
    const empty = "No streams yet. Publish one over WHIP, or start your camera.";
    if (box.children.length !== 1 || box.firstElementChild.textContent !== empty) box.replaceChildren(el("p", { class: "empty", text: empty }));
    return;
  }
  box.querySelectorAll(":scope > p.empty").forEach((p) => p.remove());
  const order = { alert: 0, suspicious: 1, inconclusive: 2, clear: 3 };
  const sorted = [...streams].sort((a, b) => (order[a.verdict] ?? 4) - (order[b.verdict] ?? 4) || a.id.localeCompare(b.id, undefined, { numeric: true }));
  const ids = new Set(sorted.map((s) => s.id));
  for (const [id, card] of cards) if (!ids.has(id)) { card.remove(); cards.delete(id); }
  // Cards are updated in place, not rebuilt: selected text stays selected, and only what
  // changed is touched. A card moves only when the order changes.
  sorted.forEach((s, i) => {
    const built = streamCard(s);
    const card = cards.has(s.id) ? morph(cards.get(s.id), built) : built;
    cards.set(s.id, card);
    if (box.children[i] !== card) box.insertBefore(card, box.children[i] || null);
  });
  for (const canvas of box.querySelectorAll("canvas[data-key]")) drawTimeline(canvas, timelines.get(canvas.dataset.key) || []);
}

// Make the live node `a` look like the freshly built `b` (same builder, so mostly the same
// shape), changing only the text and attributes that differ. Returns the node now in place.
function morph(a, b) {
  if (a.nodeType !== b.nodeType || a.nodeName !== b.nodeName) { a.replaceWith(b); return b; }
  if (a.nodeType === Node.TEXT_NODE) { if (a.data !== b.data) a.data = b.data; return a; }
  const keep = a.nodeName === "CANVAS" ? ["width", "height"] : []; // its bitmap size, set when drawn
  for (const { name } of [...a.attributes]) if (!b.hasAttribute(name) && !keep.includes(name)) a.removeAttribute(name);
  for (const { name, value } of b.attributes) if (a.getAttribute(name) !== value) a.setAttribute(name, value);
  const ac = [...a.childNodes], bc = [...b.childNodes];
  bc.forEach((child, i) => { if (i < ac.length) morph(ac[i], child); else a.append(child); });
  for (const extra of ac.slice(bc.length)) extra.remove();
  return a;
}

function streamCard(s) {
  const verdict = s.verdict.replace("_", " ");
  const card = el("article", { class: "card v-" + s.verdict, "data-stream": s.id, "data-state": s.state, "data-verdict": s.verdict },
    el("div", { class: "card-head" },
      el("span", { class: "stream-id", text: s.id }),
      el("span", { class: "verdict-big " + s.verdict, text: verdict })),
    el("div", { class: "meta" },
      el("span", { class: "state-" + s.state, text: "● " + s.state }),
      ` · ${s.source} · ${s.width}×${s.height}` + (s.last_error && s.state !== "running" ? " · " + s.last_error : "")),
    el("div", { class: "stats" },
      stat(fmt(s.fps_in, 1), "fps in", "fps"),
      stat(fmt(s.fps_analysed, 1), "analysed/s"),
      stat(fmt(s.latency_ms_p50, 0, " ms"), "latency p50", "latency"),
      stat(String(s.frames_dropped), "dropped")),
  );
  if (!s.tracks.length) card.append(el("div", { class: "reasons", text: s.frames_analysed ? "No face in view." : "Waiting for frames…" }));
  const levels = s.policy ? { "data-suspicious": s.policy.suspicious_enter, "data-alert": s.policy.alert_enter } : {};
  for (const tr of s.tracks) {
    const key = s.id + "/" + tr.track_id;
    card.append(el("div", { class: "track", "data-track": tr.track_id },
      el("span", { class: "label", text: "face #" + tr.track_id }),
      el("span", {}, el("span", { class: "chip " + tr.state, text: tr.state }), " score " + pct(tr.score)),
      el("canvas", { role: "img", "data-key": key, ...levels, "aria-label": timelineText(timelines.get(key) || []) }),
      el("div", { class: "reasons", text: "why: " + explain(key, tr, s.policy) }),
    ));
  }
  return card;
}

function explain(key, tr, policy) {
  // The poll carries the current reason codes; the last state-change event adds its signals.
  const last = explanations.get(key);
  const codes = tr.reasons.length ? tr.reasons : (last ? last.reasons : []);
  const signals = last && last.signals ? [...last.signals].sort((a, b) => b.weight * b.value - a.weight * a.value).slice(0, 3) : [];
  const parts = [];
  if (codes.length) parts.push(reasonText(codes));
  if (signals.length) parts.push("signals: " + signals.map((g) => `${g.name.replace(/_/g, " ")} ${pct(g.value)}`).join(", "));
  if (parts.length) return parts.join(" · ");
  // The thresholds this service applies (policy in its configuration), never assumed ones.
  return `score ${pct(tr.score)}` + (policy ? ` (${threshold(policy.suspicious_enter)} suspicious, ${threshold(policy.alert_enter)} alert)` : "");
}

function timelineText(series) {
  const scores = series.filter((p) => p.score != null).map((p) => p.score);
  if (!scores.length) return "score timeline: no score yet";
  return `score timeline, last ${TIMELINE_S} s: now ${pct(scores[scores.length - 1])}, lowest ${pct(Math.min(...scores))}, highest ${pct(Math.max(...scores))}`;
}

function stat(value, label, name) {
  return el("div", { class: "stat", ...(name ? { "data-stat": name } : {}) }, el("b", { text: value }), el("span", { text: label }));
}

function drawTimeline(canvas, series) {
  // The bitmap matches the canvas's size on screen, in device pixels: not stretched, not blurred.
  const dpr = window.devicePixelRatio || 1;
  const w = canvas.clientWidth, h = canvas.clientHeight;
  if (!w || !h) return;
  const bw = Math.round(w * dpr), bh = Math.round(h * dpr);
  if (canvas.width !== bw) canvas.width = bw;
  if (canvas.height !== bh) canvas.height = bh;
  const ctx = canvas.getContext("2d");
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  ctx.clearRect(0, 0, w, h);
  ctx.strokeStyle = "#30363d"; ctx.lineWidth = 1; ctx.setLineDash([4, 4]);
  for (const name of ["suspicious", "alert"]) {
    if (canvas.dataset[name] === undefined) continue; // a service that does not say: no guess
    const y = Math.min(Math.max(h - Number(canvas.dataset[name]) * h, 0.5), h - 0.5);
    ctx.beginPath(); ctx.moveTo(0, y); ctx.lineTo(w, y); ctx.stroke();
  }
  ctx.setLineDash([]);
  const now = Date.now() / 1000;
  const x = (t) => w - ((now - t) / TIMELINE_S) * w;
  ctx.lineWidth = 3;
  for (let i = 1; i < series.length; i++) {
    const a = series[i - 1], b = series[i];
    if (a.score == null || b.score == null) continue;
    ctx.strokeStyle = STATE_COLOURS[b.state] || "#8b949e";
    ctx.beginPath(); ctx.moveTo(x(a.t), h - a.score * h); ctx.lineTo(x(b.t), h - b.score * h); ctx.stroke();
  }
  if (!series.some((p) => p.score != null)) { ctx.fillStyle = "#9aa7b4"; ctx.font = "14px system-ui"; ctx.fillText("no score yet", 8, h / 2 + 5); }
}

function setPill(id, text, cls) { const p = $(id); if (p.textContent !== text) p.textContent = text; if (p.className !== "pill " + cls) p.className = "pill " + cls; }
function setTitle(id, text) { const n = $(id); if (n.title !== text) n.title = text; }
function setText(id, text) { const n = $(id); if (n.textContent !== text) n.textContent = text; }

// --- alerts websocket (CloudEvents), resumes with ?since=<last id> -----------------------
let ws = null, wsRetry = 500, wsTimer = null;
let wsState = "connecting"; // connecting | open | closed | refused
let lastEventAt = null; // Date.now() when the websocket last delivered an event
let behindSince = null; // Date.now() when a poll first named an event the open websocket lacks

// A websocket is "open" until a close arrives, and a dropped connection may never send one: the
// page would say "alerts live" and show nothing more. The poll says which event the service last
// sent (head, epoch); if the socket still lacks it and has been silent for WS_BEHIND_MS, reopen.
function checkAlertsBehind(head, epoch) {
  const behind = wsState === "open" && lastEventId !== null && Number.isFinite(head) &&
    (head > lastEventId || (epoch !== null && lastEpoch !== null && epoch !== lastEpoch));
  if (!behind) { behindSince = null; return; }
  const now = Date.now();
  if (behindSince === null) behindSince = now;
  // A socket still delivering (a long replay) is catching up, not dead.
  if (now - Math.max(behindSince, lastEventAt || 0) < WS_BEHIND_MS) return;
  behindSince = null;
  connectAlerts();
}
function connectAlerts() {
  clearTimeout(wsTimer);
  if (ws) { ws.onclose = null; ws.close(); ws = null; }
  if (tokenRefused) { wsState = "refused"; renderStatus(); return; } // no retries with a refused token
  const resume = lastEventId !== null ? `?since=${lastEventId}` + (lastEpoch ? `&epoch=${encodeURIComponent(lastEpoch)}` : "") : "";
  const url = new URL("ws/alerts" + resume, BASE);
  url.protocol = location.protocol === "https:" ? "wss:" : "ws:";
  ws = new WebSocket(url.href, wsProtocols());
  wsState = "connecting";
  // The backoff resets only once the server has sent something: one refused right after the
  // handshake (1013: too many clients) would otherwise be retried twice a second for ever.
  ws.onopen = () => { wsState = "open"; renderStatus(); };
  ws.onmessage = (msg) => { wsRetry = 500; lastEventAt = Date.now(); onEvent(JSON.parse(msg.data), true); };
  ws.onclose = (ev) => {
    ws = null;
    if (ev.code === 4409) {
      // The server's event log was reset: its ids restarted, so ours mean nothing there. Start
      // over as on load; since=0 would replay the whole retained log (up to 30 days) into the tab.
      seenIds.clear();
      lastEventId = null;
      lastEpoch = null;
      // Not "live" while the refill runs (up to tens of seconds): there is no socket.
      wsState = "connecting";
      renderStatus();
      refill().then(connectAlerts);
      return;
    }
    // A refused token closes the handshake with 403, which the page sees as 1006, like any
    // other failure: the poll's 401 tells them apart, and connectAlerts stops retrying.
    wsState = "closed";
    renderStatus();
    wsTimer = setTimeout(connectAlerts, wsRetry);
    wsRetry = Math.min(wsRetry * 2, 5000);
  };
}

const streamOf = (ce) => {
  // Every event's data names its stream; the source (/<instance>/logs/<epoch>/streams/<id>)
  // does too, after its last "/streams/" (an instance may itself be called "streams").
  const d = ce.data || {};
  return d.stream_id || ce.source.slice(ce.source.lastIndexOf("/streams/") + 9) || "?";
};

// `live`: from the websocket, not a refill: a new alert is announced to screen readers.
function onEvent(ce, live = false) {
  const id = Number(ce.id);
  if (seenIds.has(id)) return; // a refill and a resumed replay overlap
  seenIds.add(id);
  if (seenIds.size > EVENT_IDS_MAX) seenIds.delete(seenIds.values().next().value);
  if (lastEventId === null || id > lastEventId) { lastEventId = id; lastEventTime = Date.parse(ce.time); }
  if (ce.logepoch) lastEpoch = ce.logepoch;
  setText("last-id", `last event #${lastEventId}` + (Number.isNaN(lastEventTime) ? "" : ` · ${ago(Date.now() - lastEventTime)}`));
  const d = ce.data || {};
  const stream = streamOf(ce);
  if (d.track_id != null && (ce.type.includes(".track.state") || ce.type.includes(".alert.opened"))) {
    // A track that ended takes its explanation with it: the id may name another face later.
    if ((d.reasons || []).includes("track_ended")) explanations.delete(stream + "/" + d.track_id);
    else explanations.set(stream + "/" + d.track_id, { reasons: d.reasons || [], signals: d.signals || [] });
  }
  let what, why = "", cls = "inconclusive", tag = "event";
  if (ce.type.includes(".alert.opened")) { what = `${stream} face #${d.track_id} ${pct(d.score)}`; why = reasonText(d.reasons); cls = "alert"; tag = "ALERT"; }
  else if (ce.type.includes(".alert.closed")) { what = `${stream} face #${d.track_id} alert closed`; cls = "clear"; tag = "closed"; }
  else if (ce.type.includes(".track.state")) { what = `${stream} face #${d.track_id}` + (d.previous ? ` (was ${d.previous})` : ""); why = (d.score != null ? "score " + pct(d.score) + " " : "") + reasonText(d.reasons); cls = d.state; tag = d.state; }
  else if (ce.type.includes(".stream.status")) { what = `${stream}`; why = d.detail || ""; tag = d.state; cls = d.state === "failed" ? "alert" : d.state === "reconnecting" ? "suspicious" : "inconclusive"; }
  else { what = ce.type; }
  const li = el("li", { class: "sev-" + (d.severity || "info"), "data-id": ce.id, "data-type": ce.type },
    timeEl(ce.time), el("span", { class: "what" }, el("span", { class: "chip " + cls, text: tag }), " " + what),
    why ? el("span", { class: "why", text: why }) : null,
    ce.type.includes(".alert.opened") && d.evidence && d.alert_id ? evidenceButton(d.alert_id) : null);
  const feed = $("feed");
  feed.prepend(li);
  while (feed.children.length > FEED_MAX) feed.lastChild.remove();
  if (live && tag === "ALERT") announce(`Alert: ${what}` + (why ? `, ${why}` : ""));
}

// The feed is not a live region (state changes would be read out all day): new alerts are
// told to screen readers through a polite, visually hidden log.
function announce(text) {
  const log = $("announcer");
  log.append(el("p", { text }));
  while (log.children.length > ANNOUNCED_MAX) log.firstChild.remove();
}

// The time of day, and the date too when it is not today (the log keeps up to 30 days): the
// exact instant in `datetime`, and with the time zone in the tooltip.
function timeEl(iso) {
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return el("time", { text: "–" });
  const time = d.toLocaleTimeString([], { hourCycle: "h23" });
  const today = d.toDateString() === new Date().toDateString();
  const zone = Intl.DateTimeFormat().resolvedOptions().timeZone;
  const full = d.toLocaleString([], { year: "numeric", month: "short", day: "numeric", hour: "2-digit", minute: "2-digit", second: "2-digit", hourCycle: "h23", timeZoneName: "short" });
  return el("time", { datetime: d.toISOString(), title: `${full} (${zone}); ${d.toISOString()}` },
    today ? null : el("span", { class: "date", text: d.toLocaleDateString([], { year: "numeric", month: "short", day: "numeric" }) }),
    today ? null : " ", time);
}

// What the monitor saw when an alert opened: fetched on demand (images carry the token in a
// header, so they are loaded as blobs, never by URL), shown under the alert.
function evidenceButton(alertId) {
  const box = el("span", { class: "evidence" });
  const button = el("button", { type: "button", class: "evidence-show", text: "show what it saw" });
  button.addEventListener("click", async () => {
    button.disabled = true;
    box.querySelectorAll("img").forEach((img) => img.remove()); // a retry starts afresh
    const base = `api/alerts/${encodeURIComponent(alertId)}/evidence`;
    try {
      const r = await fetch(here(base), { cache: "no-store", headers: authHeaders() });
      if (!r.ok) throw new Error(r.status === 404 ? "not there (not written yet, pruned or not saved)" : "HTTP " + r.status);
      const manifest = await r.json();
      const names = [manifest.frame.file, ...manifest.faces.map((f) => f.file)];
      for (const name of names) {
        const img = await fetch(here(`${base}/${encodeURIComponent(name)}`), { cache: "no-store", headers: authHeaders() });
        if (!img.ok) throw new Error("HTTP " + img.status);
        const url = URL.createObjectURL(await img.blob());
        const shown = el("img", { src: url, alt: name === manifest.frame.file ? "frame the alert was raised on, face boxed" : "face crop", class: name === manifest.frame.file ? "frame" : "face" });
        box.append(shown);
        // Once decoded the image no longer needs its blob: freed now, not when the page unloads.
        shown.decode().catch(() => {}).then(() => URL.revokeObjectURL(url));
      }
      button.remove();
    } catch (e) {
      button.textContent = "evidence: " + e.message + " (retry)";
      button.disabled = false; // it may still be being written
    }
  });
  box.append(button);
  return box;
}

// --- monitor my camera: getUserMedia -> WHIP ---------------------------------------------
let cam = null; // {pc, media, resource, id}
async function startCamera() {
  const id = $("cam-id").value.trim();
  const note = $("cam-note");
  $("cam-start").disabled = true;
  let media = null, pc = null, resource = null;
  try {
    media = await navigator.mediaDevices.getUserMedia({ video: { width: 640, height: 480, frameRate: 30 }, audio: false });
    pc = new RTCPeerConnection({ iceServers: [] });
    for (const track of media.getVideoTracks()) pc.addTransceiver(track, { direction: "sendonly", streams: [media] });
    await pc.setLocalDescription(await pc.createOffer());
    await gatheringDone(pc, 3000); // non-trickle: the offer carries every candidate
    const headers = { "Content-Type": "application/sdp", ...authHeaders() };
    const r = await fetch(here(`whip/${encodeURIComponent(id)}`), { method: "POST", headers, body: pc.localDescription.sdp });
    if (r.status !== 201) {
      let reason = r.statusText;
      try { reason = (await r.json()).error; } catch (e) { /* not JSON */ }
      throw new Error(`WHIP ${r.status}: ${reason}`);
    }
    // The service names the session by its own path (/whip/...), which knows no proxy prefix:
    // put the page's prefix in front, unless a proxy already rewrote the Location to carry it.
    const loc = r.headers.get("Location");
    const own = loc.startsWith("/") && !loc.startsWith("//") && !loc.startsWith(BASE.pathname);
    resource = own ? here(loc.slice(1)) : new URL(loc, location.href).href;
    await pc.setRemoteDescription({ type: "answer", sdp: await r.text() });
    cam = { pc, media, resource, id };
    $("cam-video").srcObject = media;
    $("cam-stop").disabled = false;
    note.textContent = `Publishing as "${id}" over WHIP.`;
    pc.onconnectionstatechange = () => {
      if (cam && cam.pc === pc && (pc.connectionState === "failed" || pc.connectionState === "closed")) {
        note.textContent = "Connection lost."; stopCamera();
      }
    };
    // Camera unplugged or permission revoked: end the session instead of showing a stale verdict.
    for (const track of media.getVideoTracks()) {
      track.addEventListener("ended", () => { if (cam && cam.media === media) { note.textContent = "The camera stopped."; stopCamera(); } });
    }
  } catch (e) {
    // Nothing was published: let go of the camera and the connection, or the camera stays on,
    // and of a session the service already made, or the id stays taken until it times out.
    if (resource) fetch(resource, { method: "DELETE", headers: authHeaders(), keepalive: true }).catch(() => {});
    if (pc) pc.close();
    if (media) media.getTracks().forEach((t) => t.stop());
    note.textContent = "Could not start: " + e.message;
    $("cam-start").disabled = false;
  }
}

function gatheringDone(pc, timeoutMs) {
  if (pc.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => { if (pc.iceGatheringState === "complete") { pc.removeEventListener("icegatheringstatechange", done); resolve(); } };
    pc.addEventListener("icegatheringstatechange", done);
    setTimeout(resolve, timeoutMs);
  });
}

async function stopCamera() {
  const c = cam; cam = null;
  $("cam-stop").disabled = true; $("cam-start").disabled = false;
  if (!c) return;
  try { await fetch(c.resource, { method: "DELETE", headers: authHeaders(), keepalive: true }); } catch (e) { /* the service cleans up anyway */ }
  c.pc.close();
  c.media.getTracks().forEach((t) => t.stop());
  $("cam-video").srcObject = null;
  renderCameraVerdict();
}

function renderCameraVerdict(staleReason = null) {
  const view = $("cam-view"), label = $("cam-verdict"), score = $("cam-score");
  const show = (viewCls, verdict, labelCls, labelText, scoreText) => {
    if (view.className !== viewCls) view.className = viewCls;
    if (verdict === null) delete view.dataset.verdict; else if (view.dataset.verdict !== verdict) view.dataset.verdict = verdict;
    if (label.className !== labelCls) label.className = labelCls;
    if (label.textContent !== labelText) label.textContent = labelText;
    if (score.textContent !== scoreText) score.textContent = scoreText;
  };
  const s = cam && latestStreams.find((x) => x.id === cam.id);
  if (!cam) return show("cam-view", null, "verdict", "camera off", "");
  // The service does not answer: its last verdict is not shown as the current one.
  if (staleReason) return show("cam-view stale", "stale", "verdict waiting", "stale", lastGoodPoll === null ? staleReason : `${staleReason} since ${clock(lastGoodPoll)}`);
  if (!s) return show("cam-view", null, "verdict waiting", "connecting", "");
  const worst = s.tracks.reduce((a, t) => (a == null || (t.score ?? -1) > (a.score ?? -1) ? t : a), null);
  show("cam-view v-" + s.verdict, s.verdict, "verdict " + s.verdict, s.verdict.replace("_", " "),
    worst ? "score " + pct(worst.score) + (worst.reasons.length ? " · " + reasonText(worst.reasons) : "") : `${fmt(s.fps_in, 0)} fps`);
}

$("cam-start").addEventListener("click", startCamera);
$("cam-stop").addEventListener("click", stopCamera);
window.addEventListener("pagehide", () => { if (cam) stopCamera(); });

// Every page load (a reload too: the page starts empty), a token typed in and a log reset:
// the newest events from the log, and the alert.opened of every alert still open however far
// back it is (within REFILL_SCAN_MAX events); then the websocket resumes after the newest id.
async function refill() {
  try {
    const newest = await fetchEvents(`last=${REFILL_LAST}`);
    if (newest === null) return; // refused or failing: the websocket still connects, from now
    const shown = [...newest];
    // Open alerts are the tracks the last poll found in state alert: their alert.opened (the
    // evidence button, the reasons) must show even when newer events of other kinds crowd it
    // out of the newest 30. Paged back through the log until each is found.
    const open = new Set();
    for (const s of latestStreams) for (const t of s.tracks) if (t.state === "alert") open.add(s.id + "/" + t.track_id);
    const isOpened = (ce) => {
      const key = ce.data && ce.data.track_id != null ? streamOf(ce) + "/" + ce.data.track_id : null;
      if (!open.has(key)) return false;
      // Met a close first: the opening of the open alert is newer (not written yet), and any
      // older one is a closed alert of an earlier face with the same id. Stop looking.
      if (ce.type.includes(".alert.closed")) { open.delete(key); return false; }
      return ce.type.includes(".alert.opened") && open.delete(key);
    };
    [...newest].reverse().forEach(isOpened); // newest first: a track's latest opening is its open alert
    let oldest = newest.length ? Number(newest[0].id) : 1, scanned = newest.length;
    const epoch = newest.length ? newest[0].logepoch : null;
    while (open.size && oldest > 1 && scanned < REFILL_SCAN_MAX) {
      const since = Math.max(oldest - 1 - REFILL_PAGE, 0);
      const page = await fetchEvents(`since=${since}&limit=${oldest - 1 - since}` + (since && epoch ? `&epoch=${encodeURIComponent(epoch)}` : ""));
      if (!page || !page.length) break; // refused, a reset log (409), or nothing older is left
      scanned += page.length;
      for (const ce of page.filter((e) => Number(e.id) < oldest).reverse()) if (isOpened(ce)) shown.push(ce);
      oldest = Number(page[0].id);
    }
    shown.sort((a, b) => Number(a.id) - Number(b.id)); // oldest first: the feed's newest ends on top
    for (const ce of shown) onEvent(ce);
    // An empty log: resume from its start, so nothing published meanwhile is missed.
    if (lastEventId === null) lastEventId = 0;
  } catch (e) { /* the websocket still connects */ }
}

// One page of /api/events, or null when it was refused (a 401 stops polling too) or failed.
async function fetchEvents(query) {
  try {
    const r = await fetch(here("api/events?" + query), { cache: "no-store", headers: authHeaders(), signal: AbortSignal.timeout(2 * POLL_TIMEOUT_MS) });
    if (r.status === 401) { refuseToken(); renderStatus(); return null; }
    return r.ok ? await r.json() : null;
  } catch (e) {
    return null; // unreachable or hung: the poll says so
  }
}

setInterval(() => { poll(); renderStatus(); }, POLL_MS);
// A hidden tab's timers may run once a minute: back in view, it is brought up to date at once.
document.addEventListener("visibilitychange", () => { if (!document.hidden) poll(); });
// The first poll before the refill: it says which alerts are open, and whether the token is taken.
poll().then(async () => {
  if (tokenRefused) return;
  await refill();
  connectAlerts();
});
