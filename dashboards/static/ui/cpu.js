// The CPU page: where the fleet's (or a job's, a host's) CPU time went
// over a time range, as a flame graph merged from the agents' continuous
// profiles (GET /api/v1/views/profile). The query string is the API's:
// cluster, job, host, rank, from, to.
import { loupe, fetchJSON, el, simBanner, showError, fmt, ready } from "./common.js";
import { drawFlame } from "./flame.js";

const main = document.getElementById("main");
const params = new URLSearchParams(location.search);
const ranges = [["15m", 900], ["1h", 3600], ["6h", 6 * 3600], ["24h", 86400], ["7d", 7 * 86400]];

async function load() {
  const q = new URLSearchParams();
  for (const k of ["cluster", "job", "host", "rank", "from", "to"]) {
    if (params.get(k)) q.set(k, params.get(k));
  }
  draw(await fetchJSON(`/api/v1/views/profile?${q}`));
}

function controls(fg) {
  const input = (name, hint) => el("input", { id: `cpu-${name}`, name, value: params.get(name) || "", placeholder: hint, size: 14 });
  const range = el("select", { id: "cpu-range" }, el("option", { value: "" }, "from / to as given"),
    ranges.map(([label, secs]) => el("option", { value: secs }, `last ${label}`)));
  const go = (e) => {
    e.preventDefault();
    for (const k of ["cluster", "job", "host"]) {
      const v = document.getElementById(`cpu-${k}`).value.trim();
      if (v) params.set(k, v); else params.delete(k);
    }
    if (range.value) {
      const now = Math.floor(Date.now() / 1000);
      params.set("from", now - Number(range.value));
      params.set("to", now);
    }
    location.search = params;
  };
  return el("form", { class: "controls", onsubmit: go },
    el("label", {}, "Cluster ", input("cluster", "any")),
    el("label", {}, "Job ", input("job", "any")),
    el("label", {}, "Host ", input("host", "any")),
    el("label", {}, "Range ", range),
    el("button", { type: "submit" }, "Show"),
    el("span", { class: "muted", id: "cpu-status" },
      `${new Date(fg.from).toISOString().replace(".000", "")} → ${new Date(fg.to).toISOString().replace(".000", "")}: `,
      `${fmt(fg.total / 1e9, 2)} s of CPU time from ${fg.profiles} continuous profiles`, fg.note ? `; ${fg.note}` : ""));
}

function draw(fg) {
  const scope = [fg.job ? `job ${fg.job}` : "", fg.host ? `host ${fg.host}` : "", fg.rank >= 0 ? `rank ${fg.rank}` : ""].filter(Boolean).join(", ") || "the fleet";
  const area = el("div", { id: "flame", class: "chart", style: "height:420px" });
  const tools = el("div", { class: "controls", id: "flame-tools" });
  main.replaceChildren(el("h1", {}, `CPU time of ${scope}`), fg.simulated ? simBanner("some of these processes ran on hosts whose") : "",
    controls(fg), el("div", { class: "card" }, tools, area));
  loupe.flame = drawFlame(area, fg, tools);
  loupe.cpu = { profiles: fg.profiles, total: fg.total };
  ready("cpu");
}

load().catch((err) => showError(main, err));
