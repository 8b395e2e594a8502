// tiermon's dashboard: one page, no dependencies, served by every tier.
// Pages (hash routes): #/fleet, #/host/<instance>, #/explore?q=…,
// #/alerts, #/hierarchy, #/dashboards, #/dash/<name>.
"use strict";

// Every uncaught error and failed promise is kept, so a test (or a person
// in the console) can see what went wrong on the page.
window.tiermonErrors = [];
window.addEventListener("error", (e) => window.tiermonErrors.push(String(e.message || e)));
window.addEventListener("unhandledrejection", (e) => window.tiermonErrors.push(String(e.reason && e.reason.message || e.reason)));

const $ = (sel, el = document) => el.querySelector(sel);
const main = $("#main");
const tip = $("#tip");
let timers = [];
let ui = { tier: "", datacenter: "" };

// Okabe–Ito, safe for the common colour-blindnesses; every state also has
// a glyph, so colour is never the only cue.
const STATES = {
  up: { color: "#009E73", glyph: "", label: "up" },
  warning: { color: "#F0E442", glyph: "!", label: "warning alert" },
  critical: { color: "#E69F00", glyph: "▲", label: "critical alert" },
  down: { color: "#D55E00", glyph: "×", label: "down" },
  unknown: { color: "#BBBBBB", glyph: "?", label: "no data" },
};
const RANK = { up: 0, unknown: 1, warning: 2, critical: 3, down: 4 };

function esc(s) {
  return String(s).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
}

async function api(path, opts) {
  const r = await fetch(path, opts);
  const text = await r.text();
  let body = null;
  try { body = text ? JSON.parse(text) : null; } catch (_) { body = null; }
  if (!r.ok) {
    const msg = (body && (body.error || body.message)) || text || r.statusText;
    const e = new Error(`${r.status}: ${msg}`);
    e.status = r.status;
    throw e;
  }
  return body;
}

async function query(q, time) {
  const p = new URLSearchParams({ query: q });
  if (time) p.set("time", String(time));
  const r = await api("/api/v1/query", { method: "POST", headers: { "Content-Type": "application/x-www-form-urlencoded" }, body: p });
  return r.data;
}

async function queryRange(q, start, end, step) {
  const p = new URLSearchParams({ query: q, start: String(start), end: String(end), step: String(step) });
  const r = await api("/api/v1/query_range", { method: "POST", headers: { "Content-Type": "application/x-www-form-urlencoded" }, body: p });
  return r.data;
}

function labelText(m) {
  const name = m.__name__ || "";
  const rest = Object.entries(m).filter(([k]) => k !== "__name__").map(([k, v]) => `${k}="${v}"`).join(", ");
  return `${name}{${rest}}`;
}

function parseHash() {
  const h = location.hash.replace(/^#\/?/, "");
  const [path, qs] = h.split("?");
  const parts = path.split("/").map(decodeURIComponent);
  return { page: parts[0] || "fleet", arg: parts.slice(1).join("/"), params: new URLSearchParams(qs || "") };
}

function every(ms, f) {
  f();
  timers.push(setInterval(f, ms));
}

// ---------------------------------------------------------------- fleet

const fleet = { cells: [], layout: [], groupBy: "datacenter", colorQuery: "", warn: "", crit: "" };

async function fleetData() {
  const up = await query("up");
  const alerts = await query('ALERTS{alertstate="firing"}').catch(() => ({ result: [] }));
  const worst = new Map();
  for (const a of alerts.result) {
    const inst = a.metric.instance;
    if (!inst) continue;
    const sev = a.metric.severity === "critical" ? "critical" : "warning";
    if (!worst.has(inst) || RANK[sev] > RANK[worst.get(inst)]) worst.set(inst, sev);
  }
  let values = null;
  if (fleet.colorQuery) {
    values = new Map();
    const r = await query(fleet.colorQuery);
    for (const s of r.result || []) if (s.metric.instance) values.set(s.metric.instance, Number(s.value[1]));
  }
  const hosts = new Map();
  for (const s of up.result) {
    const inst = s.metric.instance;
    if (!inst) continue;
    const v = Number(s.value[1]);
    const prev = hosts.get(inst);
    // An instance scraped by several jobs is down if any job says so.
    if (prev && prev.upValue === 0) continue;
    hosts.set(inst, { instance: inst, labels: s.metric, upValue: v });
  }
  const cells = [];
  for (const h of hosts.values()) {
    let state = h.upValue === 1 ? "up" : "down";
    if (state === "up" && worst.has(h.instance)) state = worst.get(h.instance);
    let value = null;
    if (values) {
      value = values.has(h.instance) ? values.get(h.instance) : null;
      if (state === "up") {
        const w = parseFloat(fleet.warn), c = parseFloat(fleet.crit);
        if (value === null) state = "unknown";
        else if (!isNaN(c) && value >= c) state = "critical";
        else if (!isNaN(w) && value >= w) state = "warning";
      }
    }
    // "datacenter,secondary": nested groups, named "dc1 / pair-1".
    const group = fleet.groupBy.split(",").map((l) => l.trim()).filter((l) => l)
      .map((l) => h.labels[l] || (l === "datacenter" && ui.datacenter) || "(none)").join(" / ") || "(none)";
    cells.push({ instance: h.instance, labels: h.labels, state, value, group });
  }
  cells.sort((a, b) => (a.group < b.group ? -1 : a.group > b.group ? 1 : a.instance < b.instance ? -1 : a.instance > b.instance ? 1 : 0));
  return cells;
}

const CELL = 14, GAP = 2;

function drawFleet(canvas, cells) {
  const width = Math.max(300, canvas.parentElement.clientWidth - 4);
  const cols = Math.max(1, Math.floor(width / (CELL + GAP)));
  // Rows: a title row per group, then its cells.
  const layout = [];
  let row = 0, lastGroup = null, col = 0;
  for (const c of cells) {
    if (c.group !== lastGroup) {
      if (lastGroup !== null) row += 1;
      layout.push({ title: c.group, row });
      row += 1;
      col = 0;
      lastGroup = c.group;
    }
    if (col === cols) { row += 1; col = 0; }
    layout.push({ cell: c, row, col });
    col += 1;
  }
  const height = (row + 1) * (CELL + GAP) + 4;
  const dpr = window.devicePixelRatio || 1;
  canvas.width = width * dpr;
  canvas.height = height * dpr;
  canvas.style.width = width + "px";
  canvas.style.height = height + "px";
  const g = canvas.getContext("2d");
  g.scale(dpr, dpr);
  g.clearRect(0, 0, width, height);
  g.font = "bold 11px system-ui, sans-serif";
  g.textAlign = "center";
  g.textBaseline = "middle";
  for (const item of layout) {
    const y = item.row * (CELL + GAP);
    if (item.title !== undefined) {
      g.fillStyle = "#1d1d1f";
      g.textAlign = "left";
      g.font = "600 12px system-ui, sans-serif";
      g.fillText(item.title, 0, y + CELL / 2);
      g.textAlign = "center";
      g.font = "bold 11px system-ui, sans-serif";
      continue;
    }
    const x = item.col * (CELL + GAP);
    const st = STATES[item.cell.state];
    g.fillStyle = st.color;
    g.fillRect(x, y, CELL, CELL);
    if (st.glyph) {
      g.fillStyle = "#000";
      g.fillText(st.glyph, x + CELL / 2, y + CELL / 2 + 1);
    }
  }
  fleet.layout = layout;
  fleet.cols = cols;
  canvas.dataset.cells = String(cells.length);
  canvas.dataset.down = String(cells.filter((c) => c.state === "down").length);
}

function cellAt(x, y) {
  const row = Math.floor(y / (CELL + GAP)), col = Math.floor(x / (CELL + GAP));
  if (x % (CELL + GAP) >= CELL || y % (CELL + GAP) >= CELL) return null;
  const it = fleet.layout.find((i) => i.cell && i.row === row && i.col === col);
  return it ? it.cell : null;
}

function pageFleet(params) {
  fleet.groupBy = params.get("group") || fleet.groupBy;
  fleet.colorQuery = params.get("q") || "";
  fleet.warn = params.get("warn") || "";
  fleet.crit = params.get("crit") || "";
  main.innerHTML = `
    <h2>Fleet</h2>
    <div class="bar">
      <label>group by <input id="group" list="group-labels" value="${esc(fleet.groupBy)}" size="12"></label>
      <datalist id="group-labels"><option value="datacenter"><option value="secondary"><option value="datacenter,secondary"><option value="job"><option value="rack"><option value="role"></datalist>
      <label>colour by query <input id="cq" value="${esc(fleet.colorQuery)}" size="40" placeholder="e.g. 100 * (1 - avg by (instance) (rate(node_cpu_seconds_total{mode=&quot;idle&quot;}[2m])))"></label>
      <label>warn ≥ <input id="warn" value="${esc(fleet.warn)}" size="5"></label>
      <label>crit ≥ <input id="crit" value="${esc(fleet.crit)}" size="5"></label>
      <button id="apply">Apply</button>
      <span id="summary" class="muted"></span>
    </div>
    <div class="legend">${Object.values(STATES).map((s) => `<span><i class="swatch" style="background:${s.color}">${s.glyph}</i>${s.label}</span>`).join("")}</div>
    <div id="heat-wrap"><canvas class="heat" id="heat" data-cells="0"></canvas></div>
    <p id="fleet-err" class="err"></p>`;
  $("#apply").onclick = () => {
    const p = new URLSearchParams({ group: $("#group").value, q: $("#cq").value, warn: $("#warn").value, crit: $("#crit").value });
    location.hash = "#/fleet?" + p.toString();
  };
  const canvas = $("#heat");
  canvas.addEventListener("mousemove", (e) => {
    const r = canvas.getBoundingClientRect();
    const c = cellAt(e.clientX - r.left, e.clientY - r.top);
    if (!c) { tip.hidden = true; return; }
    const extra = Object.entries(c.labels).filter(([k]) => !["__name__", "instance"].includes(k)).map(([k, v]) => `${k}=${v}`).join(" ");
    tip.textContent = `${c.instance}\n${STATES[c.state].label}${c.value !== null ? `\nvalue ${c.value}` : ""}\n${extra}`;
    tip.style.left = e.clientX + 12 + "px";
    tip.style.top = e.clientY + 12 + "px";
    tip.hidden = false;
  });
  canvas.addEventListener("mouseleave", () => { tip.hidden = true; });
  canvas.addEventListener("click", (e) => {
    const r = canvas.getBoundingClientRect();
    const c = cellAt(e.clientX - r.left, e.clientY - r.top);
    if (c) location.hash = "#/host/" + encodeURIComponent(c.instance);
  });
  every(5000, async () => {
    try {
      const t0 = performance.now();
      const cells = await fleetData();
      const t1 = performance.now();
      drawFleet(canvas, cells);
      const t2 = performance.now();
      performance.mark("tiermon-fleet-drawn");
      window.tiermonFleetTimings = (window.tiermonFleetTimings || []).concat([{ fetchMs: t1 - t0, drawMs: t2 - t1, cells: cells.length }]);
      const down = cells.filter((c) => c.state === "down").length;
      $("#summary").textContent = `${cells.length} hosts, ${down} down`;
      $("#fleet-err").textContent = "";
    } catch (e) {
      $("#fleet-err").textContent = String(e.message || e);
    }
  });
}

// ---------------------------------------------------------------- graphs

const UNITS = {
  bytes: (v) => fmtBin(v) + "B",
  "bytes/s": (v) => fmtBin(v) + "B/s",
  percent: (v) => v.toFixed(1) + "%",
  "req/s": (v) => fmtSi(v) + "/s",
  seconds: (v) => fmtSi(v) + "s",
  none: (v) => fmtSi(v),
};

function fmtSi(v) {
  const a = Math.abs(v);
  if (a >= 1e9) return (v / 1e9).toFixed(2) + "G";
  if (a >= 1e6) return (v / 1e6).toFixed(2) + "M";
  if (a >= 1e3) return (v / 1e3).toFixed(2) + "k";
  if (a === 0) return "0";
  if (a < 0.01) return v.toExponential(1);
  return Number(v.toFixed(3)).toString();
}

function fmtBin(v) {
  const u = ["", "Ki", "Mi", "Gi", "Ti"];
  let i = 0;
  while (Math.abs(v) >= 1024 && i < u.length - 1) { v /= 1024; i += 1; }
  return v.toFixed(i ? 1 : 0) + u[i];
}

const PALETTE = ["#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000"];

function drawGraph(canvas, series, unit, start, end) {
  const w = canvas.clientWidth || 400, h = canvas.clientHeight || 180;
  const dpr = window.devicePixelRatio || 1;
  canvas.width = w * dpr;
  canvas.height = h * dpr;
  const g = canvas.getContext("2d");
  g.scale(dpr, dpr);
  g.clearRect(0, 0, w, h);
  const fmt = UNITS[unit] || UNITS.none;
  let lo = Infinity, hi = -Infinity;
  for (const s of series) for (const [, v] of s.values) { const x = Number(v); if (isFinite(x)) { lo = Math.min(lo, x); hi = Math.max(hi, x); } }
  if (!isFinite(lo)) { g.fillStyle = "#6b6b70"; g.fillText("no data", 10, 20); return; }
  if (lo === hi) { lo -= 1; hi += 1; }
  if (lo > 0 && lo < hi * 0.5) lo = 0;
  const left = 60, bottom = 18, top = 6;
  const X = (t) => left + ((t - start) / (end - start)) * (w - left - 4);
  const Y = (v) => top + (1 - (v - lo) / (hi - lo)) * (h - top - bottom);
  g.strokeStyle = "#e5e5ea";
  g.fillStyle = "#6b6b70";
  g.font = "11px system-ui, sans-serif";
  for (let i = 0; i <= 4; i++) {
    const v = lo + ((hi - lo) * i) / 4, y = Y(v);
    g.beginPath(); g.moveTo(left, y); g.lineTo(w, y); g.stroke();
    g.fillText(fmt(v), 2, y + 4);
  }
  for (let i = 0; i <= 4; i++) {
    const t = start + ((end - start) * i) / 4;
    const label = new Date(t * 1000).toTimeString().slice(0, 5);
    const x = Math.min(Math.max(X(t) - 14, left), w - 32);
    g.fillText(label, x, h - 4);
  }
  series.forEach((s, i) => {
    g.strokeStyle = PALETTE[i % PALETTE.length];
    g.lineWidth = 1.5;
    g.beginPath();
    let pen = false, prevT = null;
    for (const [t, v] of s.values) {
      const x = Number(v);
      // A gap of more than three steps breaks the line.
      if (!isFinite(x) || (prevT !== null && t - prevT > 3 * s.step)) { pen = false; }
      if (isFinite(x)) { if (pen) g.lineTo(X(t), Y(x)); else g.moveTo(X(t), Y(x)); pen = true; }
      prevT = t;
    }
    g.stroke();
    // A series of a few points shows them, or it would be invisible.
    const pts = s.values.filter(([, v]) => isFinite(Number(v)));
    if (pts.length < 4) {
      g.fillStyle = PALETTE[i % PALETTE.length];
      for (const [t, v] of pts) { g.beginPath(); g.arc(X(t), Y(Number(v)), 2.5, 0, 2 * Math.PI); g.fill(); }
    }
  });
}

const RANGES = { "5m": 300, "15m": 900, "1h": 3600, "6h": 21600, "24h": 86400, "7d": 604800 };

async function renderPanel(el, panel, rangeS, vars) {
  let q = panel.query;
  for (const [k, v] of Object.entries(vars || {})) q = q.split("$" + k).join(v);
  el.innerHTML = `<h4>${esc(panel.title)}</h4><canvas></canvas><div class="legend"></div><div class="err"></div>`;
  const end = Date.now() / 1000, start = end - rangeS;
  const step = Math.max(1, Math.round(rangeS / 240));
  try {
    const r = await queryRange(q, start, end, step);
    const series = (r.result || []).slice(0, 8).map((s) => ({ ...s, step }));
    drawGraph($("canvas", el), series, panel.unit || "none", start, end);
    $(".legend", el).innerHTML = series.map((s, i) => `<span><i class="swatch" style="background:${PALETTE[i % PALETTE.length]}"></i>${esc(labelText(s.metric))}</span>`).join("");
  } catch (e) {
    $(".err", el).textContent = String(e.message || e);
  }
}

function rangePicker(current) {
  return `<select id="range">${Object.keys(RANGES).map((k) => `<option ${k === current ? "selected" : ""}>${k}</option>`).join("")}</select>`;
}

// ---------------------------------------------------------------- pages

async function pageDashboard(name, params, vars, heading) {
  const range = params.get("range") || "1h";
  main.innerHTML = `<h2>${esc(heading || name)}</h2><div class="bar">range ${rangePicker(range)} <button class="plain" id="reload">Refresh</button></div><div class="panels" id="panels"></div><p class="err" id="dash-err"></p>`;
  $("#range").onchange = () => { params.set("range", $("#range").value); location.hash = location.hash.split("?")[0] + "?" + params.toString(); };
  let dash;
  try {
    dash = (await api("/api/tiermon/v1/dashboards/" + encodeURIComponent(name))).data;
  } catch (e) {
    $("#dash-err").textContent = String(e.message || e);
    return;
  }
  const draw = () => {
    const box = $("#panels");
    if (!box) return;
    box.innerHTML = "";
    for (const p of dash.panels) {
      const el = document.createElement("div");
      el.className = "panel";
      box.appendChild(el);
      renderPanel(el, p, RANGES[range] || 3600, vars);
    }
  };
  $("#reload").onclick = draw;
  every(30000, draw);
}

function pageHost(instance, params) {
  return pageDashboard("host", params, { instance }, "Host " + instance);
}

async function pageDashboards() {
  main.innerHTML = `<h2>Dashboards</h2><table id="dl"><tr><th>name</th><th>title</th></tr></table>`;
  const r = await api("/api/tiermon/v1/dashboards");
  for (const d of r.data) {
    const tr = document.createElement("tr");
    tr.innerHTML = d.error
      ? `<td>${esc(d.name)}</td><td class="err">${esc(d.error)}</td>`
      : `<td><a href="#/dash/${encodeURIComponent(d.name)}">${esc(d.name)}</a></td><td>${esc(d.title)}</td>`;
    $("#dl").appendChild(tr);
  }
}

function pageExplore(params) {
  const q = params.get("q") || "";
  const range = params.get("range") || "1h";
  const refresh = params.get("refresh") || "off";
  main.innerHTML = `
    <h2>Explore</h2>
    <textarea id="q" placeholder="PromQL, e.g. rate(node_cpu_seconds_total[5m])">${esc(q)}</textarea>
    <div class="bar">
      <button id="run">Run</button> range ${rangePicker(range)}
      refresh <select id="refresh">${["off", "5s", "15s", "1m"].map((k) => `<option ${k === refresh ? "selected" : ""}>${k}</option>`).join("")}</select>
      <span class="muted">the URL is the query: share it</span>
    </div>
    <div class="panel"><canvas id="graph"></canvas><div class="legend" id="glegend"></div></div>
    <p class="err" id="qerr"></p>
    <table id="result"></table>`;
  const go = () => {
    const p = new URLSearchParams({ q: $("#q").value, range: $("#range").value, refresh: $("#refresh").value });
    location.hash = "#/explore?" + p.toString();
  };
  $("#run").onclick = go;
  $("#range").onchange = go;
  $("#refresh").onchange = go;
  $("#q").addEventListener("keydown", (e) => { if (e.key === "Enter" && (e.ctrlKey || e.metaKey || e.shiftKey)) { e.preventDefault(); go(); } });
  if (!q) return;
  const run = async () => {
    const rangeS = RANGES[range] || 3600;
    const end = Date.now() / 1000, start = end - rangeS, step = Math.max(1, Math.round(rangeS / 240));
    try {
      const [inst, rng] = await Promise.all([query(q), queryRange(q, start, end, step).catch(() => null)]);
      $("#qerr").textContent = "";
      const rows = inst.resultType === "vector"
        ? inst.result.map((s) => `<tr><td class="mono">${esc(labelText(s.metric))}</td><td>${esc(s.value[1])}</td></tr>`)
        : inst.resultType === "scalar" || inst.resultType === "string"
          ? [`<tr><td>${inst.resultType}</td><td>${esc(inst.result[1])}</td></tr>`]
          : inst.result.map((s) => `<tr><td class="mono">${esc(labelText(s.metric))}</td><td>${s.values.length} samples</td></tr>`);
      $("#result").innerHTML = `<tr><th>series</th><th>value</th></tr>` + rows.join("");
      if (rng && rng.resultType === "matrix") {
        const series = rng.result.slice(0, 8).map((s) => ({ ...s, step }));
        drawGraph($("#graph"), series, "none", start, end);
        $("#glegend").innerHTML = series.map((s, i) => `<span><i class="swatch" style="background:${PALETTE[i % PALETTE.length]}"></i>${esc(labelText(s.metric))}</span>`).join("");
      }
    } catch (e) {
      $("#qerr").textContent = String(e.message || e);
    }
  };
  const ms = { "5s": 5000, "15s": 15000, "1m": 60000 }[refresh];
  if (ms) every(ms, run); else run();
}

function labelsHtml(l) {
  return `<span class="labels">${Object.entries(l).map(([k, v]) => `<span>${esc(k)}=${esc(v)}</span>`).join("")}</span>`;
}

async function pageAlerts() {
  main.innerHTML = `
    <h2>Alerts</h2>
    <div id="groups"><p class="muted">loading…</p></div>
    <h3>Silences</h3>
    <div class="bar">
      <input id="sm" size="40" placeholder='matchers, e.g. instance="web-1:9100", alertname=~"Host.*"'>
      <select id="sd"><option>1h</option><option>2h</option><option>8h</option><option>24h</option></select>
      <input id="sa" size="10" placeholder="author">
      <input id="sc" size="24" placeholder="comment">
      <button id="silence">Silence</button>
    </div>
    <p class="err" id="serr"></p>
    <table id="silences"></table>
    <h3>Pending and firing (rules of this tier)</h3>
    <table id="rules"></table>`;
  $("#silence").onclick = async () => {
    const matchers = [];
    for (const part of $("#sm").value.split(",").map((s) => s.trim()).filter(Boolean)) {
      const m = part.match(/^([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*"?(.*?)"?$/);
      if (!m) { $("#serr").textContent = `not a matcher: ${part}`; return; }
      matchers.push({ name: m[1], value: m[3], isRegex: m[2].includes("~"), isEqual: !m[2].startsWith("!") });
    }
    const hours = parseInt($("#sd").value, 10);
    const body = { matchers, startsAt: new Date().toISOString(), endsAt: new Date(Date.now() + hours * 3600e3).toISOString(), createdBy: $("#sa").value || "dashboard", comment: $("#sc").value || "" };
    try {
      await api("/api/v2/silences", { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
      $("#serr").textContent = "";
      load();
    } catch (e) { $("#serr").textContent = String(e.message || e); }
  };
  const load = async () => {
    try {
      const groups = (await api("/api/v2/alerts/groups")) || [];
      $("#groups").innerHTML = groups.length ? "" : `<p class="muted">no alerts</p>`;
      for (const g of groups) {
        const div = document.createElement("div");
        div.className = "group";
        div.innerHTML = `<div><b>${esc(g.receiver.name)}</b> ${labelsHtml(g.labels)}</div><table>${g.alerts.map((a) => `<tr><td class="${a.status.state === "active" ? "state-firing" : "muted"}">${esc(a.status.state)}${a.status.acknowledgedBy ? " (acknowledged by " + esc(a.status.acknowledgedBy.by) + ")" : ""}</td><td>${labelsHtml(a.labels)}<div>${esc(a.annotations.summary || a.annotations.description || "")}</div></td><td>${esc(a.startsAt)}</td><td><button class="plain ack" data-fp="${esc(a.fingerprint)}">Acknowledge</button></td></tr>`).join("")}</table>`;
        $("#groups").appendChild(div);
      }
      for (const b of document.querySelectorAll("button.ack")) {
        b.onclick = async () => {
          const by = prompt("Acknowledged by?") || "dashboard";
          await api("/api/tiermon/v1/acks", { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ fingerprint: b.dataset.fp, by }) }).catch((e) => alert(e.message));
          load();
        };
      }
      const sil = await api("/api/v2/silences");
      $("#silences").innerHTML = `<tr><th>state</th><th>matchers</th><th>until</th><th>by</th><th>comment</th><th></th></tr>` + sil.map((s) => `<tr><td>${esc(s.status.state)}</td><td class="mono">${esc(s.matchers.map((m) => `${m.name}${m.isEqual === false ? "!" : ""}${m.isRegex ? "~" : "="}"${m.value}"`).join(", "))}</td><td>${esc(s.endsAt)}</td><td>${esc(s.createdBy)}</td><td>${esc(s.comment)}</td><td>${s.status.state === "expired" ? "" : `<button class="plain expire" data-id="${esc(s.id)}">Expire</button>`}</td></tr>`).join("");
      for (const b of document.querySelectorAll("button.expire")) {
        b.onclick = async () => { await api("/api/v2/silence/" + b.dataset.id, { method: "DELETE" }).catch((e) => alert(e.message)); load(); };
      }
    } catch (e) {
      $("#groups").innerHTML = e.status === 404 ? `<p class="muted">this tier runs no alert manager (set <code>alertmanager.config_file</code>)</p>` : `<p class="err">${esc(e.message)}</p>`;
    }
    try {
      const r = await api("/api/v1/alerts");
      $("#rules").innerHTML = `<tr><th>state</th><th>alert</th><th>since</th><th>value</th></tr>` + r.data.alerts.map((a) => `<tr><td class="state-${esc(a.state)}">${esc(a.state)}</td><td>${labelsHtml(a.labels)}<div>${esc(a.annotations.summary || "")}</div></td><td>${esc(a.activeAt)}</td><td>${esc(a.value)}</td></tr>`).join("");
    } catch (e) {
      $("#rules").innerHTML = `<tr><td class="err">${esc(e.message)}</td></tr>`;
    }
  };
  every(10000, load);
}

async function pageHierarchy() {
  main.innerHTML = `<h2>Hierarchy</h2><p class="muted">children that push to this tier, and when each last reported</p><table id="children"></table><h3>Scrape targets</h3><table id="targets"></table>`;
  const load = async () => {
    try {
      // This tier's own records (a primary's, relayed upward in its
      // aggregates, would show each secondary twice at the global tier).
      const own = ui.instance ? `{job="tiermon",instance="${ui.instance.replace(/["\\]/g, "\\$&")}"}` : "";
      const [up, last] = await Promise.all([query("tiermon_child_up" + own), query("tiermon_child_last_report_timestamp_seconds" + own)]);
      const seen = new Map(last.result.map((s) => [s.metric.child + "|" + (s.metric.via || ""), Number(s.value[1])]));
      const now = Date.now() / 1000;
      const rows = up.result.map((s) => {
        const ok = Number(s.value[1]) === 1;
        const t = seen.get(s.metric.child + "|" + (s.metric.via || ""));
        return `<tr><td>${esc(s.metric.child || "")}</td><td>${esc(s.metric.tier || "")}</td><td>${esc(s.metric.via || "")}</td><td class="${ok ? "ok" : "down"}">${ok ? "reporting" : (s.metric.tier === "primary" ? "datacenter dark" : "gone")}</td><td>${t ? Math.round(now - t) + " s ago" : ""}</td></tr>`;
      });
      $("#children").innerHTML = `<tr><th>child</th><th>tier</th><th>via</th><th>state</th><th>last report</th></tr>` + (rows.join("") || `<tr><td class="muted" colspan="5">no children report here</td></tr>`);
    } catch (e) { $("#children").innerHTML = `<tr><td class="err">${esc(e.message)}</td></tr>`; }
    try {
      const t = await api("/api/v1/targets");
      const rows = t.data.activeTargets.map((x) => `<tr><td class="mono">${esc(x.scrapeUrl)}</td><td class="${x.health === "up" ? "ok" : "down"}">${esc(x.health)}</td><td>${esc(x.labels.job || "")}</td><td>${esc(x.lastScrape || "")}</td><td>${(x.lastScrapeDuration * 1000).toFixed(1)} ms</td><td class="lasterr">${esc(x.lastError || "")}</td></tr>`);
      $("#targets").innerHTML = `<tr><th>target</th><th>state</th><th>job</th><th>last scrape</th><th>duration</th><th>last error</th></tr>` + rows.join("");
    } catch (e) {
      $("#targets").innerHTML = e.status === 404 ? `<tr><td class="muted">this tier scrapes nothing (secondaries do)</td></tr>` : `<tr><td class="err">${esc(e.message)}</td></tr>`;
    }
  };
  every(10000, load);
}

// ---------------------------------------------------------------- router

async function route() {
  for (const t of timers) clearInterval(t);
  timers = [];
  tip.hidden = true;
  const { page, arg, params } = parseHash();
  for (const a of document.querySelectorAll("nav a")) a.classList.toggle("active", a.dataset.page === page);
  try {
    if (page === "fleet") pageFleet(params);
    else if (page === "host") await pageHost(arg, params);
    else if (page === "explore") pageExplore(params);
    else if (page === "alerts") await pageAlerts();
    else if (page === "hierarchy") await pageHierarchy();
    else if (page === "dashboards") await pageDashboards();
    else if (page === "dash") await pageDashboard(arg, params);
    else main.innerHTML = `<p class="err">no page ${esc(page)}</p>`;
  } catch (e) {
    main.innerHTML = `<p class="err">${esc(e.message || e)}</p>`;
  }
}

window.addEventListener("hashchange", route);
api("/api/tiermon/v1/ui").then((u) => {
  ui = u;
  $("#tier").textContent = `${u.tier}${u.datacenter ? " · " + u.datacenter : ""} · v${u.version}`;
}).catch(() => {}).finally(route);
