/**
 * Seeded mutations of valid files for the parser fuzz test. Each mutator models a way real files go bad:
 * bit rot (flips), damaged bytes, truncated downloads, lying length fields (the classic way to make a
 * parser allocate or loop on a size the file does not hold), and pieces of files pasted together.
 */
import { Rng } from '../../src/engine/util/rng';

/** A byte range the case knows to be a length or count (e.g. a header length, a zip size field). */
export interface LengthField {
  offset: number;
  size: 2 | 4 | 8;
  le: boolean;
}

export interface MutationContext {
  rng: Rng;
  /** Another valid file of the same format, for splices across files. */
  other: Uint8Array;
  lengthFields: LengthField[];
}

export type Mutator = (src: Uint8Array, ctx: MutationContext) => Uint8Array;

const INTERESTING_BYTES = [0x00, 0xff, 0x7f, 0x80, 0x01, 0xfe];

function copy(src: Uint8Array): Uint8Array {
  return Uint8Array.from(src);
}

function concat(...parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((s, p) => s + p.length, 0));
  let o = 0;
  for (const p of parts) {
    out.set(p, o);
    o += p.length;
  }
  return out;
}

/** Values a hostile length field takes: huge, just past the file, sign-bit games, off by one. */
function bigValues(fileLen: number): bigint[] {
  return [0xffffffffn, 0x7fffffffn, 0x80000000n, BigInt(fileLen) * 1000n + 7n, BigInt(fileLen + 1), 2n ** 53n + 1n, 2n ** 63n, 0n, 0xffffn, 0xffffffffffffffffn];
}

function writeInt(buf: Uint8Array, offset: number, size: 2 | 4 | 8, le: boolean, value: bigint): void {
  const v = value & ((1n << BigInt(size * 8)) - 1n);
  for (let i = 0; i < size; i++) {
    const byte = Number((v >> BigInt(8 * i)) & 0xffn);
    const pos = le ? offset + i : offset + size - 1 - i;
    if (pos >= 0 && pos < buf.length) buf[pos] = byte;
  }
}

export const MUTATORS: Record<string, Mutator> = {
  bitflip(src, { rng }) {
    const out = copy(src);
    if (!out.length) return out;
    const n = 1 + rng.int(8);
    for (let i = 0; i < n; i++) out[rng.int(out.length)] ^= 1 << rng.int(8);
    return out;
  },
  bytes(src, { rng }) {
    const out = copy(src);
    if (!out.length) return out;
    const n = 1 + rng.int(4);
    for (let i = 0; i < n; i++) out[rng.int(out.length)] = INTERESTING_BYTES[rng.int(INTERESTING_BYTES.length)];
    return out;
  },
  truncate(src, { rng }) {
    // Half the time a cut near either end (headers, the last record), else anywhere.
    const r = rng.next();
    const len = r < 0.25 ? rng.int(Math.min(32, src.length)) : r < 0.5 ? Math.max(0, src.length - 1 - rng.int(Math.min(64, src.length))) : rng.int(src.length);
    return src.slice(0, len);
  },
  inflate(src, { rng, lengthFields }) {
    const out = copy(src);
    const vals = bigValues(src.length);
    const value = vals[rng.int(vals.length)];
    // Known length fields first; otherwise a random aligned spot in the header area, either byte order.
    if (lengthFields.length && rng.next() < 0.75) {
      const f = lengthFields[rng.int(lengthFields.length)];
      writeInt(out, f.offset, f.size, f.le, value);
    } else {
      const size = ([2, 4, 8] as const)[rng.int(3)];
      const span = Math.max(1, Math.min(out.length, 256) - size);
      writeInt(out, rng.int(span), size, rng.next() < 0.5, value);
    }
    return out;
  },
  digits(src, { rng }) {
    // Text headers (npy, safetensors JSON, audit.json, pickle text opcodes) carry sizes as decimal digits.
    const runs: Array<[number, number]> = [];
    for (let i = 0; i < src.length; ) {
      if (src[i] >= 0x30 && src[i] <= 0x39) {
        let j = i;
        while (j < src.length && src[j] >= 0x30 && src[j] <= 0x39) j++;
        runs.push([i, j]);
        i = j;
      } else i++;
    }
    if (!runs.length) return MUTATORS.bitflip(src, { rng, other: src, lengthFields: [] });
    const [a, b] = runs[rng.int(runs.length)];
    const choices = ['4294967296', '99999999999999999999', '2147483647', '-1', '0', '1e308', '18446744073709551615', '9007199254740993', String(src.length * 1000)];
    return concat(src.subarray(0, a), Buffer.from(choices[rng.int(choices.length)], 'latin1'), src.subarray(b));
  },
  splice(src, { rng }) {
    if (src.length < 2) return copy(src);
    const a = rng.int(src.length);
    const b = Math.min(src.length, a + 1 + rng.int(Math.min(256, src.length)));
    const chunk = src.slice(a, b);
    const at = rng.int(src.length);
    const r = rng.next();
    if (r < 0.33) return concat(src.subarray(0, at), chunk, src.subarray(at)); // duplicate a piece
    if (r < 0.66) return concat(src.subarray(0, a), src.subarray(b)); // delete a piece
    const out = copy(src); // overwrite with a piece from elsewhere
    out.set(chunk.subarray(0, Math.max(0, out.length - at)), at);
    return out;
  },
  crossover(src, { rng, other }) {
    // The head of one valid file with the tail of another: every header valid, every offset wrong.
    const a = rng.int(src.length + 1);
    const b = rng.int(other.length + 1);
    return concat(src.subarray(0, a), other.subarray(b));
  },
  append(src, { rng }) {
    const extra = new Uint8Array(1 + rng.int(64));
    for (let i = 0; i < extra.length; i++) extra[i] = rng.int(256);
    return rng.next() < 0.5 ? concat(src, extra) : concat(extra, src);
  },
};

export const MUTATOR_NAMES = Object.keys(MUTATORS);

/** Zip size, count and offset fields (local headers, central directory, end record) for `inflate`. */
export function zipLengthFields(buf: Uint8Array): LengthField[] {
  const dv = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  const out: LengthField[] = [];
  const f = (offset: number, size: 2 | 4) => out.push({ offset, size, le: true });
  for (let i = 0; i + 4 <= buf.length; i++) {
    const sig = dv.getUint32(i, true);
    if (sig === 0x04034b50) [18, 22].forEach((o) => f(i + o, 4)), [26, 28].forEach((o) => f(i + o, 2));
    else if (sig === 0x02014b50) [20, 24, 42].forEach((o) => f(i + o, 4)), [28, 30, 32].forEach((o) => f(i + o, 2));
    else if (sig === 0x06054b50) [8, 10, 20].forEach((o) => f(i + o, 2)), [12, 16].forEach((o) => f(i + o, 4));
  }
  return out;
}

/** Operand spots of pickle opcodes that carry a length or memo index (BINUNICODE, BINBYTES, FRAME, LONG_BINGET/PUT, ...). */
export function pickleLengthFields(buf: Uint8Array): LengthField[] {
  const out: LengthField[] = [];
  for (let i = 0; i + 1 < buf.length; i++) {
    const op = buf[i];
    if (op === 0x58 || op === 0x42 || op === 0x54 || op === 0x6a || op === 0x72 || op === 0x8c) out.push({ offset: i + 1, size: 4, le: true });
    else if (op === 0x95 || op === 0x8d || op === 0x8e || op === 0x96) out.push({ offset: i + 1, size: 8, le: true });
  }
  return out;
}

/** PNG chunk length fields (big-endian, at each chunk start) and the IHDR width and height. */
export function pngLengthFields(buf: Uint8Array): LengthField[] {
  const out: LengthField[] = [];
  if (buf.length >= 24) out.push({ offset: 16, size: 4, le: false }, { offset: 20, size: 4, le: false });
  for (let o = 8; o + 8 <= buf.length; ) {
    out.push({ offset: o, size: 4, le: false });
    const len = ((buf[o] << 24) | (buf[o + 1] << 16) | (buf[o + 2] << 8) | buf[o + 3]) >>> 0;
    o += 12 + len;
  }
  return out;
}

const CRC_TABLE = Uint32Array.from({ length: 256 }, (_, n) => {
  let c = n;
  for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
  return c >>> 0;
});

function crc32(b: Uint8Array): number {
  let c = 0xffffffff;
  for (let i = 0; i < b.length; i++) c = CRC_TABLE[(c ^ b[i]) & 0xff] ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

/**
 * Recompute every PNG chunk's CRC after a mutation: a decoder that checks CRCs refuses almost every mutated
 * file at the first damaged chunk, so without this the fuzzer would test little beyond the checksum.
 */
export function fixPngCrcs(src: Uint8Array): Uint8Array {
  const out = copy(src);
  for (let o = 8; o + 12 <= out.length; ) {
    const len = ((out[o] << 24) | (out[o + 1] << 16) | (out[o + 2] << 8) | out[o + 3]) >>> 0;
    if (o + 12 + len > out.length) break;
    const crc = crc32(out.subarray(o + 4, o + 8 + len));
    out[o + 8 + len] = crc >>> 24;
    out[o + 9 + len] = (crc >>> 16) & 0xff;
    out[o + 10 + len] = (crc >>> 8) & 0xff;
    out[o + 11 + len] = crc & 0xff;
    o += 12 + len;
  }
  return out;
}

/** A PNG chunk with a correct CRC (for hand-made hostile files). */
export function pngChunk(type: string, data: Uint8Array): Uint8Array {
  const head = new Uint8Array(8);
  new DataView(head.buffer).setUint32(0, data.length);
  head.set(Buffer.from(type, 'latin1'), 4);
  const crc = new Uint8Array(4);
  new DataView(crc.buffer).setUint32(0, crc32(concat(head.subarray(4), data)));
  return concat(head, data, crc);
}

/** JPEG segment lengths (2 bytes big-endian after each marker) and the frame's height and width. */
export function jpegLengthFields(buf: Uint8Array): LengthField[] {
  const out: LengthField[] = [];
  for (let o = 2; o + 4 <= buf.length; ) {
    if (buf[o] !== 0xff) break;
    const marker = buf[o + 1];
    if (marker === 0xd8 || (marker >= 0xd0 && marker <= 0xd7)) {
      o += 2;
      continue;
    }
    out.push({ offset: o + 2, size: 2, le: false });
    // SOF0..SOF15 except DHT (C4), JPG (C8) and DAC (CC): precision, then height and width.
    if (marker >= 0xc0 && marker <= 0xcf && marker !== 0xc4 && marker !== 0xc8 && marker !== 0xcc) {
      out.push({ offset: o + 5, size: 2, le: false }, { offset: o + 7, size: 2, le: false });
    }
    if (marker === 0xda) break; // entropy-coded data follows
    o += 2 + ((buf[o + 2] << 8) | buf[o + 3]);
  }
  return out;
}

/** A varint or a length prefix inside a protobuf message: where it is and how many bytes it takes. */
interface PbField {
  offset: number;
  width: number;
}

function readVarint(b: Uint8Array, o: number): { value: bigint; next: number } | undefined {
  let v = 0n;
  for (let i = 0; i < 10; i++) {
    if (o + i >= b.length) return undefined;
    v |= BigInt(b[o + i] & 0x7f) << BigInt(7 * i);
    if (!(b[o + i] & 0x80)) return { value: v, next: o + i + 1 };
  }
  return undefined;
}

function encodeVarint(v: bigint): Uint8Array {
  const out: number[] = [];
  let x = v & ((1n << 64n) - 1n);
  do {
    const byte = Number(x & 0x7fn);
    x >>= 7n;
    out.push(x ? byte | 0x80 : byte);
  } while (x);
  return Uint8Array.from(out);
}

/**
 * Every varint value and length prefix of a protobuf message, nested messages included (a length-delimited
 * field that parses cleanly as a message is walked too; strings and packed arrays usually do not).
 */
export function protobufFields(buf: Uint8Array, start = 0, end = buf.length, depth = 0, out: PbField[] = []): PbField[] {
  const mine: PbField[] = [];
  let o = start;
  const nested: Array<[number, number]> = [];
  while (o < end) {
    const tag = readVarint(buf, o);
    if (!tag || tag.next > end || tag.value >> 3n === 0n) return out;
    const wire = Number(tag.value & 7n);
    o = tag.next;
    if (wire === 0) {
      const v = readVarint(buf, o);
      if (!v || v.next > end) return out;
      mine.push({ offset: o, width: v.next - o });
      o = v.next;
    } else if (wire === 2) {
      const len = readVarint(buf, o);
      if (!len || len.next + Number(len.value) > end) return out;
      mine.push({ offset: o, width: len.next - o });
      nested.push([len.next, len.next + Number(len.value)]);
      o = len.next + Number(len.value);
    } else if (wire === 1) o += 8;
    else if (wire === 5) o += 4;
    else return out;
  }
  if (o !== end) return out;
  out.push(...mine);
  if (depth < 8) for (const [a, b] of nested) protobufFields(buf, a, b, depth + 1, out);
  return out;
}

/**
 * Protobuf-aware mutation: one varint (a length prefix, a dimension, a type tag, an attribute value) rewritten
 * to a hostile value, the message re-encoded around it. Fixed-width `inflate` cannot do this to varints.
 */
export const protobufVarint: Mutator = (src, { rng }) => {
  const fields = protobufFields(src);
  if (!fields.length) return MUTATORS.bitflip(src, { rng, other: src, lengthFields: [] });
  const f = fields[rng.int(fields.length)];
  const vals = [...bigValues(src.length), 2n ** 64n - 1n, 2n ** 31n, 1n, 3n, 0x7fn];
  const v = encodeVarint(vals[rng.int(vals.length)]);
  return concat(src.subarray(0, f.offset), v, src.subarray(f.offset + f.width));
};
