// The demo page: a client of the public API and nothing more (GET /models,
// POST /predict/{model}). Every selection (choose, drop or paste) becomes one /predict
// request with one multipart file per image, so the timings shown are those of one batch.
//
// The API key lives only in the password field's value: never in storage, a cookie or the URL,
// so a reload forgets it. It is sent as "Authorization: Bearer", exactly as any API client does.

const TOP_K = 5;
const MODELS_RETRY_MS = 2000;

const $ = (id) => document.getElementById(id);
const ui = {
  banner: $("banner"),
  model: $("model"),
  modelInfo: $("model-info"),
  readiness: $("readiness"),
  key: $("api-key"),
  files: $("files"),
  drop: $("drop"),
  again: $("again"),
  status: $("status"),
  error: $("error"),
  errorStatus: $("error-status"),
  errorText: $("error-text"),
  errorHint: $("error-hint"),
  results: $("results"),
};

let models = []; // the entries of GET /models; fields this page does not know are ignored
let defaultModel = "";
let images = []; // [{file, url, card}] of the current selection
let inflight = null; // AbortController of the /predict request whose answer is awaited
let modelsFailed = false; // the error shown is GET /models's, to clear once it answers

/** An error answer of the server: {"error": text, "code": code}, or what came instead. */
class ApiError extends Error {
  constructor(status, body, retryAfter) {
    super(typeof body.error === "string" ? body.error : `unexpected answer (HTTP ${status})`);
    this.status = status;
    this.code = typeof body.code === "string" ? body.code : "";
    this.retryAfter = retryAfter;
  }
}

/** No HTTP answer at all: the server is down, the network failed, or a header was invalid. */
class NoAnswer extends Error {}

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (name === "class") node.className = value;
    else if (name === "text") node.textContent = value;
    else if (name === "data") Object.assign(node.dataset, value);
    else node.setAttribute(name, value);
  }
  node.append(...children);
  return node;
}

const shown = (value) => (value === undefined || value === null || value === "" ? "?" : String(value));
const percent = (p) => `${(p * 100).toFixed(1)}%`;
const millis = (ms) => (typeof ms === "number" ? `${ms < 10 ? ms.toFixed(2) : ms.toFixed(1)} ms` : "?");
const plural = (n, word) => `${n} ${word}${n === 1 ? "" : "s"}`;

function kib(bytes) {
  return bytes < 1024 * 1024 ? `${Math.ceil(bytes / 1024)} KiB` : `${(bytes / 1048576).toFixed(1)} MiB`;
}

/** The body as JSON; a body that is not JSON (a proxy's page, say) becomes {error: its text}. */
async function readJson(response) {
  const text = await response.text();
  try {
    return JSON.parse(text);
  } catch {
    return { error: text.trim().slice(0, 300) || response.statusText || "empty answer" };
  }
}

async function getJson(url, options = {}) {
  let response;
  try {
    response = await fetch(url, { ...options, headers: { accept: "application/json", ...options.headers } });
  } catch (err) {
    if (err.name === "AbortError") throw err;
    throw new NoAnswer(err.message);
  }
  const body = await readJson(response);
  if (!response.ok) throw new ApiError(response.status, body, response.headers.get("retry-after"));
  return body;
}

// ---------------------------------------------------------------- errors and status

function showError(err) {
  if (err instanceof ApiError) {
    ui.errorStatus.textContent = `HTTP ${err.status}${err.code ? ` ${err.code}` : ""}:`;
    ui.errorText.textContent = err.message;
    const hints = {
      401: "Enter the server's API key above.",
      413: "Try a smaller image, or fewer at once.",
    };
    ui.errorHint.textContent = err.retryAfter ? `Retry in ${err.retryAfter} s.` : hints[err.status] ?? "";
  } else if (err instanceof NoAnswer) {
    ui.errorStatus.textContent = "No answer:";
    ui.errorText.textContent = err.message;
    ui.errorHint.textContent = "Is the server still running?";
  } else {
    // An answer this page cannot read: a bug here, or a response shape it does not know.
    ui.errorStatus.textContent = "Could not show the answer:";
    ui.errorText.textContent = String(err);
    ui.errorHint.textContent = "";
  }
  ui.error.hidden = false;
}

function clearError() {
  modelsFailed = false;
  ui.error.hidden = true;
  ui.errorStatus.textContent = ui.errorText.textContent = ui.errorHint.textContent = "";
}

function setStatus(text) {
  ui.status.textContent = text;
}

// ---------------------------------------------------------------- models

function selectedModel() {
  return models.find((m) => m.name === ui.model.value);
}

function optionText(m) {
  const tags = [m.name === defaultModel ? "default" : "", m.ready === false ? "not ready" : ""].filter(Boolean);
  const extra = tags.length ? ` (${tags.join(", ")})` : "";
  return `${m.name}: ${shown(m.architecture)} · ${shown(m.precision)} · ${shown(m.provider)}${extra}`;
}

function showModel() {
  const m = selectedModel();
  if (!m) {
    ui.modelInfo.textContent = "";
    showBanner(null);
    return;
  }
  const batching = m.batching ?? {};
  const parts = [
    `architecture ${shown(m.architecture)}`,
    `precision ${shown(m.precision)}`,
    `provider ${shown(m.provider)}`,
    `weights ${shown(m.weights)}`,
    `version ${shown(m.version)}`,
    `batches up to ${shown(batching.max_batch_size)} (${shown(batching.policy)})`,
  ];
  if (m.ready === false) parts.push(`not ready: ${shown(m.not_ready_reason)}`);
  ui.modelInfo.textContent = parts.join(" · ");
  showBanner(m.random_weights === true ? m.name : null);
}

function showBanner(randomModel) {
  ui.banner.hidden = randomModel === null;
  if (randomModel !== null) {
    ui.banner.replaceChildren(
      el("strong", { text: "Random weights." }),
      ` ${randomModel} was exported with seeded random weights, not trained ones: it answers, ` +
        "but its classes mean nothing.",
    );
  }
}

/** GET /readyz, then /models; while the server is not ready, both again every 2 s. */
async function loadModels() {
  let readiness, body;
  try {
    readiness = await fetch("/readyz", { headers: { accept: "application/json" } }).catch((err) => {
      throw new NoAnswer(err.message);
    });
    body = await getJson("/models");
  } catch (err) {
    showError(err);
    modelsFailed = true;
    setTimeout(loadModels, MODELS_RETRY_MS);
    return;
  }
  if (modelsFailed) clearError();
  models = Array.isArray(body.models) ? body.models : [];
  defaultModel = typeof body.default_model === "string" ? body.default_model : "";
  const options = models.map((m) => el("option", { value: m.name, text: optionText(m) }));
  // Rebuilt only when something changed, so a list the visitor has open stays put.
  const listed = (opts) => [...opts].map((o) => `${o.value}\t${o.text}`).join("\n");
  if (listed(options) !== listed(ui.model.options)) {
    const keep = ui.model.value || defaultModel;
    ui.model.replaceChildren(...options);
    ui.model.value = models.some((m) => m.name === keep) ? keep : (models[0]?.name ?? "");
  }
  showModel();
  ui.readiness.hidden = readiness.ok;
  if (!readiness.ok) {
    const why = await readJson(readiness);
    ui.readiness.textContent = `Server ${shown(why.error)}; checking again every 2 s.`;
    setTimeout(loadModels, MODELS_RETRY_MS);
  }
}

// ---------------------------------------------------------------- images and results

function card(file, url) {
  const preview = el("img", { src: url, alt: `preview of ${file.name}` });
  // Formats the server decodes but this browser does not (TIFF, say) still get classified.
  preview.addEventListener("error", () => preview.replaceWith(el("span", { class: "no-preview", text: "no preview" })));
  return el(
    "li",
    { class: "card", "data-state": "pending" },
    el("figure", {}, preview, el("figcaption", { text: `${file.name || "pasted image"} · ${kib(file.size)}` })),
    el("div", { class: "outcome" }, el("p", { class: "pending", text: "classifying…" })),
  );
}

function setImages(fileList) {
  const files = [...fileList];
  if (!files.length) return;
  for (const image of images) URL.revokeObjectURL(image.url);
  images = files.map((file) => {
    const url = URL.createObjectURL(file);
    return { file, url, card: card(file, url) };
  });
  ui.results.replaceChildren(...images.map((image) => image.card));
  ui.again.disabled = false;
  classify();
}

function predictionList(result) {
  const list = el("ol", { class: "top", "aria-label": "top classes" });
  for (const p of result.predictions) {
    const fill = el("span", { class: "fill" });
    fill.style.width = `${Math.min(1, Math.max(0, p.probability)) * 100}%`; // CSSOM: allowed by the CSP
    list.append(
      el(
        "li",
        { class: "prediction", data: { index: String(p.index), probability: String(p.probability) } },
        el("span", { class: "label", text: p.label }),
        el("span", { class: "probability", text: percent(p.probability) }),
        el("span", { class: "bar", "aria-hidden": "true" }, fill),
      ),
    );
  }
  return list;
}

function timingList(timing) {
  const rows = [
    ["queue", timing.queue_ms, millis],
    ["preprocess", timing.preprocess_ms, millis],
    ["inference (batch)", timing.inference_ms, millis],
    ["batch size", timing.batch_size, String],
  ];
  const list = el("dl", { class: "timing" });
  for (const [name, value, format] of rows) {
    list.append(el("dt", { text: name }), el("dd", { data: { value: String(value) }, text: format(value) }));
  }
  return list;
}

function showResults(body, roundTripMs) {
  if (!Array.isArray(body.results) || body.results.length !== images.length) {
    throw new ApiError(200, { error: `expected ${images.length} results, got ${shown(body.results?.length)}` });
  }
  images.forEach((image, i) => {
    image.card.dataset.state = "done";
    const result = body.results[i];
    image.card.querySelector(".outcome").replaceChildren(predictionList(result), timingList(result.timing ?? {}));
  });
  if (body.random_weights === true) showBanner(body.model);
  setStatus(
    `${body.model} (version ${body.model_version}, weights ${body.weights}): ` +
      `${plural(images.length, "image")} in one request, ${millis(roundTripMs)} round trip from this browser.`,
  );
}

function showFailed() {
  for (const image of images) {
    image.card.dataset.state = "failed";
    image.card.querySelector(".outcome").replaceChildren(el("p", { class: "failed", text: "not classified: see the error above" }));
  }
  setStatus("");
}

async function classify() {
  const name = ui.model.value;
  if (!images.length || !name) return;
  inflight?.abort(); // a newer selection or model wins; the older answer is not shown
  const controller = new AbortController();
  inflight = controller;
  const form = new FormData();
  for (const image of images) form.append("file", image.file, image.file.name || "pasted");
  const key = ui.key.value.trim();
  const headers = key ? { authorization: `Bearer ${key}` } : {};
  clearError();
  for (const image of images) image.card.dataset.state = "pending";
  setStatus(`Classifying ${plural(images.length, "image")} with ${name}…`);
  ui.results.setAttribute("aria-busy", "true");
  const started = performance.now();
  try {
    const body = await getJson(`/predict/${encodeURIComponent(name)}?top_k=${TOP_K}`, {
      method: "POST",
      body: form,
      headers,
      signal: controller.signal,
    });
    if (inflight === controller) showResults(body, performance.now() - started);
  } catch (err) {
    if (controller.signal.aborted) return;
    showError(err);
    modelsFailed = false; // this error is the request's: a later /models success keeps it
    showFailed();
    if (err.status === 401) ui.key.focus();
  } finally {
    if (inflight === controller) {
      inflight = null;
      ui.results.removeAttribute("aria-busy");
    }
  }
}

// ---------------------------------------------------------------- wiring

const carriesFiles = (event) => [...(event.dataTransfer?.types ?? [])].includes("Files");

ui.files.addEventListener("change", () => {
  setImages(ui.files.files);
  ui.files.value = ""; // choosing the same file again still fires "change"
});
ui.model.addEventListener("change", () => {
  showModel();
  classify();
});
ui.again.addEventListener("click", classify);
ui.key.addEventListener("keydown", (event) => {
  if (event.key === "Enter") classify();
});

// Drops count anywhere on the page; without this a missed drop would navigate away to the file.
for (const type of ["dragenter", "dragover"]) {
  window.addEventListener(type, (event) => {
    if (!carriesFiles(event)) return;
    event.preventDefault();
    ui.drop.classList.add("over");
  });
}
window.addEventListener("dragleave", (event) => {
  if (event.relatedTarget === null) ui.drop.classList.remove("over");
});
window.addEventListener("drop", (event) => {
  if (!carriesFiles(event)) return;
  event.preventDefault();
  ui.drop.classList.remove("over");
  setImages(event.dataTransfer.files);
});
// Pasting text (into the key field, say) keeps its normal meaning; only pasted files are taken.
document.addEventListener("paste", (event) => {
  const files = [...(event.clipboardData?.files ?? [])];
  if (!files.length) return;
  event.preventDefault();
  setImages(files);
});

loadModels();
