// The job page: one capture of a job run. It opens on its costliest
// finding and the chart that shows it (for a straggler, the rank x
// collective arrival heatmap), then the rank x iteration step-time heatmap,
// step-time and kernel-duration histograms, NCCL arrival skew per rank, the
// findings ranked by impact, a CPU flame graph opened on the rank the
// findings name, and the Chrome/Perfetto trace download.
import { loupe, fetchJSON, el, simBanner, showError, fmt, jobURL, ready, severityBadge } from "./common.js";
import { rasterHeatmap } from "./heatmap.js";
import { drawFlame } from "./flame.js";
import { findingsTable } from "./findings-table.js";
import { drawGoodput } from "./goodput-chart.js";

const main = document.getElementById("main");
const [, , cluster, job, run] = location.pathname.split("/").map(decodeURIComponent);
const params = new URLSearchParams(location.search);

// A rank whose median step time is this much above the job's is called out.
const HOT = 1.15;

async function load() {
  const q = params.get("capture") ? `?capture=${encodeURIComponent(params.get("capture"))}` : "";
  const v = await fetchJSON(`/api/v1/views/jobs/${encodeURIComponent(cluster)}/${encodeURIComponent(job)}/${encodeURIComponent(run)}${q}`);
  draw(v);
}

function chartBox(id, height) {
  return el("div", { id, class: "chart", style: `height:${height}px` });
}

function header(v) {
  const picker = el("select", { id: "capture", onchange: (e) => { location.href = jobURL(cluster, job, run, e.target.value); } },
    v.captures.map((c) => el("option", { value: c.capture, selected: c.capture === v.id.capture },
      `${c.capture} (${c.status}, ${c.findings} findings${c.simulated ? ", simulated" : ""})`)));
  const downloads = el("div", { id: "downloads" }, "Chrome/Perfetto trace: ",
    v.trace ? el("a", { href: v.trace, download: "", id: "trace-all" }, "whole capture") : el("span", { class: "muted" }, "too many hosts for one file;"),
    " · per host: ", v.hosts.map((h, i) => [i ? ", " : "", el("a", { href: h.trace, download: "", class: "trace-host" }, h.host)]),
    el("span", { class: "muted" }, " (open in ui.perfetto.dev)"));
  return [
    el("h1", {}, `Job ${cluster}/${job}/${run}`),
    v.simulated ? simBanner("this capture's data") : "",
    el("div", { class: "controls" },
      el("label", {}, "Capture ", picker),
      el("span", { class: `badge ${v.status === "partial" ? "partial" : "info"}`, id: "status" }, v.status),
      v.missing_ranks?.length ? el("span", { class: "error" }, `missing ranks: ${v.missing_ranks.join(", ")}`) : "",
      el("span", { class: "muted" }, `${new Date(v.start).toISOString()} → ${new Date(v.end).toISOString()}, world size ${v.world_size}, ${v.hosts.length} hosts`)),
    el("div", { class: "card" }, downloads),
    v.notes?.length ? el("details", { class: "card" }, el("summary", {}, `${v.notes.length} notes about gaps in the capture`), el("ul", {}, v.notes.map((n) => el("li", {}, n)))) : "",
  ];
}

function stepHeatmap(v, box, hot) {
  const s = v.steps, hotSet = new Set(hot.map((x) => x.rank));
  let lo = Infinity, hi = -Infinity;
  for (const ms of s.ms) if (ms !== null) { lo = Math.min(lo, ms); hi = Math.max(hi, ms); }
  return rasterHeatmap(box, {
    rows: s.ranks.map((r) => `rank ${r}`), cols: s.iterations.length, values: s.ms, min: lo, max: hi, unit: "ms",
    left: 80, maxRowPx: 20,
    xAxis: { type: "category", name: "iteration", nameLocation: "middle", nameGap: 26, data: s.iterations.map(String), axisTick: { show: false } },
    labelFormatter: (label, i) => (hotSet.has(s.ranks[i]) ? `{group|${label}}` : label),
    tooltip: (r, c) => [
      `rank ${s.ranks[r]}, iteration ${s.iterations[c]}`,
      ["step ", el("b", {}, s.ms[r * s.iterations.length + c] === null ? "missing" : `${fmt(s.ms[r * s.iterations.length + c], 2)} ms`)],
      `rank median ${fmt(s.rank_median_ms[r], 2)} ms, job median ${fmt(s.job_median_ms, 2)} ms`,
    ],
  });
}

function histogram(box, h, xname, fmtEdge) {
  const chart = echarts.init(box);
  const labels = h.counts.map((_, i) => `${fmtEdge(h.edges[i])}–${fmtEdge(h.edges[i + 1])}`);
  chart.setOption({
    animation: false,
    tooltip: { trigger: "axis" },
    grid: { left: 60, right: 20, top: 20, bottom: 60 },
    xAxis: { type: "category", data: labels, name: xname, nameLocation: "middle", nameGap: 44, axisLabel: { rotate: 30, fontSize: 10 } },
    yAxis: { type: "value", name: "count" },
    series: [{ type: "bar", data: h.counts, barCategoryGap: "5%", itemStyle: { color: "#5c6bc0" } }],
  });
  return chart;
}

function skewChart(box, rows) {
  const chart = echarts.init(box);
  chart.setOption({
    animation: false,
    tooltip: {
      trigger: "axis",
      formatter: (ps) => {
        const r = rows[ps[0].dataIndex];
        return `rank ${r.rank} on ${r.host}<br>${r.collectives} collectives, last at ${fmt(r.last_share * 100, 0)}%<br>` +
          `lateness p50 ${fmt(r.p50_ms, 2)} ms, p95 ${fmt(r.p95_ms, 2)} ms, max ${fmt(r.max_ms, 2)} ms`;
      },
    },
    legend: { top: 0 },
    grid: { left: 60, right: 20, top: 30, bottom: 40 },
    xAxis: { type: "category", name: "rank", nameLocation: "middle", nameGap: 26, data: rows.map((r) => String(r.rank)) },
    yAxis: { type: "value", name: "ms after first arrival" },
    series: [
      { name: "p50", type: "bar", data: rows.map((r) => r.p50_ms), itemStyle: { color: "#26a69a" } },
      { name: "p95", type: "bar", data: rows.map((r) => r.p95_ms), itemStyle: { color: "#ef6c00" } },
    ],
  });
  return chart;
}

// evidenceOf names the section that shows a finding's problem best: for a
// straggler of synchronous ranks the arrival-skew heatmap (their step times
// are equal, since every rank waits for the slowest at each collective).
const evidenceOf = {
  "nccl-straggler": "arrival",
  "step-imbalance": "steps",
  "input-bound": "flame",
  "kineto-kernel-breakdown": "kernels",
  "kineto-launch-overhead": "kernels",
};

/** topFinding is the costliest finding about the job itself (findings come
 * most costly first; host-wide ones are about another tenant's GPU). */
function topFinding(v) {
  return v.findings.find((f) => !f.scope.host_wide) || null;
}

function arrivalHeatmap(v, box, rank) {
  const a = v.arrival;
  let hi = 0;
  for (const ms of a.ms) if (ms !== null && ms > hi) hi = ms;
  return rasterHeatmap(box, {
    rows: a.ranks.map((r) => `rank ${r}`), cols: a.collectives.length, values: a.ms, min: 0, max: hi || 1, unit: "ms",
    left: 80, maxRowPx: 20,
    xAxis: { type: "category", name: "collective (oldest first)", nameLocation: "middle", nameGap: 26, data: a.collectives, axisTick: { show: false }, axisLabel: { hideOverlap: true } },
    labelFormatter: (label, i) => (a.ranks[i] === rank ? `{group|${label}}` : label),
    tooltip: (r, c) => [
      `rank ${a.ranks[r]}, ${a.collectives[c]}`,
      ["arrived ", el("b", {}, a.ms[r * a.collectives.length + c] === null ? "no call" : `${fmt(a.ms[r * a.collectives.length + c], 2)} ms`), " after the first rank"],
    ],
  });
}

/** leadCard is the first thing on the page: the top finding, what it
 * costs, and a sentence from its evidence. */
function leadCard(v, top) {
  if (!top) {
    return el("div", { class: "card", id: "lead" }, el("b", {}, "No findings for this capture."),
      el("span", { class: "muted" }, v.status === "analyzed" ? "" : ` (status: ${v.status})`));
  }
  const s = top.scope, where = [s.host, s.gpu >= 0 ? `gpu ${s.gpu}` : "", s.rank >= 0 ? `rank ${s.rank}` : ""].filter(Boolean).join(" · ");
  let headline = "";
  const sk = v.nccl_skew.find((r) => r.rank === s.rank);
  if (top.analyzer === "nccl-straggler" && sk) {
    headline = `Rank ${sk.rank} (${sk.host}) arrives last at ${fmt(sk.last_share * 100, 0)}% of ${sk.collectives} collectives, ` +
      `${fmt(sk.p50_ms, 2)} ms after the first rank at the median (p95 ${fmt(sk.p95_ms, 2)} ms); every other rank waits for it.`;
  }
  return el("div", { class: "card lead", id: "lead", "data-analyzer": top.analyzer, "data-rank": s.rank },
    el("div", {}, severityBadge(top.severity), " ", el("b", { id: "lead-title" }, top.title),
      el("span", { class: "muted" }, ` — ${where || "whole job"}, ${fmt(top.impact.gpu_seconds, 1)} GPU-s lost (${fmt(top.impact.window_share * 100, 1)}% of the window), ${top.analyzer}`)),
    headline ? el("p", { id: "lead-headline" }, headline) : "",
    el("p", { class: "muted" }, top.recommendation));
}

function draw(v) {
  const s = v.steps;
  const top = topFinding(v);
  const hot = s.ranks.map((r, i) => ({ rank: r, median: s.rank_median_ms[i] }))
    .filter((x) => x.median !== null && s.job_median_ms && x.median > HOT * s.job_median_ms)
    .sort((a, b) => b.median - a.median);
  const late = [...v.nccl_skew].sort((a, b) => b.last_share - a.last_share)[0];
  const stepBox = el("div", { id: "steps", style: "width:100%" });
  const arrivalBox = el("div", { id: "arrival", style: "width:100%" });
  const stepHist = chartBox("step-hist", 280), kernHist = chartBox("kernel-hist", 280), skewBox = chartBox("nccl-skew", 300);
  const flameBox = el("div", { id: "flame-box" });
  const goodputBox = el("div", { class: "card", id: "goodput" }, el("p", { class: "muted" }, "Loading…"));
  const sections = {
    goodput: [el("h2", {}, "Goodput of this run: where its GPU time went"), goodputBox],
    arrival: [el("h2", {}, "NCCL arrival lateness by rank and collective"),
      el("div", { class: "card" },
        v.arrival.collectives.length ? arrivalBox : el("p", { class: "muted" }, "No complete NCCL collectives in this capture."),
        el("p", { class: "muted" }, "How long after the first rank each rank called each collective: a straggler is a bright row.",
          v.arrival.truncated ? " Showing the last collectives only." : ""))],
    steps: [el("h2", {}, "Step time by rank and iteration", v.simulated ? " " : "", v.simulated ? el("span", { class: "badge sim" }, "simulated") : ""),
      el("div", { class: "card" },
        s.ranks.length ? stepBox : el("p", { class: "muted" }, "No steps in this capture (steps.parquet is missing or empty)."),
        el("p", { id: "hot-ranks" }, hot.length
          ? ["Slow ranks (median step more than 15% above the job's ", fmt(s.job_median_ms, 2), " ms): ",
            hot.slice(0, 20).map((x, i) => [i ? ", " : "", el("b", { "data-rank": x.rank }, `rank ${x.rank}`), ` ${fmt(x.median, 2)} ms (+${fmt((x.median / s.job_median_ms - 1) * 100, 0)}%)`]),
            hot.length > 20 ? ` and ${hot.length - 20} more` : ""]
          : late && late.last_share > 0.5
            ? el("span", {}, `Step times are even across ranks: synchronous ranks all wait at each collective for the slowest, so a straggler does not show here. `,
              `It shows in the arrival lateness: rank ${late.rank} arrives last at ${fmt(late.last_share * 100, 0)}% of collectives.`)
            : el("span", { class: "muted" }, "No rank stands out.")),
        s.truncated ? el("p", { class: "muted" }, "Showing the last iterations only.") : "")],
    kernels: [el("div", { class: "grid2" },
      el("div", { class: "card" }, el("h2", {}, "Step-time histogram"), s.histogram.counts.length ? stepHist : el("p", { class: "muted" }, "No steps.")),
      el("div", { class: "card" }, el("h2", {}, "Kernel-duration histogram"),
        v.kernels.histogram.counts.length ? [kernHist, el("p", { class: "muted" }, `Kernel launches from ${v.kernels.ranks} Kineto traces, each kernel counted at its mean duration.`)]
          : el("p", { class: "muted", id: "no-kineto" }, "No Kineto trace in this capture (ask for one with loupe-agent capture; PyTorch traces on demand).")))],
    skew: [el("div", { class: "card" }, el("h2", {}, "NCCL arrival skew per rank"),
      v.nccl_skew.length ? skewBox : el("p", { class: "muted" }, "No complete NCCL collectives in this capture."),
      el("p", { class: "muted" }, "How long after the first rank each rank called the same collective; a straggler arrives late and makes everyone else wait."))],
    findings: [el("h2", {}, `Findings (${v.findings_total}), most costly first`), findingsTable(v.findings, { showJob: false })],
    flame: [el("h2", {}, "CPU flame graph"), flameBox],
  };
  // The top finding's evidence comes first, right under it.
  const first = top ? evidenceOf[top.analyzer] : null;
  const order = [first, "goodput", "arrival", "steps", "kernels", "skew", "findings", "flame"].filter((k, i, a) => k && a.indexOf(k) === i);
  main.replaceChildren(...header(v), leadCard(v, top), ...order.flatMap((k) => sections[k]));

  const charts = {};
  if (v.arrival.collectives.length) charts.arrival = arrivalHeatmap(v, arrivalBox, top ? top.scope.rank : -1);
  if (s.ranks.length) charts.steps = stepHeatmap(v, stepBox, hot);
  if (s.histogram.counts.length) charts.stepHist = histogram(stepHist, s.histogram, "step time (ms)", (x) => fmt(x, 1));
  if (v.kernels.histogram.counts.length) charts.kernelHist = histogram(kernHist, v.kernels.histogram, "kernel duration (µs)", (x) => fmt(x, x < 10 ? 1 : 0));
  if (v.nccl_skew.length) charts.skew = skewChart(skewBox, v.nccl_skew);
  flamePicker(v, flameBox, top);
  drawGoodput(goodputBox, cluster, job, run);
  loupe.job = { view: v, hotRanks: hot.map((x) => x.rank), charts, top: top && top.id, order };
  ready("job");
}

/** flameRank is the rank the flame graph opens on: the top finding's, else
 * the first finding's that names a rank with a CPU profile. */
function flameRank(v, top, profiled) {
  for (const f of [top, ...v.findings]) {
    if (f && !f.scope.host_wide && f.scope.rank >= 0 && profiled.has(f.scope.rank)) return f.scope.rank;
  }
  return null;
}

function flamePicker(v, box, top) {
  const choices = [], profiled = new Set();
  for (const h of v.hosts) {
    if (!h.profile) continue;
    for (const r of h.ranks) { choices.push({ label: `rank ${r} (${h.host})`, q: `rank=${r}` }); profiled.add(r); }
    choices.push({ label: `whole host ${h.host}`, q: `host=${encodeURIComponent(h.host)}` });
  }
  if (!choices.length) {
    box.append(el("p", { class: "muted" }, "No CPU profile (cpu.pb.gz) in this capture."));
    return;
  }
  const area = el("div", { id: "flame", class: "chart", style: "height:420px" });
  const status = el("span", { class: "muted" });
  const tools = el("div", { class: "controls", id: "flame-tools" });
  // The capture's own profile, or the agents' continuous profiles of the
  // same host or rank over a time range (GET /api/v1/views/profile).
  const ranges = [
    { label: "this capture", secs: 0 },
    { label: "capture ± 30 min (continuous)", secs: -1800 },
    { label: "last hour (continuous)", secs: 3600 },
    { label: "last 6 hours (continuous)", secs: 6 * 3600 },
    { label: "last 24 hours (continuous)", secs: 86400 },
  ];
  const url = (q, secs) => {
    if (!secs) return `/api/v1/views/flamegraph/${v.id.cluster}/${v.id.job}/${v.id.run}/${v.id.capture}?${q}`;
    const [from, to] = secs < 0
      ? [Date.parse(v.start) / 1000 + secs, Date.parse(v.end) / 1000 - secs]
      : [Date.now() / 1000 - secs, Date.now() / 1000];
    return `/api/v1/views/profile?cluster=${v.id.cluster}&job=${v.id.job}&${q}&from=${Math.floor(from)}&to=${Math.ceil(to)}`;
  };
  const show = async () => {
    const q = sel.value, secs = Number(range.value);
    status.textContent = "loading…";
    try {
      const fg = await fetchJSON(url(q, secs));
      const total = fg.unit === "nanoseconds" ? `${fmt(fg.total / 1e9, 2)} s of CPU time` : `${fmt(fg.total, 0)} ${fg.unit}`;
      const where = fg.host || "every host of the job";
      const span = secs ? ` from ${fg.profiles} continuous profiles` : "";
      status.textContent = `${total} on ${where}${fg.rank >= 0 ? ", rank " + fg.rank : ""}${span}${fg.note ? "; " + fg.note : ""}${fg.simulated ? " · SIMULATED GPUs on this host" : ""}`;
      loupe.flame = drawFlame(area, fg, tools);
    } catch (err) {
      status.textContent = String(err.message || err);
    }
  };
  const rank = flameRank(v, top, profiled);
  const initial = rank === null ? choices[0].q : `rank=${rank}`;
  const sel = el("select", { id: "flame-rank", onchange: show },
    choices.map((c) => el("option", { value: c.q, selected: c.q === initial }, c.label)));
  const range = el("select", { id: "flame-range", onchange: show }, ranges.map((r) => el("option", { value: r.secs }, r.label)));
  box.append(el("div", { class: "card" }, el("div", { class: "controls" }, el("label", {}, "Profile of ", sel), el("label", {}, " over ", range), status),
    rank !== null ? el("p", { class: "muted", id: "flame-why" }, `Opened on rank ${rank}, which the findings name.`) : "", tools, area));
  show();
}

load().catch((err) => showError(main, err));
