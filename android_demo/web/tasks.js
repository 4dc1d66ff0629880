/**
 * What a task is (its template and labels) and the input rule: a line-by-line port of edgeprompt/core/tasks.py,
 * so that the phone encodes a request into the same token ids as the Python runtime:
 *
 *   ids = encode(head) + encode(text) + encode(tail)        (no BOS; template = head + "{text}" + tail)
 *
 * A space that ends head moves to the front of the text. A text that does not fit the context (after the task's
 * P prefix positions and the tokens reserved for the answer) is refused, or with truncate cut from its end.
 */
import { DemoError } from "./errors.js";

export const CLASSIFICATION = "classification";
export const GENERATION = "generation";

export class TaskSpec {
  constructor({ kind = CLASSIFICATION, template = "{text}", instruction = "", labels = [], verbalizers = {}, calibration = null } = {}) {
    if (kind !== CLASSIFICATION && kind !== GENERATION) throw new DemoError("bundle", `task kind ${JSON.stringify(kind)} is not classification or generation.`);
    if (template.split("{text}").length !== 2) throw new DemoError("bundle", `template ${JSON.stringify(template)} must contain '{text}' exactly once.`);
    this.kind = kind;
    this.template = template;
    this.instruction = instruction;
    this.labels = [...labels];
    if (kind === CLASSIFICATION) {
      if (this.labels.length < 2) throw new DemoError("bundle", `a classification task needs at least two labels, got ${JSON.stringify(labels)}.`);
      if (new Set(this.labels).size !== this.labels.length) throw new DemoError("bundle", `labels repeat: ${JSON.stringify(labels)}.`);
      const extra = Object.keys(verbalizers).filter((k) => !this.labels.includes(k));
      if (extra.length) throw new DemoError("bundle", `verbalizers given for unknown labels ${JSON.stringify(extra)}.`);
      this.verbalizers = Object.fromEntries(this.labels.map((l) => [l, verbalizers[l] ?? " " + l]));
      if (new Set(Object.values(this.verbalizers)).size !== this.labels.length) throw new DemoError("bundle", `two labels share a verbalizer.`);
    } else {
      if (this.labels.length) throw new DemoError("bundle", "a generation task takes no labels.");
      this.verbalizers = {};
    }
    // the task's label-prior correction (core/tasks.py Calibration): log_prior per label, or none
    this.logPrior = calibration ? [...calibration.log_prior] : null;
    if (this.logPrior && (this.logPrior.length !== this.labels.length || !this.logPrior.every(Number.isFinite)))
      throw new DemoError("bundle", `calibration: log_prior needs one finite value per label (${this.labels.length}).`);
  }

  /** The label log-probabilities a decision is taken on (TaskSpec.decide): log-softmax over the labels, minus the
   * calibration's log-prior and normalised again when the task is calibrated. Float64, as the Python runtime. */
  decide(scores) {
    const norm = (xs) => {
      const mx = Math.max(...xs);
      const lse = mx + Math.log(xs.reduce((a, x) => a + Math.exp(x - mx), 0));
      return xs.map((x) => x - lse);
    };
    const s = norm(scores);
    return this.logPrior ? norm(s.map((x, i) => x - this.logPrior[i])) : s;
  }

  /** The spec a task manifest records (bank/tasks/NAME/manifest.json). */
  static fromManifest(m) {
    return new TaskSpec({
      kind: m.kind,
      template: m.template,
      instruction: m.instruction ?? "",
      labels: m.labels ?? [],
      verbalizers: m.verbalizers ?? {},
      calibration: m.calibration ?? null,
    });
  }

  /** [head, tail, leadSpace] */
  splitTemplate() {
    const [head, tail] = this.template.split("{text}");
    const lead = head.endsWith(" ");
    return [lead ? head.slice(0, -1) : head, tail, lead];
  }

  /** Token ids of the templated input (no BOS, no label). */
  encodeInput(encode, text, maxTextTokens = null) {
    const [head, tail, lead] = this.splitTemplate();
    let ids = encode((lead ? " " : "") + text);
    if (maxTextTokens !== null) ids = ids.slice(0, maxTextTokens);
    return [...(head ? encode(head) : []), ...ids, ...(tail ? encode(tail) : [])];
  }

  /** Token ids of each label's verbalizer, in label order. */
  verbalizerIds(encode) {
    const out = this.labels.map((l) => encode(this.verbalizers[l]));
    out.forEach((ids, i) => {
      if (!ids.length) throw new DemoError("bundle", `the verbalizer of label ${JSON.stringify(this.labels[i])} encodes to no tokens.`);
    });
    if (new Set(out.map((x) => x.join(","))).size !== out.length) throw new DemoError("bundle", "two verbalizers encode to the same tokens.");
    return out;
  }
}

/**
 * Token ids of a request's input: the text through the task's template (raw for spec null). See the module comment.
 */
export function inputIds(spec, encode, text, context, { prefixLen = 0, reserve = 0, truncate = false } = {}) {
  const room = context - prefixLen - reserve;
  const ids = spec ? spec.encodeInput(encode, text) : [...encode(text)];
  if (!ids.length) throw new DemoError("request", "the text encodes to no tokens; type a non-empty text.");
  if (ids.length <= room) return ids;
  const fixed = spec ? spec.encodeInput(encode, text, 0).length : 0;
  if (!truncate || room - fixed < 1) {
    throw new DemoError(
      "request",
      `the input is ${ids.length} tokens; with the task's ${prefixLen}-token prefix and ${reserve} tokens for the answer ` +
        `it exceeds the context of ${context}. Shorten the text, or tick "cut a long text".`,
    );
  }
  return spec ? spec.encodeInput(encode, text, room - fixed) : ids.slice(0, room);
}
