/**
 * The app's errors: each names what is wrong and how to fix it, and is shown on the page (never a blank page).
 *
 * kind: "bundle" (not an ONNX bundle, or inconsistent), "integrity" (a file does not match its sha256),
 * "memory" (the model is too large for this device), "request" (an unknown task, a text too long),
 * "environment" (not a secure context, no WebAssembly), "runtime" (onnxruntime-web failed).
 */
export class DemoError extends Error {
  constructor(kind, message) {
    super(message);
    this.name = "DemoError";
    this.kind = kind;
  }
}
