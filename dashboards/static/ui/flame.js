// A CPU flame graph drawn with an ECharts custom series: one rectangle per
// frame, width proportional to its samples, callers above callees (an
// icicle, so the root stays in view). Search highlights the frames whose
// name matches and says what share of the samples they hold; a click on a
// frame zooms to it (the root, or "reset", zooms out).
import { el, fmt } from "./common.js";

const palette = ["#e4572e", "#f3a712", "#e8c547", "#f28f3b", "#c8553d", "#f4a259", "#e07a5f"];
const MATCH = "#8e24aa", FADED = "#e3e5e8";

function flatten(root) {
  const items = [];
  let depth = 0;
  const walk = (n, level, start, parent) => {
    depth = Math.max(depth, level + 1);
    const i = items.length;
    items.push({ name: n.name, value: [level, start, start + n.value, n.name, n.value], parent });
    let x = start;
    for (const c of n.children || []) {
      walk(c, level + 1, x, i);
      x += c.value;
    }
  };
  walk(root, 0, 0, -1);
  return { items, depth };
}

function hash(s) {
  let h = 0;
  for (let i = 0; i < s.length; i++) h = (h * 31 + s.charCodeAt(i)) | 0;
  return Math.abs(h);
}

/** drawFlame draws fg (GET /api/v1/views/flamegraph) into box, with a
 * search field and zoom controls in controls (a DOM node, optional), and
 * returns what it drew and its controls, for tests: {frames, depth, total,
 * chart, search(term), zoom(i), reset(), state()}. */
export function drawFlame(box, fg, controls) {
  const { items, depth } = flatten(fg.root);
  const rowH = 18;
  box.style.height = `${Math.max(120, depth * rowH + 30)}px`;
  let chart = echarts.getInstanceByDom(box);
  if (chart) chart.dispose();
  chart = echarts.init(box);
  const total = fg.root.value || 1;
  let term = "", matched = new Set(), zoomed = 0;

  const option = (from, to) => ({
    animation: false,
    tooltip: {
      formatter: (p) => `${p.value[3]}<br>${p.value[4].toLocaleString()} ${fg.unit} (${((p.value[4] / total) * 100).toFixed(1)}%)`,
    },
    grid: { left: 4, right: 4, top: 4, bottom: 4 },
    xAxis: { type: "value", show: false, min: from, max: to },
    yAxis: { type: "value", show: false, inverse: true, min: 0, max: depth },
    series: [{
      type: "custom",
      clip: true,
      data: items,
      encode: { x: [1, 2], y: 0 },
      renderItem: (params, api) => {
        const level = api.value(0);
        const a = api.coord([api.value(1), level]), b = api.coord([api.value(2), level + 1]);
        const w = b[0] - a[0], name = api.value(3);
        let fill = params.dataIndex === 0 ? "#9e9e9e" : palette[hash(name) % palette.length];
        if (term) fill = matched.has(params.dataIndex) ? MATCH : params.dataIndex === 0 ? "#9e9e9e" : FADED;
        return {
          type: "rect",
          shape: { x: a[0], y: a[1], width: Math.max(w - 0.5, 0.5), height: b[1] - a[1] - 1 },
          style: { fill },
          textContent: w > 40 ? { style: { text: name, fontSize: 11, fill: term && matched.has(params.dataIndex) ? "#fff" : "#1d2430", width: w - 6, overflow: "truncate" } } : undefined,
          textConfig: { position: "insideLeft" },
        };
      },
    }],
  });
  const info = el("span", { class: "muted", id: "flame-info" });
  const render = () => {
    const it = items[zoomed];
    chart.setOption(option(it.value[1], it.value[2]), { replaceMerge: ["series"] });
    const parts = [];
    if (zoomed) parts.push(`zoomed to ${it.name} (${fmt((it.value[4] / total) * 100, 1)}% of samples)`);
    if (term) parts.push(`"${term}": ${matched.size} frames, ${fmt(share() * 100, 1)}% of samples`);
    info.textContent = parts.join(" · ");
  };
  // share is the samples under matching frames, nested matches counted once.
  const share = () => {
    let v = 0;
    for (const i of matched) {
      let p = items[i].parent, nested = false;
      while (p >= 0 && !nested) { nested = matched.has(p); p = items[p].parent; }
      if (!nested) v += items[i].value[4];
    }
    return v / total;
  };
  const api = {
    frames: items.length, depth, total: fg.total, chart,
    search(t) {
      term = (t || "").trim();
      const q = term.toLowerCase();
      matched = new Set(term ? items.flatMap((it, i) => (i > 0 && it.name.toLowerCase().includes(q) ? [i] : [])) : []);
      render();
      return { frames: matched.size, share: share() };
    },
    zoom(i) { zoomed = i > 0 && i < items.length ? i : 0; render(); },
    reset() { api.zoom(0); },
    state() {
      const o = chart.getOption().xAxis[0];
      return { term, matched: matched.size, share: share(), zoomed: items[zoomed].name, min: o.min, max: o.max };
    },
    index(name) { return items.findIndex((it) => it.name === name); },
  };
  chart.on("click", (p) => api.zoom(p.dataIndex === zoomed ? 0 : p.dataIndex));
  if (controls) {
    const input = el("input", { type: "search", id: "flame-search", placeholder: "search frames", oninput: (e) => api.search(e.target.value) });
    controls.replaceChildren(el("label", {}, "Search ", input), " ",
      el("button", { type: "button", id: "flame-reset", onclick: () => api.reset() }, "reset zoom"), " ", info);
  }
  render();
  return api;
}
