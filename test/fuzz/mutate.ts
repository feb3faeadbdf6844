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
