// Page 1, #/: the runs table, refreshed every 5 s.
import { h, append, clear, badge, num, duration, STATUSES } from "./dom.js";
import { get, showError } from "./api.js";
import { t, getLang } from "./i18n.js";

const REFRESH_MS = 5000;
// Kept across visits and language switches.
const view = { sort: null, descending: false, filter: "", status: "", picked: new Set() };

const COLUMNS = [
  { key: "status", label: () => t("runs.status"), sort: (r) => STATUSES.indexOf(r.status) },
  { key: "name", label: () => t("runs.name"), sort: (r) => r.name },
  { key: "base_model", label: () => t("runs.base_model"), sort: (r) => r.base_model },
  { key: "method", label: () => t("runs.method"), sort: (r) => r.method },
  { key: "task", label: () => t("runs.task"), sort: (r) => r.task },
  { key: "data", label: () => t("runs.data"), sort: (r) => r.data },
  { key: "best_val_loss", label: () => t("runs.best_val_loss"), sort: (r) => r.best_val_loss, numeric: true },
  { key: "metrics", label: () => t("runs.metrics"), sort: (r) => firstMetric(r), numeric: true },
  { key: "wall_s", label: () => t("runs.wall"), sort: (r) => r.wall_s, numeric: true },
  { key: "step", label: () => t("runs.steps"), sort: (r) => progress(r), numeric: true },
];

function firstMetric(run) {
  const values = Object.values(run.metrics || {}).filter((v) => typeof v === "number");
  return values.length ? values[0] : null;
}

function progress(run) {
  return run.total_steps ? (run.step || 0) / run.total_steps : run.step ?? null;
}

function compareValues(a, b, descending) {
  const emptyA = a === null || a === undefined || a === "";
  const emptyB = b === null || b === undefined || b === "";
  if (emptyA || emptyB) return emptyA === emptyB ? 0 : emptyA ? 1 : -1; // empty last, either way
  const order = typeof a === "number" && typeof b === "number"
    ? a - b
    : String(a).localeCompare(String(b), undefined, { numeric: true });
  return descending ? -order : order;
}

export function renderRuns(root, { info }) {
  let runs = [];
  let timer = null;
  let loading = false;
  let loaded = false;
  let gone = false;

  const filterBox = h("input", {
    type: "search", id: "runs-filter", placeholder: t("runs.filter"), "aria-label": t("runs.filter"),
    value: view.filter,
    oninput: (e) => { view.filter = e.target.value; draw(); },
  });
  const statusSelect = h("select", {
    id: "status-filter", "aria-label": t("runs.status_filter"),
    onchange: (e) => { view.status = e.target.value; draw(); },
  }, h("option", { value: "" }, t("runs.all_statuses")),
  STATUSES.map((s) => h("option", { value: s, selected: view.status === s }, t(`status.${s}`))));
  const compareButton = h("button", {
    type: "button", id: "compare-runs", class: "button",
    onclick: () => {
      const query = [...view.picked].map((n) => `run=${encodeURIComponent(n)}`).join("&");
      location.hash = `#/compare?${query}`;
    },
  });
  const newButton = info.read_only ? null : h("a", { href: "#/new", id: "new-run-button", class: "button primary" }, t("runs.new"));
  const body = h("div", { id: "runs-body" });
  const updated = h("span", { class: "muted small", id: "runs-updated" });

  append(root, 
    h("div", { class: "page-head" },
      h("h1", null, t("runs.title")),
      h("div", { class: "actions" }, compareButton, newButton)),
    h("div", { class: "toolbar" }, filterBox, statusSelect, h("span", { class: "spacer" }), updated),
    body,
  );

  function visible() {
    const words = view.filter.trim().toLowerCase().split(/\s+/).filter(Boolean);
    let shown = runs.filter((r) => {
      if (view.status && r.status !== view.status) return false;
      const text = [r.name, r.base_model, r.method, r.task, r.data, r.status, t(`status.${r.status}`),
        ...Object.keys(r.metrics || {})].join(" ").toLowerCase();
      return words.every((w) => text.includes(w));
    });
    const column = COLUMNS.find((c) => c.key === view.sort);
    if (column) {
      shown = [...shown].sort((a, b) => compareValues(column.sort(a), column.sort(b), view.descending));
    }
    return shown;
  }

  function header(column) {
    const sorted = view.sort === column.key;
    const arrow = sorted ? (view.descending ? " ▼" : " ▲") : "";
    return h("th", {
      scope: "col", class: column.numeric ? "num sortable" : "sortable",
      "aria-sort": sorted ? (view.descending ? "descending" : "ascending") : "none",
      dataset: { sort: column.key },
    }, h("button", {
      type: "button", class: "sort",
      onclick: () => {
        if (view.sort === column.key) view.descending = !view.descending;
        else { view.sort = column.key; view.descending = column.numeric; }
        draw();
      },
    }, column.label(), h("span", { class: "arrow", "aria-hidden": "true" }, arrow)));
  }

  function row(run) {
    const picked = view.picked.has(run.name);
    const full = view.picked.size >= 5 && !picked;
    const metrics = Object.entries(run.metrics || {}).slice(0, 3);
    const pct = run.total_steps ? Math.min(100, Math.round(((run.step || 0) / run.total_steps) * 100)) : null;
    return h("tr", { dataset: { run: run.name, status: run.status } },
      h("td", { class: "pick-cell" }, h("input", {
        type: "checkbox", class: "pick", value: run.name, dataset: { run: run.name },
        checked: picked, disabled: full, "aria-label": t("runs.pick", { name: run.name }),
        onchange: (e) => {
          if (e.target.checked) view.picked.add(run.name);
          else view.picked.delete(run.name);
          draw();
        },
      })),
      h("td", null, badge(run.status)),
      h("td", { class: "name" }, h("a", { href: `#/run/${encodeURIComponent(run.name)}`, class: "run-link" }, run.name)),
      h("td", { class: "nowrap" }, run.base_model ?? "–"),
      h("td", { class: "nowrap" }, run.method ?? "–"),
      h("td", { class: "nowrap" }, run.task ?? "–"),
      h("td", { class: "data" }, run.data ?? "–"),
      h("td", { class: "num" }, num(run.best_val_loss)),
      h("td", { class: "metrics" }, metrics.length
        ? metrics.map(([k, v]) => h("span", { class: "metric" }, h("span", { class: "metric-key" }, k), " ", num(v)))
        : "–"),
      h("td", { class: "num" }, duration(run.wall_s),
        run.cost != null ? h("div", { class: "muted cost" }, t("runs.cost", { cost: num(run.cost) })) : null),
      h("td", { class: "num steps" },
        `${run.step ?? "–"} / ${run.total_steps ?? "–"}`,
        pct !== null ? h("div", { class: "bar", title: `${pct}%` }, h("div", { style: { width: `${pct}%` } })) : null),
    );
  }

  function draw() {
    for (const name of [...view.picked]) if (!runs.some((r) => r.name === name)) view.picked.delete(name);
    const n = view.picked.size;
    compareButton.textContent = n ? t("runs.compare_n", { n }) : t("runs.compare");
    compareButton.disabled = n < 2 || n > 5;
    compareButton.title = t("runs.compare_hint");
    clear(body);
    if (!loaded) {
      append(body, h("p", { class: "muted" }, t("loading")));
      return;
    }
    if (!runs.length) {
      append(body, h("div", { class: "empty" },
        h("p", null, t("runs.none")),
        info.read_only ? null : h("p", null, h("a", { href: "#/new", class: "button primary" }, t("runs.new")))));
      return;
    }
    const shown = visible();
    append(body, h("div", { class: "table-wrap" }, h("table", { id: "runs-table", class: "runs" },
      h("thead", null, h("tr", null,
        h("th", { scope: "col", class: "pick-cell" }, h("span", { class: "visually-hidden" }, t("runs.pick_column"))),
        COLUMNS.map(header))),
      h("tbody", null, shown.map(row)))));
    if (!shown.length) append(body, h("p", { class: "muted" }, t("runs.none_match")));
  }

  async function load() {
    if (loading || gone) return;
    loading = true;
    try {
      const data = await get("/api/runs");
      if (gone) return;
      runs = Array.isArray(data?.runs) ? data.runs : [];
      loaded = true;
      updated.textContent = t("runs.updated", { time: new Date().toLocaleTimeString(getLang()) });
      // keep focus and caret of the filter box: only the table is redrawn
      draw();
    } catch (error) {
      showError(error);
    } finally {
      loading = false;
    }
  }

  draw();
  load();
  timer = setInterval(load, REFRESH_MS);
  return () => {
    gone = true;
    clearInterval(timer);
  };
}
