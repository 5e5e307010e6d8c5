// The findings table shared by the job and findings pages: severity,
// title, scope, impact, owners, analyzer, and links to the evidence.
import { el, fmt, jobURL, severityBadge } from "./common.js";

function scope(s) {
  const parts = [];
  if (s.host) parts.push(s.host);
  if (s.gpu >= 0) parts.push(`gpu${s.gpu}`);
  if (s.rank >= 0) parts.push(`rank ${s.rank}`);
  if (s.stream) parts.push(`stream ${s.stream}`);
  return parts.join(" · ") || "job";
}

// projected is a finding's projected cost over its job's life: GPU-hours
// per day, the run so far below, and the projection's basis on hover.
function projected(p) {
  if (!p) return el("td", { class: "num muted", title: "stored before projections existed" }, "–");
  return el("td", { class: "num projected", title: p.basis, "data-per-day": p.gpu_hours_per_day },
    fmt(p.gpu_hours_per_day, 1), el("div", { class: "muted" }, `${fmt(p.gpu_hours_run, 1)} over the run`));
}

/** findingsTable renders findings (most costly first, as the API orders
 * them: by projected GPU-hours per day); opts.showJob adds the job column. */
export function findingsTable(list, opts = {}) {
  if (!list.length) return el("p", { class: "muted", id: "no-findings" }, "No findings.");
  const head = ["Severity", "Finding", opts.showJob ? "Job / capture" : null, "Scope", "Projected GPU-h/day", "GPU-s lost", "Share", "Owners", "Analyzer", "Evidence"]
    .filter(Boolean).map((h) => el("th", { class: h.includes("GPU") || h === "Share" ? "num" : "", title: h.startsWith("Projected") ? "a projection over the job's life; hover a value for its basis" : "" }, h));
  const rows = list.map((f) => {
    const s = f.scope;
    const job = jobURL(s.cluster, s.job, s.run, s.capture);
    return el("tr", { "data-finding": f.id, "data-severity": f.severity },
      el("td", {}, severityBadge(f.severity), f.simulated ? [" ", el("span", { class: "badge sim" }, "simulated")] : "",
        f.partial ? [" ", el("span", { class: "badge partial", title: `missing ranks ${(f.missing_ranks || []).join(", ")}` }, "partial")] : ""),
      el("td", {}, el("b", {}, f.title), el("div", { class: "muted" }, f.recommendation)),
      opts.showJob ? el("td", {}, el("a", { href: job, class: "job-link" }, `${s.cluster}/${s.job}/${s.run}`), el("div", { class: "muted" }, s.capture)) : null,
      el("td", {}, scope(s)),
      projected(f.impact.projected),
      el("td", { class: "num" }, fmt(f.impact.gpu_seconds, 1)),
      el("td", { class: "num" }, `${fmt(f.impact.window_share * 100, 1)}%`),
      el("td", {}, (f.owners || []).join(", ") || el("span", { class: "muted" }, "–")),
      el("td", {}, `${f.analyzer} v${f.analyzer_version}`),
      el("td", {},
        el("details", {}, el("summary", {}, `${(f.evidence || []).length} numbers`),
          el("ul", {}, (f.evidence || []).map((m) => el("li", {}, `${m.name}: ${fmt(m.value, 3)}${m.unit ? " " + m.unit : ""}`))),
          (f.frames || []).length ? el("div", {}, "frames: ", el("code", {}, f.frames.join(" ← "))) : "",
          el("div", {}, "computed from: ", (f.lineage?.inputs || []).map((k, i) => [i ? ", " : "", el("code", {}, k)]))),
        el("a", { href: `/api/v1/findings/${encodeURIComponent(f.id)}`, class: "finding-json" }, "JSON"), " · ",
        el("a", { href: job }, "job page"), " · ",
        el("a", { href: `/api/v1/captures/${s.cluster}/${s.job}/${s.run}/${s.capture}/trace${s.host ? "?host=" + encodeURIComponent(s.host) : ""}` }, "trace")));
  });
  return el("table", { class: "findings" }, el("thead", {}, el("tr", {}, head)), el("tbody", {}, rows));
}
