// Page 5, #/play/NAME: the tuned model and its base side by side, answers streamed from
// /v1/chat/completions, feedback to /v1/feedback.
import { h, append, clear } from "./dom.js";
import { post, errorOf, showError } from "./api.js";
import { t } from "./i18n.js";

const SIDES = ["tuned", "base"];
const MAX_TOKENS = 256;

export function renderPlay(root, { name }) {
  const encoded = encodeURIComponent(name);
  let gone = false;
  let models = null; // {tuned, base} served names
  const aborts = new Set();
  const history = { tuned: [], base: [] }; // messages per side, multi-turn
  let turn = 0;

  const status = h("p", { class: "muted", id: "play-status" }, t("play.loading"));
  const prompt = h("textarea", {
    id: "prompt", rows: 3, placeholder: t("play.placeholder"), "aria-label": t("play.prompt"), disabled: true,
    onkeydown: (e) => {
      if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) {
        e.preventDefault();
        send();
      }
    },
  });
  const sendButton = h("button", { type: "button", id: "send", class: "button primary", disabled: true, onclick: () => send() }, t("play.send"));
  const clearButton = h("button", { type: "button", id: "clear-chat", class: "button", onclick: () => reset() }, t("play.clear"));
  const columns = Object.fromEntries(SIDES.map((side) => [side, h("div", { class: "conversation", dataset: { side } })]));
  const heads = Object.fromEntries(SIDES.map((side) => [side, h("span", { class: "served muted small" })]));

  append(root, 
    h("nav", { class: "crumbs" }, h("a", { href: "#/" }, t("nav.runs")), " / ",
      h("a", { href: `#/run/${encoded}` }, name), " / ", h("span", null, t("play.title"))),
    h("div", { class: "page-head" }, h("h1", null, t("play.title"), " ", h("span", { class: "muted" }, name))),
    status,
    h("div", { class: "sides" }, SIDES.map((side) => h("section", { class: `card side side-${side}`, dataset: { side } },
      h("div", { class: "card-head" }, h("h2", null, t(`play.${side}`)), heads[side]),
      columns[side]))),
    h("div", { class: "card composer" }, prompt,
      h("div", { class: "composer-actions" }, h("span", { class: "muted small" }, t("play.hint")), h("span", { class: "spacer" }), clearButton, sendButton)),
  );

  (async () => {
    try {
      models = await post(`/api/playground/${encoded}`);
    } catch (error) {
      if (!gone) {
        status.textContent = t("play.load_failed");
        showError(error);
      }
      return;
    }
    if (gone) return;
    status.textContent = t("play.ready");
    for (const side of SIDES) heads[side].textContent = models?.[side] ?? "";
    prompt.disabled = false;
    sendButton.disabled = false;
    prompt.focus();
  })();

  function reset() {
    for (const controller of aborts) controller.abort();
    for (const side of SIDES) {
      history[side] = [];
      clear(columns[side]);
    }
    sendButton.disabled = !models;
  }

  async function send() {
    const text = prompt.value.trim();
    if (!text || !models || sendButton.disabled) return;
    prompt.value = "";
    sendButton.disabled = true;
    turn += 1;
    await Promise.all(SIDES.map((side) => answer(side, text, turn)));
    if (!gone) {
      sendButton.disabled = false;
      prompt.focus();
    }
  }

  async function answer(side, text, number) {
    const messages = [...history[side], { role: "user", content: text }];
    const output = h("div", { class: "answer-text" });
    const box = h("div", { class: "answer", dataset: { side, turn: String(number) }, "aria-live": "polite", "aria-busy": "true" }, output);
    const feedback = h("div", { class: "feedback", hidden: true });
    append(columns[side], 
      h("div", { class: "bubble user", dataset: { side, turn: String(number) } }, text),
      h("div", { class: "bubble assistant" }, box, feedback),
    );
    columns[side].scrollTop = columns[side].scrollHeight;

    const controller = new AbortController();
    aborts.add(controller);
    let responseId = null;
    let content = "";
    try {
      const response = await fetch("/v1/chat/completions", {
        method: "POST",
        headers: { "Content-Type": "application/json", Accept: "text/event-stream" },
        credentials: "same-origin",
        body: JSON.stringify({ model: models[side], messages, stream: true, max_tokens: MAX_TOKENS }),
        signal: controller.signal,
      });
      if (!response.ok) {
        let body = null;
        try {
          body = await response.json();
        } catch {
          // not JSON: the status says it
        }
        throw errorOf(body, response.status);
      }
      const reader = response.body.getReader();
      const decoder = new TextDecoder();
      let buffer = "";
      let done = false;
      while (!done) {
        const { value, done: finished } = await reader.read();
        if (finished) break;
        buffer += decoder.decode(value, { stream: true });
        let cut;
        while ((cut = buffer.indexOf("\n")) >= 0) {
          const line = buffer.slice(0, cut).replace(/\r$/, "");
          buffer = buffer.slice(cut + 1);
          if (!line.startsWith("data:")) continue;
          const data = line.slice(5).trim();
          if (data === "[DONE]") {
            done = true;
            break;
          }
          let chunk;
          try {
            chunk = JSON.parse(data);
          } catch {
            continue;
          }
          if (chunk.error) throw errorOf(chunk, 500);
          if (chunk.id) responseId = chunk.id;
          const piece = chunk.choices?.[0]?.delta?.content;
          if (piece) {
            content += piece;
            output.textContent = content;
            columns[side].scrollTop = columns[side].scrollHeight;
          }
        }
      }
      if (!done) reader.cancel().catch(() => {});
      history[side] = [...messages, { role: "assistant", content }];
      if (responseId) box.dataset.responseId = responseId;
      if (!content) append(output, h("span", { class: "muted" }, t("play.empty")));
      drawFeedback(feedback, responseId);
    } catch (error) {
      if (error.name === "AbortError") {
        box.dataset.aborted = "1";
      } else {
        box.dataset.error = "1";
        append(output, h("div", { class: "answer-error" }, error.message));
        if (!gone) showError(error);
      }
    } finally {
      aborts.delete(controller);
      box.dataset.done = "1";
      box.removeAttribute("aria-busy");
    }
  }

  function drawFeedback(feedback, responseId) {
    if (!responseId) return;
    feedback.hidden = false;
    let rating = null;
    const state = h("span", { class: "feedback-state small muted" });
    const correction = h("textarea", { class: "correction", rows: 2, placeholder: t("play.correction"), "aria-label": t("play.correction") });
    const thumbs = ["up", "down"].map((r) => h("button", {
      type: "button", class: `rate rate-${r}`, dataset: { rating: r }, "aria-pressed": "false",
      title: t(`play.${r}`), "aria-label": t(`play.${r}`),
      onclick: () => {
        rating = r;
        for (const b of thumbs) b.setAttribute("aria-pressed", String(b.dataset.rating === r));
        submit({ rating: r });
      },
    }, thumb(r)));
    const sendCorrection = h("button", {
      type: "button", class: "button small send-correction",
      onclick: () => {
        const text = correction.value.trim();
        if (!text) {
          correction.focus();
          return;
        }
        submit({ rating, correction: text });
      },
    }, t("play.send_correction"));

    async function submit(values) {
      const body = { response_id: responseId, rating: values.rating ?? null };
      if (values.correction) body.correction = values.correction;
      state.textContent = t("play.sending");
      try {
        await post("/v1/feedback", body);
        state.textContent = t("play.thanks");
        feedback.dataset.sent = "1";
      } catch (error) {
        state.textContent = "";
        showError(error);
      }
    }

    append(feedback, 
      h("div", { class: "feedback-row" }, thumbs, state),
      h("div", { class: "correction-box" }, correction, sendCorrection),
    );
  }

  return () => {
    gone = true;
    for (const controller of aborts) controller.abort();
  };
}

const SVG = "http://www.w3.org/2000/svg";

/** A thumb drawn here (no icon font or emoji needed): up, or the same turned over. */
function thumb(rating) {
  const svg = document.createElementNS(SVG, "svg");
  svg.setAttribute("viewBox", "0 0 24 24");
  svg.setAttribute("width", "16");
  svg.setAttribute("height", "16");
  svg.setAttribute("aria-hidden", "true");
  const g = document.createElementNS(SVG, "g");
  g.setAttribute("fill", "none");
  g.setAttribute("stroke", "currentColor");
  g.setAttribute("stroke-width", "1.8");
  g.setAttribute("stroke-linejoin", "round");
  if (rating === "down") g.setAttribute("transform", "rotate(180 12 12)");
  const cuff = document.createElementNS(SVG, "rect");
  for (const [k, v] of Object.entries({ x: "2.5", y: "10", width: "4", height: "11", rx: "1" })) cuff.setAttribute(k, v);
  const hand = document.createElementNS(SVG, "path");
  hand.setAttribute("d", "M7 10 L10.5 3.2 C12.2 3 13.6 4.2 13.2 6 L12.4 10 H19 C20.4 10 21.4 11.3 21 12.6 L19.4 19.4 C19.1 20.4 18.3 21 17.3 21 H7 Z");
  g.append(cuff, hand);
  svg.append(g);
  return svg;
}
