/**
 * The frozen model on onnxruntime-web: a port of runtimes/onnx/engine.py. One InferenceSession over the
 * bundle's decoder.onnx (inputs_embeds, attention_mask, position_ids, past key/values -> last logits and the
 * present key/values), and the embedding table [V, d] from embeddings.safetensors: the lookup is ours.
 *
 * A sequence's state is the list of 2L present tensors [1, h, n, hd] (per layer key then value). Caching a task's
 * prefix is keeping that list; starting a request from it is passing it back as past_key_values. onnxruntime never
 * writes into its inputs, so one cached prefix starts any number of requests.
 */
import { DemoError } from "./errors.js";

export class OnnxModel {
  /**
   * @param ort the onnxruntime-web module (env already set)
   * @param {ArrayBuffer} graph decoder.onnx
   * @param {{path: string, data: Uint8Array}[]} externalData the files its initializers name (decoder.onnx.data)
   * @param {{shape: number[], data: Float32Array|Int8Array|Uint8Array, scale?: Float32Array, groups?: number, zeroPoint?: number}} embeddings [V, d]
   *   (an int8 table: x = (data - zeroPoint) * scale[row * groups + floor(col / (d / groups))], widened per lookup)
   * @param info the manifest's base_model (num_layers, num_kv_heads, head_dim)
   */
  static async create(ort, graph, externalData, embeddings, info) {
    let session;
    try {
      session = await ort.InferenceSession.create(new Uint8Array(graph), {
        executionProviders: ["wasm"],
        graphOptimizationLevel: "all",
        executionMode: "sequential",
        externalData,
        logSeverityLevel: 3,
      });
    } catch (e) {
      throw new DemoError("runtime", `onnxruntime-web could not load the model: ${e.message ?? e}`);
    }
    return new OnnxModel(ort, session, embeddings, info);
  }

  constructor(ort, session, embeddings, info) {
    this.ort = ort;
    this.session = session;
    this.embeddings = embeddings.data; // Float32Array, or Int8Array with a scale per block of d/groups
    this.embeddingsScale = embeddings.scale ?? null;
    this.embeddingsGroups = embeddings.groups ?? 1;
    this.embeddingsZeroPoint = embeddings.zeroPoint ?? 0;
    this.embeddingsBytes = this.embeddings.byteLength + (this.embeddingsScale ? this.embeddingsScale.byteLength : 0);
    [this.vocabRows, this.hiddenSize] = embeddings.shape;
    const names = session.inputNames;
    if (!names.includes("inputs_embeds")) {
      throw new DemoError("bundle", "this ONNX graph takes token ids only (a stock optimum export): soft prompts need an `edgeprompt export --format onnx` bundle.");
    }
    this.takesPositionIds = names.includes("position_ids");
    this.numLayers = names.filter((n) => n.startsWith("past_key_values.") && n.endsWith(".key")).length;
    if (this.numLayers !== info.num_layers || this.hiddenSize !== info.hidden_size) {
      throw new DemoError("bundle", `the model file has ${this.numLayers} layers and d=${this.hiddenSize}, the manifest ${info.num_layers} and ${info.hidden_size}; re-export the bundle.`);
    }
    this.numKvHeads = info.num_kv_heads;
    this.headDim = info.head_dim;
    this.pastNames = [];
    this.presentNames = [];
    for (let i = 0; i < this.numLayers; i++) {
      this.pastNames.push(`past_key_values.${i}.key`, `past_key_values.${i}.value`);
      this.presentNames.push(`present.${i}.key`, `present.${i}.value`);
    }
  }

  /** Bytes of key/values one position takes (float32). */
  get kvBytesPerPosition() {
    return this.numLayers * 2 * this.numKvHeads * this.headDim * 4;
  }

  emptyState() {
    const z = new this.ort.Tensor("float32", new Float32Array(0), [1, this.numKvHeads, 0, this.headDim]);
    return new Array(2 * this.numLayers).fill(z);
  }

  static stateLength(state) {
    return state[0].dims[2];
  }

  static stateBytes(state) {
    return state.reduce((n, t) => n + t.data.byteLength, 0);
  }

  /** A bank's kv_prefix [L, 2, h, P, hd] -> a state. */
  stateFromKV(kv) {
    const [L, two, h, P, hd] = kv.shape;
    if (L !== this.numLayers || two !== 2 || h !== this.numKvHeads || hd !== this.headDim) {
      throw new DemoError("bundle", `a KV prefix has shape [${kv.shape}], this model needs [${this.numLayers}, 2, ${this.numKvHeads}, P, ${this.headDim}].`);
    }
    const block = h * P * hd;
    const out = [];
    for (let i = 0; i < 2 * L; i++) out.push(new this.ort.Tensor("float32", kv.data.slice(i * block, (i + 1) * block), [1, h, P, hd]));
    return out;
  }

  /** Token ids [T] -> input embeddings [T * d]. */
  embed(ids) {
    const d = this.hiddenSize;
    const out = new Float32Array(ids.length * d);
    ids.forEach((id, k) => {
      if (!(id >= 0 && id < this.vocabRows)) throw new DemoError("request", `token id ${id} is outside the embedding table (${this.vocabRows} rows).`);
      if (this.embeddingsScale === null) {
        out.set(this.embeddings.subarray(id * d, (id + 1) * d), k * d);
        return;
      }
      const G = this.embeddingsGroups;
      const B = d / G;
      const z = this.embeddingsZeroPoint;
      for (let c = 0; c < d; c++) out[k * d + c] = (this.embeddings[id * d + c] - z) * this.embeddingsScale[id * G + Math.floor(c / B)];
    });
    return out;
  }

  /** Run embeds [T * d] after state; return the last position's logits [V] and the new state. */
  async forward(embeds, state) {
    const T = embeds.length / this.hiddenSize;
    const past = OnnxModel.stateLength(state);
    const ort = this.ort;
    const feed = {
      inputs_embeds: new ort.Tensor("float32", embeds, [1, T, this.hiddenSize]),
      attention_mask: new ort.Tensor("int64", new BigInt64Array(past + T).fill(1n), [1, past + T]),
    };
    if (this.takesPositionIds) feed.position_ids = new ort.Tensor("int64", BigInt64Array.from({ length: T }, (_, i) => BigInt(past + i)), [1, T]);
    this.pastNames.forEach((n, i) => (feed[n] = state[i]));
    const out = await this.session.run(feed);
    const lg = out.logits;
    const V = lg.dims[lg.dims.length - 1];
    const logits = lg.dims.length === 3 ? lg.data.subarray((lg.dims[1] - 1) * V, lg.dims[1] * V) : lg.data.subarray(0, V);
    return { logits, state: this.presentNames.map((n) => out[n]) };
  }

  async forwardIds(ids, state) {
    return this.forward(this.embed(ids), state);
  }
}
