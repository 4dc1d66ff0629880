/**
 * The page: loads the bundle the app was built with (checked file by file against its manifest), runs it on
 * onnxruntime-web's CPU WebAssembly build, and shows each request's label and probabilities (classification) or
 * streamed text (generation, or the plain model), the time of each step and the memory held.
 *
 * URL options: ?task=NAME preselects a task; ?threads=N asks for N WebAssembly threads (1: single-threaded).
 * window.edgeprompt is the page's API for tests: ready, info(), tokenize(text), classify(...), generate(...), logitsTrace(...).
 */
import * as ort from "./vendor/ort.wasm.min.mjs";
import { BundleReader, fmtBytes, loadAppConfig, memoryCheck } from "./bundle.js";
import { DemoError } from "./errors.js";
import { OnnxModel } from "./model.js";
import { Runtime } from "./runtime.js";
import { readSafetensors } from "./safetensors.js";
import { CLASSIFICATION } from "./tasks.js";
import { loadTokenizer } from "./tokenizer.js";

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const PLAIN = ""; // the task menu's value for the plain model
const TITLES = {
  bundle: "This bundle cannot run here",
  integrity: "A bundle file is damaged",
  memory: "The model is too large for this device",
  request: "Request refused",
  environment: "This page cannot run the model here",
  runtime: "The model failed",
};

const loadSteps = []; // [step, ms, note]
let runtime = null;
let swState = "…";
let runs = 0;

// -- display ------------------------------------------------------------------------------------------------
function showError(e, fatal = false) {
  const box = $("error");
  const kind = e instanceof DemoError ? e.kind : "runtime";
  box.replaceChildren();
  const title = document.createElement("strong");
  title.textContent = TITLES[kind] ?? "Error";
  box.append(title, document.createTextNode(e?.message ?? String(e)));
  box.dataset.kind = kind;
  box.hidden = false;
  if (fatal) {
    document.body.dataset.state = "error";
    $("controls").hidden = true;
    status("Stopped: see the error above.");
  }
  console.error(e);
}

function clearError() {
  $("error").hidden = true;
  $("error").replaceChildren();
}

function status(text) {
  $("status").textContent = text;
}

const fmtMs = (ms) => (ms >= 1000 ? `${(ms / 1000).toFixed(2)} s` : `${ms.toFixed(1)} ms`);

function table(el, rows) {
  el.replaceChildren(
    ...rows.map(([k, v]) => {
      const tr = document.createElement("tr");
      for (const x of [k, v]) {
        const td = document.createElement("td");
        td.textContent = x;
        tr.append(td);
      }
      return tr;
    }),
  );
  el.parentElement.hidden = false;
}

function showTimings(req) {
  const rows = loadSteps.map(([k, ms, note]) => [k, fmtMs(ms) + (note ? ` (${note})` : "")]);
  if (req) {
    const t = req.timings;
    rows.push([`prefix${req.task ? ` (${req.task})` : ""}`, req.task === null ? "none (plain model)" : t.prefix_cached ? "cached (0 ms)" : `${fmtMs(t.prefix_ms)} (computed, now cached)`]);
    rows.push([`prefill (${t.tokens} tokens)`, fmtMs(t.prefill_ms)]);
    if (t.labels_ms !== undefined && t.labels_ms > 0.05) rows.push(["multi-token labels", fmtMs(t.labels_ms)]);
    if (t.per_token_ms) {
      const n = t.per_token_ms.length;
      const mean = n ? t.per_token_ms.reduce((a, b) => a + b, 0) / n : 0;
      rows.push([`per token (${n} decoded)`, n ? `${fmtMs(mean)} mean, ${(1000 / mean).toFixed(1)} tokens/s` : "—"]);
      if (n) rows.push(["token times", t.per_token_ms.map((x) => x.toFixed(1)).join(" ") + " ms"]);
    }
  }
  table($("timings"), rows);
}

function showMemory() {
  const rows = [];
  const pm = performance.memory;
  if (pm) rows.push(["JS heap (performance.memory)", `${fmtBytes(pm.usedJSHeapSize)} of ${fmtBytes(pm.jsHeapSizeLimit)}`]);
  else rows.push(["JS heap", "not reported by this browser"]);
  rows.push(["device memory", navigator.deviceMemory ? `${navigator.deviceMemory} GB (navigator.deviceMemory)` : "not reported"]);
  if (runtime) {
    const m = runtime.memory();
    rows.push(["model files (in the WebAssembly heap)", fmtBytes(m.model_files)]);
    rows.push(["embedding table (ours)", fmtBytes(m.embeddings)]);
    rows.push([`prefix cache (${m.prefix_cache_tasks.length} task${m.prefix_cache_tasks.length === 1 ? "" : "s"}: ${m.prefix_cache_tasks.join(", ") || "none"})`, fmtBytes(m.prefix_cache)]);
    rows.push(["last request's KV cache", `${fmtBytes(m.last_sequence_kv)} (${fmtBytes(m.kv_bytes_per_position)} per position)`]);
  }
  table($("memory"), rows);
}

function threadsNote() {
  const n = ort.env.wasm.numThreads;
  if (n > 1) return `multi-threaded: ${n} threads (cross-origin isolated)`;
  if (!self.crossOriginIsolated) return "single-threaded (not cross-origin isolated: no COOP/COEP, or not a secure context)";
  return "single-threaded (1 thread asked)";
}

// -- service worker -------------------------------------------------------------------------------------------
function onWorkerMessage(ev) {
  const m = ev.data || {};
  if (m.type === "progress" && document.body.dataset.state === "loading") status(`Caching for offline use and checking sha256: ${m.file} (${fmtBytes(m.done)})…`);
  if (m.type === "cached" && m.damaged.length) console.warn("not cached (sha256 mismatch):", m.damaged);
}

/** Registers sw.js; on a first visit waits until it has cached (and checked) the app and the bundle, so the page reads them from there. */
async function setupServiceWorker() {
  if (!("serviceWorker" in navigator)) return self.isSecureContext ? "no (this browser has no service workers)" : "no (not a secure context)";
  navigator.serviceWorker.addEventListener("message", onWorkerMessage);
  let reg;
  try {
    reg = await navigator.serviceWorker.register("sw.js");
  } catch (e) {
    return `no (the service worker failed: ${e.message})`;
  }
  if (navigator.serviceWorker.controller) return "ready";
  const w = reg.installing || reg.waiting;
  if (!w) return "ready after a reload"; // active but not controlling this page (a hard reload)
  return new Promise((resolve) => {
    navigator.serviceWorker.addEventListener("controllerchange", () => resolve("ready"), { once: true });
    w.addEventListener("statechange", () => w.state === "redundant" && resolve("no (the service worker could not cache the app)"));
  });
}

// -- loading --------------------------------------------------------------------------------------------------
function step(name, t0, note = "") {
  loadSteps.push([name, performance.now() - t0, note]);
}

async function load() {
  const t0 = performance.now();
  if (typeof WebAssembly !== "object") throw new DemoError("environment", "this browser has no WebAssembly; use a current Chrome.");
  const asked = params.has("threads") ? Math.max(1, Number(params.get("threads")) | 0) : Math.min(4, navigator.hardwareConcurrency || 1);
  ort.env.wasm.numThreads = self.crossOriginIsolated ? asked : 1;
  ort.env.wasm.wasmPaths = new URL("vendor/", location.href).href; // the app's own folder: never a CDN
  ort.env.logLevel = "error";
  $("threads").textContent = threadsNote();

  // the small files first: a bundle that is not ONNX, or too large for this device, is refused before anything large is fetched
  let t = performance.now();
  const config = await loadAppConfig();
  $("bundle-name").textContent = `${config.bundle.name} · ${config.bundle.quant}`;
  const reader = await BundleReader.open(config); // refuses a bundle that is not ONNX
  const mem = memoryCheck(config, navigator.deviceMemory);
  step("manifest", t, mem.budget ? `needs ~${fmtBytes(mem.need)} of a ~${fmtBytes(mem.budget)} tab budget` : "device memory not reported");

  status("Setting up offline use…");
  t = performance.now();
  swState = await setupServiceWorker(); // a first visit: the worker caches (and checks) the app and the bundle
  $("offline").textContent = `offline: ${swState}`;
  step("service worker", t, swState);

  status("Reading the tokenizer and tasks…");
  t = performance.now();
  const tokenizer = await loadTokenizer(reader);
  const tasks = await reader.tasks();
  step("tokenizer + tasks", t, `${tasks.size} task${tasks.size === 1 ? "" : "s"}`);

  status(`Reading the model (${fmtBytes(config.bundle.model_bytes)}) and checking its sha256…`);
  t = performance.now();
  const m = reader.model;
  const extRels = reader.externalDataFiles();
  const graph = await reader.read(m.file);
  const tableBytes = await reader.read(m.embeddings);
  const ext = [];
  for (const rel of extRels) ext.push({ path: rel.slice(rel.lastIndexOf("/") + 1), data: new Uint8Array(await reader.read(rel)) });
  // a tied Q8_0 LM head reads its weights from the embedding table's file (one copy of token_embd)
  if (m.embeddings_in_graph) ext.push({ path: m.embeddings.slice(m.embeddings.lastIndexOf("/") + 1), data: new Uint8Array(tableBytes) });
  const table = readSafetensors(tableBytes, m.embeddings);
  const emb = table.embeddings;
  if (emb && (emb.data instanceof Int8Array || emb.data instanceof Uint8Array)) {
    // an int8 table (export --embeddings int8): x = int8 * the scale of its block, applied per lookup (the table
    // stays a quarter of fp32 in memory), as OnnxEngine.embed reads it; scales [V, G] (a block of d/G per scale)
    // or [V] (one per row, bundles of 0.1)
    const [V, d] = emb.shape;
    const scale = table.embeddings_scale?.data;
    const G = scale ? scale.length / V : 0;
    if (!scale || !Number.isInteger(G) || G < 1 || d % G !== 0) {
      throw new DemoError("bundle", `${m.embeddings}: an int8 table [${V}, ${d}] needs embeddings_scale [${V}, G] with G dividing ${d}; re-export the bundle.`);
    }
    emb.scale = scale;
    emb.groups = G;
    emb.zeroPoint = emb.data instanceof Uint8Array ? 128 : 0; // U8: q + 128, the bytes of a shared Q8_0 LM head
  }
  if (!emb || emb.shape.length !== 2 || emb.shape[0] < reader.baseModel.vocab_size || emb.shape[1] !== reader.baseModel.hidden_size) {
    throw new DemoError("bundle", `${m.embeddings} does not hold an embedding table [${reader.baseModel.vocab_size}, ${reader.baseModel.hidden_size}]; re-export the bundle.`);
  }
  step("read + check model files", t, `${fmtBytes(reader.bytesRead)}, sha256 ${reader.hashMs > 0 ? fmtMs(reader.hashMs) : "checked by the service worker"}`);

  status("Starting onnxruntime-web…");
  t = performance.now();
  const model = await OnnxModel.create(ort, graph, ext, emb, reader.baseModel);
  step("create session", t, `onnxruntime-web ${ort.env.versions?.web ?? ""}`);
  runtime = new Runtime({ reader, model, tokenizer, tasks });
  step("load (total)", t0);
  $("threads").textContent = threadsNote();
  return { config, tasks };
}

// -- the form -------------------------------------------------------------------------------------------------
function fillTasks(tasks) {
  const sel = $("task");
  for (const [name, t] of tasks) {
    const o = document.createElement("option");
    o.value = name;
    o.textContent = `${name}: ${t.method.replace("_", " ")}, ${t.spec.kind}${t.spec.labels.length ? ` (${t.spec.labels.join(" / ")})` : ""}, P=${t.P}`;
    sel.append(o);
  }
  const o = document.createElement("option");
  o.value = PLAIN;
  o.textContent = "plain model: generation, no prompt";
  sel.append(o);
  sel.addEventListener("change", syncForm);
  const want = params.get("task");
  if (want !== null) {
    if (want === PLAIN || tasks.has(want)) sel.value = want;
    else showError(new DemoError("request", `unknown task ${JSON.stringify(want)} (from the address); this bundle has: ${[...tasks.keys()].join(", ") || "none"} (or the plain model).`));
  }
  syncForm();
}

function selectedTask() {
  return $("task").value === PLAIN ? null : $("task").value;
}

function syncForm() {
  const t = selectedTask();
  const gen = t === null || runtime.task(t).spec.kind !== CLASSIFICATION;
  $("max-tokens-box").hidden = !gen;
  $("run").textContent = gen ? "Generate" : "Classify";
}

function renderClassification(r) {
  $("label").textContent = r.label;
  $("bars").replaceChildren(
    ...Object.entries(r.probabilities).map(([lab, p]) => {
      const row = document.createElement("div");
      row.className = "bar";
      const name = document.createElement("span");
      name.textContent = lab;
      const track = document.createElement("div");
      track.className = "track";
      const fill = document.createElement("div");
      fill.className = "fill";
      fill.style.width = `${(100 * p).toFixed(1)}%`;
      track.append(fill);
      const val = document.createElement("span");
      val.textContent = `${(100 * p).toFixed(1)}%`;
      row.append(name, track, val);
      return row;
    }),
  );
}

async function run(ev) {
  ev?.preventDefault();
  clearError();
  $("run").disabled = true;
  const task = selectedTask();
  const text = $("text").value;
  const truncate = $("truncate").checked;
  const result = $("result");
  $("label").textContent = "";
  $("bars").replaceChildren();
  $("output").textContent = "";
  let out;
  try {
    const t = task === null ? null : runtime.task(task);
    if (t && t.spec.kind === CLASSIFICATION) {
      out = await runtime.classify(task, text, { truncate });
      renderClassification(out);
    } else {
      result.hidden = false;
      const maxNewTokens = Number($("max-tokens").value);
      out = await runtime.generate(task, text, { maxNewTokens, truncate, onPiece: (piece) => ($("output").textContent += piece) });
      $("label").textContent = out.finish_reason === "stop" ? "(end of text)" : "";
    }
    result.hidden = false;
    showTimings(out);
  } catch (e) {
    out = { error: e.message, kind: e instanceof DemoError ? e.kind : "runtime" };
    showError(e);
  } finally {
    result.dataset.json = JSON.stringify(out);
    $("run").disabled = false;
    showMemory();
    document.body.dataset.runs = String(++runs);
  }
}

// -- start ----------------------------------------------------------------------------------------------------
window.addEventListener("unhandledrejection", (e) => showError(e.reason));
window.addEventListener("error", (e) => e.error && showError(e.error));

const ready = load().then(
  ({ config, tasks }) => {
    fillTasks(tasks);
    $("form").addEventListener("submit", run);
    $("controls").hidden = false;
    status(`Ready: ${config.bundle.name} (${config.bundle.quant}), ${tasks.size} task${tasks.size === 1 ? "" : "s"}. Switching tasks keeps the model; each task's prefix is computed once.`);
    showTimings(null);
    showMemory();
    document.body.dataset.state = "ready";
    navigator.serviceWorker?.addEventListener("controllerchange", () => status("A new build of the app is cached: reload to use it."));
    return info();
  },
  (e) => {
    showError(e, true);
    throw e;
  },
);
ready.catch(() => {});

function info() {
  return {
    crossOriginIsolated: self.crossOriginIsolated,
    threads: ort.env.wasm.numThreads,
    serviceWorker: swState,
    controlled: !!navigator.serviceWorker?.controller,
    tasks: runtime ? [...runtime.tasks.keys()] : [],
    load: Object.fromEntries(loadSteps.map(([k, ms]) => [k, ms])),
    memory: runtime?.memory() ?? null,
    jsHeap: performance.memory?.usedJSHeapSize ?? null,
    ortVersion: ort.env.versions?.web ?? null,
  };
}

window.edgeprompt = {
  ready,
  info,
  tokenize: (text) => runtime.encode(text),
  decode: (ids) => runtime.decode(ids),
  classify: (task, text, opts) => runtime.classify(task, text, opts),
  generate: (task, text, opts) => runtime.generate(task, text, opts),
  logitsTrace: (task, text, forced) => runtime.logitsTrace(task, text, forced),
};
