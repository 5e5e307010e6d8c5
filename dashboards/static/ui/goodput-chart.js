// Goodput drawing shared by the job page and the goodput page: where a
// run's GPU time went over time (a stacked bar per time bucket: productive
// steps and each badput cause), its goodput, ETTR and MFU, the GPU-hours
// it lost (and their cost when a price is configured), and what changed
// from the job's previous run.
import { loupe, el, fmt, fetchJSON } from "./common.js";

/** causes are the badput causes in the API's order, with labels and colours. */
export const causes = [
  { name: "startup", label: "start-up", color: "#8d6e63" },
  { name: "warmup", label: "warm-up", color: "#ffb300" },
  { name: "checkpoint", label: "checkpointing", color: "#5c6bc0" },
  { name: "data_stall", label: "data stalls", color: "#e53935" },
  { name: "straggler_wait", label: "straggler wait", color: "#fb8c00" },
  { name: "comm_exposed", label: "exposed communication", color: "#00acc1" },
  { name: "restart", label: "restarts", color: "#6d4c41" },
  { name: "lost_work", label: "lost work", color: "#ad1457" },
  { name: "idle_gpu", label: "idle GPUs", color: "#9e9e9e" },
];
export const productiveColor = "#43a047";

/** pct formats a share as a percentage. */
export const pct = (x) => `${fmt(x * 100, 1)}%`;

/** money formats a cost, or "" without a price. */
export function money(v, price) {
  return price && price.per_gpu_hour ? `${fmt(v, 2)} ${price.currency}` : "";
}

/** badputChart draws a run's timeline as stacked bars of GPU-hours. */
export function badputChart(box, g) {
  const tl = g.timeline, start = new Date(tl.start).getTime();
  const n = tl.productive?.length || Math.max(0, ...Object.values(tl.badput || {}).map((b) => b.length));
  const x = Array.from({ length: n }, (_, i) => start + i * tl.bucket_seconds * 1000);
  const hours = (arr) => x.map((_, i) => (arr && arr[i] ? arr[i] / 3600 : 0));
  const series = [{ name: "productive", type: "bar", stack: "gpu", data: hours(tl.productive), itemStyle: { color: productiveColor }, barCategoryGap: "10%" }];
  for (const c of causes) {
    if (tl.badput?.[c.name]) series.push({ name: c.label, type: "bar", stack: "gpu", data: hours(tl.badput[c.name]), itemStyle: { color: c.color } });
  }
  const chart = echarts.init(box);
  chart.setOption({
    animation: false,
    tooltip: {
      trigger: "axis",
      valueFormatter: (v) => `${fmt(v, 2)} GPU-h`,
    },
    legend: { top: 0 },
    grid: { left: 70, right: 20, top: 40, bottom: 50 },
    xAxis: {
      type: "category", data: x.map((t) => new Date(t).toISOString().slice(5, 16).replace("T", " ")),
      name: `wall time, ${fmt(tl.bucket_seconds / 60, 1)} min buckets (UTC)`, nameLocation: "middle", nameGap: 30,
    },
    yAxis: { type: "value", name: "GPU-hours" },
    series,
  });
  return chart;
}

/** summary is the run's headline numbers. */
export function summary(g, price) {
  const lost = Math.max(0, g.gpu_seconds - g.productive_gpu_seconds) / 3600;
  const cost = money(lost * (price?.per_gpu_hour || 0), price);
  return el("div", { class: "controls", id: "goodput-summary" },
    el("span", {}, "goodput ", el("b", { "data-goodput": g.goodput }, pct(g.goodput))),
    el("span", {}, "ETTR ", el("b", {}, pct(g.ettr))),
    g.mfu ? el("span", { title: `FLOPs per step from ${g.mfu_source}` }, "MFU ", el("b", {}, pct(g.mfu))) : el("span", { class: "muted" }, "MFU unknown (no FLOPs per step)"),
    el("span", {}, el("b", {}, `${fmt(lost, 1)} GPU-h`), ` lost of ${fmt(g.gpu_seconds / 3600, 1)}`, cost ? [" (", el("b", { id: "goodput-cost" }, cost), ")"] : ""),
    el("span", { class: "muted" }, `${g.ranks} ranks, ${fmt(g.steps, 0)} steps of ${fmt(g.step_seconds * 1000, 0)} ms, ${g.restarts} restarts, ${g.windows} capture windows`));
}

/** causeTable lists each cause's GPU-hours and share; unmeasured ones say so. */
export function causeTable(g) {
  const rows = causes.map((c) => {
    const b = g.badput.find((x) => x.cause === c.name) || { gpu_seconds: 0, share: 0, measured: false };
    return el("tr", { "data-cause": c.name },
      el("td", {}, el("span", { style: `display:inline-block;width:.8em;height:.8em;background:${c.color};margin-right:.4em` }), c.label),
      el("td", { class: "num" }, fmt(b.gpu_seconds / 3600, 2)),
      el("td", { class: "num" }, b.measured ? pct(b.share) : el("span", { class: "muted", title: "no capture window of the run could show it" }, "not measured")));
  });
  return el("table", { class: "badput" }, el("thead", {}, el("tr", {}, el("th", {}, "Badput"), el("th", { class: "num" }, "GPU-h"), el("th", { class: "num" }, "share"))),
    el("tbody", {}, rows));
}

/** drawGoodput fills box with the goodput of one run, and the job's latest
 * change when this run is its newest; loupe.goodput says what it drew. */
export async function drawGoodput(box, cluster, job, run) {
  const base = `/api/v1/goodput/${encodeURIComponent(cluster)}/${encodeURIComponent(job)}`;
  let g, j;
  try {
    [g, j] = await Promise.all([fetchJSON(`${base}/${encodeURIComponent(run)}`), fetchJSON(base)]);
  } catch (err) {
    box.replaceChildren(el("p", { class: "muted", id: "no-goodput" }, `No goodput: ${err.message || err}`));
    loupe.goodput = { error: String(err.message || err) };
    box.dataset.ready = "1";
    return;
  }
  const chartBox = el("div", { id: "goodput-chart", class: "chart" });
  const change = j.comparison.changes.find((c) => c.to === run);
  box.replaceChildren(
    summary(g, j.price),
    change ? el("p", { id: "goodput-change", class: change.regression ? "error" : "muted" }, change.regression ? "Regression: " : "", change.summary) : "",
    el("div", { class: "grid2" }, chartBox, causeTable(g)),
    (g.notes || []).length ? el("details", {}, el("summary", {}, `${g.notes.length} notes`), el("ul", {}, g.notes.map((n) => el("li", {}, n)))) : "");
  loupe.goodput = { run: g, job: j, chart: badputChart(chartBox, g) };
  box.dataset.ready = "1";
}
