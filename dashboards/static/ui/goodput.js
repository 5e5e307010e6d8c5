// The goodput page: the fleet's jobs ranked by the GPU-hours their runs
// lost, each job's loss split by cause (a stacked bar per job, and the
// table), its goodput and ETTR, and the cost of the loss when the
// aggregator has a price per GPU-hour (gpu_hour_price). A job whose latest
// run regressed says so and why.
import { loupe, fetchJSON, el, simBanner, showError, fmt, jobURL, ready } from "./common.js";
import { causes, pct, money } from "./goodput-chart.js";

const main = document.getElementById("main");
const params = new URLSearchParams(location.search);

// The chart shows the jobs that lose most; the table lists them all.
const CHART_JOBS = 20;

async function load() {
  const q = new URLSearchParams();
  for (const k of ["cluster", "limit"]) if (params.get(k)) q.set(k, params.get(k));
  draw(await fetchJSON(`/api/v1/goodput?${q}`));
}

function lossChart(box, jobs) {
  const top = jobs.slice(0, CHART_JOBS).reverse(); // the biggest loss on top
  const chart = echarts.init(box);
  chart.setOption({
    animation: false,
    tooltip: { trigger: "axis", axisPointer: { type: "shadow" }, valueFormatter: (v) => `${fmt(v, 2)} GPU-h` },
    legend: { top: 0 },
    grid: { left: 180, right: 30, top: 40, bottom: 30 },
    xAxis: { type: "value", name: "GPU-hours lost", nameLocation: "middle", nameGap: 24 },
    yAxis: { type: "category", data: top.map((j) => `${j.cluster}/${j.job}`) },
    series: causes.map((c) => ({
      name: c.label, type: "bar", stack: "lost", itemStyle: { color: c.color },
      data: top.map((j) => j.badput_gpu_hours[c.name] || 0),
    })),
  });
  return chart;
}

function table(f) {
  const priced = !!f.price.per_gpu_hour;
  const label = Object.fromEntries(causes.map((c) => [c.name, c.label]));
  const head = ["#", "Job", "Runs", "GPU-h", "GPU-h lost", priced ? `Cost (${f.price.currency})` : null, "Goodput", "ETTR", "Latest run", "Largest loss", "Change"]
    .filter(Boolean).map((h) => el("th", { class: /GPU|Cost|Runs|Goodput|ETTR/.test(h) ? "num" : "" }, h));
  const rows = f.jobs.map((j, i) => el("tr", { "data-job": j.job },
    el("td", {}, String(i + 1)),
    el("td", {}, el("a", { href: jobURL(j.cluster, j.job, j.latest_run), class: "job-link" }, `${j.cluster}/${j.job}`),
      j.simulated ? [" ", el("span", { class: "badge sim" }, "simulated")] : ""),
    el("td", { class: "num" }, String(j.runs)),
    el("td", { class: "num" }, fmt(j.gpu_hours, 1)),
    el("td", { class: "num lost" }, fmt(j.lost_gpu_hours, 2)),
    priced ? el("td", { class: "num cost" }, fmt(j.lost_cost, 2)) : null,
    el("td", { class: "num" }, pct(j.goodput)),
    el("td", { class: "num" }, pct(j.ettr)),
    el("td", {}, j.latest_run, el("span", { class: "muted" }, ` (${pct(j.latest_goodput)})`)),
    el("td", {}, j.top_cause ? `${label[j.top_cause]}, ${fmt(j.badput_gpu_hours[j.top_cause], 2)} GPU-h` : "–"),
    el("td", {}, j.regression ? el("span", { class: "error regression", title: j.regression.summary }, `regressed in ${j.regression.to}`) : el("span", { class: "muted" }, "–"))));
  return el("table", { class: "goodput" }, el("thead", {}, el("tr", {}, head)), el("tbody", {}, rows));
}

function draw(f) {
  const chartBox = el("div", { id: "goodput-loss", class: "chart", style: `height:${Math.max(200, 60 + 26 * Math.min(CHART_JOBS, f.jobs.length))}px` });
  const cost = money(f.lost_cost, f.price);
  main.replaceChildren(
    el("h1", {}, "Goodput: GPU-hours lost, by job"),
    f.simulated ? simBanner("some of these jobs' data") : "",
    el("div", { class: "card controls", id: "fleet-summary" },
      el("span", {}, el("b", {}, `${fmt(f.lost_gpu_hours, 1)} GPU-h`), ` lost of ${fmt(f.gpu_hours, 1)} in ${f.total} jobs`, cost ? [" · ", el("b", { id: "fleet-cost" }, cost)] : ""),
      f.price.per_gpu_hour ? el("span", { class: "muted" }, `at ${fmt(f.price.per_gpu_hour, 2)} ${f.price.currency} per GPU-hour`)
        : el("span", { class: "muted" }, "set gpu_hour_price to see the cost")),
    ...(f.jobs.length
      ? [el("div", { class: "card" }, chartBox), table(f)]
      : [el("p", { class: "muted", id: "no-jobs" }, "No run has a step history yet: goodput needs agents that write step_history.parquet.")]));
  loupe.goodputFleet = { data: f, chart: f.jobs.length ? lossChart(chartBox, f.jobs) : null };
  ready("goodput");
}

load().catch((err) => showError(main, err));
