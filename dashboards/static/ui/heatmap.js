// A heatmap for many cells: ECharts draws the axes and the colour scale,
// and the cells are painted into one image (a pixel per cell, scaled up
// without smoothing). One ECharts rectangle per cell takes seconds for a
// thousand GPUs over an hour (368,640 cells); an image takes milliseconds.
// The fleet page and the job page's step-time heatmap both use it.
import { el, ramp, rampColors } from "./common.js";

const NO_DATA = [236, 238, 241];

/**
 * rasterHeatmap draws rows x cols values (row-major, null = no data) into
 * box and returns {chart, cellAt(x, y), gridW, rowPx, left, top}.
 *
 * opts: rows (axis labels), cols, values, min, max, unit, xAxis (an ECharts
 * axis spanning exactly the columns), left, right, top, bottom, maxRowPx,
 * labelFormatter, separators (row indices that start a group),
 * tooltip(r, c) (returns DOM nodes), onClick(r, c).
 */
export function rasterHeatmap(box, opts) {
  const { rows, cols, values, min, max } = opts;
  const left = opts.left ?? 120, right = opts.right ?? 110, top = opts.top ?? 16, bottom = opts.bottom ?? 56;
  const nrows = rows.length;
  const rowPx = Math.max(3, Math.min(opts.maxRowPx ?? 18, Math.floor(640 / nrows)));
  const gridH = rowPx * nrows;
  box.style.height = `${gridH + top + bottom}px`;
  const chart = echarts.init(box, null, { renderer: "canvas" });
  const gridW = Math.max(50, box.clientWidth - left - right);
  const span = max > min ? max - min : 1;

  const cells = document.createElement("canvas");
  cells.width = cols; cells.height = nrows;
  const cctx = cells.getContext("2d");
  const img = cctx.createImageData(cols, nrows);
  const px = img.data;
  for (let i = 0; i < values.length; i++) {
    const v = values[i], o = i * 4;
    const [r, g, b] = v === null ? NO_DATA : ramp((v - min) / span);
    px[o] = r; px[o + 1] = g; px[o + 2] = b; px[o + 3] = 255;
  }
  cctx.putImageData(img, 0, 0);
  const scaled = document.createElement("canvas");
  scaled.width = gridW; scaled.height = gridH;
  const sctx = scaled.getContext("2d");
  sctx.imageSmoothingEnabled = false;
  sctx.drawImage(cells, 0, 0, gridW, gridH);
  sctx.fillStyle = "#fff";
  for (const r of opts.separators || []) if (r > 0) sctx.fillRect(0, r * rowPx - 1, gridW, 2);

  chart.setOption({
    animation: false,
    grid: { left, right, top, height: gridH },
    xAxis: opts.xAxis,
    yAxis: {
      type: "category", inverse: true, data: rows, axisTick: { show: false },
      axisLabel: { fontSize: Math.min(12, Math.max(8, rowPx - 2)), formatter: opts.labelFormatter, rich: { group: { fontWeight: "bold", color: "#1565c0" } } },
    },
    visualMap: {
      type: "continuous", min, max, calculable: false, seriesIndex: [], inRange: { color: rampColors },
      right: 10, top, text: [`${fmtNum(max)} ${opts.unit}`, `${fmtNum(min)} ${opts.unit}`],
    },
    series: [{ type: "scatter", data: [], silent: true }],
    graphic: [{ id: "cells", type: "image", left, top, silent: true, style: { image: scaled, width: gridW, height: gridH } }],
  });

  const cellAt = (x, y) => {
    const c = Math.floor(((x - left) / gridW) * cols), r = Math.floor((y - top) / rowPx);
    return c >= 0 && c < cols && r >= 0 && r < nrows ? [r, c] : null;
  };
  const tip = document.getElementById("tip");
  const zr = chart.getZr();
  zr.on("mousemove", (e) => {
    const rc = cellAt(e.offsetX, e.offsetY);
    if (!rc || !opts.tooltip) { tip.style.display = "none"; zr.setCursorStyle("default"); return; }
    tip.replaceChildren(...opts.tooltip(rc[0], rc[1]).map((n) => el("div", {}, n)));
    tip.style.display = "block";
    tip.style.left = `${e.event.clientX + 14}px`;
    tip.style.top = `${e.event.clientY + 10}px`;
    zr.setCursorStyle(opts.onClick ? "pointer" : "default");
  });
  zr.on("mouseout", () => { tip.style.display = "none"; });
  if (opts.onClick) {
    zr.on("click", (e) => {
      const rc = cellAt(e.offsetX, e.offsetY);
      if (rc) opts.onClick(rc[0], rc[1]);
    });
  }
  return { chart, cellAt, gridW, rowPx, left, top, value: (r, c) => values[r * cols + c] };
}

function fmtNum(x) {
  return Number(x).toLocaleString("en-US", { maximumFractionDigits: Math.abs(x) < 10 ? 1 : 0 });
}
