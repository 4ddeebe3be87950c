// migaki ui: the top bar, the language, and the hash router over the five pages.
import { t, setLang, getLang, LANGS } from "./i18n.js";
import { h, append, clear } from "./dom.js";
import { get, showError, clearErrors, redrawBanner } from "./api.js";
import { renderRuns } from "./runs.js";
import { renderRun } from "./run.js";
import { renderCompare } from "./compare.js";
import { renderNew } from "./newrun.js";
import { renderPlay } from "./play.js";

const LANG_KEY = "migaki.lang";
let info = { version: "", lang: "en", read_only: false, runs_root: "", data_roots: [] };
let cleanup = null;
let routed = false;

function storedLang() {
  try {
    return localStorage.getItem(LANG_KEY);
  } catch {
    return null;
  }
}

function chooseLang(lang) {
  setLang(lang);
  try {
    localStorage.setItem(LANG_KEY, lang);
  } catch {
    // storage off: the choice lasts for this page
  }
  drawTopbar();
  redrawBanner();
  route();
}

function drawTopbar() {
  const bar = document.getElementById("topbar");
  clear(bar);
  const select = h("select", { id: "lang", "aria-label": t("nav.language"), onchange: (e) => chooseLang(e.target.value) },
    LANGS.map(([code, label]) => h("option", { value: code, selected: code === getLang() }, label)));
  append(bar, 
    h("a", { href: "#/", class: "brand" }, h("span", { class: "brand-name" }, "migaki"), h("span", { class: "brand-kanji", lang: "ja" }, "磨き")),
    h("nav", { class: "nav" },
      h("a", { href: "#/", id: "nav-runs", dataset: { page: "runs" } }, t("nav.runs")),
      h("a", { href: "#/new", id: "nav-new", dataset: { page: "new" } }, t("nav.new"))),
    h("span", { class: "spacer" }),
    info.read_only ? h("span", { class: "tag read-only", id: "read-only" }, t("nav.read_only")) : null,
    info.version ? h("span", { class: "muted small version" }, `v${info.version}`) : null,
    select,
  );
  document.documentElement.lang = getLang();
}

/** "#/run/NAME" -> {page: "run", name}; unknown hashes -> the runs page. */
function parse() {
  const raw = location.hash.replace(/^#/, "") || "/";
  const cut = raw.indexOf("?");
  const path = cut >= 0 ? raw.slice(0, cut) : raw;
  const params = new URLSearchParams(cut >= 0 ? raw.slice(cut + 1) : "");
  let parts;
  try {
    parts = path.split("/").filter(Boolean).map(decodeURIComponent);
  } catch {
    parts = [];
  }
  if (parts[0] === "run" && parts[1]) return { page: "run", name: parts[1] };
  if (parts[0] === "play" && parts[1]) return { page: "play", name: parts[1] };
  if (parts[0] === "compare") return { page: "compare", names: params.getAll("run").filter(Boolean) };
  if (parts[0] === "new") return { page: "new" };
  return { page: "runs" };
}

function route() {
  if (cleanup) {
    try {
      cleanup();
    } catch (error) {
      showError(error);
    }
    cleanup = null;
  }
  const app = document.getElementById("app");
  clear(app);
  if (routed) clearErrors(); // the last page's errors went with it
  routed = true;
  const where = parse();
  app.dataset.page = where.page;
  for (const link of document.querySelectorAll(".nav a")) {
    link.classList.toggle("active", link.dataset.page === where.page);
  }
  const titles = {
    runs: t("runs.title"), new: t("new.title"), compare: t("compare.title"), run: where.name, play: `${t("play.title")} · ${where.name}`,
  };
  document.title = `${titles[where.page]} · migaki`;
  const context = { info, ...where };
  try {
    const pages = { runs: renderRuns, run: renderRun, compare: renderCompare, new: renderNew, play: renderPlay };
    cleanup = pages[where.page](app, context) || null;
  } catch (error) {
    showError(error);
  }
  window.scrollTo(0, 0);
}

async function boot() {
  // the token is a cookie once /?token= was opened: keep it out of the address bar
  if (new URLSearchParams(location.search).has("token")) {
    history.replaceState(null, "", `/${location.hash}`);
  }
  setLang(storedLang() || "en");
  try {
    info = { ...info, ...(await get("/api/info")) };
  } catch (error) {
    showError(error);
  }
  setLang(storedLang() || info.lang || "en");
  drawTopbar();
  window.addEventListener("hashchange", route);
  window.addEventListener("unhandledrejection", (e) => showError(e.reason ?? t("error.unknown")));
  route();
}

boot();
