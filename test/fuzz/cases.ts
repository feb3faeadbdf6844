/**
 * The parsers under fuzzing, one entry per reader: how to make a valid file (several variants, so that
 * splices across files mean something), how to read it the way a job does, and where its length fields
 * are. A new format is one more entry here.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as zlib from 'node:zlib';
import { unpickle } from '../../src/engine/io/pickle';
import { readPt, encodePt } from '../../src/engine/io/pt';
import { readSafetensors, readSafetensorsMetadata, encodeSafetensors } from '../../src/engine/io/safetensors';
import { readNpyPair } from '../../src/engine/io/data/npy';
import { readIdxPair } from '../../src/engine/io/data/idx';
import { loadJob } from '../../src/engine/jobs/validate';
import type { StateDictLike, TensorArray } from '../../src/engine/io/state_dict';
import { Rng } from '../../src/engine/util/rng';
import { pickleLengthFields, zipLengthFields, type LengthField } from './mutate';

export interface FuzzCase {
  name: string;
  /** File name the bytes are written to (readers look at extensions). */
  fileName: string;
  /** A valid file; `variant` picks one of several shapes/dtypes. */
  makeValidFile(variant: number): Uint8Array;
  /** Read `file` (which holds the bytes under test) like a job would; `dir` holds the case's side files. */
  read(file: string, dir: string): unknown;
  /** Side files the reader needs next to the file under test (the other half of a pair, a model a job names). */
  setup?(dir: string): void;
  lengthFields?(valid: Uint8Array): LengthField[];
  /** Hand-made hostile inputs, tried once each besides the random mutations. */
  hostile?(): Array<{ label: string; bytes: Uint8Array }>;
  /**
   * Allowed memory growth per byte of input. Decoding legitimately expands (uint8 pixels to float32 images,
   * float16 to float32, gzip); a length field the file cannot back would exceed it by orders of magnitude.
   */
  allocFactor?: number;
}

const FIXTURES = path.join(__dirname, '..', 'fixtures');

function tensors(variant: number): StateDictLike {
  const rng = new Rng(1000 + variant);
  const f32 = (n: number) => Float32Array.from({ length: n }, () => rng.normal());
  const sd = new Map<string, { shape: number[]; dtype: string; data: TensorArray }>();
  sd.set('conv1.weight', { shape: [4, 1 + (variant % 3), 3, 3], dtype: 'float32', data: f32(4 * (1 + (variant % 3)) * 9) });
  sd.set('bn1.running_mean', { shape: [4], dtype: variant % 2 ? 'float64' : 'float32', data: variant % 2 ? Float64Array.from(f32(4)) : f32(4) });
  sd.set('bn1.num_batches_tracked', { shape: [], dtype: 'int64', data: BigInt64Array.from([BigInt(variant * 7)]) });
  sd.set('linear.weight', { shape: [3, 5 + variant], dtype: 'float32', data: f32(3 * (5 + variant)) });
  if (variant % 3 === 2) sd.set('mask', { shape: [6], dtype: 'uint8', data: Uint8Array.from([0, 1, 1, 0, 1, 0]) });
  return sd;
}

/** A minimal NPY v1 writer (C order), for valid inputs. */
export function encodeNpy(descr: string, shape: number[], body: Uint8Array): Uint8Array {
  let header = `{'descr': '${descr}', 'fortran_order': False, 'shape': (${shape.join(', ')}${shape.length === 1 ? ',' : ''}), }`;
  const total = 10 + header.length + 1;
  header += ' '.repeat((64 - (total % 64)) % 64) + '\n';
  const pre = Buffer.alloc(10);
  pre.write('\x93NUMPY', 0, 'latin1');
  pre[6] = 1;
  pre[7] = 0;
  pre.writeUInt16LE(header.length, 8);
  return Buffer.concat([pre, Buffer.from(header, 'latin1'), body]);
}

export function encodeIdx(dims: number[], data: Uint8Array): Uint8Array {
  const head = Buffer.alloc(4 + 4 * dims.length);
  head[2] = 0x08;
  head[3] = dims.length;
  dims.forEach((d, i) => head.writeUInt32BE(d, 4 + 4 * i));
  return Buffer.concat([head, data]);
}

function npyImages(variant: number): Uint8Array {
  const rng = new Rng(2000 + variant);
  const [n, h, w, c] = [3 + variant, 4, 4, variant % 2 ? 3 : 1];
  if (variant % 3 === 1) {
    const f = Float32Array.from({ length: n * h * w * c }, () => rng.next());
    return encodeNpy('<f4', [n, h, w, c], new Uint8Array(f.buffer));
  }
  return encodeNpy('|u1', variant % 2 ? [n, h, w, c] : [n, h, w], Uint8Array.from({ length: n * h * w * c }, () => rng.int(256)));
}

function npyLabels(n: number, variant: number): Uint8Array {
  const y = BigInt64Array.from({ length: n }, (_, i) => BigInt((i + variant) % 3));
  return encodeNpy('<i8', [n], new Uint8Array(y.buffer));
}

function idxImages(variant: number): Uint8Array {
  const rng = new Rng(3000 + variant);
  const n = 4 + variant;
  return encodeIdx([n, 5, 5], Uint8Array.from({ length: n * 25 }, () => rng.int(256)));
}

const NPY_N = 3; // images in the valid side file of the labels case

function validJob(variant: number): Uint8Array {
  const defenses = [['ft'], ['ft', 'clp'], [{ name: 'fst', profile: 'paper' }]][variant % 3];
  return Buffer.from(
    JSON.stringify(
      {
        model: variant % 2 ? { path: 'victim.pt', arch: 'preact-resnet18', inputShape: [32, 32, 3], numClasses: 10 } : 'victim.pt',
        data: { test: { path: 'images.npy', labels: 'labels.npy' } },
        attack: { type: 'badnets', target: variant % 10, size: 3 },
        aux: [{ name: 'heldout', type: 'unseen', source: { format: 'mnist-embedded' }, perClass: 5 + variant }],
        defenses,
        gic: { mode: 'both', delta: 0.1, norm: 'inf' },
        seed: variant,
      },
      null,
      variant % 2 ? 2 : 0,
    ),
  );
}

/** Every reader under fuzzing. */
export const FUZZ_CASES: FuzzCase[] = [
  {
    name: 'pickle',
    fileName: 'data.pkl',
    makeValidFile: (v) => {
      if (v % 3 === 0) return fs.readFileSync(path.join(FIXTURES, 'containers_p2.pkl'));
      if (v % 3 === 1) return fs.readFileSync(path.join(FIXTURES, 'containers_p4.pkl'));
      // A torch data.pkl (tensor rebuild calls, persistent ids) from our own writer.
      const zip = encodePt(tensors(v));
      const files = require('fflate').unzipSync(zip) as Record<string, Uint8Array>;
      return files['archive/data.pkl'];
    },
    read: (file) => unpickle(fs.readFileSync(file), { where: file }),
    lengthFields: pickleLengthFields,
    hostile: () => [
      // A list nested a million deep: the reader's own stack, not the JS call stack, must bound it.
      { label: 'deep nesting', bytes: Buffer.concat([Buffer.from([0x80, 2]), Buffer.alloc(1 << 20, 0x5d), Buffer.from([0x2e])]) },
      // MARK a thousand times over its cap.
      { label: 'many marks', bytes: Buffer.concat([Buffer.from([0x80, 2]), Buffer.alloc(1 << 16, 0x28), Buffer.from([0x2e])]) },
      // BINUNICODE claiming 4 GB.
      { label: 'BINUNICODE 4 GB', bytes: Buffer.from([0x80, 2, 0x58, 0xff, 0xff, 0xff, 0xff, 0x41, 0x2e]) },
      // BINBYTES8 claiming 2^63.
      { label: 'BINBYTES8 2^63', bytes: Buffer.from([0x80, 4, 0x8e, 0, 0, 0, 0, 0, 0, 0, 0x80, 0x2e]) },
      // LONG4 with a 2 GB byte count.
      { label: 'LONG4 2 GB', bytes: Buffer.from([0x80, 2, 0x8b, 0xff, 0xff, 0xff, 0x7f, 0x2e]) },
      // DUP in a loop then APPENDS: quadratic growth from a small file.
      { label: 'DUP bomb', bytes: Buffer.concat([Buffer.from([0x80, 2, 0x5d]), Buffer.alloc(1 << 16, 0x32), Buffer.from([0x2e])]) },
      // A list that contains itself (memo GET of an unfinished list), then printed/walked by the reader.
      { label: 'self-referencing list', bytes: Buffer.from([0x80, 2, 0x5d, 0x71, 0x00, 0x68, 0x00, 0x61, 0x2e]) },
      { label: 'empty', bytes: new Uint8Array(0) },
    ],
    allocFactor: 64,
  },
  {
    name: 'pt',
    fileName: 'model.pt',
    makeValidFile: (v) => (v % 4 === 3 ? fs.readFileSync(path.join(FIXTURES, 'tiny.pt')) : encodePt(tensors(v), v % 2 ? 'archive' : 'victim')),
    read: (file) => readPt(file),
    lengthFields: zipLengthFields,
    hostile: () => {
      const good = encodePt(tensors(0));
      const eocd = Buffer.from(good).lastIndexOf(Buffer.from([0x50, 0x4b, 0x05, 0x06]));
      const manyEntries = Uint8Array.from(good);
      manyEntries[eocd + 10] = 0xff;
      manyEntries[eocd + 11] = 0xff;
      return [
        { label: 'zip directory claims 65535 entries', bytes: manyEntries },
        { label: 'pickle protocol header only', bytes: Buffer.from([0x80, 0x02, 0x7d, 0x2e]) },
        { label: 'zip end record only', bytes: Buffer.from([0x50, 0x4b, 0x05, 0x06, ...new Array(18).fill(0)]) },
        { label: 'gzip stream', bytes: zlib.gzipSync(Buffer.alloc(1 << 16)) },
      ];
    },
    allocFactor: 16,
  },
  {
    name: 'safetensors',
    fileName: 'model.safetensors',
    makeValidFile: (v) => encodeSafetensors(tensors(v), v % 2 ? { arch: 'plain', numClasses: '3' } : undefined),
    read: (file) => [readSafetensorsMetadata(file), readSafetensors(file)],
    lengthFields: () => [{ offset: 0, size: 8, le: true }],
    hostile: () => {
      const header = (h: unknown, data = 0) => {
        const j = Buffer.from(JSON.stringify(h));
        const len = Buffer.alloc(8);
        len.writeBigUInt64LE(BigInt(j.length));
        return Buffer.concat([len, j, Buffer.alloc(data)]);
      };
      return [
        { label: 'shape claims 2^40 elements', bytes: header({ w: { dtype: 'F32', shape: [1 << 20, 1 << 20], data_offsets: [0, 16] } }, 16) },
        { label: 'offsets past the end', bytes: header({ w: { dtype: 'F32', shape: [4], data_offsets: [0, 1 << 30] } }, 16) },
        { label: 'two tensors on the same bytes', bytes: header({ a: { dtype: 'F32', shape: [4], data_offsets: [0, 16] }, b: { dtype: 'F32', shape: [4], data_offsets: [0, 16] } }, 16) },
        { label: 'header nested 100k deep', bytes: header(JSON.parse('['.repeat(2000) + ']'.repeat(2000))) },
        { label: '__proto__ entry', bytes: Buffer.concat([Buffer.from([28, 0, 0, 0, 0, 0, 0, 0]), Buffer.from('{"__proto__":{"dtype":"F32"}}')]) },
      ];
    },
    allocFactor: 16,
  },
  {
    name: 'npy images',
    fileName: 'images.npy',
    makeValidFile: (v) => npyImages(v % 3),
    setup: (dir) => {
      // Labels for every variant's N (3, 4 or 5 images): one file each, picked by the reader below.
      for (const n of [3, 4, 5]) fs.writeFileSync(path.join(dir, `labels-${n}.npy`), npyLabels(n, 0));
    },
    read: (file, dir) => {
      // Read the N from the header only to pick matching labels; a broken header makes the reader fail first.
      const m = /'shape':\s*\((\d+)/.exec(Buffer.from(fs.readFileSync(file)).subarray(0, 256).toString('latin1'));
      const n = m ? Math.min(5, Math.max(3, Number(m[1]))) : 3;
      return readNpyPair(file, path.join(dir, `labels-${n}.npy`), { numClasses: 10 });
    },
    lengthFields: () => [{ offset: 8, size: 2, le: true }],
    hostile: () => [
      { label: 'v2 header, 11 bytes', bytes: Buffer.from('\x93NUMPY\x02\x00\x10\x00\x00', 'latin1') },
      { label: 'shape (2**40, 1, 1)', bytes: encodeNpy('|u1', [2 ** 40, 1, 1], new Uint8Array(8)) },
      { label: 'object dtype (pickled)', bytes: encodeNpy('|O', [1, 1, 1], new Uint8Array(8)) },
      { label: 'NaN pixels', bytes: encodeNpy('<f4', [1, 1, 1], new Uint8Array(new Float32Array([NaN]).buffer)) },
    ],
    allocFactor: 32,
  },
  {
    name: 'npy labels',
    fileName: 'labels.npy',
    makeValidFile: (v) => npyLabels(NPY_N, v),
    setup: (dir) => fs.writeFileSync(path.join(dir, 'images.npy'), npyImages(0)),
    read: (file, dir) => readNpyPair(path.join(dir, 'images.npy'), file, { numClasses: 10 }),
    lengthFields: () => [{ offset: 8, size: 2, le: true }],
    hostile: () => [
      { label: 'labels 2^62', bytes: encodeNpy('<i8', [NPY_N], new Uint8Array(BigInt64Array.from([2n ** 62n, 0n, 1n]).buffer)) },
      { label: 'negative labels', bytes: encodeNpy('<i8', [NPY_N], new Uint8Array(BigInt64Array.from([-1n, 0n, 1n]).buffer)) },
      { label: 'float labels', bytes: encodeNpy('<f8', [NPY_N], new Uint8Array(Float64Array.from([0.5, NaN, Infinity]).buffer)) },
    ],
    allocFactor: 64,
  },
  {
    name: 'idx images',
    fileName: 'fuzz-images-idx3-ubyte',
    makeValidFile: (v) => idxImages(v % 3),
    setup: (dir) => {
      for (const n of [4, 5, 6]) fs.writeFileSync(path.join(dir, `labels-${n}-idx1-ubyte`), encodeIdx([n], Uint8Array.from({ length: n }, (_, i) => i % 10)));
    },
    read: (file, dir) => {
      const b = fs.readFileSync(file);
      const n = b.length >= 8 ? Math.min(6, Math.max(4, b.readUInt32BE(4))) : 4;
      return readIdxPair(file, path.join(dir, `labels-${n}-idx1-ubyte`), 10);
    },
    lengthFields: () => [4, 8, 12].map((offset) => ({ offset, size: 4 as const, le: false })),
    hostile: () => [
      { label: 'dims 65536^3 in a 16-byte file', bytes: encodeIdx([65536, 65536, 65536], new Uint8Array(0)) },
      { label: 'ndim 255', bytes: Buffer.from([0, 0, 8, 255, 0, 0, 0, 1]) },
    ],
    allocFactor: 32,
  },
  {
    name: 'idx labels',
    fileName: 'fuzz-labels-idx1-ubyte',
    makeValidFile: (v) => encodeIdx([4], Uint8Array.from([0, 1, 2, (3 + v) % 10])),
    setup: (dir) => fs.writeFileSync(path.join(dir, 'images-idx3-ubyte'), idxImages(0)),
    read: (file, dir) => readIdxPair(path.join(dir, 'images-idx3-ubyte'), file, 10),
    lengthFields: () => [{ offset: 4, size: 4, le: false }],
    allocFactor: 64,
  },
  {
    name: 'idx images gzip',
    fileName: 'fuzz-images-idx3-ubyte.gz',
    setup: (dir) => {
      for (const n of [4, 5, 6]) fs.writeFileSync(path.join(dir, `labels-${n}-idx1-ubyte`), encodeIdx([n], Uint8Array.from({ length: n }, (_, i) => i % 10)));
    },
    // The compressed header cannot be peeked at cheaply: every valid variant has 4 images.
    makeValidFile: (v) => zlib.gzipSync(encodeIdx([4, 5, 5], idxImages(v % 3).subarray(16, 16 + 100))),
    read: (file, dir) => readIdxPair(file, path.join(dir, 'labels-4-idx1-ubyte'), 10),
    hostile: () => [{ label: 'gzip bomb (64 MB of zeros)', bytes: zlib.gzipSync(Buffer.alloc(64 << 20)) }],
    // Deflate expands at most ~1032:1; the reader caps the inflated size besides.
    allocFactor: 1100 * 5,
  },
  {
    name: 'audit.json',
    fileName: 'audit.json',
    makeValidFile: validJob,
    setup: (dir) => {
      fs.writeFileSync(path.join(dir, 'victim.pt'), encodePt(tensors(0)));
      fs.writeFileSync(path.join(dir, 'images.npy'), npyImages(0));
      fs.writeFileSync(path.join(dir, 'labels.npy'), npyLabels(NPY_N, 0));
    },
    read: (file) => loadJob(file),
    hostile: () => [
      { label: 'nested 100k deep', bytes: Buffer.from('{"model":' + '['.repeat(100_000) + ']'.repeat(100_000) + '}') },
      { label: '__proto__ key', bytes: Buffer.from('{"__proto__":{"polluted":1},"model":"victim.pt","data":{"test":{"format":"mnist-embedded"}},"defenses":["clp"]}') },
      { label: 'constructor key', bytes: Buffer.from('{"constructor":{"prototype":{"x":1}},"model":"victim.pt","data":{"test":{"format":"mnist-embedded"}},"defenses":["clp"]}') },
      { label: 'model path outside the folder', bytes: Buffer.from('{"model":"/etc/passwd","data":{"test":{"format":"mnist-embedded"}},"defenses":["clp"]}') },
      { label: 'UTF-16 text', bytes: Buffer.from('\ufeff{"model":"victim.pt"}', 'utf16le') },
      { label: 'huge perClass', bytes: Buffer.from('{"model":"victim.pt","data":{"test":{"format":"mnist-embedded"}},"aux":[{"name":"a","type":"unseen","source":{"format":"mnist-embedded"},"perClass":1e300}],"defenses":["ft"]}') },
    ],
    allocFactor: 256,
  },
];
