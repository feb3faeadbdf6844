/**
 * The safetensors format: an 8-byte little-endian header length, a JSON header mapping each tensor name to
 * {dtype, shape, data_offsets: [begin, end]} (relative to the end of the header), then the raw little-endian
 * data. Reading checks every size and offset against the file - and the tensors' ranges against each other -
 * before allocating anything; writing is atomic.
 */
import * as fs from 'node:fs';
import { InputError } from '../errors';
import {
  DTYPE_INFO,
  decodeTensorBytes,
  encodeTensorBytes,
  isValidShape,
  numel,
  writeFileAtomic,
  type DType,
  type StateDict,
  type StateDictLike,
} from './state_dict';

export { decodeTensorBytes } from './state_dict';

/** safetensors dtype names <-> ours. */
const FROM_ST: Record<string, DType> = {
  F32: 'float32',
  F64: 'float64',
  F16: 'float16',
  BF16: 'bfloat16',
  I64: 'int64',
  I32: 'int32',
  I16: 'int16',
  I8: 'int8',
  U8: 'uint8',
  BOOL: 'bool',
};
const TO_ST: Record<string, string> = Object.fromEntries(Object.entries(FROM_ST).map(([k, v]) => [v, k]));

/** Headers of real models are KBs to a few MB; the reference implementation caps them at 100 MB too. */
const MAX_HEADER = 100 * 1024 * 1024;

interface Header {
  meta: Record<string, string>;
  tensors: Array<{ name: string; dtype: DType; shape: number[]; begin: number; end: number }>;
  dataStart: number;
}

/** Parse and validate the header given the file size; `readAt` reads `len` bytes at `pos`. */
function parseHeader(size: number, readAt: (pos: number, len: number) => Uint8Array, where: string): Header {
  if (size < 8) throw new InputError('not a safetensors file (shorter than its 8-byte header length)', where);
  const lenBig = Buffer.from(readAt(0, 8)).readBigUInt64LE(0);
  // Compare as bigint: a hostile length may not fit a double exactly.
  if (lenBig < 2n || lenBig > BigInt(size - 8) || lenBig > BigInt(MAX_HEADER)) {
    throw new InputError(`safetensors header length ${lenBig} does not fit the file (${size} bytes)`, where);
  }
  const len = Number(lenBig);
  let header: unknown;
  try {
    header = JSON.parse(Buffer.from(readAt(8, len)).toString('utf8'));
  } catch {
    throw new InputError('safetensors header is not valid JSON', where);
  }
  if (!header || typeof header !== 'object' || Array.isArray(header)) throw new InputError('safetensors header is not a JSON object', where);
  const dataStart = 8 + len;
  const dataLen = size - dataStart;
  const meta: Record<string, string> = {};
  const tensors: Header['tensors'] = [];
  for (const [name, raw] of Object.entries(header as Record<string, unknown>)) {
    if (name === '__metadata__') {
      if (raw === null) continue;
      if (typeof raw !== 'object' || Array.isArray(raw)) throw new InputError('safetensors __metadata__ is not an object', where);
      for (const [k, v] of Object.entries(raw as Record<string, unknown>)) {
        if (typeof v !== 'string') throw new InputError(`safetensors metadata ${k} is not a string`, where);
        meta[k] = v;
      }
      continue;
    }
    const t = raw as { dtype?: unknown; shape?: unknown; data_offsets?: unknown };
    if (!t || typeof t !== 'object') throw new InputError(`safetensors entry ${name} is not an object`, where);
    const dtype = typeof t.dtype === 'string' ? FROM_ST[t.dtype] : undefined;
    if (!dtype) throw new InputError(`unsupported safetensors dtype ${JSON.stringify(t.dtype)} for ${name}`, where);
    if (!isValidShape(t.shape)) throw new InputError(`bad shape for ${name}`, where);
    const off = t.data_offsets;
    if (!Array.isArray(off) || off.length !== 2 || !off.every((x) => Number.isSafeInteger(x))) throw new InputError(`bad data_offsets for ${name}`, where);
    const [begin, end] = off as [number, number];
    if (begin < 0 || end < begin || end > dataLen) {
      throw new InputError(`data of ${name} [${begin}, ${end}) lies outside the file's ${dataLen} data bytes`, where);
    }
    if (end - begin !== numel(t.shape) * DTYPE_INFO[dtype].bytes) {
      throw new InputError(`data of ${name} is ${end - begin} bytes, its shape [${t.shape.join(', ')}] of ${dtype} needs ${numel(t.shape) * DTYPE_INFO[dtype].bytes}`, where);
    }
    tensors.push({ name, dtype, shape: t.shape, begin, end });
  }
  // Ranges must tile the data exactly, as the format requires: no overlap (two tensors aliasing the same
  // bytes) and no holes (bytes that belong to nothing, a sign of a damaged or doctored file).
  const sorted = [...tensors].sort((a, b) => a.begin - b.begin || a.end - b.end);
  let cursor = 0;
  for (const t of sorted) {
    if (t.begin < cursor) throw new InputError(`data of ${t.name} overlaps another tensor`, where);
    if (t.begin > cursor) throw new InputError(`safetensors data has a gap before ${t.name}`, where);
    cursor = t.end;
  }
  if (cursor !== dataLen) throw new InputError(`safetensors file has ${dataLen - cursor} bytes after its last tensor`, where);
  return { meta, tensors, dataStart };
}

/** The `__metadata__` strings of a safetensors file (where we record the architecture of our own outputs). Reads only the header. */
export function readSafetensorsMetadata(file: string): Record<string, string> {
  let fd: number;
  try {
    fd = fs.openSync(file, 'r');
  } catch (e) {
    throw new InputError(`cannot read the model: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`, file);
  }
  try {
    const size = fs.fstatSync(fd).size;
    const readAt = (pos: number, len: number): Uint8Array => {
      const b = Buffer.alloc(len);
      if (fs.readSync(fd, b, 0, len, pos) !== len) throw new InputError('safetensors file is truncated', file);
      return b;
    };
    return parseHeader(size, readAt, file).meta;
  } finally {
    fs.closeSync(fd);
  }
}

/** Parse safetensors bytes; `where` names the file in errors. */
export function decodeSafetensors(buf: Uint8Array, where: string): { stateDict: StateDict; metadata: Record<string, string> } {
  const h = parseHeader(buf.length, (pos, len) => buf.subarray(pos, pos + len), where);
  const sd: StateDict = new Map();
  for (const t of h.tensors) {
    const bytes = buf.subarray(h.dataStart + t.begin, h.dataStart + t.end);
    sd.set(t.name, { shape: t.shape, dtype: t.dtype, data: decodeTensorBytes(bytes, t.dtype, numel(t.shape)) });
  }
  return { stateDict: sd, metadata: h.meta };
}

export function readSafetensors(file: string): StateDict {
  let buf: Uint8Array;
  try {
    buf = fs.readFileSync(file);
  } catch (e) {
    throw new InputError(`cannot read the model: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`, file);
  }
  return decodeSafetensors(buf, file).stateDict;
}

export function encodeSafetensors(sd: StateDictLike, metadata?: Record<string, string>): Uint8Array {
  const header: Record<string, unknown> = {};
  if (metadata) header.__metadata__ = metadata;
  const chunks: Uint8Array[] = [];
  let offset = 0;
  for (const [name, t] of sd) {
    if (name === '__metadata__') throw new Error('a tensor cannot be named __metadata__ in safetensors');
    const st = TO_ST[t.dtype];
    if (!st) throw new Error(`cannot write dtype ${t.dtype} to safetensors (${name})`);
    const bytes = encodeTensorBytes(t, name);
    header[name] = { dtype: st, shape: [...t.shape], data_offsets: [offset, offset + bytes.length] };
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

/** Write atomically (temp file + rename): a crash never leaves a half-written model behind. */
export function writeSafetensors(sd: StateDictLike, file: string, metadata?: Record<string, string>): void {
  writeFileAtomic(file, encodeSafetensors(sd, metadata));
}
