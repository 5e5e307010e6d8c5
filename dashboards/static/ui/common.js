// Shared helpers of Loupe's pages: fetching the API, building DOM, the
// simulated-data banner, and the window.__loupe hooks that tests and
// scripts read (each page publishes what it drew there).

export const loupe = (window.__loupe = window.__loupe || {});

/** fetchJSON fetches an API URL; a non-2xx answer throws its error text. */
export async function fetchJSON(url) {
  const res = await fetch(url, { headers: { Accept: "application/json" } });
  let body;
  try {
    body = await res.json();
  } catch {
    throw new Error(`${url}: HTTP ${res.status}, not JSON`);
  }
  if (!res.ok) throw new Error(body.error || `${url}: HTTP ${res.status}`);
  return body;
}

/** el builds an element: el("a", {href: "/x"}, "text", child, ...). */
export function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") e.className = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined || c === false) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

/** simBanner returns the banner shown above any chart of simulated data. */
export function simBanner(what) {
  return el("div", { class: "banner-sim", "data-simulated": "true" },
    `SIMULATED DATA: ${what} comes from simulated GPUs (loupe-agent --simulate-gpus); it says nothing about real hardware.`);
}

/** showError puts an error message into a container. */
export function showError(container, err) {
  container.replaceChildren(el("p", { class: "error" }, String(err.message || err)));
  document.body.dataset.error = String(err.message || err);
}

/** fmt formats a number with at most d decimals. */
export function fmt(x, d = 1) {
  if (x === null || x === undefined || Number.isNaN(x)) return "–";
  return Number(x).toLocaleString("en-US", { maximumFractionDigits: d });
}

/** jobURL is the job page of a capture. */
export function jobURL(cluster, job, run, capture) {
  const p = `/jobs/${encodeURIComponent(cluster)}/${encodeURIComponent(job)}/${encodeURIComponent(run)}`;
  return capture ? `${p}?capture=${encodeURIComponent(capture)}` : p;
}

/** severityBadge is a coloured severity label. */
export function severityBadge(s) {
  return el("span", { class: `badge ${s}` }, s);
}

/** ready marks the page as drawn, for tests and screenshots. */
export function ready(name) {
  loupe.readyMs = performance.now();
  document.body.dataset.ready = name;
}

/** ramp maps t in [0,1] to an [r,g,b] colour of a dark-blue to yellow scale,
 * so idle (low) cells read dark and busy ones bright. */
const stops = [
  [0.0, [13, 8, 135]], [0.25, [126, 3, 168]], [0.5, [204, 71, 120]],
  [0.75, [248, 149, 64]], [1.0, [240, 249, 33]],
];
export const rampColors = stops.map(([, c]) => `rgb(${c.join(",")})`);
export function ramp(t) {
  t = Math.min(1, Math.max(0, t));
  for (let i = 1; i < stops.length; i++) {
    if (t <= stops[i][0]) {
      const [t0, a] = stops[i - 1], [t1, b] = stops[i];
      const f = (t - t0) / (t1 - t0);
      return [0, 1, 2].map((k) => Math.round(a[k] + (b[k] - a[k]) * f));
    }
  }
  return stops[stops.length - 1][1];
}
