/**
 * A safetensors reader: 8 bytes (u64 little-endian) of header length, a JSON header
 * ({name: {dtype, shape, data_offsets}}), then the raw tensors. Returns float32 arrays (F16 and BF16 widened; I8 and U8 kept as integers),
 * as the Python runtime's read_safetensors does; the tensors are read as they are, never re-encoded.
 */
import { DemoError } from "./errors.js";

const ITEM = { F32: 4, F16: 2, BF16: 2, I8: 1, U8: 1 };

function f16ToF32(h) {
  const s = h & 0x8000 ? -1 : 1;
  const e = (h >> 10) & 0x1f;
  const m = h & 0x3ff;
  if (e === 0) return s * m * 2 ** -24;
  if (e === 31) return m ? NaN : s * Infinity;
  return s * (1 + m / 1024) * 2 ** (e - 15);
}

/**
 * @param {ArrayBuffer} buffer the file's bytes
 * @param {string} what the file, for messages
 * @returns {Object<string, {shape: number[], data: Float32Array}>}
 */
export function readSafetensors(buffer, what) {
  const bad = (why) => new DemoError("bundle", `${what} is not a readable safetensors file (${why}); rebuild the app from a good bundle.`);
  if (buffer.byteLength < 8) throw bad("shorter than its header");
  const n = Number(new DataView(buffer).getBigUint64(0, true));
  if (n > buffer.byteLength - 8) throw bad("its header runs past the end");
  let header;
  try {
    header = JSON.parse(new TextDecoder().decode(new Uint8Array(buffer, 8, n)));
  } catch (e) {
    throw bad("its header is not JSON");
  }
  const base = 8 + n;
  const out = {};
  for (const [name, t] of Object.entries(header)) {
    if (name === "__metadata__") continue;
    const size = ITEM[t.dtype];
    if (!size) throw bad(`tensor ${name} has dtype ${t.dtype}; F32, F16, BF16, I8 or U8 expected`);
    const count = t.shape.reduce((a, b) => a * b, 1);
    const [a, b] = t.data_offsets;
    if (b - a !== count * size || base + b > buffer.byteLength) throw bad(`tensor ${name}'s offsets do not fit its shape`);
    let data;
    if (t.dtype === "F32") {
      data = (base + a) % 4 === 0 ? new Float32Array(buffer, base + a, count) : new Float32Array(buffer.slice(base + a, base + b));
    } else if (t.dtype === "I8") {
      data = new Int8Array(buffer, base + a, count); // the integers, kept small; a caller applies any scale
    } else if (t.dtype === "U8") {
      data = new Uint8Array(buffer, base + a, count); // q + 128 (a table shared with a Q8_0 LM head); a caller subtracts
    } else {
      const raw = new DataView(buffer, base + a, b - a);
      data = new Float32Array(count);
      const f32 = new DataView(new ArrayBuffer(4));
      for (let i = 0; i < count; i++) {
        const h = raw.getUint16(2 * i, true);
        if (t.dtype === "F16") data[i] = f16ToF32(h);
        else {
          f32.setUint32(0, h << 16, true);
          data[i] = f32.getFloat32(0, true);
        }
      }
    }
    out[name] = { shape: t.shape, data };
  }
  return out;
}
