// Line charts on uPlot (vendor/uPlot.iife.min.js, a global `uPlot`). A chart's container
// carries data-points="N": how many records it has drawn, so a test can watch it grow.
import { h, clear, num } from "./dom.js";
import { t } from "./i18n.js";

export const PALETTE = [
  "#2563eb", "#dc2626", "#059669", "#d97706", "#7c3aed",
  "#0891b2", "#db2777", "#4b5563",
];

// whole steps only on the x axis
const STEP_INCRS = [1, 2, 5, 10, 20, 25, 50, 100, 200, 250, 500, 1000, 2000, 2500, 5000, 10000, 20000, 50000, 100000, 200000, 500000, 1e6];

function last(column) {
  for (let i = (column?.length ?? 0) - 1; i >= 0; i -= 1) {
    if (column[i] !== null && column[i] !== undefined) return column[i];
  }
  return null;
}

function tick(value) {
  if (value === null || value === undefined) return "";
  const abs = Math.abs(value);
  if (abs !== 0 && (abs < 1e-2 || abs >= 1e5)) return value.toExponential(1);
  return num(value, 3);
}

/**
 * A chart in `container` (an element already in the page). series: [{label, color, points,
 * dash}]. Returns {set(xs, ys, points), destroy()}.
 */
export function lineChart(container, { title, series, xLabel, height = 220 }) {
  clear(container);
  container.dataset.points = "0";
  const plotBox = h("div", { class: "plot" });
  const empty = h("div", { class: "chart-empty" }, t("chart.waiting"));
  container.append(h("div", { class: "chart-title" }, title), plotBox, empty);
  const width = () => Math.max(container.clientWidth - 2, 240);
  const options = {
    width: width(),
    height,
    scales: { x: { time: false } },
    cursor: { drag: { x: true, y: false }, points: { size: 6 } },
    legend: { live: true },
    axes: [
      { label: xLabel ?? t("chart.step"), labelSize: 18, size: 36, incrs: STEP_INCRS, stroke: "#6b7280", grid: { stroke: "#eef0f3" }, ticks: { stroke: "#e5e7eb" } },
      { size: 56, stroke: "#6b7280", grid: { stroke: "#eef0f3" }, ticks: { stroke: "#e5e7eb" }, values: (u, vals) => vals.map(tick) },
    ],
    series: [
      { label: t("chart.step"), value: (u, v, si, idx) => String((idx === null || idx === undefined ? last(u.data[0]) : v) ?? "–") },
      ...series.map((s, i) => {
        const color = s.color || PALETTE[i % PALETTE.length];
        return {
          label: s.label,
          stroke: color,
          width: s.points ? 1.5 : 1.75,
          dash: s.dash,
          spanGaps: true,
          points: s.points
            ? { show: true, size: 7, stroke: color, fill: "#ffffff", width: 2 }
            : { show: false },
          // off the plot (idx null): the latest value, so the legend reads as a summary
          value: (u, v, si, idx) => {
            if (idx === null || idx === undefined) v = last(u.data[si]);
            return v === null || v === undefined ? "–" : tick(v);
          },
        };
      }),
    ],
  };
  const empties = [[], ...series.map(() => [])];
  // eslint-disable-next-line no-undef
  const plot = new uPlot(options, empties, plotBox);
  let resizing = null;
  const observer = new ResizeObserver(() => {
    // after this frame's layout, so the resize does not re-enter the observer's loop
    clearTimeout(resizing);
    resizing = setTimeout(() => {
      const w = width();
      if (Math.abs(w - plot.width) > 2) plot.setSize({ width: w, height });
    }, 50);
  });
  observer.observe(container);
  return {
    set(xs, ys, points) {
      plot.setData([xs, ...ys]);
      container.dataset.points = String(points);
      empty.hidden = points > 0;
    },
    destroy() {
      clearTimeout(resizing);
      observer.disconnect();
      plot.destroy();
    },
  };
}

/**
 * Records of metrics.jsonl kept by (split, step): a resumed run logs steps again and the last
 * record of a step counts, and a reconnecting EventSource replays every record from the first.
 */
export class Curves {
  constructor() {
    this.train = new Map();
    this.val = new Map();
    this.events = [];
  }

  add(record) {
    if (!record || typeof record !== "object" || typeof record.step !== "number") return;
    if (record.split === "train") this.train.set(record.step, record);
    else if (record.split === "val") this.val.set(record.step, record);
    else if (record.event && !this.events.some((e) => e.step === record.step && e.event === record.event)) {
      this.events.push(record);
    }
  }

  /** xs and one column per field of (split, field) pairs, nulls where a step lacks it. */
  columns(fields) {
    const steps = new Set();
    const sources = fields.map(([split, field]) => {
      const map = split === "train" ? this.train : this.val;
      for (const [step, record] of map) if (typeof record[field] === "number") steps.add(step);
      return [map, field];
    });
    const xs = [...steps].sort((a, b) => a - b);
    const ys = sources.map(([map, field]) => xs.map((x) => {
      const value = map.get(x)?.[field];
      return typeof value === "number" && Number.isFinite(value) ? value : null;
    }));
    const points = ys.reduce((sum, col) => sum + col.filter((v) => v !== null).length, 0);
    return { xs, ys, points };
  }
}

/** Several runs' curves of one (split, field) on a shared step axis. */
export function overlay(curvesByRun, split, field) {
  const names = Object.keys(curvesByRun);
  const steps = new Set();
  const maps = names.map((name) => {
    const curves = new Curves();
    for (const record of curvesByRun[name] || []) curves.add(record);
    const map = split === "train" ? curves.train : curves.val;
    for (const [step, record] of map) if (typeof record[field] === "number") steps.add(step);
    return map;
  });
  const xs = [...steps].sort((a, b) => a - b);
  const ys = maps.map((map) => xs.map((x) => {
    const value = map.get(x)?.[field];
    return typeof value === "number" && Number.isFinite(value) ? value : null;
  }));
  const points = ys.reduce((sum, col) => sum + col.filter((v) => v !== null).length, 0);
  return { names, xs, ys, points };
}
