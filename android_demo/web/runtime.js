/**
 * The on-device runtime: one model, many tasks, each task's prefix computed once and kept in a small LRU.
 * A port of runtimes/runtime.py and runtimes/tasks.py (the reference the app matches number for number):
 *
 *  - a prompt-tuning task's prefix: its rows [P, d] prefilled through the model (or the KV the bundle ships);
 *  - a prefix-tuning task's prefix: its kv_prefix [L, 2, h, P, hd] used as is;
 *  - classify: log p(verbalizer | prefix, templated text) per label (float64 log-softmax), probabilities by softmax
 *    over the labels, minus the task's calibration log-prior when it has one (TaskSpec.decide);
 *  - generate: greedy (argmax) decoding after the templated text, until EOS or max_new_tokens.
 */
import { DemoError } from "./errors.js";
import { OnnxModel } from "./model.js";
import { CLASSIFICATION, inputIds } from "./tasks.js";
import { readSafetensors } from "./safetensors.js";

/** The methods this app knows: how a task's folded tensor becomes a prefix (edgeprompt/methods/). */
export const METHODS = {
  prompt_tuning: { tensor: "prompt_embeddings", kind: "embeddings" },
  prefix_tuning: { tensor: "kv_prefix", kind: "kv" },
};

export function logSoftmax(x) {
  let m = -Infinity;
  for (const v of x) if (v > m) m = v;
  let s = 0;
  for (const v of x) s += Math.exp(v - m);
  const lse = m + Math.log(s);
  return Array.from(x, (v) => v - lse);
}

export function argmax(x) {
  let best = 0;
  for (let i = 1; i < x.length; i++) if (x[i] > x[best]) best = i;
  return best;
}

/** Prefixes by task, least recently used first out, within a byte budget. */
export class PrefixCache {
  constructor(maxBytes) {
    this.maxBytes = maxBytes;
    this.map = new Map();
  }
  get(name) {
    const p = this.map.get(name);
    if (p) {
      this.map.delete(name);
      this.map.set(name, p);
    }
    return p;
  }
  put(name, p) {
    this.map.delete(name);
    if (p.bytes > this.maxBytes) return;
    this.map.set(name, p);
    while (this.bytes > this.maxBytes) this.map.delete(this.map.keys().next().value);
  }
  get bytes() {
    let n = 0;
    for (const p of this.map.values()) n += p.bytes;
    return n;
  }
  get names() {
    return [...this.map.keys()];
  }
}

export class Runtime {
  constructor({ reader, model, tokenizer, tasks, cacheBytes = 64 * 2 ** 20 }) {
    this.reader = reader;
    this.model = model;
    this.tokenizer = tokenizer;
    this.tasks = tasks;
    this.cache = new PrefixCache(cacheBytes);
    this.vocabSize = reader.baseModel.vocab_size;
    this.eos = reader.tokenizerInfo.eos_token_id ?? null;
    this.nCtx = reader.model.context_length || 2048;
    this.lastSequenceBytes = 0;
    this._queue = Promise.resolve();
    for (const t of tasks.values()) {
      if (!METHODS[t.method]) throw new DemoError("bundle", `task ${t.name} uses method ${t.method}; this app knows ${Object.keys(METHODS).join(", ")}.`);
    }
  }

  /** Requests run one at a time (one session, one decode loop). */
  _serial(fn) {
    const run = this._queue.then(fn, fn);
    this._queue = run.catch(() => {});
    return run;
  }

  encode(text) {
    return this.tokenizer.encode(text, { add_special_tokens: false }).ids;
  }

  decode(ids) {
    return this.tokenizer.decode(ids, { skip_special_tokens: true });
  }

  task(name) {
    const t = this.tasks.get(name);
    if (!t) {
      const have = [...this.tasks.keys()].join(", ") || "none";
      throw new DemoError("request", `unknown task ${JSON.stringify(name)}; this bundle has: ${have} (or the plain model).`);
    }
    return t;
  }

  inputIds(task, text, { reserve = 0, truncate = false } = {}) {
    const t = task === null ? null : this.task(task);
    return inputIds(t?.spec ?? null, (s) => this.encode(s), text, this.nCtx, { prefixLen: t ? t.P : 0, reserve, truncate });
  }

  verbalizers(t) {
    if (!t.verbalizers) t.verbalizers = t.spec.verbalizerIds((s) => this.encode(s));
    return t.verbalizers;
  }

  /** The task's prefix: {state, length, bytes} and how it was had (cached, or computed in ms). */
  async prefix(name) {
    if (name === null) return { prefix: null, cached: false, ms: 0 };
    const t = this.task(name);
    const hit = this.cache.get(name);
    if (hit) return { prefix: hit, cached: true, ms: 0 };
    const t0 = performance.now();
    const p = await this._computePrefix(t);
    this.cache.put(name, p);
    return { prefix: p, cached: false, ms: performance.now() - t0 };
  }

  async _tensor(rel, key, name) {
    const all = readSafetensors(await this.reader.read(rel), rel);
    const x = all[key];
    if (!x) throw new DemoError("bundle", `task ${name}: ${rel} has no tensor ${key} (found ${Object.keys(all)}); re-export the bundle.`);
    if (!(x.data instanceof Float32Array)) throw new DemoError("bundle", `task ${name}: ${key} in ${rel} is integer; a task's tensors are float (F32, F16 or BF16).`);
    for (const v of x.data) if (!Number.isFinite(v)) throw new DemoError("bundle", `task ${name}: ${key} holds NaN or Inf values; retrain or re-import the task.`);
    return x;
  }

  async _computePrefix(t) {
    const m = METHODS[t.method];
    const x = await this._tensor(t.tensors, m.tensor, t.name);
    const pAxis = m.kind === "kv" ? 3 : 0;
    if (x.shape[pAxis] !== t.P) throw new DemoError("bundle", `task ${t.name}: its tensors hold P=${x.shape[pAxis]}, its manifest says ${t.P}; the task is damaged.`);
    let state;
    if (m.kind === "kv") state = this.model.stateFromKV(x);
    else {
      if (x.shape.length !== 2 || x.shape[1] !== this.model.hiddenSize) throw new DemoError("bundle", `task ${t.name}: prompt_embeddings is [${x.shape}], this model needs [P, ${this.model.hiddenSize}].`);
      if (t.shipped) {
        try {
          state = this.model.stateFromKV(await this._tensor(t.shipped, "kv_prefix", t.name));
        } catch (e) {
          console.warn(`task ${t.name}: the KV shipped in the bundle was refused (${e.message}); prefilling its prompt instead.`);
        }
      }
      if (!state) state = (await this.model.forward(x.data, this.model.emptyState())).state;
    }
    return { state, length: OnnxModel.stateLength(state), bytes: OnnxModel.stateBytes(state) };
  }

  /** Label and probabilities. Returns {label, probabilities, logprobs, ids, timings}. */
  classify(task, text, { truncate = false } = {}) {
    return this._serial(async () => {
      if (task === null) throw new DemoError("request", "the plain model generates text; pick a classification task to classify.");
      const t = this.task(task);
      if (t.spec.kind !== CLASSIFICATION) throw new DemoError("request", `task ${task} is a ${t.spec.kind} task; it generates text.`);
      const verbs = this.verbalizers(t);
      const ids = this.inputIds(task, text, { reserve: Math.max(...verbs.map((v) => v.length)), truncate });
      const pre = await this.prefix(task);
      const t0 = performance.now();
      const { logits, state } = await this.model.forwardIds(ids, pre.prefix.state);
      const first = logSoftmax(logits.subarray(0, this.vocabSize));
      const prefillMs = performance.now() - t0;
      const scores = verbs.map((v) => first[v[0]]);
      const t1 = performance.now();
      for (let k = 0; k < verbs.length; k++) {
        // multi-token verbalizers: continue from the input, one label at a time
        let st = state;
        for (let j = 0; j + 1 < verbs[k].length; j++) {
          const r = await this.model.forwardIds([verbs[k][j]], st);
          st = r.state;
          scores[k] += logSoftmax(r.logits.subarray(0, this.vocabSize))[verbs[k][j + 1]];
        }
      }
      this.lastSequenceBytes = OnnxModel.stateBytes(state);
      if (!scores.every(Number.isFinite)) throw new DemoError("runtime", `task ${task}: the model gave non-finite label scores; the model file or task is broken.`);
      const decided = t.spec.decide(scores); // calibrated when the task is, as every runtime decides
      const labels = t.spec.labels;
      return {
        task,
        label: labels[argmax(decided)],
        probabilities: Object.fromEntries(labels.map((l, i) => [l, Math.exp(decided[i])])),
        logprobs: Object.fromEntries(labels.map((l, i) => [l, scores[i]])),
        ids,
        timings: { prefix_ms: pre.ms, prefix_cached: pre.cached, prefill_ms: prefillMs, labels_ms: performance.now() - t1, tokens: ids.length },
      };
    });
  }

  /**
   * Greedy decoding after the (templated) text. onPiece(text, tokenId, ms) streams the text as it becomes
   * whole UTF-8 (a token that ends mid-character waits for the next). Returns {tokens, text, finish_reason, ids, timings}.
   */
  generate(task, text, { maxNewTokens = 32, truncate = false, onPiece = null } = {}) {
    return this._serial(async () => {
      if (!(Number.isInteger(maxNewTokens) && maxNewTokens >= 1)) throw new DemoError("request", `max new tokens must be an integer of at least 1, got ${maxNewTokens}.`);
      const ids = this.inputIds(task, text, { reserve: maxNewTokens, truncate });
      const pre = await this.prefix(task);
      let t0 = performance.now();
      let { logits, state } = await this.model.forwardIds(ids, pre.prefix ? pre.prefix.state : this.model.emptyState());
      const prefillMs = performance.now() - t0;
      const out = [];
      const perToken = [];
      let emitted = "";
      let finish = "length";
      t0 = performance.now();
      for (let step = 0; step < maxNewTokens; step++) {
        const tok = argmax(logits.subarray(0, this.vocabSize));
        if (this.eos !== null && tok === this.eos) {
          finish = "stop";
          break;
        }
        out.push(tok);
        const full = this.decode(out);
        const last = step === maxNewTokens - 1;
        if (!(full.endsWith("\ufffd") && !last) && full.length > emitted.length) {
          onPiece?.(full.slice(emitted.length), tok, performance.now() - t0);
          emitted = full;
        }
        if (last) break;
        ({ logits, state } = await this.model.forwardIds([tok], state));
        perToken.push(performance.now() - t0);
        t0 = performance.now();
      }
      this.lastSequenceBytes = OnnxModel.stateBytes(state);
      const full = this.decode(out);
      if (full.length > emitted.length) onPiece?.(full.slice(emitted.length), null, 0);
      return {
        task,
        tokens: out,
        text: full,
        finish_reason: finish,
        ids,
        timings: { prefix_ms: pre.ms, prefix_cached: pre.cached, prefill_ms: prefillMs, per_token_ms: perToken, tokens: ids.length },
      };
    });
  }

  /**
   * The next-token logits [V] after the (templated) text, then after each of the forced tokens in turn, fed one at a
   * time through the KV cache as the decode loop feeds its tokens: the quantity the export's parity gate compares.
   */
  logitsTrace(task, text, forced = []) {
    return this._serial(async () => {
      const ids = this.inputIds(task, text, { reserve: forced.length });
      const pre = await this.prefix(task);
      let { logits, state } = await this.model.forwardIds(ids, pre.prefix ? pre.prefix.state : this.model.emptyState());
      const out = [Array.from(logits.subarray(0, this.vocabSize))];
      for (const tok of forced) {
        ({ logits, state } = await this.model.forwardIds([tok], state));
        out.push(Array.from(logits.subarray(0, this.vocabSize)));
      }
      return out;
    });
  }

  /** Bytes the app holds besides the model in the WebAssembly heap. */
  memory() {
    return {
      model_files: this.reader.config.bundle.model_bytes,
      embeddings: this.model.embeddingsBytes,
      prefix_cache: this.cache.bytes,
      prefix_cache_tasks: this.cache.names,
      last_sequence_kv: this.lastSequenceBytes,
      kv_bytes_per_position: this.model.kvBytesPerPosition,
    };
  }
}
