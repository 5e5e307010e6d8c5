// The fleet page: a heatmap of every GPU (rows, grouped by job) over time
// (columns), coloured by one metric, so idle dead zones stand out. Hover
// shows a cell's values; a click opens the row's job.
import { loupe, fetchJSON, el, simBanner, showError, fmt, jobURL, ready } from "./common.js";
import { rasterHeatmap } from "./heatmap.js";

const main = document.getElementById("main");
const params = new URLSearchParams(location.search);

function label(row) {
  return `${row.host} · gpu${row.gpu}${row.simulated ? " (sim)" : ""}`;
}

async function load() {
  const q = new URLSearchParams();
  for (const k of ["from", "to", "bucket", "metric", "cluster", "job"]) {
    if (params.get(k)) q.set(k, params.get(k));
  }
  const data = await fetchJSON(`/api/v1/views/fleet?${q}`);
  draw(data);
}

function controls(data) {
  const metric = el("select", { id: "metric", onchange: (e) => { params.set("metric", e.target.value); location.search = params; } },
    data.metrics.map((m) => el("option", { value: m.name, selected: m.name === data.metric.name }, m.label)));
  const bucket = el("select", { id: "bucket", onchange: (e) => { if (e.target.value) params.set("bucket", e.target.value); else params.delete("bucket"); location.search = params; } },
    [...new Set(["", "1s", "5s", "10s", "1m", "5m", "15m", "1h", params.get("bucket") || ""])].map((b) =>
      el("option", { value: b, selected: (params.get("bucket") || "") === b }, b || "auto")));
  return el("div", { class: "controls" },
    el("label", {}, "Colour by ", metric),
    el("label", {}, "Bucket ", bucket),
    el("span", { class: "muted" },
      `${new Date(data.from).toISOString().replace(".000", "")} → ${new Date(data.to).toISOString().replace(".000", "")}, `,
      `${data.columns} buckets of ${data.bucket_s} s, ${data.rows.length} GPUs in ${data.jobs.length} jobs from ${data.captures} captures`));
}

function draw(data) {
  const rows = data.rows, ncols = data.columns, nrows = rows.length;
  const values = data.values;
  let vmax = data.metric.max;
  if (data.metric.unit !== "%") {
    vmax = 0;
    for (const v of values) if (v !== null && v > vmax) vmax = v;
    vmax = vmax || 1;
  }
  // Unowned groups are GPUs no captured job uses: the host's, with no job page.
  const groupName = (j) => (j.unowned ? `${j.cluster}: no job` : `${j.cluster}/${j.job}/${j.run}`);
  const jobLinks = el("div", { class: "jobs-legend" }, "Jobs: ",
    data.jobs.map((j) => [j.unowned
      ? el("span", { class: "muted", "data-unowned": "" }, `${groupName(j)} (${j.rows} GPUs no captured job uses)`)
      : el("a", { href: jobURL(j.cluster, j.job, j.run, j.capture), "data-job": j.job }, `${groupName(j)} (${j.rows} GPUs)`),
    j.simulated ? " " : "", j.simulated ? el("span", { class: "badge sim" }, "simulated") : "", " "]));
  const box = el("div", { id: "fleet", style: "width:100%" });
  main.replaceChildren(
    el("h1", {}, `Fleet: ${data.metric.label}`),
    data.simulated ? simBanner("some or all of this fleet data") : "",
    controls(data), jobLinks, el("div", { class: "card" }, box));
  if (nrows === 0) {
    box.append(el("p", { class: "muted", id: "empty" }, "No GPU samples in this window. Captures appear here once agents upload them."));
    loupe.fleet = { rows: 0, columns: ncols, data };
    ready("fleet");
    return;
  }
  const firstRows = new Set(data.jobs.map((j) => j.first_row));
  const hm = rasterHeatmap(box, {
    rows: rows.map(label), cols: ncols, values, min: 0, max: vmax, unit: data.metric.unit, left: 230,
    xAxis: { type: "time", min: data.from_ms, max: data.from_ms + ncols * data.bucket_s * 1000, axisLabel: { hideOverlap: true } },
    labelFormatter: (v, i) => (firstRows.has(i) ? `{group|${data.jobs[rows[i].job].job || "no job"}} ${v}` : v),
    separators: data.jobs.map((j) => j.first_row),
    tooltip: (r, c) => {
      const row = rows[r], job = data.jobs[row.job], v = values[r * ncols + c];
      const t0 = new Date(data.from_ms + c * data.bucket_s * 1000).toISOString().slice(11, 19);
      return [
        [el("b", {}, groupName(job)), row.simulated ? " [SIMULATED]" : ""],
        `${row.host} gpu${row.gpu} ${row.model || ""}`,
        el("span", { class: "muted" }, row.uuid || ""),
        [`${t0} +${data.bucket_s}s: ${data.metric.label} `, el("b", {}, v === null ? "no data" : `${fmt(v)} ${data.metric.unit}`)],
      ];
    },
    onClick: (r) => {
      const job = data.jobs[rows[r].job];
      if (!job.unowned) location.href = jobURL(job.cluster, job.job, job.run, job.capture);
    },
  });

  loupe.fleet = {
    rows: nrows, columns: ncols, rowLabels: rows.map(label), jobs: data.jobs, metric: data.metric.name,
    simulated: data.simulated, value: hm.value, cellAt: hm.cellAt, rowPx: hm.rowPx, gridW: hm.gridW, left: hm.left, top: hm.top,
  };
  ready("fleet");
}

load().catch((err) => showError(main, err));
