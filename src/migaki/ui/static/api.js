// The JSON routes, and the banner every error goes to (never swallowed).
import { h, append, clear } from "./dom.js";
import { t } from "./i18n.js";

export class ApiError extends Error {
  constructor(message, status, param = null, type = null) {
    super(message);
    this.status = status;
    this.param = param;
    this.type = type;
  }
}

/** The message of an error body ({"error": {"message"}}), or of anything else. */
export function errorOf(body, status) {
  const error = body && typeof body === "object" ? body.error : null;
  if (error && typeof error === "object") {
    return new ApiError(error.message || t("error.unknown"), status, error.param ?? null, error.type ?? null);
  }
  if (body && typeof body === "object" && body.detail) {
    const detail = typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail);
    return new ApiError(detail, status);
  }
  return new ApiError(t("error.http", { status }), status);
}

export async function api(method, path, body) {
  const options = { method, headers: { Accept: "application/json" }, credentials: "same-origin" };
  if (body !== undefined) {
    options.headers["Content-Type"] = "application/json";
    options.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(path, options);
  } catch (exc) {
    throw new ApiError(t("error.network", { path, message: exc.message }), 0);
  }
  const text = await response.text();
  let data = null;
  if (text) {
    try {
      data = JSON.parse(text);
    } catch {
      if (!response.ok) throw new ApiError(`${response.status}: ${text.slice(0, 300)}`, response.status);
      throw new ApiError(t("error.not_json", { path }), response.status);
    }
  }
  if (!response.ok) throw errorOf(data, response.status);
  return data;
}

export const get = (path) => api("GET", path);
export const post = (path, body = {}) => api("POST", path, body);

// ---- the banner --------------------------------------------------------------------------

const shown = [];

export function showError(error) {
  const message = error instanceof Error ? error.message : String(error);
  console.error(error);
  const last = shown[shown.length - 1];
  if (last && last.message === message) last.times += 1;
  else shown.push({ message, times: 1 });
  while (shown.length > 5) shown.shift();
  drawBanner();
}

export function clearErrors() {
  shown.length = 0;
  drawBanner();
}

function drawBanner() {
  const banner = document.getElementById("banner");
  if (!banner) return;
  clear(banner);
  banner.hidden = shown.length === 0;
  if (!shown.length) return;
  const list = h("ul", null, shown.map((e) =>
    h("li", { class: "error-message" }, e.message, e.times > 1 ? h("span", { class: "times" }, ` ×${e.times}`) : null)));
  append(banner, 
    h("div", { class: "banner-body" }, h("strong", null, t("error.title")), list),
    h("button", { type: "button", class: "banner-close", "aria-label": t("close"), onclick: clearErrors }, "×"),
  );
}

export function redrawBanner() {
  drawBanner();
}
