// deepfake monitor dashboard: streams (polled), alerts (CloudEvents websocket, resumable),
// per-track score timelines, and "monitor my camera" over WHIP. Plain JS, no build step.
"use strict";

const POLL_MS = 1000;
const TIMELINE_S = 60;
const FEED_MAX = 200;
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
const EVENT_IDS_MAX = 2 * FEED_MAX;
// Ids already shown: a refill and a resumed replay overlap. A set, not "id <= last", so an
// older event that arrives after a newer one still shows. Bounded: the oldest ids go first.
const seenIds = new Set();
let lastEventId = null; // the newest id held: the websocket resumes after it
let lastEpoch = null; // the logepoch of the events held: a replaced log is noticed (4409)
let latestStreams = [];
let tokenRefused = false; // the last API call answered 401: the websocket's close says less (1006)

// --- token: ?token= in the URL, or the field (kept for this tab only) ----------------------
const params = new URLSearchParams(location.search);
const tokenInput = $("token");
tokenInput.value = params.get("token") || sessionStorage.getItem("token") || "";
if (params.has("token")) {
  // Out of the address bar, history and bookmarks: the tab keeps it in sessionStorage.
  sessionStorage.setItem("token", tokenInput.value);
  params.delete("token");
  history.replaceState(null, "", location.pathname + (params.toString() ? "?" + params : "") + location.hash);
}
tokenInput.addEventListener("change", () => {
  sessionStorage.setItem("token", tokenInput.value);
  // Events held: resume after the newest, so what happened while the token was refused shows
  // too (a refill would jump to the newest 30 and skip the rest). None held: start as on load.
  if (lastEventId === null) refill().then(connectAlerts); else connectAlerts();
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
const reasonText = (codes) => (codes || []).map((c) => REASON_TEXT[c] || c.replace(/_/g, " ")).join(", ");

// --- streams ----------------------------------------------------------------------------
async function poll() {
  try {
    const r = await fetch(here("api/streams"), { cache: "no-store", headers: authHeaders() });
    tokenRefused = r.status === 401;
    if (tokenRefused) { setPill("api-state", "API: token needed", "bad"); return; }
    if (!r.ok) throw new Error(r.status);
    latestStreams = await r.json();
    setPill("api-state", "API live", "ok");
    record(latestStreams);
    renderStreams(latestStreams);
    renderCameraVerdict();
  } catch (e) {
    setPill("api-state", "API unreachable", "bad");
  }
}

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

function renderStreams(streams) {
  const box = $("streams");
  const counts = { alert: 0, suspicious: 0, clear: 0, other: 0 };
  for (const s of streams) counts[s.verdict in counts ? s.verdict : "other"]++;
  $("summary").replaceChildren(
    el("span", { class: "chip alert", text: counts.alert + " alert" }),
    el("span", { class: "chip suspicious", text: counts.suspicious + " suspicious" }),
    el("span", { class: "chip clear", text: counts.clear + " clear" }),
    el("span", { class: "chip inconclusive", text: counts.other + " no verdict" }),
  );
  if (!streams.length) { box.replaceChildren(el("p", { class: "empty", text: "No streams yet. Publish one over WHIP, or start your camera." })); return; }
  const order = { alert: 0, suspicious: 1, inconclusive: 2, clear: 3 };
  const sorted = [...streams].sort((a, b) => (order[a.verdict] ?? 4) - (order[b.verdict] ?? 4) || a.id.localeCompare(b.id));
  box.replaceChildren(...sorted.map(streamCard));
  for (const canvas of box.querySelectorAll("canvas[data-key]")) drawTimeline(canvas, timelines.get(canvas.dataset.key) || []);
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
  for (const tr of s.tracks) {
    card.append(el("div", { class: "track", "data-track": tr.track_id },
      el("span", { class: "label", text: "face #" + tr.track_id }),
      el("span", {}, el("span", { class: "chip " + tr.state, text: tr.state }), " score " + pct(tr.score)),
      el("canvas", { width: 600, height: 46, "data-key": s.id + "/" + tr.track_id, "aria-label": "score timeline" }),
      el("div", { class: "reasons", text: "why: " + explain(s.id + "/" + tr.track_id, tr) }),
    ));
  }
  return card;
}

function explain(key, tr) {
  // The poll carries the current reason codes; the last state-change event adds its signals.
  const last = explanations.get(key);
  const codes = tr.reasons.length ? tr.reasons : (last ? last.reasons : []);
  const signals = last && last.signals ? [...last.signals].sort((a, b) => b.weight * b.value - a.weight * a.value).slice(0, 3) : [];
  const parts = [];
  if (codes.length) parts.push(reasonText(codes));
  if (signals.length) parts.push("signals: " + signals.map((g) => `${g.name.replace(/_/g, " ")} ${pct(g.value)}`).join(", "));
  return parts.length ? parts.join(" · ") : `score ${pct(tr.score)} (50% suspicious, 70% alert)`;
}

function stat(value, label, name) {
  return el("div", { class: "stat", ...(name ? { "data-stat": name } : {}) }, el("b", { text: value }), el("span", { text: label }));
}

function drawTimeline(canvas, series) {
  const ctx = canvas.getContext("2d");
  const w = canvas.width, h = canvas.height;
  ctx.clearRect(0, 0, w, h);
  ctx.strokeStyle = "#30363d"; ctx.setLineDash([4, 4]);
  for (const level of [0.5, 0.7]) { const y = h - level * h; ctx.beginPath(); ctx.moveTo(0, y); ctx.lineTo(w, y); ctx.stroke(); }
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

function setPill(id, text, cls) { const p = $(id); p.textContent = text; p.className = "pill " + cls; }

// --- alerts websocket (CloudEvents), resumes with ?since=<last id> -----------------------
let ws = null, wsRetry = 500;
function connectAlerts() {
  if (ws) { ws.onclose = null; ws.close(); }
  const resume = lastEventId !== null ? `?since=${lastEventId}` + (lastEpoch ? `&epoch=${encodeURIComponent(lastEpoch)}` : "") : "";
  const url = new URL("ws/alerts" + resume, BASE);
  url.protocol = location.protocol === "https:" ? "wss:" : "ws:";
  ws = new WebSocket(url.href, wsProtocols());
  // The backoff resets only once the server has sent something: one refused right after the
  // handshake (1013: too many clients) would otherwise be retried twice a second for ever.
  ws.onopen = () => { setPill("ws-state", "alerts live", "ok"); };
  ws.onmessage = (msg) => { wsRetry = 500; onEvent(JSON.parse(msg.data)); };
  ws.onclose = (ev) => {
    if (ev.code === 4409) {
      // The server's event log was reset: its ids restarted, so ours mean nothing there. Start
      // over as on load; since=0 would replay the whole retained log (up to 30 days) into the tab.
      seenIds.clear();
      lastEventId = null;
      lastEpoch = null;
      refill().then(connectAlerts);
      return;
    }
    setPill("ws-state", ev.code === 1008 || tokenRefused ? "alerts: token needed" : "alerts reconnecting…", "bad");
    setTimeout(connectAlerts, wsRetry);
    wsRetry = Math.min(wsRetry * 2, 5000);
  };
}

function onEvent(ce) {
  const id = Number(ce.id);
  if (seenIds.has(id)) return; // a refill and a resumed replay overlap
  seenIds.add(id);
  if (seenIds.size > EVENT_IDS_MAX) seenIds.delete(seenIds.values().next().value);
  if (lastEventId === null || id > lastEventId) lastEventId = id;
  if (ce.logepoch) lastEpoch = ce.logepoch;
  $("last-id").textContent = "last event #" + lastEventId;
  const d = ce.data || {};
  // Every event's data names its stream; the source (/<instance>/logs/<epoch>/streams/<id>)
  // does too, after its last "/streams/" (an instance may itself be called "streams").
  const stream = d.stream_id || ce.source.slice(ce.source.lastIndexOf("/streams/") + 9) || "?";
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
  const when = new Date(ce.time).toLocaleTimeString([], { hour12: false });
  const li = el("li", { class: "sev-" + (d.severity || "info"), "data-id": ce.id, "data-type": ce.type },
    el("time", { text: when }), el("span", { class: "what" }, el("span", { class: "chip " + cls, text: tag }), " " + what),
    why ? el("span", { class: "why", text: why }) : null,
    ce.type.includes(".alert.opened") && d.evidence && d.alert_id ? evidenceButton(d.alert_id) : null);
  const feed = $("feed");
  feed.prepend(li);
  while (feed.children.length > FEED_MAX) feed.lastChild.remove();
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
        box.append(el("img", { src: url, alt: name === manifest.frame.file ? "frame the alert was raised on, face boxed" : "face crop", class: name === manifest.frame.file ? "frame" : "face" }));
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

function renderCameraVerdict() {
  const view = $("cam-view"), label = $("cam-verdict"), score = $("cam-score");
  const s = cam && latestStreams.find((x) => x.id === cam.id);
  if (!cam) { view.className = "cam-view"; label.className = "verdict"; label.textContent = "camera off"; score.textContent = ""; return; }
  if (!s) { view.className = "cam-view"; label.className = "verdict waiting"; label.textContent = "connecting"; score.textContent = ""; return; }
  const worst = s.tracks.reduce((a, t) => (a == null || (t.score ?? -1) > (a.score ?? -1) ? t : a), null);
  view.className = "cam-view v-" + s.verdict;
  view.dataset.verdict = s.verdict;
  label.className = "verdict " + s.verdict;
  label.textContent = s.verdict.replace("_", " ");
  score.textContent = worst ? "score " + pct(worst.score) + (worst.reasons.length ? " · " + reasonText(worst.reasons) : "") : `${fmt(s.fps_in, 0)} fps`;
}

$("cam-start").addEventListener("click", startCamera);
$("cam-stop").addEventListener("click", stopCamera);
window.addEventListener("pagehide", () => { if (cam) stopCamera(); });

poll();
setInterval(poll, POLL_MS);
// Every page load (a reload too: the page starts empty), a token typed in and a log reset:
// the newest events from the log, then the websocket resumes after the newest id held.
async function refill() {
  try {
    const r = await fetch(here("api/events?last=30"), { cache: "no-store", headers: authHeaders() });
    if (!r.ok) return; // refused or failing: the websocket still connects, from now
    for (const ce of await r.json()) onEvent(ce);
    // An empty log: resume from its start, so nothing published meanwhile is missed.
    if (lastEventId === null) lastEventId = 0;
  } catch (e) { /* the websocket still connects */ }
}
refill().then(connectAlerts);
