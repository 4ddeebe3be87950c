// Page 4, #/new: a form generated from the recipe's JSON schema (GET /api/schema). Only the
// keys changed from their defaults are sent, plus model.base, task and data.train.
import { h, append, clear, num, duration, megabytes, bytes, kvTable, cell } from "./dom.js";
import { get, post, showError } from "./api.js";
import { t } from "./i18n.js";

const MAIN = ["model", "task", "data", "method", "train"];
const ALWAYS = ["model.base", "task", "data.train"];
const DATA_FILES = ["data.train", "data.val", "data.test"];
const LONG_TEXT = /prompt|rubric|instruction/;

// Kept across language switches and visits: the values typed, which toggles are on.
const saved = { values: new Map(), enabled: new Map(), advanced: false };

// ---- the schema --------------------------------------------------------------------------

function deref(node, defs, seen = new Set()) {
  if (!node || typeof node !== "object" || !node.$ref) return node || {};
  const name = node.$ref.split("/").pop();
  if (seen.has(name)) return { type: "object" };
  seen.add(name);
  const { $ref, ...rest } = node;
  return { ...deref(defs[name] || {}, defs, seen), ...rest };
}

/** What widget a schema node needs: {kind, nullable, options, integer, min, max, ...}. */
export function describe(raw, defs) {
  const node = deref(raw, defs);
  const outer = { default: node.default, description: node.description, title: node.title, hasDefault: "default" in node };
  if (Array.isArray(node.anyOf) || Array.isArray(node.oneOf)) {
    const parts = (node.anyOf || node.oneOf).map((p) => deref(p, defs));
    const real = parts.filter((p) => p.type !== "null");
    const nullable = real.length < parts.length;
    let spec;
    if (real.length === 1) {
      spec = describe({ ...real[0], default: undefined }, defs);
    } else if (real.every((p) => p.enum || "const" in p || p.type === "boolean")) {
      const options = [];
      for (const p of real) {
        const values = p.enum || ("const" in p ? [p.const] : [true, false]);
        for (const v of values) if (!options.some((o) => o === v)) options.push(v);
      }
      spec = { kind: "choice", options };
    } else if (real.some((p) => p.type === "string") && real.some((p) => p.type === "array")) {
      spec = { kind: "list-or-string" };
    } else {
      spec = { kind: "json" };
    }
    return { ...spec, ...outer, nullable: nullable || spec.nullable };
  }
  if (Array.isArray(node.enum)) return { kind: "choice", options: node.enum, ...outer };
  if ("const" in node) return { kind: "choice", options: [node.const], ...outer };
  switch (node.type) {
    case "boolean":
      return { kind: "bool", ...outer };
    case "integer":
    case "number":
      return {
        kind: "number", integer: node.type === "integer", ...outer,
        min: node.minimum ?? node.exclusiveMinimum, max: node.maximum ?? node.exclusiveMaximum,
        exclusiveMin: "exclusiveMinimum" in node, exclusiveMax: "exclusiveMaximum" in node,
      };
    case "string":
      return { kind: "text", ...outer };
    case "array": {
      const items = deref(node.items || {}, defs);
      if (Array.isArray(items.enum)) return { kind: "multi", options: items.enum, ...outer };
      if (["string", "number", "integer"].includes(items.type)) return { kind: "list", itemType: items.type, ...outer };
      return { kind: "json", ...outer };
    }
    case "object":
      if (node.properties) {
        return { kind: "object", properties: node.properties, required: node.required || [], ...outer };
      }
      return { kind: "json", ...outer };
    default:
      if (node.properties) return { kind: "object", properties: node.properties, required: node.required || [], ...outer };
      return { kind: "json", ...outer };
  }
}

function same(a, b) {
  return JSON.stringify(a) === JSON.stringify(b);
}

function setPath(target, key, value) {
  const parts = key.split(".");
  let here = target;
  for (const part of parts.slice(0, -1)) {
    if (!here[part] || typeof here[part] !== "object" || Array.isArray(here[part])) here[part] = {};
    here = here[part];
  }
  here[parts[parts.length - 1]] = value;
}

// ---- the page ----------------------------------------------------------------------------

export function renderNew(root, { info }) {
  let gone = false;
  const leaves = []; // every input field: {key, spec, get, set, wrap, problem}
  const groups = []; // nested objects: {key, spec, nullable, toggle, wrap, problem, details}
  const busy = new Set();

  const body = h("div", { id: "new-body" }, h("p", { class: "muted" }, t("loading")));
  append(root, 
    h("nav", { class: "crumbs" }, h("a", { href: "#/" }, t("nav.runs")), " / ", h("span", null, t("new.title"))),
    h("div", { class: "page-head" }, h("h1", null, t("new.title"))),
    info.read_only ? h("div", { class: "notice warn" }, t("new.read_only")) : null,
    body,
  );

  (async () => {
    let payload;
    try {
      payload = await get("/api/schema");
    } catch (error) {
      if (!gone) {
        body.replaceChildren(h("p", { class: "muted" }, t("new.no_schema")));
        showError(error);
      }
      return;
    }
    if (gone) return;
    build(payload || {});
  })();

  function build(payload) {
    const schema = payload.schema || {};
    const defs = schema.$defs || schema.definitions || {};
    const properties = schema.properties || {};
    const required = schema.required || [];
    const order = [...(payload.sections || []), ...Object.keys(properties)]
      .filter((k, i, all) => properties[k] && all.indexOf(k) === i);
    const context = {
      defs,
      models: payload.models || [],
      localModels: payload.local_models || [],
      dataNote: payload.data_files_note || null,
      dataFiles: (payload.data_files || []).map((f) => ({ value: `${f.root}/${f.path}`, size: f.size })),
      tasks: payload.tasks,
      methods: payload.methods,
    };

    const form = h("form", { id: "new-run", class: "recipe-form", novalidate: true, onsubmit: (e) => { e.preventDefault(); start(); } });
    const general = h("div", { class: "fields" });
    const mainCards = [];
    const advancedCards = [];
    for (const key of order) {
      const spec = describe(properties[key], defs);
      if (spec.kind === "object") {
        const isMain = MAIN.includes(key);
        const card = objectGroup(key, spec, context, required.includes(key), isMain ? "card" : "sub");
        (isMain ? mainCards : advancedCards).push(card);
      } else if (MAIN.includes(key) || key === "name") {
        append(general, leaf(key, spec, context, required.includes(key)));
      } else {
        advancedCards.push(h("div", { class: "fields" }, leaf(key, spec, context, required.includes(key))));
      }
    }
    const advanced = h("details", { id: "advanced", class: "card advanced", open: saved.advanced },
      h("summary", null, h("span", { class: "h2" }, t("new.advanced")), " ", h("span", { class: "muted small" }, t("new.advanced_hint"))),
      advancedCards);
    advanced.addEventListener("toggle", () => { saved.advanced = advanced.open; });

    const outputs = {
      problems: h("div", { id: "form-problems" }),
      check: h("div", { id: "check-output", class: "output" }),
      estimate: h("div", { id: "estimate-output", class: "output" }),
      doctor: h("div", { id: "doctor-output", class: "output" }),
    };
    const button = (id, label, action, primary = false) => h("button", {
      type: id === "start-run" ? "submit" : "button", id, class: primary ? "button primary" : "button",
      onclick: id === "start-run" ? null : action,
    }, label);
    const bar = h("div", { class: "form-actions", id: "form-actions" },
      button("check-recipe", t("new.check"), check),
      button("estimate-recipe", t("new.estimate"), estimate),
      button("doctor-recipe", t("new.doctor"), doctor),
      h("button", {
        type: "button", id: "problem-count", class: "link-button bad", hidden: true,
        onclick: () => document.querySelector(".field.invalid, .group.invalid, #form-problems")?.scrollIntoView({ block: "center" }),
      }),
      h("span", { class: "spacer" }),
      info.read_only ? null : button("start-run", t("new.start"), start, true));

    append(form, 
      h("section", { class: "card", id: "section-general" }, h("h2", null, t("new.general")), general),
      mainCards, advanced, outputs.problems, bar, outputs.check, outputs.estimate, outputs.doctor);
    body.replaceChildren(form);

    // ---- actions ---------------------------------------------------------------------

    async function run(id, output, route, show) {
      if (busy.has(id)) return null;
      const values = collect();
      if (values === null) return null;
      const buttonEl = document.getElementById(id);
      busy.add(id);
      buttonEl.disabled = true;
      buttonEl.classList.add("busy");
      append(clear(output), h("p", { class: "muted" }, t(`new.${id}_busy`)));
      try {
        const answer = await post(route, { recipe: values });
        if (!gone) {
          show(answer);
          if (output.firstChild && !document.querySelector(".field.invalid, .group.invalid")) {
            output.scrollIntoView({ block: "nearest", behavior: "smooth" });
          }
        }
        return answer;
      } catch (error) {
        if (!gone) {
          clear(output);
          if (error.param) markProblems([{ key: error.param, message: error.message }]);
          showError(error);
        }
        return null;
      } finally {
        busy.delete(id);
        buttonEl.disabled = false;
        buttonEl.classList.remove("busy");
      }
    }

    function check() {
      run("check-recipe", outputs.check, "/api/check", (answer) => {
        const problems = Array.isArray(answer?.problems) ? answer.problems : [];
        markProblems(problems);
        append(clear(outputs.check), 
          h("h3", null, t("new.check_title")),
          problems.length
            ? h("p", { class: "bad" }, t("new.problems_n", { n: problems.length }))
            : h("p", { class: "good", id: "check-ok" }, t("new.no_problems")),
          answer?.recipe_yaml ? h("details", { open: true }, h("summary", null, t("new.resolved")),
            h("pre", { class: "code", id: "resolved-yaml" }, answer.recipe_yaml)) : null);
      });
    }

    function estimate() {
      run("estimate-recipe", outputs.estimate, "/api/estimate", (answer) => {
        markProblems([]);
        const a = answer || {};
        const known = [
          [t("estimate.steps"), a.budget_steps ? t("estimate.budget_steps", { steps: num(a.budget_steps), total: num(a.total_steps) }) : num(a.total_steps ?? a.steps)],
          [t("estimate.steps_per_epoch"), a.steps_per_epoch !== undefined ? num(a.steps_per_epoch) : null],
          [t("estimate.seconds_per_step"), typeof a.seconds_per_step === "number" ? `${num(a.seconds_per_step)} s` : null],
          [t("estimate.total"), typeof a.total_seconds === "number" ? duration(a.total_seconds) : null],
          [t("estimate.peak_memory"), typeof a.peak_memory_mb === "number" ? `${megabytes(a.peak_memory_mb)}${a.memory_kind ? ` (${a.memory_kind})` : ""}` : null],
          [t("estimate.speed"), typeof a.tokens_per_s === "number" ? `${num(a.tokens_per_s)} tokens/s` : null],
          [t("estimate.tokens"), a.tokens_per_epoch !== undefined ? num(a.tokens_per_epoch) : null],
          [t("estimate.rows"), a.train_rows !== undefined ? num(a.train_rows) : null],
          [t("estimate.precision"), a.precision ?? null],
          [t("estimate.cost"), a.cost !== null && a.cost !== undefined ? `${num(a.cost)} ${a.currency ?? ""}` : null],
        ].filter(([, v]) => v !== null && v !== undefined);
        const shown = new Set(["total_steps", "budget_steps", "steps", "steps_per_epoch", "seconds_per_step", "total_seconds",
          "peak_memory_mb", "memory_kind", "tokens_per_s", "tokens_per_epoch", "train_rows", "precision", "cost", "currency"]);
        const rest = Object.entries(a).filter(([k, v]) => !shown.has(k) && v !== null && v !== undefined).map(([k, v]) => [k, cell(v)]);
        append(clear(outputs.estimate), h("h3", null, t("estimate.title")), kvTable([...known, ...rest], { id: "estimate-table" }));
      });
    }

    function doctor() {
      run("doctor-recipe", outputs.doctor, "/api/doctor", (answer) => {
        markProblems([]);
        append(clear(outputs.doctor), 
          h("h3", null, t("new.doctor_title"), " ",
            h("span", { class: `badge ${answer?.ok ? "status-completed" : "status-interrupted"}` }, answer?.ok ? t("new.doctor_ok") : t("new.doctor_issues"))),
          h("pre", { class: "code", id: "doctor-text" }, answer?.text ?? ""));
      });
    }

    async function start() {
      if (info.read_only) return;
      const answer = await run("start-run", outputs.check, "/api/runs", () => clear(outputs.check));
      if (answer?.name && !gone) location.hash = `#/run/${encodeURIComponent(answer.name)}`;
    }
  }

  // ---- fields ------------------------------------------------------------------------------

  function objectGroup(key, spec, context, required, style) {
    const inner = h("div", { class: "fields" });
    const problem = h("div", { class: "problem", role: "alert" });
    const nullable = spec.nullable && !required;
    const group = { key, spec, nullable, toggle: null, problem, wrap: null, details: null };
    groups.push(group);
    const children = Object.entries(spec.properties).map(([name, child]) => {
      const childSpec = describe(child, context.defs);
      const childKey = `${key}.${name}`;
      const childRequired = spec.required.includes(name);
      return childSpec.kind === "object"
        ? objectGroup(childKey, childSpec, context, childRequired, "sub")
        : leaf(childKey, childSpec, context, childRequired);
    });
    // plain fields first, nested groups after, each full width
    append(inner, ...children.filter((c) => !c.classList.contains("group")), ...children.filter((c) => c.classList.contains("group")));
    if (nullable) {
      const enabled = saved.enabled.get(key) ?? (spec.default !== null && spec.default !== undefined);
      group.toggle = h("input", {
        type: "checkbox", class: "enable", dataset: { key }, checked: enabled,
        onchange: () => { saved.enabled.set(key, group.toggle.checked); inner.classList.toggle("off", !group.toggle.checked); setDisabled(); },
      });
      inner.classList.toggle("off", !enabled);
      const setDisabled = () => {
        for (const el of inner.querySelectorAll("input, select, textarea")) el.disabled = !group.toggle.checked;
      };
      queueMicrotask(setDisabled);
    }
    const title = key.split(".").pop();
    const help = spec.description ? h("p", { class: "help" }, spec.description) : null;
    if (style === "card") {
      group.wrap = h("section", { class: "card group", id: `section-${key}`, dataset: { key } },
        h("h2", null, h("code", { class: "key" }, title)), help, problem,
        group.toggle ? h("label", { class: "enable-row" }, group.toggle, " ", t("new.use", { key })) : null, inner);
      return group.wrap;
    }
    group.details = h("details", { class: "group sub", dataset: { key }, open: nullable && saved.enabled.get(key) },
      h("summary", null, h("code", { class: "key" }, title), nullable ? h("span", { class: "muted small" }, ` ${t("new.optional_group")}`) : null),
      help, problem, group.toggle ? h("label", { class: "enable-row" }, group.toggle, " ", t("new.use", { key })) : null, inner);
    group.wrap = group.details;
    return group.wrap;
  }

  function leaf(key, spec, context, required) {
    const id = `f-${key.replace(/[^A-Za-z0-9_-]/g, "-")}`;
    const problem = h("div", { class: "problem", role: "alert" });
    const field = { key, spec, required, problem, get: () => undefined, set: () => {}, wrap: null };
    let control;
    const initial = saved.values.has(key) ? saved.values.get(key) : spec.default;

    if (key === "model.base") {
      control = h("input", { type: "text", id, name: key, list: "models-list", autocomplete: "off", placeholder: context.models[0] ?? "", required: true });
      const list = h("datalist", { id: "models-list" }, [...context.models, ...context.localModels].map((m) => h("option", { value: m })));
      control = h("div", { class: "with-list" }, control, list);
      const input = control.querySelector("input");
      field.get = () => (input.value.trim() === "" ? undefined : input.value.trim());
      field.set = (v) => { input.value = v ?? ""; };
      field.input = input;
    } else if (DATA_FILES.includes(key) && context.dataFiles.length && context.dataNote) {
      // more files than listed: any ROOT/path may be typed
      const input = h("input", { type: "text", id, name: key, list: "data-files-list", autocomplete: "off", placeholder: context.dataFiles[0].value });
      control = h("div", { class: "with-list" }, input,
        key === "data.train" ? h("datalist", { id: "data-files-list" }, context.dataFiles.map((f) => h("option", { value: f.value }))) : null,
        key === "data.train" ? h("p", { class: "help note" }, context.dataNote) : null);
      field.get = () => (input.value.trim() === "" ? (key === "data.train" ? undefined : null) : input.value.trim());
      field.set = (v) => { input.value = v ?? ""; };
    } else if (DATA_FILES.includes(key) && context.dataFiles.length) {
      const select = h("select", { id, name: key },
        h("option", { value: "" }, key === "data.train" ? t("new.choose_file") : t("new.no_file")),
        context.dataFiles.map((f) => h("option", { value: f.value }, `${f.value}${f.size !== undefined ? ` (${bytes(f.size)})` : ""}`)));
      control = select;
      field.get = () => (select.value === "" ? (key === "data.train" ? undefined : null) : select.value);
      field.set = (v) => {
        if (v && !context.dataFiles.some((f) => f.value === v)) select.append(h("option", { value: v }, v));
        select.value = v ?? "";
      };
    } else if (spec.kind === "choice" || (spec.kind === "bool" && spec.nullable)) {
      let options = spec.kind === "bool" ? [true, false] : [...spec.options];
      // the server's own lists of tasks and methods, where it gives them, narrow the schema's
      const offered = { task: context.tasks, "method.name": context.methods }[key];
      if (Array.isArray(offered) && offered.length) {
        const narrowed = options.filter((o) => offered.includes(o) || same(o, spec.default) || same(o, initial));
        if (narrowed.length) options = narrowed;
      }
      // option values are the plain text of each choice ("fp32", "true"); "" is unset
      const byText = new Map();
      for (const o of options) if (!byText.has(String(o))) byText.set(String(o), o);
      const select = h("select", { id, name: key },
        spec.nullable ? h("option", { value: "" }, t("new.unset")) : null,
        [...byText.keys()].map((text) => h("option", { value: text }, text)));
      control = select;
      field.get = () => (select.value === "" && spec.nullable ? null : byText.get(select.value));
      field.set = (v) => {
        const text = v === null || v === undefined ? "" : String(v);
        if ([...select.options].some((o) => o.value === text)) select.value = text;
      };
    } else if (spec.kind === "bool") {
      const box = h("input", { type: "checkbox", id, name: key });
      control = box;
      field.get = () => box.checked;
      field.set = (v) => { box.checked = Boolean(v); };
    } else if (spec.kind === "number") {
      const input = h("input", {
        type: "number", id, name: key, step: spec.integer ? "1" : "any", inputmode: spec.integer ? "numeric" : "decimal",
        min: spec.min, max: spec.max, placeholder: spec.nullable ? t("new.unset") : null,
      });
      control = input;
      field.get = () => {
        const text = input.value.trim();
        if (text === "") return spec.nullable ? null : undefined;
        const value = Number(text);
        return Number.isFinite(value) ? value : text;
      };
      field.set = (v) => { input.value = v === null || v === undefined ? "" : String(v); };
    } else if (spec.kind === "multi") {
      const boxes = spec.options.map((o) => h("input", { type: "checkbox", name: key, value: String(o), dataset: { value: JSON.stringify(o) } }));
      control = h("div", { class: "checks", id, role: "group" }, boxes.map((b, i) =>
        h("label", { class: "check" }, b, " ", String(spec.options[i]))));
      field.get = () => boxes.filter((b) => b.checked).map((b) => JSON.parse(b.dataset.value));
      field.set = (v) => { for (const b of boxes) b.checked = Array.isArray(v) && v.some((x) => JSON.stringify(x) === b.dataset.value); };
      if (!spec.hasDefault) Object.assign(spec, { default: [], hasDefault: true });
    } else if (spec.kind === "list" || spec.kind === "list-or-string") {
      const input = h("input", { type: "text", id, name: key, placeholder: t("new.comma_list") });
      control = input;
      field.get = () => {
        const text = input.value.trim();
        if (text === "") return spec.nullable ? null : spec.kind === "list" ? [] : undefined;
        const items = text.split(/[,、\n]/).map((s) => s.trim()).filter(Boolean);
        const typed = spec.itemType === "number" || spec.itemType === "integer" ? items.map((s) => (Number.isFinite(Number(s)) ? Number(s) : s)) : items;
        if (spec.kind === "list-or-string" && items.length === 1 && !text.includes(",")) return items[0];
        return typed;
      };
      field.set = (v) => { input.value = Array.isArray(v) ? v.join(", ") : v === null || v === undefined ? "" : String(v); };
      if (spec.kind === "list" && !spec.hasDefault && !spec.nullable) Object.assign(spec, { default: [], hasDefault: true });
    } else if (spec.kind === "text") {
      const long = LONG_TEXT.test(key.split(".").pop());
      const input = long ? h("textarea", { id, name: key, rows: 3 }) : h("input", { type: "text", id, name: key });
      if (spec.nullable) input.placeholder = t("new.unset");
      control = input;
      field.get = () => {
        const text = input.value;
        if (text.trim() === "") return spec.nullable ? null : spec.hasDefault ? spec.default : undefined;
        return text;
      };
      field.set = (v) => { input.value = v === null || v === undefined ? "" : String(v); };
    } else {
      const area = h("textarea", { id, name: key, rows: 3, class: "json", placeholder: "JSON" });
      control = area;
      field.get = () => {
        const text = area.value.trim();
        if (text === "") return spec.nullable ? null : spec.hasDefault ? spec.default : undefined;
        try {
          return JSON.parse(text);
        } catch {
          throw new FieldError(key, t("new.bad_json"));
        }
      };
      field.set = (v) => { area.value = v === null || v === undefined ? "" : JSON.stringify(v); };
    }
    field.set(initial);

    const name = key.split(".").pop();
    const limits = spec.kind === "number" ? range(spec) : null;
    const isBox = spec.kind === "bool" && control.tagName === "INPUT";
    const wide = (control.tagName === "TEXTAREA") || spec.kind === "json";
    const title = [h("code", { class: "key" }, name), required ? h("span", { class: "req", title: t("new.required") }, " *") : null,
      limits ? h("span", { class: "limits" }, ` ${limits}`) : null];
    field.wrap = h("div", {
      class: `field kind-${spec.kind}${required ? " required" : ""}${isBox ? " inline-field" : ""}${wide ? " wide" : ""}`,
      dataset: { key },
    },
    isBox ? h("label", { for: id, class: "label" }, control, title) : h("label", { for: id, class: "label" }, title),
    isBox ? null : control,
    spec.description ? h("p", { class: "help" }, spec.description) : null,
    problem);
    leaves.push(field);
    return field.wrap;
  }

  function range(spec) {
    const low = spec.min !== undefined ? `${spec.exclusiveMin ? ">" : "≥"} ${spec.min}` : null;
    const high = spec.max !== undefined ? `${spec.exclusiveMax ? "<" : "≤"} ${spec.max}` : null;
    return [low, high].filter(Boolean).join(", ") || null;
  }

  /** The recipe as a nested dict: changed keys, plus model.base, task and data.train. */
  function collect() {
    markProblems([]);
    const out = {};
    const off = groups.filter((g) => g.toggle && !g.toggle.checked).map((g) => `${g.key}.`);
    for (const g of groups) {
      if (!g.toggle || off.some((p) => g.key.startsWith(p))) continue; // inside a group that is off
      const onByDefault = g.spec.default !== null && g.spec.default !== undefined;
      if (g.toggle.checked && !onByDefault) setPath(out, g.key, {});
      else if (!g.toggle.checked && onByDefault) setPath(out, g.key, null);
    }
    const problems = [];
    for (const field of leaves) {
      if (off.some((prefix) => field.key.startsWith(prefix))) continue;
      let value;
      try {
        value = field.get();
      } catch (error) {
        problems.push({ key: field.key, message: error.message });
        continue;
      }
      if (value === undefined) continue;
      const inEnabledGroup = groups.some((g) => g.toggle && g.toggle.checked && field.key.startsWith(`${g.key}.`));
      const changed = !field.spec.hasDefault || !same(value, field.spec.default);
      if (ALWAYS.includes(field.key) || changed || (inEnabledGroup && field.required)) setPath(out, field.key, value);
    }
    if (problems.length) {
      markProblems(problems);
      return null;
    }
    return out;
  }

  function markProblems(problems) {
    for (const field of [...leaves, ...groups]) {
      clear(field.problem);
      field.wrap?.classList.remove("invalid");
    }
    const box = document.getElementById("form-problems");
    if (box) clear(box);
    const counter = document.getElementById("problem-count");
    if (counter) {
      counter.hidden = !problems.length;
      counter.textContent = problems.length ? t("new.problems_n", { n: problems.length }) : "";
    }
    if (!problems.length) return;
    const unplaced = [];
    for (const p of problems) {
      const key = String(p.key ?? "");
      const target = [...leaves, ...groups]
        .filter((f) => key === f.key || key.startsWith(`${f.key}.`))
        .sort((a, b) => b.key.length - a.key.length)[0];
      if (!target) {
        unplaced.push(p);
        continue;
      }
      append(target.problem, h("div", null, key === target.key ? p.message : `${key}: ${p.message}`));
      target.wrap?.classList.add("invalid");
      for (let el = target.wrap; el; el = el.parentElement) if (el.tagName === "DETAILS") el.open = true;
    }
    if (box) {
      append(box, h("div", { class: "callout error" },
        h("strong", null, t("new.problems_n", { n: problems.length })),
        h("ul", null, problems.map((p) => h("li", null, p.key ? h("code", null, p.key) : null, p.key ? ": " : "", p.message)))));
      if (unplaced.length) box.dataset.unplaced = String(unplaced.length);
    }
    document.querySelector(".field.invalid, .group.invalid")?.scrollIntoView({ block: "center", behavior: "smooth" });
  }

  return () => {
    gone = true;
    for (const field of leaves) {
      try {
        const value = field.get();
        if (value !== undefined) saved.values.set(field.key, value);
        else saved.values.delete(field.key);
      } catch {
        // a half-typed JSON value is not kept
      }
    }
  };
}

class FieldError extends Error {
  constructor(key, message) {
    super(message);
    this.key = key;
  }
}
