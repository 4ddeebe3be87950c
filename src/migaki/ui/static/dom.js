// Small DOM and formatting helpers. Every text goes in as a text node (never innerHTML), so
// names, metrics and answers from the server cannot inject markup.
import { t, getLang } from "./i18n.js";

/** h("div", {class: "x", dataset: {run: "a"}, onclick: fn}, "text", child, [more]) */
export function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  if (attrs) {
    for (const [key, value] of Object.entries(attrs)) {
      if (value === undefined || value === null || value === false) continue;
      if (key === "class") el.className = value;
      else if (key === "dataset") Object.assign(el.dataset, value);
      else if (key === "style" && typeof value === "object") Object.assign(el.style, value);
      else if (key.startsWith("on") && typeof value === "function") {
        el.addEventListener(key.slice(2), value);
      } else if (key === "value") el.value = value;
      else if (key === "checked" || key === "disabled" || key === "selected" || key === "open") {
        el[key] = Boolean(value);
      } else el.setAttribute(key, value === true ? "" : String(value));
    }
  }
  append(el, children);
  return el;
}

export function append(el, ...children) {
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

export function clear(el) {
  while (el.firstChild) el.removeChild(el.firstChild);
  return el;
}

export const STATUSES = [
  "running", "starting", "completed", "early_stopped", "stopped",
  "interrupted", "failed", "killed", "unknown",
];
export const LIVE = new Set(["running", "starting"]);

export function badge(status) {
  const known = STATUSES.includes(status) ? status : "unknown";
  return h(
    "span",
    { class: `badge status status-${known}`, dataset: { status: status || "unknown" } },
    t(`status.${known}`),
  );
}

/** 0.8123 -> "0.812", 1234.5 -> "1,235", 2e-4 -> "2.00e-4" */
export function num(value, digits = 3) {
  if (value === null || value === undefined || value === "") return "–";
  if (typeof value === "boolean") return value ? t("yes") : t("no");
  if (typeof value !== "number") return String(value);
  if (!Number.isFinite(value)) return String(value);
  if (Number.isInteger(value)) return value.toLocaleString(getLang());
  const abs = Math.abs(value);
  if (abs !== 0 && (abs < 1e-3 || abs >= 1e6)) return value.toExponential(2);
  if (abs >= 100) return Math.round(value).toLocaleString(getLang());
  if (abs >= 10) return value.toFixed(1);
  if (abs >= 1) return value.toFixed(2);
  return value.toFixed(digits);
}

/** seconds -> "45 s", "12 min", "1 h 5 min" (in the UI's language) */
export function duration(seconds) {
  if (seconds === null || seconds === undefined || !Number.isFinite(seconds)) return "–";
  if (seconds < 60) return t("unit.s", { n: Math.max(0, Math.round(seconds)) });
  const minutes = Math.round(seconds / 60);
  if (minutes < 60) return t("unit.min", { n: minutes });
  const hours = Math.floor(minutes / 60);
  const rest = minutes % 60;
  return rest ? t("unit.h_min", { h: hours, m: rest }) : t("unit.h", { h: hours });
}

export function megabytes(mb) {
  if (mb === null || mb === undefined || !Number.isFinite(mb)) return "–";
  if (mb >= 1024) return `${(mb / 1024).toFixed(1)} GB`;
  return `${Math.round(mb)} MB`;
}

export function bytes(size) {
  if (size === null || size === undefined || !Number.isFinite(size)) return "";
  if (size < 1024) return `${size} B`;
  if (size < 1024 ** 2) return `${(size / 1024).toFixed(1)} KB`;
  if (size < 1024 ** 3) return `${(size / 1024 ** 2).toFixed(1)} MB`;
  return `${(size / 1024 ** 3).toFixed(1)} GB`;
}

export function count(n) {
  if (n === null || n === undefined || !Number.isFinite(n)) return "–";
  if (n >= 1e9) return `${(n / 1e9).toFixed(2)} B`;
  if (n >= 1e6) return `${(n / 1e6).toFixed(2)} M`;
  if (n >= 1e4) return `${(n / 1e3).toFixed(1)} K`;
  return n.toLocaleString(getLang());
}

/** "2026-12-05T09:00:00+0000" -> a local date and time */
export function when(text) {
  if (!text) return "–";
  const iso = String(text).replace(/([+-]\d\d)(\d\d)$/, "$1:$2");
  const date = new Date(iso);
  if (Number.isNaN(date.getTime())) return String(text);
  const pad = (n) => String(n).padStart(2, "0");
  return `${date.getFullYear()}-${pad(date.getMonth() + 1)}-${pad(date.getDate())} ${pad(date.getHours())}:${pad(date.getMinutes())}`;
}

/** Any JSON value as short text for a table cell. */
export function cell(value) {
  if (value === null || value === undefined) return "–";
  if (typeof value === "number" || typeof value === "boolean") return num(value);
  if (typeof value === "string") return value;
  if (Array.isArray(value) && !value.length) return "[]";
  if (Array.isArray(value) && value.every((v) => typeof v !== "object" || v === null)) {
    return value.map((v) => (v === null ? "null" : String(v))).join(", ");
  }
  return JSON.stringify(value);
}

/** A table: columns [{label, class}], rows of cells (Node or text). */
export function table(columns, rows, attrs = {}) {
  return h(
    "div",
    { class: "table-wrap" },
    h(
      "table",
      attrs,
      h("thead", null, h("tr", null, columns.map((c) => h("th", { class: c.class, scope: "col" }, c.label)))),
      h("tbody", null, rows.map((row) => h("tr", row.attrs || null, (row.cells || row).map((c, i) =>
        h(i === 0 && row.header ? "th" : "td", { class: columns[i]?.class }, c))))),
    ),
  );
}

/** Key/value rows (label, value) as a two-column table. */
export function kvTable(pairs, attrs = {}) {
  return h(
    "div",
    { class: "table-wrap" },
    h("table", { class: "kv", ...attrs }, h("tbody", null,
      pairs.filter((p) => p).map(([key, value]) =>
        h("tr", { dataset: { key } }, h("th", { scope: "row" }, key), h("td", null, value))))),
  );
}

export function section(id, title, ...body) {
  return h("section", { class: "card", id }, h("h2", null, title), ...body);
}

/** A path inside a run as a URL, each segment encoded. */
export function fileUrl(run, path) {
  const segments = String(path).split("/").map(encodeURIComponent).join("/");
  return `/api/runs/${encodeURIComponent(run)}/files/${segments}`;
}
