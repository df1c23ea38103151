// The status page's script: reads the API's JSON and draws it, every REFRESH_MS.
// Plain DOM and inline SVG, no library, nothing fetched from elsewhere. Text goes in
// through textContent only (collector ids and errors come from outside).
"use strict";

const REFRESH_MS = 5000;
const SVG = "http://www.w3.org/2000/svg";
const W = 640, H = 300, PAD = { left: 56, right: 14, top: 24, bottom: 34 };
const RUN_COLORS = ["#2563eb", "#9333ea", "#ea580c", "#0891b2", "#65a30d"];

const $ = (id) => document.getElementById(id);
const fmt = (v, digits = 0) =>
  v === null || v === undefined || v === "" ? "–" :
  typeof v === "number" ? v.toLocaleString("en-US", { maximumFractionDigits: digits }) : String(v);
// JSON carries infinities as the strings "inf"/"-inf" (shared.jsonsafe).
const num = (v) => (v === "inf" ? Infinity : v === "-inf" ? -Infinity : typeof v === "number" ? v : null);
const setText = (id, text) => { $(id).textContent = text; };

async function getJSON(path) {
  const response = await fetch(path, { cache: "no-store" });
  if (!response.ok) throw new Error(`${path}: HTTP ${response.status}`);
  return response.json();
}

function el(name, attrs = {}, text) {
  const node = document.createElementNS(SVG, name);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  return node;
}

// About five round tick values covering [lo, hi].
function ticks(lo, hi) {
  if (lo === hi) { lo -= 1; hi += 1; }
  const raw = (hi - lo) / 5, mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 5, 10].map((m) => m * mag).find((s) => s >= raw);
  const out = [];
  for (let t = Math.ceil(lo / step) * step; t <= hi + step * 1e-9; t += step) out.push(+t.toPrecision(12));
  return out;
}

// Axes, grid labels and scales for data in [x0, x1] x [y0, y1]; returns the scales.
function frame(svg, [x0, x1], [y0, y1], xLabel, yLabel) {
  svg.replaceChildren();
  if (x0 === x1) { x0 -= 1; x1 += 1; }
  const yt = ticks(y0, y1);
  y0 = Math.min(y0, yt[0]); y1 = Math.max(y1, yt[yt.length - 1]);
  const sx = (x) => PAD.left + ((x - x0) / (x1 - x0)) * (W - PAD.left - PAD.right);
  const sy = (y) => H - PAD.bottom - ((y - y0) / (y1 - y0)) * (H - PAD.top - PAD.bottom);
  for (const t of yt) {
    svg.append(el("line", { class: "axis", x1: PAD.left, x2: W - PAD.right, y1: sy(t), y2: sy(t) }));
    svg.append(el("text", { x: PAD.left - 6, y: sy(t) + 4, "text-anchor": "end" }, fmt(t, 2)));
  }
  for (const t of ticks(x0, x1).filter((t) => t >= x0 && t <= x1)) {
    svg.append(el("text", { x: sx(t), y: H - PAD.bottom + 16, "text-anchor": "middle" }, fmt(t)));
  }
  svg.append(el("text", { x: W - PAD.right, y: H - 4, "text-anchor": "end" }, xLabel));
  svg.append(el("text", { x: 4, y: 12 }, yLabel));
  if (y0 < 0 && y1 > 0) svg.append(el("line", { class: "zero", x1: PAD.left, x2: W - PAD.right, y1: sy(0), y2: sy(0) }));
  return { sx, sy, y0 };
}

function empty(svg, message) {
  svg.replaceChildren(el("text", { class: "empty", x: W / 2, y: H / 2, "text-anchor": "middle" }, message));
}

function drawScores(svg, checkpoints, bestId) {
  const validated = checkpoints
    .filter((c) => c.latest_validation && c.latest_validation.status === "ok")
    .map((c) => ({ id: c.id, run: c.run_id, step: c.step, score: num(c.latest_validation.score) }))
    .filter((p) => p.score !== null && p.score !== Infinity)
    .sort((a, b) => a.step - b.step);
  if (!validated.length) return empty(svg, "no validated checkpoint yet");
  const finite = validated.filter((p) => Number.isFinite(p.score)).map((p) => p.score);
  const steps = validated.map((p) => p.step);
  const { sx, sy, y0 } = frame(
    svg, [Math.min(...steps), Math.max(...steps)],
    finite.length ? [Math.min(0, ...finite), Math.max(0, ...finite)] : [-1, 1], "learner step", "score");
  const runs = [...new Set(validated.map((p) => p.run))];
  for (const [i, run] of runs.entries()) {
    const line = validated.filter((p) => p.run === run && Number.isFinite(p.score));
    if (line.length > 1) {
      const d = line.map((p, j) => `${j ? "L" : "M"}${sx(p.step).toFixed(1)},${sy(p.score).toFixed(1)}`).join("");
      svg.append(el("path", { class: "line", d, stroke: RUN_COLORS[i % RUN_COLORS.length], "data-run": run }));
    }
  }
  for (const p of validated) {
    const never = !Number.isFinite(p.score);
    const y = never ? sy(y0) : sy(p.score);
    const attrs = { class: `point${p.id === bestId ? " best" : ""}${never ? " no-trades" : ""}`, "data-checkpoint": p.id };
    const mark = never
      ? el("path", { ...attrs, d: `M${sx(p.step)},${y - 5}l5,5l-5,5l-5,-5z` })
      : el("circle", { ...attrs, cx: sx(p.step), cy: y, r: p.id === bestId ? 5.5 : 3.5 });
    mark.append(el("title", {}, `checkpoint ${p.id} (${p.run}), step ${fmt(p.step)}: score ${never ? "-inf (no trades)" : fmt(p.score, 3)}`));
    svg.append(mark);
  }
  if (runs.length > 1) {
    runs.forEach((run, i) => svg.append(el("text", { x: PAD.left + 8, y: PAD.top + 14 + 14 * i, fill: RUN_COLORS[i % RUN_COLORS.length] }, run)));
  }
}

function drawEquity(svg, curve) {
  const pips = curve.pips.map(num).map((v) => (Number.isFinite(v) ? v : 0));
  const last = pips.length - 1;
  const bar = (i) => (last > 0 ? (i * curve.bars) / last : 0);
  const { sx, sy } = frame(svg, [0, curve.bars], [Math.min(0, ...pips), Math.max(0, ...pips)], "validation bar", "pips");
  const d = pips.map((v, i) => `${i ? "L" : "M"}${sx(bar(i)).toFixed(1)},${sy(v).toFixed(1)}`).join("");
  svg.append(el("path", { class: "area", d: `${d}L${sx(curve.bars).toFixed(1)},${sy(0).toFixed(1)}L${sx(0).toFixed(1)},${sy(0).toFixed(1)}Z` }));
  svg.append(el("path", { class: "line", d, "data-points": pips.length }));
}

function renderStatus(s) {
  const t = s.trainer || {};
  setText("learner-steps", fmt(t.step));
  setText("learner-rate", t.learner_steps_per_s !== undefined ? `${fmt(t.learner_steps_per_s, 2)} steps/s` : "no trainer status");
  setText("episodes", fmt(t.episodes_inserted));
  const played = s.collectors.reduce((sum, c) => sum + (typeof c.episodes === "number" ? c.episodes : 0), 0);
  setText("episodes-detail", `learned from; ${fmt(t.replay_positions)} positions in replay; collectors played ${fmt(played)}`);
  setText("checkpoints", fmt(s.checkpoints_total));
  const latest = s.latest_checkpoint;
  setText("checkpoints-detail", latest ? `latest #${latest.id} at step ${fmt(latest.step)}` : "none yet");
  setText("queue", fmt(s.validation_queue.depth));
  setText("queue-detail", `waiting; ${fmt(s.validation_queue.failed)} failed`);
  const best = s.best_checkpoint, bv = best && best.latest_validation;
  setText("best", best ? `#${best.id}` : "–");
  setText("best-detail", best ? `step ${fmt(best.step)}, score ${bv ? fmt(num(bv.score), 3) : "–"}` : "no validated best yet");
  const served = s.served_model;
  setText("served", served ? `#${fmt(served.checkpoint_id)}` : "none");
  setText("served-detail", served ? `step ${fmt(served.step)} on ${served.device}` : "no model loaded");

  const body = $("collectors").tBodies[0];
  body.replaceChildren();
  for (const c of s.collectors) {
    const row = body.insertRow();
    row.dataset.collector = c.id;
    for (const v of [c.id, fmt(c.episodes), fmt(c.model_version), fmt(c.env_steps_per_s, 1), c.ttl_s === null ? "–" : `${c.ttl_s} s`]) {
      row.insertCell().textContent = v;
    }
  }
  if (!s.collectors.length) body.insertRow().insertCell().textContent = "no collector heartbeat";
  setText("collectors-count", `(${s.collectors.length} alive)`);

  // Only under `microzero up`, whose supervisor reports its services.
  const services = s.services && typeof s.services === "object" ? Object.entries(s.services) : [];
  $("services-section").hidden = !services.length;
  const rows = $("services").tBodies[0];
  rows.replaceChildren();
  for (const [name, v] of services) {
    const row = rows.insertRow();
    row.dataset.service = name;
    for (const cell of [name, v.running ? "yes" : "no", String(v.pid ?? "–"), fmt(v.restarts), String(v.last_exit_code ?? "–")]) {
      row.insertCell().textContent = cell;
    }
  }
}

function showErrors(errors) {
  const box = $("errors");
  box.replaceChildren(...errors.map((e) => Object.assign(document.createElement("div"), { textContent: e })));
  box.hidden = !errors.length;
  $("health").textContent = errors.length ? "degraded" : "ok";
  $("health").className = `pill ${errors.length ? "bad" : "ok"}`;
}

let refreshes = 0;

async function refresh() {
  const errors = [];
  try {
    const status = await getJSON("status");
    renderStatus(status);
    for (const [source, problem] of Object.entries(status.errors)) errors.push(`${source}: ${problem}`);
    const page = await getJSON("checkpoints?limit=1000");
    const bestId = status.best_checkpoint ? status.best_checkpoint.id : null;
    drawScores($("score-chart"), page.items, bestId);
    if (bestId === null) {
      empty($("equity-chart"), "no best checkpoint yet");
      setText("equity-caption", "");
    } else {
      const response = await fetch(`checkpoints/${bestId}/equity`, { cache: "no-store" });
      if (response.ok) {
        const curve = await response.json();
        drawEquity($("equity-chart"), curve);
        setText("equity-caption", `(checkpoint #${bestId}, ${fmt(curve.bars)} bars, ${fmt(num(curve.pips[curve.pips.length - 1]), 1)} pips)`);
      } else {
        empty($("equity-chart"), `checkpoint #${bestId}: no equity curve stored (validated before curves were kept)`);
      }
    }
    document.body.dataset.state = "ready";
  } catch (err) {
    errors.push(`cannot read the API: ${err.message}`);
    document.body.dataset.state = "error";
  }
  document.body.dataset.refreshes = ++refreshes;  // lets a test see the page refreshing itself
  showErrors(errors);
  setText("updated", `updated ${new Date().toLocaleTimeString()} · every ${REFRESH_MS / 1000} s`);
  setTimeout(refresh, REFRESH_MS);
}

refresh();
