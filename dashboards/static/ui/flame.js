// A CPU flame graph drawn with an ECharts custom series: one rectangle per
// frame, width proportional to its samples, callers above callees (an
// icicle, so the root stays in view).

const palette = ["#e4572e", "#f3a712", "#e8c547", "#f28f3b", "#c8553d", "#f4a259", "#e07a5f"];

function flatten(root) {
  const items = [];
  let depth = 0;
  const walk = (n, level, start) => {
    depth = Math.max(depth, level + 1);
    items.push({ name: n.name, value: [level, start, start + n.value, n.name, n.value] });
    let x = start;
    for (const c of n.children || []) {
      walk(c, level + 1, x);
      x += c.value;
    }
  };
  walk(root, 0, 0);
  return { items, depth };
}

function hash(s) {
  let h = 0;
  for (let i = 0; i < s.length; i++) h = (h * 31 + s.charCodeAt(i)) | 0;
  return Math.abs(h);
}

/** drawFlame draws fg (GET /api/v1/views/flamegraph) into box and returns
 * what it drew, for tests. */
export function drawFlame(box, fg) {
  const { items, depth } = flatten(fg.root);
  const rowH = 18;
  box.style.height = `${Math.max(120, depth * rowH + 30)}px`;
  let chart = echarts.getInstanceByDom(box);
  if (chart) chart.dispose();
  chart = echarts.init(box);
  const total = fg.root.value || 1;
  chart.setOption({
    animation: false,
    tooltip: {
      formatter: (p) => `${p.value[3]}<br>${p.value[4].toLocaleString()} ${fg.unit} (${((p.value[4] / total) * 100).toFixed(1)}%)`,
    },
    grid: { left: 4, right: 4, top: 4, bottom: 4 },
    xAxis: { type: "value", show: false, min: 0, max: total },
    yAxis: { type: "value", show: false, inverse: true, min: 0, max: depth },
    series: [{
      type: "custom",
      data: items,
      encode: { x: [1, 2], y: 0 },
      renderItem: (params, api) => {
        const level = api.value(0);
        const a = api.coord([api.value(1), level]), b = api.coord([api.value(2), level + 1]);
        const w = b[0] - a[0], name = api.value(3);
        return {
          type: "rect",
          shape: { x: a[0], y: a[1], width: Math.max(w - 0.5, 0.5), height: b[1] - a[1] - 1 },
          style: { fill: params.dataIndex === 0 ? "#9e9e9e" : palette[hash(name) % palette.length] },
          textContent: w > 40 ? { style: { text: name, fontSize: 11, fill: "#1d2430", width: w - 6, overflow: "truncate" } } : undefined,
          textConfig: { position: "insideLeft" },
        };
      },
    }],
  });
  return { frames: items.length, depth, total: fg.total, chart };
}
