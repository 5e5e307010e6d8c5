// The findings page: every finding the aggregator holds, most costly
// first, filtered by cluster, job, severity and analyzer (the filters live
// in the URL, so a filtered view can be shared).
import { loupe, fetchJSON, el, showError, ready, simBanner } from "./common.js";
import { findingsTable } from "./findings-table.js";

const main = document.getElementById("main");
const params = new URLSearchParams(location.search);
const FILTERS = ["cluster", "job", "severity", "analyzer"];

async function load() {
  const q = new URLSearchParams({ limit: "1000" });
  for (const k of FILTERS) if (params.get(k)) q.set(k, params.get(k));
  const [resp, an] = await Promise.all([fetchJSON(`/api/v1/findings?${q}`), fetchJSON("/api/v1/analyzers")]);
  const apply = (e) => {
    e.preventDefault();
    const f = new FormData(e.target), next = new URLSearchParams();
    for (const k of FILTERS) if (f.get(k)) next.set(k, f.get(k));
    location.search = next;
  };
  const sev = params.get("severity") || "";
  const form = el("form", { class: "controls", id: "filters", onsubmit: apply },
    el("label", {}, "Cluster ", el("input", { name: "cluster", value: params.get("cluster") || "", size: 12 })),
    el("label", {}, "Job ", el("input", { name: "job", value: params.get("job") || "", size: 16 })),
    el("label", {}, "Severity ", el("select", { name: "severity" },
      ["", "critical", "warning", "info", "critical,warning"].map((s) => el("option", { value: s, selected: s === sev }, s || "any")))),
    el("label", {}, "Analyzer ", el("select", { name: "analyzer" },
      el("option", { value: "" }, "any"),
      an.analyzers.map((a) => el("option", { value: a.name, selected: a.name === params.get("analyzer"), title: a.doc.split("\n")[0] }, a.name)))),
    el("button", { type: "submit" }, "Filter"));
  const sim = resp.findings.some((f) => f.simulated);
  main.replaceChildren(
    el("h1", {}, "Findings"),
    sim ? simBanner("findings marked simulated were computed from data that") : "",
    form,
    el("p", { class: "muted", id: "count" }, `${resp.total} findings match${resp.total > resp.findings.length ? `, showing the ${resp.findings.length} most costly` : ""}.`),
    findingsTable(resp.findings, { showJob: true }));
  loupe.findings = { total: resp.total, shown: resp.findings.length };
  ready("findings");
}

load().catch((err) => showError(main, err));
