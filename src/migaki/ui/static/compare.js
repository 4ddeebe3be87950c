// Page 3, #/compare?run=A&run=B: curves overlaid, the recipe diff and the metric table.
import { h, append, badge, num, duration, cell, table } from "./dom.js";
import { get, showError } from "./api.js";
import { t } from "./i18n.js";
import { lineChart, overlay, PALETTE } from "./charts.js";

export function renderCompare(root, { names }) {
  const charts = [];
  let gone = false;
  const query = names.map((n) => `run=${encodeURIComponent(n)}`).join("&");
  const body = h("div", { id: "compare-body" }, h("p", { class: "muted" }, t("loading")));
  append(root, 
    h("nav", { class: "crumbs" }, h("a", { href: "#/" }, t("nav.runs")), " / ", h("span", null, t("compare.title"))),
    h("div", { class: "page-head" }, h("h1", null, t("compare.title"))),
    body,
  );

  if (names.length < 2 || names.length > 5) {
    body.replaceChildren(h("p", { class: "muted" }, t("compare.pick")));
    showError(t("compare.pick"));
    return () => {};
  }

  (async () => {
    let data;
    try {
      data = await get(`/api/compare?${query}`);
    } catch (error) {
      if (!gone) {
        body.replaceChildren(h("p", { class: "muted" }, t("compare.failed")));
        showError(error);
      }
      return;
    }
    if (gone) return;
    const runs = Array.isArray(data?.runs) ? data.runs : [];
    const order = runs.length ? runs.map((r) => r.name) : names;
    const colour = Object.fromEntries(order.map((n, i) => [n, PALETTE[i % PALETTE.length]]));
    const curves = data?.curves || {};
    const ordered = Object.fromEntries(order.map((n) => [n, curves[n] || []]));
    const swatch = (n) => h("span", { class: "swatch", style: { background: colour[n] } });
    const runHead = (n) => ({ label: h("span", null, swatch(n), h("a", { href: `#/run/${encodeURIComponent(n)}` }, n)) });

    const valBox = h("div", { class: "chart wide", id: "chart-compare-val", dataset: { points: "0" } });
    const trainBox = h("div", { class: "chart wide", id: "chart-compare-train", dataset: { points: "0" } });
    const diff = Array.isArray(data?.recipe_diff) ? data.recipe_diff : [];
    const metrics = Array.isArray(data?.metrics) ? data.metrics : [];

    body.replaceChildren(
      h("section", { class: "card", id: "compare-runs-card" }, h("h2", null, t("compare.runs")),
        table(
          [{ label: t("runs.name") }, { label: t("runs.status") }, { label: t("runs.base_model") }, { label: t("runs.method") },
            { label: t("runs.task") }, { label: t("runs.data") }, { label: t("runs.best_val_loss"), class: "num" },
            { label: t("runs.wall"), class: "num" }, { label: t("runs.steps"), class: "num" }],
          runs.map((r) => ({
            attrs: { dataset: { run: r.name } },
            cells: [h("span", null, swatch(r.name), h("a", { href: `#/run/${encodeURIComponent(r.name)}` }, r.name)),
              badge(r.status), r.base_model ?? "–", r.method ?? "–", r.task ?? "–", r.data ?? "–",
              num(r.best_val_loss), duration(r.wall_s), `${r.step ?? "–"} / ${r.total_steps ?? "–"}`],
          })), { id: "compare-runs-table" })),
      h("section", { class: "card", id: "compare-curves" }, h("h2", null, t("run.curves")),
        h("div", { class: "charts" }, valBox, trainBox)),
      h("section", { class: "card", id: "compare-diff" }, h("h2", null, t("compare.recipe_diff")),
        diff.length
          ? table([{ label: t("compare.key") }, ...order.map(runHead)],
            diff.map((row) => ({
              header: true, attrs: { dataset: { key: row.key } },
              cells: [h("code", null, row.key), ...(row.values || []).map((v) => cell(v))],
            })), { id: "recipe-diff", class: "matrix" })
          : h("p", { class: "muted" }, t("compare.same_recipe"))),
      h("section", { class: "card", id: "compare-metrics" }, h("h2", null, t("compare.metrics")),
        metrics.length
          ? table([{ label: t("compare.metric") }, ...order.map(runHead)],
            metrics.map((row) => {
              const values = row.values || [];
              const numbers = values.filter((v) => typeof v === "number");
              const lower = /loss|perplexity|latency|seconds|_s$|wall|memory/.test(row.key);
              const best = numbers.length > 1 ? (lower ? Math.min(...numbers) : Math.max(...numbers)) : null;
              return {
                header: true, attrs: { dataset: { metric: row.key } },
                cells: [row.key, ...values.map((v) => h("span", { class: best !== null && v === best ? "best" : null }, cell(v)))],
              };
            }), { id: "metric-table", class: "matrix" })
          : h("p", { class: "muted" }, t("compare.no_metrics"))),
    );

    const series = order.map((n) => ({ label: n, color: colour[n] }));
    const val = lineChart(valBox, { title: t("chart.val_title"), series: series.map((s) => ({ ...s, points: true })), height: 280 });
    const train = lineChart(trainBox, { title: t("chart.train_title"), series, height: 280 });
    charts.push(val, train);
    const v = overlay(ordered, "val", "loss");
    val.set(v.xs, v.ys, v.points);
    const tr = overlay(ordered, "train", "loss");
    train.set(tr.xs, tr.ys, tr.points);
  })();

  return () => {
    gone = true;
    for (const chart of charts) chart.destroy();
  };
}
