// The review page: routes, their quality over time, events and captured pairs, from the admin
// API. Plain JavaScript, no framework; every request carries the admin token as a bearer header
// (the one typed into the form, kept in sessionStorage), or none when an authenticating proxy
// in front of the admin listener adds it.
"use strict";

const KEY = "understudy-admin-token";
const SVG = "http://www.w3.org/2000/svg";
const REFRESH_MS = 5000;
const MAX_DIFF_WORDS = 3000;
// Trend points come at most every 2 s while samples arrive; a longer pause is a gap.
const GAP_MS = 10000;

const state = { route: null, order: "worst", timer: null };
const $ = (sel) => document.querySelector(sel);

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") node.className = v;
    else if (k.startsWith("data-")) node.setAttribute(k, v);
    else node[k] = v;
  }
  for (const c of children) {
    if (c === null || c === undefined) continue;
    node.append(c instanceof Node ? c : String(c));
  }
  return node;
}

class Unauthorized extends Error {}

async function api(method, path, body) {
  const headers = { "content-type": "application/json" };
  const token = sessionStorage.getItem(KEY);
  if (token) headers.authorization = "Bearer " + token;
  const resp = await fetch(path, {
    method, headers, body: body === undefined ? undefined : JSON.stringify(body),
    cache: "no-store", credentials: "same-origin",
  });
  const data = await resp.json().catch(() => null);
  if (resp.status === 401) throw new Unauthorized("the admin token was refused");
  if (!resp.ok) {
    const msg = (data && data.error && data.error.message) || resp.statusText;
    throw new Error(resp.status + ": " + msg);
  }
  return data;
}

const enc = encodeURIComponent;
const fmt = (x, digits = 3) => (typeof x === "number" ? x.toFixed(digits) : "-");
const release = (r) => (r ? "#" + r.version + (r.label ? " (" + r.label + ")" : "") + " " + r.model : "-");

function status(text, isError) {
  const s = $("#status");
  s.textContent = text;
  s.className = isError ? "error" : "";
}

// ---- sparklines ---------------------------------------------------------------------------

function sparkline(points, width, height, axis) {
  const svg = document.createElementNS(SVG, "svg");
  svg.setAttribute("class", "spark");
  svg.setAttribute("width", width);
  svg.setAttribute("height", height);
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  const pad = 2;
  // Time runs left to right; a pause in sampling longer than GAP_MS breaks the line.
  const t0 = points.length ? points[0].at_ms : 0;
  const span = points.length > 1 ? points[points.length - 1].at_ms - t0 : 0;
  const x = (i) => pad + (span > 0 ? ((points[i].at_ms - t0) * (width - 2 * pad)) / span : 0);
  const y = (v) => height - pad - v * (height - 2 * pad);
  // One polyline per run of known values: where there was none (no candidate, the floor not
  // trusted yet, no samples) the line has a gap.
  const line = (key, cls) => {
    const runs = [[]];
    points.forEach((p, i) => {
      const paused = i > 0 && p.at_ms - points[i - 1].at_ms > GAP_MS;
      if ((paused || typeof p[key] !== "number") && runs[runs.length - 1].length > 0) runs.push([]);
      if (typeof p[key] === "number") runs[runs.length - 1].push(`${x(i).toFixed(1)},${y(p[key]).toFixed(1)}`);
    });
    for (const pts of runs) {
      if (pts.length === 0) continue;
      if (pts.length === 1) pts.push(pts[0].replace(/^[^,]+/, (v) => String(Number(v) + 2)));
      const pl = document.createElementNS(SVG, "polyline");
      pl.setAttribute("class", cls);
      pl.setAttribute("points", pts.join(" "));
      svg.append(pl);
    }
  };
  if (axis) {
    // Grid lines at 0, 0.5 and 1 with their values; the time span under the chart.
    for (const v of [0, 0.5, 1]) {
      const g = document.createElementNS(SVG, "line");
      g.setAttribute("class", "grid");
      g.setAttribute("x1", pad); g.setAttribute("x2", width - pad);
      g.setAttribute("y1", y(v)); g.setAttribute("y2", y(v));
      const label = document.createElementNS(SVG, "text");
      label.setAttribute("x", width - pad);
      label.setAttribute("y", y(v) + (v === 1 ? 10 : -2));
      label.setAttribute("text-anchor", "end");
      label.textContent = v.toFixed(1);
      svg.append(g, label);
    }
  }
  line("noise_floor", "noise");
  line("quality", "quality");
  const title = document.createElementNS(SVG, "title");
  const last = points[points.length - 1];
  title.textContent = last ? `quality ${fmt(last.quality)}, noise floor ${fmt(last.noise_floor)}, ${points.length} points` : "no samples yet";
  svg.append(title);
  return svg;
}

// ---- routes -------------------------------------------------------------------------------

const trends = new Map();

async function loadRoutes() {
  const data = await api("GET", "/admin/routes");
  // Each route's trend, for its sparkline (a route whose detail fails keeps its last one).
  await Promise.all(data.routes.map((r) => api("GET", "/admin/routes/" + enc(r.name))
    .then((d) => trends.set(r.name, d.trend || [])).catch(() => {})));
  const body = $("#routes tbody");
  body.replaceChildren();
  for (const r of data.routes) {
    const cell = el("td", { class: "spark-cell" });
    const known = trends.get(r.name);
    if (known) cell.append(sparkline(known, 120, 24));
    const row = el("tr", { "data-route": r.name },
      el("td", {}, el("strong", {}, r.name)),
      el("td", {}, el("span", { class: "phase " + r.phase }, r.phase)),
      el("td", {}, fmt(r.share, 2)),
      el("td", {}, "#" + r.serving),
      el("td", {}, release(r.stable)),
      el("td", {}, release(r.candidate)),
      el("td", { class: "quality" }, fmt(r.quality)),
      el("td", {}, fmt(r.noise_floor)),
      el("td", {}, r.samples),
      cell);
    if (r.name === state.route) row.classList.add("selected");
    row.addEventListener("click", () => selectRoute(r.name));
    body.append(row);
  }
  if (!state.route && data.routes.length > 0) await selectRoute(data.routes[0].name);
  return data.routes;
}

async function selectRoute(name) {
  state.route = name;
  for (const tr of document.querySelectorAll("#routes tbody tr")) {
    tr.classList.toggle("selected", tr.dataset.route === name);
  }
  $("#route").hidden = false;
  await Promise.all([loadDetail(), loadPairs()]);
}

async function loadDetail() {
  const name = state.route;
  const r = await api("GET", "/admin/routes/" + enc(name));
  if (name !== state.route) return;
  trends.set(name, r.trend || []);
  $("#route-title").textContent =
    `${r.name}: ${r.phase}, share ${fmt(r.share, 2)}, stable ${release(r.stable)}, candidate ${release(r.candidate)}`;
  const trend = r.trend || [];
  const span = trend.length > 1 ? Math.round((trend[trend.length - 1].at_ms - trend[0].at_ms) / 60000) : 0;
  $("#trend").replaceChildren(sparkline(trend, 480, 100, true),
    el("div", { class: "muted" }, trend.length ? `${trend.length} points over ${span} min (kept in memory since the server started)` : "no samples yet"));
  const sc = $("#scorers");
  sc.replaceChildren();
  for (const s of r.scorers || []) {
    sc.append(el("span", { class: "chip" }, `${s.scorer} ${fmt(s.quality, 2)} (floor ${fmt(s.noise_floor, 2)}, ${s.samples}) `));
  }
  if (document.activeElement !== $("#share")) $("#share").value = r.share;
  if (r.candidate && r.phase !== "stable" && document.activeElement !== $("#phase")) $("#phase").value = r.phase;
  $("#rollback").disabled = !r.candidate;
  $("#promote").disabled = !r.candidate;
  const list = $("#events");
  list.replaceChildren();
  for (const e of (r.events || []).slice().reverse()) {
    const parts = [e.kind];
    if (e.from) parts.push("from #" + e.from);
    if (e.to) parts.push("to #" + e.to);
    if (e.phase) parts.push(e.phase);
    if (typeof e.share === "number") parts.push("share " + fmt(e.share, 2));
    if (e.trigger) parts.push("(" + e.trigger + ")");
    list.append(el("li", { class: e.kind }, el("span", { class: "at" }, e.at.replace("T", " ").replace(/\.\d+Z$/, "Z")), " ",
      parts.join(" "), e.reason ? el("span", { class: "muted" }, ": " + e.reason) : null));
  }
}

// ---- pairs and the word diff --------------------------------------------------------------

function promptOf(request) {
  if (!request) return "(request not kept: this route redacts requests)";
  const text = (c) => (typeof c === "string" ? c : Array.isArray(c) ? c.map((p) => p.text || (typeof p === "string" ? p : "")).join("\n") : "");
  const items = Array.isArray(request.messages) ? request.messages : Array.isArray(request.input) ? request.input : null;
  if (items) {
    const user = items.slice().reverse().find((m) => m && m.role === "user");
    return user ? text(user.content) : "";
  }
  if (typeof request.input === "string") return request.input;
  return text(request.prompt);
}

function answerOf(side) {
  let t = side.text || "";
  for (const [name, args] of side.tool_calls || []) t += (t ? "\n" : "") + `${name}(${args})`;
  return t;
}

// Words and the whitespace between them, so the text is shown as it was.
const tokens = (s) => s.split(/(\s+)/).filter((t) => t.length > 0);

// Longest common subsequence of the two token lists (whitespace tokens included), as the
// kept/removed/added runs of each side.
function wordDiff(a, b) {
  const x = tokens(a), y = tokens(b);
  const n = x.length, m = y.length;
  if (n * m > MAX_DIFF_WORDS * MAX_DIFF_WORDS) return null;
  const w = m + 1;
  const dp = new Uint32Array((n + 1) * w);
  for (let i = n - 1; i >= 0; i--) {
    for (let j = m - 1; j >= 0; j--) {
      dp[i * w + j] = x[i] === y[j] ? dp[(i + 1) * w + j + 1] + 1 : Math.max(dp[(i + 1) * w + j], dp[i * w + j + 1]);
    }
  }
  const left = [], right = [];
  let i = 0, j = 0;
  while (i < n && j < m) {
    if (x[i] === y[j]) { left.push(["same", x[i]]); right.push(["same", y[j]]); i++; j++; }
    else if (dp[(i + 1) * w + j] >= dp[i * w + j + 1]) left.push(["del", x[i++]]);
    else right.push(["ins", y[j++]]);
  }
  while (i < n) left.push(["del", x[i++]]);
  while (j < m) right.push(["ins", y[j++]]);
  return [left, right];
}

function renderRuns(runs) {
  const node = el("div", { class: "diff" });
  for (const [kind, text] of runs) {
    const blank = /^\s+$/.test(text);
    if (kind === "same" || blank) node.append(text);
    else node.append(el(kind, {}, text));
  }
  return node;
}

function side(title, out, runs) {
  const failed = out.failure ? el("div", { class: "failure" }, "failed: " + out.failure + (out.status ? " (HTTP " + out.status + ")" : "")) : null;
  const body = runs ? renderRuns(runs) : el("div", { class: "diff" }, answerOf(out));
  return el("div", { class: "side" }, el("h4", {}, `${title} · ${fmt(out.latency_ms, 0)} ms${out.finish_reason ? " · " + out.finish_reason : ""}`), failed, body);
}

function pairNode(p) {
  const a = answerOf(p.stable), b = answerOf(p.candidate);
  const runs = wordDiff(a, b);
  const meta = el("div", { class: "meta" },
    el("span", { class: "score" }, "score " + fmt(p.score)),
    el("span", { class: "chip" }, `candidate #${p.candidate_version}` + (p.stable_version ? ` vs stable #${p.stable_version}` : "")),
    ...Object.entries(p.scores || {}).filter(([k]) => k !== "combined").map(([k, v]) => el("span", { class: "chip scorer", "data-scorer": k }, `${k} ${fmt(v, 2)}`)),
    p.hard_failure ? el("span", { class: "failure" }, "hard failure: " + p.hard_failure + (p.failed_check ? " (" + p.failed_check + ")" : "")) : null,
    p.judge_reason ? el("span", { class: "judge-reason" }, "judge: " + p.judge_reason) : null,
    el("span", { class: "chip" }, new Date(p.at_unix * 1000).toISOString().replace("T", " ").replace(/\.\d+Z$/, "Z")));
  return el("div", { class: "pair" }, meta,
    el("div", { class: "prompt" }, promptOf(p.request)),
    el("div", { class: "sides" },
      side("stable (reference)", p.stable, runs && runs[0]),
      side("candidate", p.candidate, runs && runs[1])));
}

async function loadPairs() {
  const name = state.route, order = state.order;
  const data = await api("GET", `/admin/routes/${enc(name)}/samples?order=${order}&limit=20`);
  if (name !== state.route || order !== state.order) return;
  const box = $("#pairs");
  box.replaceChildren();
  if (data.samples.length === 0) box.append(el("p", { class: "muted" }, "No pairs captured yet."));
  for (const p of data.samples) box.append(pairNode(p));
}

// ---- actions ------------------------------------------------------------------------------

async function act(what, path, body) {
  const out = $("#action-result");
  try {
    const r = await api("POST", path, body);
    out.className = "";
    out.textContent = `${what}: ${r.phase}, serving #${r.serving}` + (r.durable === false ? " (in effect, NOT yet durable)" : "");
  } catch (e) {
    if (e instanceof Unauthorized) return showLogin(e.message);
    out.className = "error";
    out.textContent = `${what} refused: ${e.message}`;
  }
  await refresh();
}

function wire() {
  $("#rollback").addEventListener("click", () => {
    const route = state.route;
    if (!route || !confirm(`Roll ${route} back to stable?`)) return;
    const reason = $("#reason").value.trim();
    act("rolled back", `/admin/routes/${enc(route)}/rollback`, reason ? { reason } : {});
  });
  $("#promote").addEventListener("click", () => {
    const route = state.route;
    const phase = $("#phase").value;
    const share = Number($("#share").value);
    if (!route || !confirm(`Move ${route}'s candidate to ${phase} at share ${share}?`)) return;
    act("promoted", `/admin/routes/${enc(route)}/promote`, { phase, share });
  });
  for (const tab of document.querySelectorAll(".tab")) {
    tab.addEventListener("click", () => {
      state.order = tab.dataset.order;
      for (const t of document.querySelectorAll(".tab")) t.classList.toggle("active", t === tab);
      loadPairs().catch(fail);
    });
  }
  $("#token-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    sessionStorage.setItem(KEY, $("#token").value);
    await start();
  });
  $("#logout").addEventListener("click", () => {
    sessionStorage.removeItem(KEY);
    showLogin("");
  });
}

// ---- start --------------------------------------------------------------------------------

function showLogin(message) {
  clearInterval(state.timer);
  $("#app").hidden = true;
  $("#login").hidden = false;
  $("#logout").hidden = true;
  $("#login-error").textContent = message || "";
  status("");
}

function fail(e) {
  if (e instanceof Unauthorized) showLogin(e.message);
  else status(e.message, true);
}

async function refresh() {
  try {
    await loadRoutes();
    if (state.route) await loadDetail();
    status("updated " + new Date().toLocaleTimeString());
  } catch (e) {
    fail(e);
  }
}

async function start() {
  const token = sessionStorage.getItem(KEY);
  if (document.body.dataset.auth === "form" && !token) return showLogin("");
  try {
    const routes = await loadRoutes();
    // Route reads answer without the token; the pairs do not: this checks it.
    if (routes.length > 0) await api("GET", `/admin/routes/${enc(routes[0].name)}/samples?limit=1`);
  } catch (e) {
    if (token && e instanceof Unauthorized) sessionStorage.removeItem(KEY);
    return fail(e);
  }
  $("#login").hidden = true;
  $("#app").hidden = false;
  $("#logout").hidden = !token;
  status("updated " + new Date().toLocaleTimeString());
  clearInterval(state.timer);
  state.timer = setInterval(refresh, REFRESH_MS);
}

wire();
start();
