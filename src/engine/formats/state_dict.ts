/**
 * A checkpoint's raw tensors, independent of any model graph: the common currency of the .pt and safetensors
 * readers and writers. Layouts are PyTorch's (conv weights OIHW, linear [out, in]); the model code converts.
 */

export type DType = 'float32' | 'float64' | 'float16' | 'bfloat16' | 'int64' | 'int32' | 'int16' | 'int8' | 'uint8' | 'bool';

/** The JS arrays tensor values live in (the same set the model code's PtTensor accepts, so a StateDict can be loaded directly). */
export type TensorArray = Float32Array | Float64Array | Int32Array | BigInt64Array | Uint8Array;

/**
 * One tensor. `data` holds the values in row-major order. JS (Node 20) has no half-precision or 8/16-bit
 * signed arrays that the model code accepts, so float16/bfloat16 values are widened into a Float32Array and
 * int8/int16 into an Int32Array; `dtype` keeps the file's type so writers narrow them back exactly.
 */
export interface TensorData {
  shape: number[];
  dtype: DType;
  data: TensorArray;
}

export type StateDict = Map<string, TensorData>;

/** What writers accept: anything shaped like a state_dict (the model's own PtStateDict uses `dtype: string`). */
export type StateDictLike = ReadonlyMap<string, { shape: readonly number[]; dtype: string; data: TensorArray }>;

/** Bytes per element in a file, and the JS array each dtype is held in. */
export const DTYPE_INFO: Record<DType, { bytes: number; array: 'f32' | 'f64' | 'i32' | 'i64' | 'u8' }> = {
  float32: { bytes: 4, array: 'f32' },
  float64: { bytes: 8, array: 'f64' },
  float16: { bytes: 2, array: 'f32' },
  bfloat16: { bytes: 2, array: 'f32' },
  int64: { bytes: 8, array: 'i64' },
  int32: { bytes: 4, array: 'i32' },
  int16: { bytes: 2, array: 'i32' },
  int8: { bytes: 1, array: 'i32' },
  uint8: { bytes: 1, array: 'u8' },
  bool: { bytes: 1, array: 'u8' },
};

export function isDType(s: unknown): s is DType {
  return typeof s === 'string' && Object.prototype.hasOwnProperty.call(DTYPE_INFO, s);
}

/** Element count of a shape (1 for a scalar). Shapes come from files, so callers validate them first. */
export function numel(shape: readonly number[]): number {
  let n = 1;
  for (const s of shape) n *= s;
  return n;
}

/** Valid shape: non-negative safe integers whose product stays a safe integer. */
export function isValidShape(shape: unknown): shape is number[] {
  if (!Array.isArray(shape) || shape.length > 64) return false;
  let n = 1;
  for (const s of shape) {
    if (typeof s !== 'number' || !Number.isSafeInteger(s) || s < 0) return false;
    n *= s;
    if (!Number.isSafeInteger(n)) return false;
  }
  return true;
}

/** Values as float32 (what the model computes in); shares the array when it already is one. */
export function toFloat32(t: { data: TensorArray }): Float32Array {
  const d = t.data;
  if (d instanceof Float32Array) return d;
  const out = new Float32Array(d.length);
  if (d instanceof BigInt64Array) for (let i = 0; i < d.length; i++) out[i] = Number(d[i]);
  else out.set(d);
  return out;
}

// ---- half precision ---------------------------------------------------------------------------------------

const f32 = new Float32Array(1);
const u32 = new Uint32Array(f32.buffer);

export function halfToFloat(h: number): number {
  const s = h & 0x8000 ? -1 : 1;
  const e = (h >> 10) & 0x1f;
  const f = h & 0x3ff;
  if (e === 0) return s * 2 ** -14 * (f / 1024);
  if (e === 31) return f ? NaN : s * Infinity;
  return s * 2 ** (e - 15) * (1 + f / 1024);
}

/** float -> IEEE half bits, round to nearest even (exact for values that came from a half). */
export function floatToHalf(v: number): number {
  f32[0] = v;
  const x = u32[0];
  const sign = (x >>> 16) & 0x8000;
  const exp = (x >>> 23) & 0xff;
  let mant = x & 0x7fffff;
  if (exp === 0xff) return sign | 0x7c00 | (mant ? 0x200 : 0); // Inf / NaN
  let e = exp - 127 + 15;
  if (e >= 31) return sign | 0x7c00; // overflow -> Inf
  if (e <= 0) {
    // Subnormal half (or zero): shift the implicit 1 into the mantissa, then round.
    if (e < -10) return sign;
    mant |= 0x800000;
    const shift = 14 - e;
    let h = mant >>> shift;
    const rem = mant & ((1 << shift) - 1);
    const half = 1 << (shift - 1);
    if (rem > half || (rem === half && h & 1)) h++;
    return sign | h;
  }
  let h = (e << 10) | (mant >>> 13);
  const rem = mant & 0x1fff;
  if (rem > 0x1000 || (rem === 0x1000 && h & 1)) h++; // may carry into the exponent, which is still correct
  return sign | h;
}

export function bf16ToFloat(b: number): number {
  u32[0] = (b & 0xffff) << 16;
  return f32[0];
}

export function floatToBf16(v: number): number {
  f32[0] = v;
  const x = u32[0];
  if ((x & 0x7f800000) === 0x7f800000 && x & 0x7fffff) return ((x >>> 16) | 0x40) & 0xffff; // keep NaN a NaN
  return ((x + 0x7fff + ((x >>> 16) & 1)) >>> 16) & 0xffff;
}

// ---- bytes <-> values -------------------------------------------------------------------------------------

const HOST_LE = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;
/** dtypes whose file bytes are exactly the bytes of their JS array. */
const SAME_WIDTH: Partial<Record<DType, { new (n: number): Float32Array | Float64Array | Int32Array | BigInt64Array }>> = {
  float32: Float32Array,
  float64: Float64Array,
  int32: Int32Array,
  int64: BigInt64Array,
};

/**
 * Decode `count` elements of `dtype` from raw bytes. The caller has checked `bytes.length >= count * size`.
 * Little-endian unless told otherwise (PyTorch archives record their byte order).
 */
export function decodeTensorBytes(bytes: Uint8Array, dtype: DType, count: number, littleEndian = true): TensorArray {
  // Fast path: same byte order as this machine and a same-width JS array -> one byte copy (no per-element loop).
  if (littleEndian === HOST_LE) {
    const Ctor = SAME_WIDTH[dtype];
    if (Ctor) {
      const out = new Ctor(count);
      new Uint8Array(out.buffer).set(bytes.subarray(0, count * DTYPE_INFO[dtype].bytes));
      return out;
    }
  }
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const le = littleEndian;
  switch (dtype) {
    case 'float32': {
      const out = new Float32Array(count);
      for (let i = 0; i < count; i++) out[i] = dv.getFloat32(i * 4, le);
      return out;
    }
    case 'float64': {
      const out = new Float64Array(count);
      for (let i = 0; i < count; i++) out[i] = dv.getFloat64(i * 8, le);
      return out;
    }
    case 'float16': {
      const out = new Float32Array(count);
      for (let i = 0; i < count; i++) out[i] = halfToFloat(dv.getUint16(i * 2, le));
      return out;
    }
    case 'bfloat16': {
      const out = new Float32Array(count);
      for (let i = 0; i < count; i++) out[i] = bf16ToFloat(dv.getUint16(i * 2, le));
      return out;
    }
    case 'int64': {
      const out = new BigInt64Array(count);
      for (let i = 0; i < count; i++) out[i] = dv.getBigInt64(i * 8, le);
      return out;
    }
    case 'int32': {
      const out = new Int32Array(count);
      for (let i = 0; i < count; i++) out[i] = dv.getInt32(i * 4, le);
      return out;
    }
    case 'int16': {
      const out = new Int32Array(count);
      for (let i = 0; i < count; i++) out[i] = dv.getInt16(i * 2, le);
      return out;
    }
    case 'int8': {
      const out = new Int32Array(count);
      for (let i = 0; i < count; i++) out[i] = dv.getInt8(i);
      return out;
    }
    case 'uint8':
      // A copy: `bytes` may be a Node Buffer, whose slice() would alias (and pin) the whole file.
      return new Uint8Array(bytes.subarray(0, count));
    case 'bool': {
      // Any non-zero byte is true; normalise so a written file has only 0/1.
      const out = new Uint8Array(count);
      for (let i = 0; i < count; i++) out[i] = bytes[i] ? 1 : 0;
      return out;
    }
  }
}

/** Encode a tensor's values as little-endian bytes of its dtype. Throws on a data/dtype/shape mismatch (a bug, not input). */
export function encodeTensorBytes(t: { shape: readonly number[]; dtype: string; data: TensorArray }, name = 'tensor'): Uint8Array {
  if (!isDType(t.dtype)) throw new Error(`cannot write dtype ${t.dtype} (${name})`);
  const n = numel(t.shape);
  if (t.data.length !== n) throw new Error(`${name}: ${t.data.length} values for shape [${t.shape.join(', ')}]`);
  const size = DTYPE_INFO[t.dtype].bytes;
  const Same = SAME_WIDTH[t.dtype];
  if (HOST_LE && Same && t.data instanceof Same) {
    return new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength).slice();
  }
  const out = new Uint8Array(n * size);
  const dv = new DataView(out.buffer);
  const d = t.data;
  const num = (i: number): number => Number(d[i]);
  switch (t.dtype) {
    case 'float32':
      for (let i = 0; i < n; i++) dv.setFloat32(i * 4, num(i), true);
      break;
    case 'float64':
      for (let i = 0; i < n; i++) dv.setFloat64(i * 8, num(i), true);
      break;
    case 'float16':
      for (let i = 0; i < n; i++) dv.setUint16(i * 2, floatToHalf(num(i)), true);
      break;
    case 'bfloat16':
      for (let i = 0; i < n; i++) dv.setUint16(i * 2, floatToBf16(num(i)), true);
      break;
    case 'int64':
      for (let i = 0; i < n; i++) dv.setBigInt64(i * 8, d instanceof BigInt64Array ? d[i] : BigInt(Math.trunc(num(i))), true);
      break;
    case 'int32':
      for (let i = 0; i < n; i++) dv.setInt32(i * 4, num(i), true);
      break;
    case 'int16':
      for (let i = 0; i < n; i++) dv.setInt16(i * 2, num(i), true);
      break;
    case 'int8':
      for (let i = 0; i < n; i++) dv.setInt8(i, num(i));
      break;
    case 'uint8':
      for (let i = 0; i < n; i++) out[i] = num(i);
      break;
    case 'bool':
      for (let i = 0; i < n; i++) out[i] = num(i) ? 1 : 0;
      break;
  }
  return out;
}

// One atomic writer for the whole engine (temp file, fsync, rename, directory sync).
export { writeFileAtomic } from '../util/atomic';
