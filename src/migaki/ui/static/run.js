// Page 2, #/run/NAME: live curves from the run's event stream, then what the run folder holds.
import { h, append, clear, badge, num, duration, megabytes, count, when, cell, table, kvTable, fileUrl, LIVE } from "./dom.js";
import { get, post, showError } from "./api.js";
import { t } from "./i18n.js";
import { lineChart, Curves, PALETTE } from "./charts.js";

const DETAIL_REFRESH_MS = 5000;
const QUANTS = ["q8_0", "q4_k_m", "f16"];

export function renderRun(root, { info, name }) {
  const encoded = encodeURIComponent(name);
  const curves = new Curves();
  const openState = new Map(); // <details data-key> -> open, kept across redraws
  let detail = null;
  let detailText = "";
  let gone = false;
  let flushTimer = null;
  let refreshTimer = null;
  let source = null;
  let streamState = "connecting";
  let notice = null; // a line after an action (stop, resume, export)

  const statusHolder = h("span", { id: "run-status" });
  const actions = h("div", { class: "actions", id: "run-actions" });
  const live = h("span", { class: "live muted small", id: "live-state" });
  const stats = h("div", { id: "run-stats" });
  const notes = h("div", { id: "chart-notes", class: "chart-notes" });
  const sections = h("div", { id: "run-sections" });
  const noticeBox = h("div", { id: "run-notice" });
  const alertBox = h("div", { id: "run-alert" });
  const containers = {
    loss: h("div", { class: "chart wide", id: "chart-loss", dataset: { points: "0" } }),
    lr: h("div", { class: "chart", id: "chart-lr", dataset: { points: "0" } }),
    speed: h("div", { class: "chart", id: "chart-speed", dataset: { points: "0" } }),
  };

  append(root, 
    h("nav", { class: "crumbs" }, h("a", { href: "#/" }, t("nav.runs")), " / ", h("span", null, name)),
    h("div", { class: "page-head" },
      h("h1", { class: "run-name" }, name, " ", statusHolder),
      actions),
    noticeBox,
    alertBox,
    stats,
    h("section", { class: "card", id: "curves" },
      h("div", { class: "card-head" }, h("h2", null, t("run.curves")), live),
      h("div", { class: "charts" }, containers.loss, containers.lr, containers.speed),
      notes),
    sections,
  );

  const charts = {
    loss: lineChart(containers.loss, {
      title: t("chart.loss"),
      series: [
        { label: t("chart.train_loss"), color: PALETTE[0] },
        { label: t("chart.val_loss"), color: PALETTE[1], points: true },
      ],
      height: 260,
    }),
    lr: lineChart(containers.lr, { title: t("chart.lr"), series: [{ label: t("chart.lr"), color: PALETTE[2] }] }),
    speed: lineChart(containers.speed, { title: t("chart.speed"), series: [{ label: t("chart.tokens_per_s"), color: PALETTE[3] }] }),
  };

  // ---- the event stream ------------------------------------------------------------------

  function flush() {
    flushTimer = null;
    if (gone) return;
    const loss = curves.columns([["train", "loss"], ["val", "loss"]]);
    charts.loss.set(loss.xs, loss.ys, loss.points);
    const lr = curves.columns([["train", "lr"]]);
    charts.lr.set(lr.xs, lr.ys, lr.points);
    const speed = curves.columns([["train", "tokens_per_s"]]);
    charts.speed.set(speed.xs, speed.ys, speed.points);
    clear(notes);
    for (const event of curves.events) {
      append(notes, h("div", { class: event.event === "early_stop" || /stop/.test(event.event) ? "note warn" : "note" }, eventText(event)));
    }
  }

  function schedule() {
    if (flushTimer === null) flushTimer = setTimeout(flush, 120);
  }

  function setLive(state) {
    streamState = state;
    live.dataset.state = state;
    live.textContent = t(`run.stream_${state}`);
  }

  function connect() {
    setLive("connecting");
    source = new EventSource(`/api/runs/${encoded}/events`);
    source.addEventListener("open", () => setLive("live"));
    source.addEventListener("record", (e) => {
      try {
        curves.add(JSON.parse(e.data));
      } catch (error) {
        showError(t("run.bad_record", { message: error.message }));
        return;
      }
      schedule();
    });
    source.addEventListener("status", (e) => {
      try {
        const { status } = JSON.parse(e.data);
        if (detail?.summary && detail.summary.status !== status) {
          detail.summary.status = status;
          drawHeader();
        }
      } catch (error) {
        showError(error);
      }
      loadDetail();
    });
    source.addEventListener("end", () => {
      source.close();
      setLive("ended");
      schedule();
      loadDetail();
    });
    source.addEventListener("error", () => {
      if (gone || streamState === "ended") return;
      if (source.readyState === EventSource.CLOSED) {
        setLive("lost");
        showError(t("run.stream_failed", { name }));
      } else {
        setLive("reconnecting");
      }
    });
  }

  // ---- the run's folder --------------------------------------------------------------------

  async function loadDetail() {
    try {
      const found = await get(`/api/runs/${encoded}`);
      if (gone) return;
      const text = JSON.stringify(found);
      if (text === detailText) return;
      detailText = text;
      detail = found;
      draw();
      // a run launched or resumed after the stream ended: follow it again
      if ((streamState === "ended" || streamState === "lost") && LIVE.has(found?.summary?.status)) {
        source?.close();
        connect();
      }
    } catch (error) {
      if (gone) return;
      showError(error);
      if (error.status === 404 && !detail) {
        clear(sections);
        append(sections, h("p", { class: "empty", id: "run-missing" }, t("run.missing", { name })));
      }
    }
  }

  async function act(label, path, body) {
    try {
      const answer = await post(path, body);
      notice = { text: label(answer), kind: "ok" };
      drawNotice();
      detailText = "";
      await loadDetail();
    } catch (error) {
      showError(error);
    }
  }

  function drawNotice() {
    clear(noticeBox);
    if (notice) append(noticeBox, h("div", { class: `notice ${notice.kind}`, role: "status" }, notice.text));
  }

  function drawHeader() {
    const summary = detail?.summary || {};
    append(clear(statusHolder), badge(summary.status));
    clear(actions);
    if (!info.read_only && summary.can_stop) {
      append(actions, h("button", {
        type: "button", id: "stop-run", class: "button danger",
        onclick: (e) => {
          e.target.disabled = true;
          act(() => t("run.stopping"), `/api/runs/${encoded}/stop`);
        },
      }, t("run.stop")));
    }
    if (!info.read_only && summary.can_resume) {
      append(actions, h("button", {
        type: "button", id: "resume-run", class: "button",
        onclick: (e) => {
          e.target.disabled = true;
          act(() => t("run.resumed"), `/api/runs/${encoded}/resume`);
        },
      }, t("run.resume")));
    }
    const files = detail?.files || [];
    if (files.includes("report.html")) {
      append(actions, h("a", {
        class: "button", id: "report-link", href: fileUrl(name, "report.html"), target: "_blank", rel: "noopener",
      }, t("run.report")));
    }
    if (!LIVE.has(summary.status) && summary.status !== "failed") {
      append(actions, h("a", { class: "button", id: "playground-link", href: `#/play/${encoded}` }, t("run.playground")));
    }
  }

  function drawStats() {
    const s = detail?.summary || {};
    const tile = (key, label, value, sub) => h("div", { class: "stat", dataset: { key } },
      h("div", { class: "stat-label" }, label),
      h("div", { class: "stat-value" }, value),
      sub ? h("div", { class: "stat-sub" }, sub) : null);
    const pct = s.total_steps ? Math.min(100, Math.round(((s.step || 0) / s.total_steps) * 100)) : null;
    append(clear(stats), h("div", { class: "stats" },
      tile("base_model", t("runs.base_model"), s.base_model ?? "–", [s.method, s.task].filter(Boolean).join(" · ")),
      tile("data", t("runs.data"), s.data ?? "–"),
      tile("steps", t("runs.steps"), `${s.step ?? "–"} / ${s.total_steps ?? "–"}`,
        pct !== null ? h("div", { class: "bar" }, h("div", { style: { width: `${pct}%` } })) : null),
      tile("best_val_loss", t("runs.best_val_loss"), num(s.best_val_loss),
        s.best_step !== null && s.best_step !== undefined ? t("run.at_step", { step: s.best_step }) : null),
      tile("wall", t("runs.wall"), duration(s.wall_s), s.started ? `${when(s.started)}${s.finished ? ` → ${when(s.finished)}` : ""}` : null),
      tile("speed", t("chart.tokens_per_s"), num(s.tokens_per_s)),
      tile("memory", t("run.peak_memory"), megabytes(s.peak_memory_mb)),
      Object.keys(s.metrics || {}).length
        ? tile("metrics", t("runs.metrics"), h("div", { class: "metric-list" },
          Object.entries(s.metrics).map(([k, v]) => h("div", null, h("span", { class: "metric-key" }, k), " ", num(v)))))
        : null,
    ));
  }

  function details(key, summary, open, ...children) {
    const isOpen = openState.has(key) ? openState.get(key) : open;
    const el = h("details", { dataset: { key }, open: isOpen }, h("summary", null, summary), ...children);
    el.addEventListener("toggle", () => openState.set(key, el.open));
    return el;
  }

  function card(id, title, ...body) {
    return h("section", { class: "card", id }, h("h2", null, title), ...body);
  }

  function draw() {
    drawHeader();
    drawStats();
    clear(sections);
    clear(alertBox);
    const d = detail || {};
    const s = d.summary || {};
    const manifest = d.manifest || {};
    if (s.status === "failed" && manifest.error) {
      append(alertBox, h("div", { class: "callout error", id: "run-error" }, h("strong", null, t("run.failed_with")), " ", manifest.error));
    }
    if (d.compare) append(sections, compareCard(d.compare));
    if (d.eval) append(sections, evalCard(d.eval));
    append(sections, filesCard(d.files || []));
    append(sections, exportsCard(d.exports || []));
    if (d.recipe_yaml) {
      append(sections, card("recipe", t("run.recipe"),
        details("recipe", t("run.recipe_yaml"), true, h("pre", { id: "recipe-yaml", class: "code" }, d.recipe_yaml))));
    }
    if (d.manifest) append(sections, manifestCard(manifest));
    if (d.data_report) append(sections, dataCard(d.data_report));
    if (d.log_tail) {
      const text = Array.isArray(d.log_tail) ? d.log_tail.join("\n") : String(d.log_tail);
      append(sections, card("log", t("run.log"),
        details("log", t("run.log_tail"), s.status === "failed", h("pre", { id: "log-tail", class: "code log" }, text))));
    }
  }

  // ---- sections ----------------------------------------------------------------------------

  function compareCard(compare) {
    const systems = compare.systems || {};
    const names = Object.keys(systems);
    const primary = compare.primary;
    const metricKeys = [];
    for (const system of Object.values(systems)) {
      for (const [k, v] of Object.entries(system.metrics || {})) {
        if (typeof v === "number" && !metricKeys.includes(k)) metricKeys.push(k);
      }
    }
    metricKeys.sort((a, b) => (a === primary ? -1 : b === primary ? 1 : 0));
    const rows = metricKeys.map((k) => {
      const values = names.map((n) => systems[n].metrics?.[k]);
      const best = Math.max(...values.filter((v) => typeof v === "number"));
      return {
        attrs: { class: k === primary ? "primary" : null, dataset: { metric: k } },
        header: true,
        cells: [k === primary ? `${k} ★` : k, ...values.map((v) => h("span", { class: v === best && names.length > 1 ? "best" : null }, num(v)))],
      };
    });
    rows.push({ header: true, attrs: { dataset: { metric: "latency_s" } }, cells: [t("compare.latency"), ...names.map((n) => num(systems[n].latency_s))] });
    rows.push({ header: true, attrs: { dataset: { metric: "prompt_tokens" } }, cells: [t("compare.prompt_tokens"), ...names.map((n) => num(systems[n].prompt_tokens))] });
    const training = compare.training;
    return card("compare", t("run.compare"),
      compare.recommendation ? h("div", { class: "callout recommendation", id: "recommendation" },
        h("div", { class: "callout-title" }, t("compare.recommendation")),
        h("p", null, compare.recommendation)) : null,
      h("p", { class: "muted small" }, t("compare.on_rows", { rows: compare.rows ?? "–", data: compare.data ?? "–", k: compare.k ?? "–" })),
      table([{ label: t("compare.metric") }, ...names.map((n) => ({ label: systemName(n) }))], rows, { id: "compare-table", class: "matrix" }),
      h("ul", { class: "legend-list small muted" }, names.map((n) => systems[n].description
        ? h("li", null, h("strong", null, systemName(n)), ": ", systems[n].description) : null)),
      training ? h("p", { class: "small" }, t("compare.training", {
        minutes: num(training.minutes), steps: training.steps ?? "–", precision: training.precision ?? "–", machine: training.machine ?? "–",
      })) : null,
      (compare.notes || []).length ? h("ul", { class: "notes" }, compare.notes.map((n) => h("li", null, n))) : null,
      samplesBlock("compare-samples", compare.samples));
  }

  function evalCard(evaluation) {
    const systems = evaluation.systems || {};
    const names = Object.keys(systems);
    const keys = [];
    const nested = [];
    for (const system of Object.values(systems)) {
      for (const [k, v] of Object.entries(system || {})) {
        if ((typeof v === "number" || typeof v === "boolean") && !keys.includes(k)) keys.push(k);
        else if (v && typeof v === "object" && !nested.includes(k)) nested.push(k);
      }
    }
    // per-language figures (char_f1_en, char_f1_ja, ...) go to their own table, by language
    const suffix = (k) => /^(.+)_([a-z]{2})$/.exec(k);
    const counts = {};
    for (const k of keys) {
      const m = suffix(k);
      if (m) counts[m[2]] = (counts[m[2]] || 0) + 1;
    }
    const langs = Object.keys(counts).filter((l) => counts[l] >= 3);
    const isLang = (k) => langs.includes(suffix(k)?.[2]);
    const overall = keys.filter((k) => !isLang(k));
    const byLang = [...new Set(keys.filter(isLang).map((k) => suffix(k)[1]))];
    const rows = overall.map((k) => ({ header: true, attrs: { dataset: { metric: k } }, cells: [k, ...names.map((n) => num(systems[n]?.[k]))] }));
    const others = Object.entries(evaluation).filter(([k]) => !["target", "data", "rows", "systems", "samples"].includes(k));
    const langColumns = names.flatMap((n) => langs.map((l) => ({ system: n, lang: l })));
    return card("eval", t("run.eval"),
      h("p", { class: "muted small" }, t("eval.on_rows", { rows: cell(evaluation.rows), data: evaluation.data ?? "–" })),
      names.length ? table([{ label: t("compare.metric") }, ...names.map((n) => ({ label: systemName(n) }))], rows, { id: "eval-table", class: "matrix" }) : null,
      byLang.length ? details("eval-languages", t("eval.by_language", { langs: langs.join(", ") }), false,
        table([{ label: t("compare.metric") }, ...langColumns.map((c) => ({ label: `${systemName(c.system)} · ${c.lang}` }))],
          byLang.map((k) => ({ header: true, attrs: { dataset: { metric: k } }, cells: [k, ...langColumns.map((c) => num(systems[c.system]?.[`${k}_${c.lang}`]))] })),
          { id: "eval-language-table", class: "matrix" })) : null,
      nested.map((k) => details(`eval-${k}`, k, false,
        h("pre", { class: "code" }, JSON.stringify(Object.fromEntries(names.map((n) => [n, systems[n]?.[k]])), null, 2)))),
      others.map(([k, v]) => details(`eval-other-${k}`, k, false, h("pre", { class: "code" }, JSON.stringify(v, null, 2)))),
      samplesBlock("eval-samples", evaluation.samples));
  }

  function samplesBlock(key, samples) {
    if (!Array.isArray(samples) || !samples.length) return null;
    const shown = samples.slice(0, 20);
    const columns = [];
    for (const sample of shown) {
      for (const k of Object.keys(sample || {})) if (!columns.includes(k)) columns.push(k);
    }
    return details(key, t("run.samples", { n: samples.length }), false,
      table(columns.map((c) => ({ label: systemName(c), class: "text" })),
        shown.map((sample) => columns.map((c) => h("div", { class: "clip" }, cell(sample?.[c])))), { class: "samples" }));
  }

  function filesCard(files) {
    return card("files", t("run.files"), files.length
      ? h("ul", { class: "files", id: "run-files" }, files.map((path) => h("li", null,
        h("a", { href: fileUrl(name, path), target: "_blank", rel: "noopener", dataset: { path } }, path))))
      : h("p", { class: "muted" }, t("run.no_files")));
  }

  function exportsCard(exports) {
    const quant = h("select", { id: "export-quant", "aria-label": t("export.quant") },
      h("option", { value: "" }, t("export.quant_default")),
      QUANTS.map((q) => h("option", { value: q }, q)));
    const button = (format) => h("button", {
      type: "button", class: "button", id: `export-${format}`, dataset: { format },
      onclick: (e) => {
        const body = { format };
        if (format !== "hf" && quant.value) body.quant = quant.value;
        e.target.disabled = true;
        act((answer) => t("export.started", { export: answer?.export ?? format }), `/api/runs/${encoded}/export`, body)
          .finally(() => { e.target.disabled = false; });
      },
    }, t(`export.${format}`));
    const status = detail?.summary?.status;
    const canExport = !info.read_only && !LIVE.has(status) && status !== "failed";
    return card("exports", t("run.exports"),
      exports.length
        ? exports.map((e, i) => h("div", { class: "export", dataset: { format: e.format ?? "", path: e.path ?? "" } },
          h("h3", null, h("span", { class: "tag" }, e.format ?? "?"), e.type ? h("span", { class: "tag" }, e.type) : null, " ", e.path ?? ""),
          verificationBlock(`export-${i}`, e.verification)))
        : h("p", { class: "muted" }, t("run.no_exports")),
      canExport ? h("div", { class: "export-actions", id: "export-actions" },
        h("span", { class: "muted small" }, t("export.new")), button("hf"), button("gguf"), button("ollama"),
        h("label", { class: "inline small" }, t("export.quant"), " ", quant)) : null);
  }

  function verificationBlock(key, verification) {
    if (verification === null || verification === undefined || (Array.isArray(verification) && !verification.length)) {
      return h("p", { class: "muted small" }, t("export.unverified"));
    }
    const items = Array.isArray(verification) ? verification : [verification];
    if (items.every((v) => typeof v === "string")) return h("pre", { class: "code small" }, items.join("\n"));
    if (items.every((v) => v && typeof v === "object" && ("agreement" in v || "kind" in v))) {
      return h("div", null,
        table(
          [{ label: t("export.kind") }, { label: t("export.runtime") }, { label: t("export.agreement"), class: "num" },
            { label: t("export.same_top"), class: "num" }, { label: t("export.max_delta"), class: "num" }, { label: t("export.problems") }],
          items.map((v) => ({
            attrs: { class: (v.problems || []).length ? "verdict-bad" : "verdict-ok" },
            cells: [v.kind ?? "–", v.runtime ?? "–", pct(v.agreement), pct(v.same_top),
              typeof v.max_delta_logprob === "number" ? v.max_delta_logprob.toExponential(2) : "–",
              (v.problems || []).length ? v.problems.join("; ") : t("export.ok")],
          })), { class: "verification" }),
        items.map((v, i) => Array.isArray(v.rows) && v.rows.length ? details(`${key}-rows-${i}`, t("export.rows", { n: v.rows.length }), false,
          table([{ label: t("export.prompt"), class: "text" }, { label: t("export.original"), class: "text" }, { label: t("export.exported"), class: "text" }, { label: t("export.agree") }],
            v.rows.map((r) => [h("div", { class: "clip" }, cell(r.prompt)), h("div", { class: "clip" }, cell(r.original)),
              h("div", { class: "clip" }, cell(r.exported)), r.agree ? "✓" : "✗"]), { class: "samples" })) : null));
    }
    // rows of any other shape: a generic table of their keys
    const columns = [...new Set(items.flatMap((v) => (v && typeof v === "object" ? Object.keys(v) : [])))];
    return table(columns.map((c) => ({ label: c })), items.map((v) => columns.map((c) => cell(v?.[c]))), { class: "verification" });
  }

  function manifestCard(m) {
    const base = m.base_model && typeof m.base_model === "object"
      ? `${m.base_model.name ?? "–"}${m.base_model.origin ? ` (${m.base_model.origin})` : ""}` : cell(m.base_model);
    const trainable = typeof m.trainable_params === "number"
      ? `${count(m.trainable_params)}${m.total_params ? ` / ${count(m.total_params)} (${((m.trainable_params / m.total_params) * 100).toFixed(2)}%)` : ""}`
      : null;
    const plan = m.plan || {};
    const machine = m.machine || {};
    const pairs = [
      [t("manifest.status"), m.status ? badge(m.status) : null],
      [t("runs.base_model"), base],
      [t("runs.method"), m.method],
      [t("manifest.precision"), m.precision],
      [t("manifest.trainable"), trainable],
      [t("runs.steps"), m.steps ?? plan.total_steps],
      [t("manifest.plan"), Object.keys(plan).length ? Object.entries(plan).map(([k, v]) => `${k} ${cell(v)}`).join(", ") : null],
      [t("manifest.best_step"), m.best_step],
      [t("runs.best_val_loss"), typeof m.best_val_loss === "number" ? num(m.best_val_loss) : null],
      [t("manifest.final_step"), m.final_step],
      [t("run.peak_memory"), typeof m.peak_memory_mb === "number" ? megabytes(m.peak_memory_mb) : null],
      [t("manifest.started"), m.started ? when(m.started) : null],
      [t("manifest.finished"), m.finished ? when(m.finished) : null],
      [t("manifest.stopped"), m.stopped],
      [t("manifest.error"), m.error],
      [t("manifest.interrupted"), m.interrupted ? cell(m.interrupted) : null],
      [t("manifest.init_from"), m.init_from ? cell(m.init_from) : null],
      [t("manifest.data_rows"), m.data?.rows ? Object.entries(m.data.rows).map(([k, v]) => `${k} ${v}`).join(", ") : null],
      [t("manifest.machine"), Object.keys(machine).length ? [
        machine.cpu_count ? t("manifest.cpus", { n: machine.cpu_count }) : null,
        machine.memory_gb ? `${machine.memory_gb} GB` : null,
        `GPU: ${(machine.gpus || []).join(", ") || t("manifest.none")}`,
      ].filter(Boolean).join(" · ") : null],
      [t("manifest.git_commit"), m.git_commit ? String(m.git_commit).slice(0, 12) : null],
      [t("manifest.command"), m.command ? h("code", null, m.command) : null],
    ].filter(([, v]) => v !== null && v !== undefined && v !== "");
    const versions = m.versions && typeof m.versions === "object" ? m.versions : null;
    return card("manifest", t("run.manifest"),
      kvTable(pairs, { id: "manifest-table" }),
      versions ? details("versions", t("manifest.versions"), false,
        kvTable(Object.entries(versions).map(([k, v]) => [k, v ?? "–"]), { id: "versions-table" })) : null,
      details("manifest-raw", t("manifest.raw"), false, h("pre", { class: "code" }, JSON.stringify(m, null, 2))));
  }

  function dataCard(report) {
    const rows = report.rows && typeof report.rows === "object" ? report.rows : null;
    const steps = Array.isArray(report.steps) ? report.steps : [];
    return card("data-report", t("run.data_report"),
      rows ? table(Object.keys(rows).map((k) => ({ label: k, class: "num" })), [Object.values(rows).map((v) => num(v))], { id: "data-rows" }) : null,
      steps.length ? table(
        [{ label: t("data.step") }, { label: t("data.rows_in"), class: "num" }, { label: t("data.rows_out"), class: "num" },
          { label: t("data.changed"), class: "num" }, { label: t("data.removed"), class: "num" }, { label: t("data.reasons") }],
        steps.map((step) => [step.step ?? "–", num(step.rows_in), num(step.rows_out), num(step.changed), num(step.removed),
          Object.entries(step.reasons || {}).map(([k, v]) => `${k}: ${v}`).join(", ") || "–"]),
        { id: "data-steps" }) : null,
      details("data-raw", t("manifest.raw"), false, h("pre", { class: "code" }, JSON.stringify(report, null, 1))));
  }

  function eventText(event) {
    if (event.event === "early_stop") {
      return t("run.event_early_stop", { step: event.step, best: event.best_step ?? "–" });
    }
    const rest = Object.entries(event).filter(([k]) => !["step", "event", "time"].includes(k))
      .map(([k, v]) => `${k} ${cell(v)}`).join(", ");
    return t("run.event", { step: event.step, event: event.event, rest });
  }

  loadDetail();
  connect();
  refreshTimer = setInterval(loadDetail, DETAIL_REFRESH_MS);
  return () => {
    gone = true;
    clearInterval(refreshTimer);
    clearTimeout(flushTimer);
    source?.close();
    for (const chart of Object.values(charts)) chart.destroy();
  };
}

function pct(value) {
  return typeof value === "number" ? `${(value * 100).toFixed(1)}%` : "–";
}

export function systemName(key) {
  const label = t(`system.${key}`);
  return label === `system.${key}` ? key : label;
}
