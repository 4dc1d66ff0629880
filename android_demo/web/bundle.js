/**
 * Reading the bundle the app was built with: app-config.json (written by `edgeprompt android-demo`), then the
 * bundle's own manifest.json, whose "files" record every file's sha256 and size (the contract, as in
 * edgeprompt/core/bundle.py). Every file is checked against it with Web Crypto before use; a file the service
 * worker serves from its cache carries the sha256 it was checked against when it was cached (x-edgeprompt-sha256).
 */
import { DemoError } from "./errors.js";
import { TaskSpec } from "./tasks.js";

export const APP_CONFIG = "app-config.json";
export const APP_FORMAT = "edgeprompt.android-demo";
export const BUNDLE_FORMAT = "edgeprompt.bundle";
export const VERIFIED_HEADER = "x-edgeprompt-sha256";
/** A browser tab gets about this share of the device's memory. */
export const TAB_MEMORY_SHARE = 0.5;
/** WebAssembly's 32-bit heap: onnxruntime-web cannot hold a model larger than this. */
export const WASM_MAX_BYTES = 3.5 * 2 ** 30;

/** Bytes for people: B, KiB, MiB or GiB. */
export function fmtBytes(n) {
  if (n < 1024) return `${n} B`;
  if (n < 2 ** 20) return `${(n / 1024).toFixed(1)} KiB`;
  if (n < 2 ** 30) return `${(n / 2 ** 20).toFixed(1)} MiB`;
  return `${(n / 2 ** 30).toFixed(2)} GiB`;
}

export async function sha256Hex(buffer) {
  if (!globalThis.crypto?.subtle) {
    throw new DemoError(
      "environment",
      `this page (${location.origin}) is not a secure context, so Web Crypto cannot check the bundle's files ` +
        "(nor can a service worker or threads run): open it as http://localhost:PORT through `adb reverse tcp:PORT tcp:PORT`, or serve it over https (--cert).",
    );
  }
  const d = new Uint8Array(await crypto.subtle.digest("SHA-256", buffer));
  return Array.from(d, (b) => b.toString(16).padStart(2, "0")).join("");
}

async function fetchOk(url, what) {
  let r;
  try {
    r = await fetch(url);
  } catch (e) {
    throw new DemoError("bundle", `cannot fetch ${what} (${e.message}): offline before the app was cached? Reconnect and reload.`);
  }
  if (!r.ok) throw new DemoError("bundle", `${what} is missing from the app (HTTP ${r.status}); rebuild it: edgeprompt android-demo BUNDLE -o DIR.`);
  return r;
}

export async function loadAppConfig() {
  const cfg = await (await fetchOk(APP_CONFIG, APP_CONFIG)).json();
  if (cfg.format !== APP_FORMAT) throw new DemoError("bundle", `${APP_CONFIG} is not an edgeprompt android-demo config; rebuild the app.`);
  if (cfg.version > 1) throw new DemoError("bundle", `${APP_CONFIG} has version ${cfg.version}, newer than this app reads; rebuild the app.`);
  return cfg;
}

/** How much memory loading needs, and a refusal said before loading when the device reports too little. */
export function memoryCheck(config, deviceMemoryGiB) {
  const model = config.bundle.model_bytes;
  const need = 2 * model; // the files' bytes in JavaScript, and their copy in the WebAssembly heap while the session is made
  const res = { model, need, deviceMemoryGiB: deviceMemoryGiB ?? null, budget: null };
  if (model > WASM_MAX_BYTES) {
    throw new DemoError("memory", `the model is ${fmtBytes(model)}: more than WebAssembly's 4 GB heap holds. Export a smaller quantization (--quant int4) or a smaller model.`);
  }
  if (deviceMemoryGiB) {
    res.budget = deviceMemoryGiB * 2 ** 30 * TAB_MEMORY_SHARE;
    if (need > res.budget) {
      throw new DemoError(
        "memory",
        `the model is too large for this device: loading it needs about ${fmtBytes(need)} (its files are ${fmtBytes(model)}), ` +
          `and this device reports ${deviceMemoryGiB} GB of memory (navigator.deviceMemory), of which a browser tab gets about half. ` +
          "Export a smaller quantization (--quant int4), or use a device with more memory. Nothing was loaded.",
      );
    }
  }
  return res;
}

export class BundleReader {
  constructor(config, manifest) {
    this.config = config;
    this.manifest = manifest;
    this.dir = config.bundle.dir;
    this.bytesRead = 0;
    this.hashMs = 0;
  }

  /** The bundle's manifest, checked: an ONNX edgeprompt bundle, the one the app was built with. */
  static async open(config) {
    const rel = "manifest.json";
    const buf = await (await fetchOk(config.bundle.dir + rel, "the bundle's manifest.json")).arrayBuffer();
    let m;
    try {
      m = JSON.parse(new TextDecoder().decode(buf));
    } catch (e) {
      throw new DemoError("bundle", "the bundle's manifest.json is not JSON; rebuild the app from a good bundle.");
    }
    if (m.format !== BUNDLE_FORMAT) throw new DemoError("bundle", `bundle/manifest.json is not an edgeprompt bundle manifest (format ${JSON.stringify(m.format)}).`);
    const fmt = m.model?.format;
    if (fmt !== "onnx") {
      throw new DemoError(
        "bundle",
        `this app needs an ONNX bundle; this one holds a ${fmt} model (onnxruntime-web runs ONNX). ` +
          "Export the bank with `edgeprompt export --format onnx --quant int8` (or int4) and build the app from that bundle.",
      );
    }
    const want = config.bundle.manifest;
    const sha = await sha256Hex(buf);
    if (sha !== want.sha256 || buf.byteLength !== want.bytes) {
      throw new DemoError("integrity", "bundle/manifest.json is not the manifest this app was built with (damaged or replaced); rebuild the app: edgeprompt android-demo BUNDLE -o DIR.");
    }
    return new BundleReader(config, m);
  }

  record(rel) {
    const r = this.manifest.files?.[rel];
    if (!r) throw new DemoError("bundle", `bundle file ${rel} is not among the manifest's checked files; re-export the bundle.`);
    return r;
  }

  /** A listed file's bytes, checked against its size and sha256 in the manifest. */
  async read(rel) {
    const rec = this.record(rel);
    const r = await fetchOk(this.dir + rel, `bundle file ${rel}`);
    const buf = await r.arrayBuffer();
    this.bytesRead += buf.byteLength;
    if (r.headers.get(VERIFIED_HEADER) === rec.sha256 && buf.byteLength === rec.bytes) return buf;
    const t0 = performance.now();
    const sha = buf.byteLength === rec.bytes ? await sha256Hex(buf) : null;
    this.hashMs += performance.now() - t0;
    if (sha !== rec.sha256) {
      throw new DemoError(
        "integrity",
        `bundle file ${rel} is damaged: ${buf.byteLength === rec.bytes ? "its sha256 does not match" : `it has ${buf.byteLength} bytes, not`} ` +
          `the manifest's (${buf.byteLength === rec.bytes ? rec.sha256.slice(0, 16) + "…" : rec.bytes}). Re-copy the bundle and rebuild the app: edgeprompt android-demo BUNDLE -o DIR.`,
      );
    }
    return buf;
  }

  async readJSON(rel) {
    return JSON.parse(new TextDecoder().decode(await this.read(rel)));
  }

  get model() {
    return this.manifest.model;
  }
  get baseModel() {
    return this.manifest.base_model;
  }
  get tokenizerInfo() {
    return this.manifest.tokenizer ?? {};
  }

  /** The ONNX graph's external data: every listed file beside it but the embedding table. */
  externalDataFiles() {
    const file = this.model.file;
    const dir = file.includes("/") ? file.slice(0, file.lastIndexOf("/") + 1) : "";
    return Object.keys(this.manifest.files).filter(
      (r) => r.startsWith(dir) && !r.slice(dir.length).includes("/") && r !== file && r !== this.model.embeddings,
    );
  }

  /** Every task the manifest lists: its manifest read (verified) and checked against the base model. */
  async tasks() {
    const out = new Map();
    for (const [name, rec] of Object.entries(this.manifest.tasks ?? {})) {
      const dir = `bank/tasks/${name}/`;
      const m = await this.readJSON(dir + "manifest.json");
      const bm = m.base_model ?? {};
      for (const k of ["hidden_size", "num_layers", "num_kv_heads", "head_dim"]) {
        if (bm[k] !== this.baseModel[k]) throw new DemoError("bundle", `task ${name} was made for a model with ${k}=${bm[k]}, this bundle's has ${this.baseModel[k]}; re-export the bundle.`);
      }
      if (bm.fingerprint !== this.baseModel.fingerprint) throw new DemoError("bundle", `task ${name} was trained for another base model (fingerprint ${String(bm.fingerprint).slice(0, 16)}); re-export the bundle.`);
      const P = m.num_virtual_tokens;
      if (!Number.isInteger(P) || P < 1) throw new DemoError("bundle", `task ${name}: num_virtual_tokens is ${P}; it must be a positive integer.`);
      out.set(name, {
        name,
        method: m.method,
        spec: TaskSpec.fromManifest(m),
        P,
        tensors: dir + "prefix.safetensors",
        shipped: rec.forms?.kv_prefix?.file && m.method !== "prefix_tuning" ? rec.forms.kv_prefix.file : null,
        verbalizers: null,
      });
    }
    return out;
  }
}
