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

/** findingsTable renders findings (most costly first, as the API orders
 * them); opts.showJob adds the job column. */
export function findingsTable(list, opts = {}) {
  if (!list.length) return el("p", { class: "muted", id: "no-findings" }, "No findings.");
  const head = ["Severity", "Finding", opts.showJob ? "Job / capture" : null, "Scope", "GPU-s lost", "Share", "Owners", "Analyzer", "Evidence"]
    .filter(Boolean).map((h) => el("th", { class: h.startsWith("GPU") || h === "Share" ? "num" : "" }, h));
  const rows = list.map((f) => {
    const s = f.scope;
    const job = jobURL(s.cluster, s.job, s.run, s.capture);
    return el("tr", { "data-finding": f.id, "data-severity": f.severity },
      el("td", {}, severityBadge(f.severity), f.simulated ? [" ", el("span", { class: "badge sim" }, "simulated")] : "",
        f.partial ? [" ", el("span", { class: "badge partial", title: `missing ranks ${(f.missing_ranks || []).join(", ")}` }, "partial")] : ""),
      el("td", {}, el("b", {}, f.title), el("div", { class: "muted" }, f.recommendation)),
      opts.showJob ? el("td", {}, el("a", { href: job, class: "job-link" }, `${s.cluster}/${s.job}/${s.run}`), el("div", { class: "muted" }, s.capture)) : null,
      el("td", {}, scope(s)),
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
