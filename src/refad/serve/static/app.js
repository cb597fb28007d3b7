// refad inspection page: upload images, show the server's scores and maps, and re-decide them
// client-side when a category's threshold slider moves (no re-scoring: the raw scores stay).
"use strict";

const CHUNK = 8;          // images per request
const PARALLEL = 2;       // requests in flight
const NO_CATEGORY = "";   // select value for "no category"
const ALL_KEY = "(all)";  // threshold key of results scored without a category

const $ = (sel) => document.querySelector(sel);
const state = {
  card: null,             // /v1/model
  results: [],            // {file, url, data | null, error | null, el}
  generation: 0,          // bumped by "Clear": answers to earlier uploads are dropped
  thresholds: new Map(),  // key -> {value, calibrated, source}
};

function apiKey() { return sessionStorage.getItem("refad-api-key") || ""; }

async function api(path, options = {}) {
  const headers = new Headers(options.headers || {});
  if (apiKey()) headers.set("X-API-Key", apiKey());
  const response = await fetch(path, { ...options, headers });
  let body = null;
  try { body = await response.json(); } catch (_) { body = null; }
  if (response.status === 401) $("#key-field").hidden = false;
  if (!response.ok) {
    const message = body && body.error ? body.error : `HTTP ${response.status}`;
    const retryAfter = Number(response.headers.get("Retry-After")) || 0;
    throw Object.assign(new Error(message), { status: response.status, retryAfter });
  }
  return body;
}

function setStatus(text, isError = false) {
  const el = $("#status");
  el.textContent = text;
  el.classList.toggle("error", isError);
}

function fmt(x) {
  if (x === null || x === undefined || !Number.isFinite(x)) return "n/a";
  const a = Math.abs(x);
  return a !== 0 && (a < 0.01 || a >= 1e4) ? x.toExponential(3) : x.toPrecision(4);
}

// ---- model card -------------------------------------------------------------------------

async function loadModel(attempt = 0) {
  try {
    state.card = await api("/v1/model");
  } catch (err) {
    if (err.status === 503 && attempt < 120) {
      $("#model-summary").textContent = `Waiting for the model: ${err.message}`;
      setTimeout(() => loadModel(attempt + 1), 1000);
    } else {
      $("#model-summary").textContent = `Model card unavailable: ${err.message}`;
    }
    return;
  }
  const c = state.card;
  if (c.api_key_required) $("#key-field").hidden = false;
  // an integer is a square; [height, width] otherwise
  const size = Array.isArray(c.input_size) ? c.input_size.join(" x ") : `${c.input_size}`;
  $("#model-summary").textContent =
    `${c.method.toUpperCase()} on ${c.backbone}, ${size} px, ${c.mode}, ${c.device}`;
  const fields = {
    Method: c.method, Backbone: c.backbone, "Input size": `${size} px`,
    Mode: c.mode, Backend: c.backend, Device: c.device, Run: c.run || "n/a",
    Categories: c.categories.length ? c.categories.join(", ") : "any",
    "Global threshold": fmt(c.thresholds.global),
    "Category thresholds": Object.entries(c.thresholds.categories)
      .map(([k, v]) => `${k}: ${fmt(v)}`).join(", ") || "none",
    "refad version": c.refad_version,
    "Max batch": c.limits.max_batch, "Max images / request": c.limits.max_images,
  };
  const dl = $("#model-fields");
  dl.replaceChildren();
  for (const [k, v] of Object.entries(fields)) {
    const dt = document.createElement("dt"); dt.textContent = k;
    const dd = document.createElement("dd"); dd.textContent = String(v);
    dl.append(dt, dd);
  }
  const select = $("#category");
  select.replaceChildren();
  if (!c.category_required) select.append(new Option("(no category)", NO_CATEGORY));
  for (const name of c.categories) select.append(new Option(name, name));
}

// ---- uploads ----------------------------------------------------------------------------

function addFiles(fileList) {
  const files = [...fileList];
  if (!files.length) return;
  if (!state.card) {
    // the card is missing when the model is still loading, or when the server wants a key
    const why = $("#key-field").hidden ? "The model is not ready yet; try again in a moment."
      : "The server needs an API key: enter it above, then add the images again.";
    setStatus(why, true);
    return;
  }
  const category = $("#category").value;
  const generation = state.generation;
  const items = files.map((file) => {
    const item = { file, url: URL.createObjectURL(file), data: null, error: null, el: null };
    item.el = pendingCard(item);
    $("#gallery").append(item.el);
    state.results.push(item);
    return item;
  });
  for (const item of items.filter((i) => i.file.size === 0)) {
    item.error = `${item.file.name}: empty file`;  // the server's words for it
    showResult(item);
  }
  const scored = items.filter((i) => i.file.size > 0);
  const chunks = [];
  for (let i = 0; i < scored.length; i += CHUNK) chunks.push(scored.slice(i, i + CHUNK));
  let next = 0, done = 0;
  setStatus(`Scoring ${items.length} image(s)…`);
  const worker = async () => {
    while (next < chunks.length) {
      const chunk = chunks[next++];
      await scoreChunk(chunk, category, generation);
      done += chunk.length;
      if (generation === state.generation) setStatus(`Scored ${done} of ${items.length} image(s).`);
    }
  };
  Promise.all(Array.from({ length: PARALLEL }, worker)).then(() => {
    if (generation !== state.generation) return;
    const failed = items.filter((i) => i.error).length;
    setStatus(`Scored ${items.length - failed} image(s)` + (failed ? `, ${failed} failed.` : "."),
              failed > 0);
  });
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// One request; a 503 (pixel budget in use by the page's other request, the model loading)
// is tried again after its Retry-After, a few times, instead of failing those images.
async function predict(files, category) {
  for (let attempt = 0; ; attempt++) {
    const form = new FormData();
    for (const file of files) form.append("image", file, file.name);
    if (category !== NO_CATEGORY) form.append("category", category);
    form.append("outputs", "heatmap,mask");
    try {
      return await api("/v1/predict", { method: "POST", body: form });
    } catch (err) {
      if (err.status !== 503 || attempt >= 20) throw err;
      await sleep(1000 * Math.min(err.retryAfter || 1, 10));
    }
  }
}

async function scoreChunk(chunk, category, generation) {
  try {
    const body = await predict(chunk.map((i) => i.file), category);
    body.results.forEach((r, i) => { chunk[i].data = r; });
  } catch (err) {
    // the server refuses a whole request for one bad file: the others are sent again one
    // by one, so each image gets its own result or its own error
    const single = chunk.length === 1 || ![400, 413, 415].includes(err.status);
    for (const item of chunk) {
      if (single) { item.error = err.message; continue; }
      try {
        item.data = (await predict([item.file], category)).results[0];
      } catch (one) {
        item.error = one.message;
      }
    }
  }
  if (generation !== state.generation) return;  // cleared while this request was out
  for (const item of chunk) showResult(item);
  renderThresholds();
  redecide();
}

function showResult(item) {
  if (item.data) registerThreshold(item.data);
  const el = item.error ? errorCard(item) : resultCard(item);
  item.el.replaceWith(el);
  item.el = el;
}

// ---- thresholds -------------------------------------------------------------------------

function keyOf(data) { return data.category ?? ALL_KEY; }

function registerThreshold(data) {
  const key = keyOf(data);
  if (!state.thresholds.has(key)) {
    state.thresholds.set(key, { value: data.threshold, calibrated: data.threshold,
                                source: data.threshold_source });
  }
}

function sliderRange(key) {
  const t = state.thresholds.get(key);
  const scores = state.results.filter((r) => r.data && keyOf(r.data) === key)
    .map((r) => r.data.score).filter(Number.isFinite);
  const top = Math.max(...scores, (t.calibrated ?? 0) * 2, t.value ?? 0, 1e-6);
  return top * 1.1;
}

function renderThresholds() {
  const box = $("#thresholds");
  for (const [key, t] of state.thresholds) {
    let row = box.querySelector(`[data-key="${CSS.escape(key)}"]`);
    if (!row) {
      row = document.createElement("div");
      row.className = "threshold";
      row.dataset.key = key;
      const id = `thr-${box.children.length}`;
      row.innerHTML = `<label for="${id}"></label><span class="value"></span>
        <input id="${id}" type="range" step="any" data-testid="threshold">
        <button type="button" class="reset">Reset to calibrated</button>`;
      row.querySelector("label").textContent =
        key === ALL_KEY ? "Threshold (no category)" : `Threshold: ${key}`;
      const input = row.querySelector("input");
      input.setAttribute("aria-describedby", `${id}-v`);
      row.querySelector(".value").id = `${id}-v`;
      input.addEventListener("input", () => {
        t.value = Number(input.value);
        t.source = "page";
        showThreshold(row, t);
        redecide();
      });
      row.querySelector(".reset").addEventListener("click", () => {
        t.value = t.calibrated;
        t.source = "calibrated";
        if (t.value !== null) input.value = String(t.value);
        showThreshold(row, t);
        redecide();
      });
      box.append(row);
      if (t.value !== null) input.value = String(t.value);
    }
    const input = row.querySelector("input");
    const max = sliderRange(key);
    input.max = String(max);
    input.step = String(max / 1000);
    input.min = String(max / 1000);  // a threshold of 0 flags every image; the server refuses it
    if (t.value !== null) input.value = String(t.value);
    row.querySelector(".reset").disabled = t.calibrated === null;
    showThreshold(row, t);
  }
}

function showThreshold(row, t) {
  const text = t.value === null ? "none (undecided)" : fmt(t.value);
  row.querySelector(".value").textContent = text;
  row.querySelector("input").setAttribute("aria-valuetext", text);
}

// ---- cards ------------------------------------------------------------------------------

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}

function pendingCard(item) {
  const li = el("li", "card pending");
  li.append(el("div", "view", "scoring…"), el("div", "meta", item.file.name));
  return li;
}

function errorCard(item) {
  const li = el("li", "card error");
  li.setAttribute("data-testid", "result");
  const meta = el("div", "meta");
  meta.append(el("div", "name", item.file.name), el("div", "", item.error));
  li.append(meta);
  return li;
}

function resultCard(item) {
  const d = item.data;
  const li = el("li", "card");
  li.setAttribute("data-testid", "result");
  const view = el("div", "view");
  view.style.aspectRatio = `${d.width} / ${d.height}`;
  const img = el("img");
  img.src = item.url;
  img.alt = `Uploaded image ${d.filename}`;
  img.addEventListener("error", () => { img.alt = `${d.filename} (the browser cannot show it)`; });
  const heat = el("img", "layer heat");
  heat.alt = "";
  heat.src = `data:image/png;base64,${d.outputs.heatmap}`;
  const outline = el("canvas", "layer outline");
  outline.setAttribute("aria-hidden", "true");
  drawOutline(outline, d.outputs.mask);
  view.append(img, heat, outline);
  const meta = el("div", "meta");
  const head = el("div", "row");
  head.append(el("span", "name", d.filename), el("span", "badge", "…"));
  const bar = el("div", "bar");
  bar.setAttribute("role", "img");
  bar.append(el("div", "fill"), el("div", "mark"));
  meta.append(head, bar, el("div", "numbers"));
  li.append(view, meta);
  applyOpacity(li);
  return li;
}

// Trace the border of the mask (set pixels with an unset 4-neighbour) onto a canvas.
function drawOutline(canvas, maskB64) {
  if (!maskB64) return;
  const src = new Image();
  src.onload = () => {
    const scale = Math.min(1, 640 / Math.max(src.width, src.height));
    const w = Math.max(1, Math.round(src.width * scale));
    const h = Math.max(1, Math.round(src.height * scale));
    canvas.width = w; canvas.height = h;
    const ctx = canvas.getContext("2d");
    ctx.drawImage(src, 0, 0, w, h);
    const pix = ctx.getImageData(0, 0, w, h);
    const on = (x, y) => x >= 0 && y >= 0 && x < w && y < h && pix.data[(y * w + x) * 4] > 127;
    const out = ctx.createImageData(w, h);
    for (let y = 0; y < h; y++) {
      for (let x = 0; x < w; x++) {
        if (on(x, y) && !(on(x - 1, y) && on(x + 1, y) && on(x, y - 1) && on(x, y + 1))) {
          const i = (y * w + x) * 4;
          out.data[i] = 255; out.data[i + 1] = 255; out.data[i + 2] = 255; out.data[i + 3] = 255;
        }
      }
    }
    ctx.putImageData(out, 0, 0);
  };
  src.src = `data:image/png;base64,${maskB64}`;
}

function applyOpacity(root = document) {
  const opacity = Number($("#opacity").value) / 100;
  const outline = $("#outline").checked;
  root.querySelectorAll(".heat").forEach((e) => { e.style.opacity = String(opacity); });
  root.querySelectorAll(".outline").forEach((e) => { e.hidden = !outline; });
}

// The client-side decision: the same rule as the server (anomalous when score > threshold).
function redecide() {
  let anomalous = 0, decided = 0;
  for (const item of state.results) {
    if (!item.data) continue;
    const d = item.data;
    const t = state.thresholds.get(keyOf(d));
    const threshold = t ? t.value : d.threshold;
    const finite = Number.isFinite(d.score);
    const verdict = threshold === null || !finite ? null : d.score > threshold;
    const card = item.el;
    card.classList.toggle("anomalous", verdict === true);
    const badge = card.querySelector(".badge");
    badge.className = "badge" + (verdict === null ? "" : verdict ? " anomalous" : " normal");
    badge.textContent = verdict === null ? "Undecided" : verdict ? "Anomalous" : "Normal";
    card.dataset.verdict = verdict === null ? "none" : verdict ? "anomalous" : "normal";
    const max = t ? sliderRange(keyOf(d)) : Math.max(d.score, threshold ?? 0) * 1.1 || 1;
    card.querySelector(".fill").style.width = `${Math.min(100, (d.score / max) * 100)}%`;
    const mark = card.querySelector(".mark");
    mark.hidden = threshold === null;
    if (threshold !== null) mark.style.left = `${Math.min(100, (threshold / max) * 100)}%`;
    const ratio = threshold ? d.score / threshold : null;
    const source = t && t.source === "page" ? "set on this page" : (d.threshold_source ?? "none");
    card.querySelector(".numbers").textContent =
      `score ${fmt(d.score)} · threshold ${fmt(threshold)} (${source})` +
      (ratio === null ? "" : ` · ${fmt(ratio)}×`);
    card.querySelector(".bar").setAttribute("aria-label",
      `score ${fmt(d.score)} against threshold ${fmt(threshold)}`);
    if (verdict !== null) decided++;
    if (verdict) anomalous++;
  }
  const n = state.results.filter((r) => r.data).length;
  $("#summary").textContent = n ? `${n} result(s): ${anomalous} anomalous, ` +
    `${decided - anomalous} normal, ${n - decided} undecided.` : "";
}

// ---- wiring -----------------------------------------------------------------------------

function init() {
  const drop = $("#drop");
  const input = $("#files");
  input.addEventListener("change", () => { addFiles(input.files); input.value = ""; });
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    addFiles(e.dataTransfer.files);
  });
  $("#opacity").addEventListener("input", () => {
    $("#opacity-value").textContent = `${$("#opacity").value}%`;
    applyOpacity();
  });
  $("#outline").addEventListener("change", () => applyOpacity());
  $("#clear").addEventListener("click", () => {
    state.generation += 1;
    for (const item of state.results) URL.revokeObjectURL(item.url);
    state.results = [];
    state.thresholds.clear();
    $("#gallery").replaceChildren();
    $("#thresholds").replaceChildren();
    redecide();
    setStatus("");
  });
  const key = $("#api-key");
  key.value = apiKey();
  key.addEventListener("change", () => {
    sessionStorage.setItem("refad-api-key", key.value.trim());
    loadModel();
  });
  loadModel();
}

document.addEventListener("DOMContentLoaded", init);
