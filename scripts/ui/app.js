// Try-it page: sends the chosen image to the inference API and shows the top-k it answers,
// best first: TorchServe's POST {api}/predictions/<model> (the image's bytes), or KServe v1's
// POST {api}/v1/models/<model>:predict (the image as one base64 instance), which the
// KServe-native runtime serves. A token typed into the page goes as Authorization: Bearer.
// config.json (written by scripts/ui/server.py) names the API, its protocol and the models.
"use strict";

const $ = (id) => document.getElementById(id);
const els = {
  api: $("api"), server: $("server"), model: $("model"), token: $("token"), file: $("file"), drop: $("drop"),
  previewFigure: $("preview-figure"), preview: $("preview"), caption: $("preview-caption"),
  status: $("status"), error: $("error"), topk: $("topk"), latency: $("latency"),
};

let api = "";
let protocol = "torchserve";
const SERVERS = { torchserve: "TorchServe", v1: "the KServe-native runtime (KServe v1)" };
const TOKEN_KEY = "image-classifier-token";  // sessionStorage: this tab only, gone when it closes
let currentFile = null;
let previewUrl = null;
let inFlight = null;    // AbortController of the request being answered
let requestSeq = 0;     // only the latest request may write results

function setStatus(text) { els.status.textContent = text; }

function showError(text) {
  els.error.textContent = text;
  els.error.hidden = !text;
}

function clearResults() {
  els.topk.replaceChildren();
  els.latency.textContent = "";
}

function formatBytes(n) {
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KiB`;
  return `${(n / 1024 / 1024).toFixed(1)} MiB`;
}

function formatPercent(p) {
  const pct = p * 100;
  if (pct > 0 && pct < 0.005) return "< 0.01 %";
  return pct >= 99.95 || pct < 0.05 ? `${pct.toFixed(2)} %` : `${pct.toFixed(1)} %`;
}

function formatMs(ms) { return ms < 10 ? ms.toFixed(1) : Math.round(ms).toString(); }

async function loadConfig() {
  try {
    const res = await fetch("config.json", { cache: "no-store" });
    const config = await res.json();
    if (!res.ok) throw new Error(config.error || `HTTP ${res.status}`);
    api = String(config.api).replace(/\/+$/, "");
    protocol = config.protocol === "v1" ? "v1" : "torchserve";
    els.api.textContent = api;
    els.server.textContent = SERVERS[protocol];
    const models = Array.isArray(config.models) ? config.models : [];
    els.model.replaceChildren(...models.map((name) => new Option(name, name)));
    if (!models.length) throw new Error("the server's config lists no models");
    els.model.disabled = false;
    setStatus("Choose or drop an image to classify it.");
  } catch (e) {
    setStatus("");
    showError(`Cannot load the page's configuration: ${e.message}`);
  }
}

function showPreview(file) {
  if (previewUrl) URL.revokeObjectURL(previewUrl);
  previewUrl = URL.createObjectURL(file);
  const size = formatBytes(file.size);
  els.preview.hidden = false;
  els.preview.classList.remove("pixelated");
  els.preview.alt = `Preview of ${file.name}`;
  els.preview.onload = () => {
    const { naturalWidth: w, naturalHeight: h } = els.preview;
    // Tiny images (Fashion-MNIST is 28×28) are scaled up without blurring.
    els.preview.classList.toggle("pixelated", Math.max(w, h) < 128);
    els.caption.textContent = `${file.name} · ${w}×${h} px · ${size}`;
  };
  els.preview.onerror = () => {
    els.preview.hidden = true;
    els.caption.textContent = `${file.name} · ${size} · the browser cannot display this file`;
  };
  els.caption.textContent = `${file.name} · ${size}`;
  els.preview.src = previewUrl;
  els.previewFigure.hidden = false;
}

function renderTopk(topk) {
  const items = Object.entries(topk).map(([label, p], i) => {
    const li = document.createElement("li");
    li.className = i === 0 ? "best" : "";
    const row = document.createElement("div");
    row.className = "row";
    const name = document.createElement("span");
    name.className = "label";
    name.textContent = label;
    const value = document.createElement("span");
    value.className = "value";
    value.textContent = formatPercent(Number(p));
    row.append(name, value);
    const bar = document.createElement("div");
    bar.className = "bar";
    bar.setAttribute("aria-hidden", "true");
    const fill = document.createElement("span");
    fill.className = "fill";
    fill.dataset.probability = String(p);
    fill.style.width = `${Math.max(0, Math.min(1, Number(p))) * 100}%`;
    bar.append(fill);
    li.append(row, bar);
    return li;
  });
  els.topk.replaceChildren(...items);
}

function errorMessage(status, statusText, text) {
  let payload = null;
  try { payload = JSON.parse(text); } catch (_) { /* not JSON */ }
  const detail = (payload && (payload.error || payload.message)) || text.trim() || statusText;
  return `The server refused the image (HTTP ${status}): ${detail}`;
}

async function base64Of(file) {
  const bytes = new Uint8Array(await file.arrayBuffer());
  let text = "";
  for (let i = 0; i < bytes.length; i += 0x8000) text += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  return btoa(text);
}

// The request for the chosen protocol, and how to read the top-k out of its answer.
async function inferenceRequest(model, file) {
  const token = els.token.value.trim();
  const auth = token ? { Authorization: `Bearer ${token}` } : {};
  if (protocol === "v1") {
    return {
      url: `${api}/v1/models/${encodeURIComponent(model)}:predict`,
      init: { method: "POST", headers: { "Content-Type": "application/json", ...auth },
              body: JSON.stringify({ instances: [{ b64: await base64Of(file) }] }) },
      topk: (answer) => answer.predictions[0],
    };
  }
  return {
    url: `${api}/predictions/${encodeURIComponent(model)}`,
    init: { method: "POST", body: file, headers: { "Content-Type": "application/octet-stream", ...auth } },
    topk: (answer) => answer,
  };
}

async function predict() {
  if (!currentFile || !api) return;
  if (inFlight) inFlight.abort();
  const controller = new AbortController();
  inFlight = controller;
  const seq = ++requestSeq;
  const model = els.model.value;
  showError("");
  clearResults();
  setStatus(`Asking ${model}…`);
  let request;
  try {
    request = await inferenceRequest(model, currentFile);  // v1: the file read as base64 first
  } catch (e) {
    if (seq === requestSeq) showError(`Could not read ${currentFile.name}: ${e.message}`);
    return;
  }
  if (seq !== requestSeq) return;
  const url = request.url;
  const started = performance.now();
  try {
    const res = await fetch(url, { ...request.init, signal: controller.signal });
    const text = await res.text();
    const elapsed = performance.now() - started;
    if (seq !== requestSeq) return;
    els.latency.textContent = `Latency: ${formatMs(elapsed)} ms (request sent → full response, measured in this browser)`;
    if (!res.ok) {
      setStatus(res.status === 401 ? "The server asks for a bearer token: type it in the field above."
                                   : `${model} did not classify ${currentFile.name}.`);
      showError(errorMessage(res.status, res.statusText, text));
      return;
    }
    const topk = request.topk(JSON.parse(text));
    renderTopk(topk);
    const best = Object.keys(topk)[0];
    setStatus(best === undefined ? "The model answered with no labels." : `${model}: most likely “${best}”.`);
  } catch (e) {
    if (e.name === "AbortError" || seq !== requestSeq) return;
    setStatus("No answer from the inference API.");
    showError(`Could not reach ${url} (${e.message}). Is ${SERVERS[protocol]} running (make serve, ` +
              `make kserve), and does it allow this page's origin ${location.origin} (SERVE_CORS_ORIGIN)?`);
  } finally {
    if (inFlight === controller) inFlight = null;
  }
}

function useFile(file) {
  if (!file) return;
  currentFile = file;
  showPreview(file);
  predict();
}

els.file.addEventListener("change", () => {
  useFile(els.file.files[0]);
  els.file.value = "";  // choosing the same file again still triggers a prediction
});
els.model.addEventListener("change", predict);
els.token.value = sessionStorage.getItem(TOKEN_KEY) || "";
els.token.addEventListener("change", () => {
  sessionStorage.setItem(TOKEN_KEY, els.token.value.trim());
  predict();  // the image chosen before the token was typed: ask again
});

// Drag and drop: the zone lights up; a drop anywhere else must not navigate away from the page.
for (const type of ["dragenter", "dragover"]) {
  els.drop.addEventListener(type, (e) => {
    e.preventDefault();
    if (e.dataTransfer) e.dataTransfer.dropEffect = "copy";
    els.drop.classList.add("over");
  });
}
els.drop.addEventListener("dragleave", (e) => {
  if (!els.drop.contains(e.relatedTarget)) els.drop.classList.remove("over");
});
els.drop.addEventListener("drop", (e) => {
  e.preventDefault();
  els.drop.classList.remove("over");
  const file = e.dataTransfer && e.dataTransfer.files[0];
  if (file) useFile(file); else setStatus("Drop a file (an image) to classify it.");
});
window.addEventListener("dragover", (e) => e.preventDefault());
window.addEventListener("drop", (e) => e.preventDefault());

loadConfig();
