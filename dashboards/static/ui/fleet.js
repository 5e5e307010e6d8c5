// The fleet page: a heatmap of every GPU (rows, grouped by job) over time
// (columns), coloured by one metric. ECharts draws the axes and the colour
// scale; the cells are painted into one image (a pixel per cell, scaled
// without smoothing), which keeps a thousand GPUs over an hour (368,640
// cells) well under a second where one ECharts rectangle per cell takes
// several. Hover shows a cell's values; a click opens the row's job.
import { loupe, fetchJSON, el, simBanner, showError, fmt, jobURL, ready, ramp, rampColors } from "./common.js";

const LEFT = 230, RIGHT = 110, TOP = 16, BOTTOM = 56;
const main = document.getElementById("main");
const tip = document.getElementById("tip");
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
  const jobLinks = el("div", { class: "jobs-legend" }, "Jobs: ",
    data.jobs.map((j) => el("a", { href: jobURL(j.cluster, j.job, j.run, j.capture), "data-job": j.job },
      `${j.cluster}/${j.job}/${j.run} (${j.rows} GPUs)`, j.simulated ? " " : "", j.simulated ? el("span", { class: "badge sim" }, "simulated") : "")));
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
  const rowPx = Math.max(3, Math.min(18, Math.floor(640 / nrows)));
  const gridH = rowPx * nrows;
  box.style.height = `${gridH + TOP + BOTTOM}px`;
  const chart = echarts.init(box, null, { renderer: "canvas" });
  const gridW = box.clientWidth - LEFT - RIGHT;

  // One pixel per cell, then scaled to the grid without smoothing.
  const cells = document.createElement("canvas");
  cells.width = ncols; cells.height = nrows;
  const cctx = cells.getContext("2d");
  const img = cctx.createImageData(ncols, nrows);
  const px = img.data;
  for (let i = 0; i < values.length; i++) {
    const v = values[i], o = i * 4;
    if (v === null) { px[o] = 236; px[o + 1] = 238; px[o + 2] = 241; px[o + 3] = 255; continue; }
    const [r, g, b] = ramp(v / vmax);
    px[o] = r; px[o + 1] = g; px[o + 2] = b; px[o + 3] = 255;
  }
  cctx.putImageData(img, 0, 0);
  const scaled = document.createElement("canvas");
  scaled.width = gridW; scaled.height = gridH;
  const sctx = scaled.getContext("2d");
  sctx.imageSmoothingEnabled = false;
  sctx.drawImage(cells, 0, 0, gridW, gridH);
  // A white line between jobs.
  sctx.fillStyle = "#fff";
  for (const j of data.jobs.slice(1)) sctx.fillRect(0, j.first_row * rowPx - 1, gridW, 2);

  const firstRows = new Set(data.jobs.map((j) => j.first_row));
  chart.setOption({
    animation: false,
    grid: { left: LEFT, right: RIGHT, top: TOP, height: gridH },
    xAxis: { type: "time", min: data.from_ms, max: data.from_ms + ncols * data.bucket_s * 1000, axisLabel: { hideOverlap: true } },
    yAxis: {
      type: "category", inverse: true, data: rows.map(label),
      axisTick: { show: false },
      axisLabel: {
        fontSize: Math.min(12, Math.max(8, rowPx - 2)),
        formatter: (v, i) => (firstRows.has(i) ? `{job|${data.jobs[rows[i].job].job}} ${v}` : v),
        rich: { job: { fontWeight: "bold", color: "#1565c0" } },
      },
    },
    visualMap: {
      type: "continuous", min: 0, max: vmax, calculable: false, seriesIndex: [],
      inRange: { color: rampColors }, right: 10, top: TOP, text: [`${fmt(vmax, 0)} ${data.metric.unit}`, "0"],
    },
    series: [{ type: "scatter", data: [], silent: true }],
    graphic: [{ id: "cells", type: "image", left: LEFT, top: TOP, silent: true, style: { image: scaled, width: gridW, height: gridH } }],
  });

  const cellAt = (x, y) => {
    const c = Math.floor(((x - LEFT) / gridW) * ncols), r = Math.floor((y - TOP) / rowPx);
    return c >= 0 && c < ncols && r >= 0 && r < nrows ? [r, c] : null;
  };
  const zr = chart.getZr();
  zr.on("mousemove", (e) => {
    const rc = cellAt(e.offsetX, e.offsetY);
    if (!rc) { tip.style.display = "none"; zr.setCursorStyle("default"); return; }
    const [r, c] = rc, row = rows[r], job = data.jobs[row.job], v = values[r * ncols + c];
    const t0 = new Date(data.from_ms + c * data.bucket_s * 1000).toISOString().slice(11, 19);
    tip.replaceChildren(
      el("div", {}, el("b", {}, `${job.cluster}/${job.job}/${job.run}`), row.simulated ? " [SIMULATED]" : ""),
      el("div", {}, `${row.host} gpu${row.gpu} ${row.model || ""}`),
      el("div", { class: "muted" }, row.uuid || ""),
      el("div", {}, `${t0} +${data.bucket_s}s: ${data.metric.label} `, el("b", {}, v === null ? "no data" : `${fmt(v)} ${data.metric.unit}`)));
    tip.style.display = "block";
    tip.style.left = `${e.event.clientX + 14}px`;
    tip.style.top = `${e.event.clientY + 10}px`;
    zr.setCursorStyle("pointer");
  });
  zr.on("mouseout", () => { tip.style.display = "none"; });
  zr.on("click", (e) => {
    const rc = cellAt(e.offsetX, e.offsetY);
    if (!rc) return;
    const job = data.jobs[rows[rc[0]].job];
    location.href = jobURL(job.cluster, job.job, job.run, job.capture);
  });

  loupe.fleet = {
    rows: nrows, columns: ncols, rowLabels: rows.map(label), jobs: data.jobs, metric: data.metric.name,
    simulated: data.simulated, value: (r, c) => values[r * ncols + c], cellAt, rowPx, gridW,
    chart,
  };
  ready("fleet");
}

load().catch((err) => showError(main, err));
