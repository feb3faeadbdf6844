/**
 * The safetensors format: an 8-byte little-endian header length, a JSON header mapping each tensor name to
 * {dtype, shape, data_offsets}, then the raw little-endian data. Reading checks every size and offset against
 * the file before allocating; writing is atomic.
 */
import * as fs from 'node:fs';
import { InputError } from '../errors';
import type { PtStateDict, PtTensor } from '../nn/module';
import { writeAtomic } from '../jobs/output';

const DTYPES: Record<string, { bytes: number; name: string }> = {
  F32: { bytes: 4, name: 'float32' },
  F64: { bytes: 8, name: 'float64' },
  F16: { bytes: 2, name: 'float16' },
  BF16: { bytes: 2, name: 'bfloat16' },
  I64: { bytes: 8, name: 'int64' },
  I32: { bytes: 4, name: 'int32' },
  U8: { bytes: 1, name: 'uint8' },
  BOOL: { bytes: 1, name: 'bool' },
};
const TO_ST: Record<string, string> = { float32: 'F32', float64: 'F64', int64: 'I64', int32: 'I32', uint8: 'U8', bool: 'BOOL' };

/** Half-precision bits to a number. */
function halfToFloat(h: number): number {
  const s = h & 0x8000 ? -1 : 1;
  const e = (h >> 10) & 0x1f;
  const f = h & 0x3ff;
  if (e === 0) return s * 2 ** -14 * (f / 1024);
  if (e === 31) return f ? NaN : s * Infinity;
  return s * 2 ** (e - 15) * (1 + f / 1024);
}

export function decodeTensorBytes(bytes: Uint8Array, dtype: string, count: number): PtTensor['data'] {
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  switch (dtype) {
    case 'float32':
      return Float32Array.from({ length: count }, (_, i) => dv.getFloat32(i * 4, true));
    case 'float64':
      return Float64Array.from({ length: count }, (_, i) => dv.getFloat64(i * 8, true));
    case 'float16':
      return Float32Array.from({ length: count }, (_, i) => halfToFloat(dv.getUint16(i * 2, true)));
    case 'bfloat16':
      return Float32Array.from({ length: count }, (_, i) => {
        const b = new DataView(new ArrayBuffer(4));
        b.setUint16(0, dv.getUint16(i * 2, true), false);
        return b.getFloat32(0, false);
      });
    case 'int64':
      return BigInt64Array.from({ length: count }, (_, i) => dv.getBigInt64(i * 8, true));
    case 'int32':
      return Int32Array.from({ length: count }, (_, i) => dv.getInt32(i * 4, true));
    default:
      return Uint8Array.from(bytes.subarray(0, count));
  }
}

/** The `__metadata__` strings of a safetensors file (where we record the architecture of our own outputs). */
export function readSafetensorsMetadata(file: string): Record<string, string> {
  const fd = fs.openSync(file, 'r');
  try {
    const size = fs.fstatSync(fd).size;
    const head = Buffer.alloc(8);
    if (size < 8 || fs.readSync(fd, head, 0, 8, 0) !== 8) throw new InputError('not a safetensors file (shorter than its header length)', file);
    const len = Number(head.readBigUInt64LE(0));
    if (len <= 0 || len > size - 8 || len > 100 * 1024 * 1024) throw new InputError(`safetensors header length ${len} does not fit the file (${size} bytes)`, file);
    const json = Buffer.alloc(len);
    fs.readSync(fd, json, 0, len, 8);
    try {
      const meta = (JSON.parse(json.toString('utf8')) as { __metadata__?: Record<string, string> }).__metadata__;
      return meta && typeof meta === 'object' ? meta : {};
    } catch {
      throw new InputError('safetensors header is not valid JSON', file);
    }
  } finally {
    fs.closeSync(fd);
  }
}

export function readSafetensors(file: string): PtStateDict {
  const buf = fs.readFileSync(file);
  if (buf.length < 8) throw new InputError('not a safetensors file (shorter than its header length)', file);
  const headerLen = Number(buf.readBigUInt64LE(0));
  if (headerLen <= 0 || headerLen > buf.length - 8 || headerLen > 100 * 1024 * 1024) {
    throw new InputError(`safetensors header length ${headerLen} does not fit the file (${buf.length} bytes)`, file);
  }
  let header: Record<string, { dtype: string; shape: number[]; data_offsets: [number, number] }>;
  try {
    header = JSON.parse(buf.subarray(8, 8 + headerLen).toString('utf8'));
  } catch {
    throw new InputError('safetensors header is not valid JSON', file);
  }
  const dataStart = 8 + headerLen;
  const sd: PtStateDict = new Map();
  for (const [name, t] of Object.entries(header)) {
    if (name === '__metadata__') continue;
    const d = DTYPES[t?.dtype];
    if (!d) throw new InputError(`unsupported safetensors dtype ${t?.dtype} for ${name}`, file);
    if (!Array.isArray(t.shape) || t.shape.some((s) => !Number.isInteger(s) || s < 0)) throw new InputError(`bad shape for ${name}`, file);
    const count = t.shape.reduce((a, b) => a * b, 1);
    const [b, e] = t.data_offsets ?? [];
    if (!Number.isInteger(b) || !Number.isInteger(e) || b < 0 || e < b || dataStart + e > buf.length || e - b !== count * d.bytes) {
      throw new InputError(`offsets of ${name} do not match its shape or the file size`, file);
    }
    sd.set(name, { shape: t.shape, dtype: d.name, data: decodeTensorBytes(buf.subarray(dataStart + b, dataStart + e), d.name, count) });
  }
  return sd;
}

export function encodeSafetensors(sd: PtStateDict, metadata?: Record<string, string>): Uint8Array {
  const header: Record<string, unknown> = {};
  if (metadata) header.__metadata__ = metadata;
  const chunks: Uint8Array[] = [];
  let offset = 0;
  for (const [name, t] of sd) {
    const st = TO_ST[t.dtype];
    if (!st) throw new Error(`cannot write dtype ${t.dtype} to safetensors`);
    const bytes = new Uint8Array(t.data.buffer.slice(t.data.byteOffset, t.data.byteOffset + t.data.byteLength));
    header[name] = { dtype: st, shape: t.shape, data_offsets: [offset, offset + bytes.length] };
    chunks.push(bytes);
    offset += bytes.length;
  }
  let json = JSON.stringify(header);
  // Pad the header with spaces so the data starts 8-byte aligned, as the reference writer does.
  json += ' '.repeat((8 - ((8 + Buffer.byteLength(json)) % 8)) % 8);
  const head = Buffer.from(json, 'utf8');
  const out = new Uint8Array(8 + head.length + offset);
  new DataView(out.buffer).setBigUint64(0, BigInt(head.length), true);
  out.set(head, 8);
  let o = 8 + head.length;
  for (const c of chunks) {
    out.set(c, o);
    o += c.length;
  }
  return out;
}

export function writeSafetensors(sd: PtStateDict, file: string, metadata?: Record<string, string>): void {
  writeAtomic(file, encodeSafetensors(sd, metadata));
}
