/**
 * The parsers under fuzzing, one entry per reader: how to make a valid file (several variants, so that
 * splices across files mean something), how to read it the way a job does, and where its length fields
 * are. A new format is one more entry here.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as zlib from 'node:zlib';
import { unpickle } from '../../src/engine/formats/pickle';
import { readPt, encodePt } from '../../src/engine/formats/pt';
import { readSafetensors, readSafetensorsMetadata, encodeSafetensors } from '../../src/engine/formats/safetensors';
import { readNpyPair } from '../../src/engine/formats/data/npy';
import { readIdxPair } from '../../src/engine/formats/data/idx';
import { loadJob } from '../../src/engine/jobs/validate';
import type { StateDictLike, TensorArray } from '../../src/engine/formats/state_dict';
import { Rng } from '../../src/engine/util/rng';
import * as tf from '@tensorflow/tfjs-core';
import { zipSync } from 'fflate';
import * as jpeg from 'jpeg-js';
import { onnx } from 'onnx-proto';
import { PNG } from 'pngjs';
import { loadModelFile } from '../../src/engine/model_files/model_io';
import { exportOnnx } from '../../src/engine/model_files/onnx_export';
import { tfjsArtifactsOf } from '../../src/engine/model_files/tfjs_export';
import { readNpz } from '../../src/engine/formats/data/npz';
import { readImageFolder } from '../../src/engine/formats/data/imagefolder';
import { readCifar10 } from '../../src/engine/formats/data/cifar10';
import { buildModel } from '../../src/engine/models';
import type { Model } from '../../src/engine/nn/model';
import { fixPngCrcs, jpegLengthFields, pickleLengthFields, pngChunk, pngLengthFields, protobufVarint, zipLengthFields, type LengthField, type Mutator } from './mutate';

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
  /** Format-aware mutators used besides the generic ones (e.g. protobuf varints). */
  mutators?: Record<string, Mutator>;
  /** Repairs checksums after most mutations so that they reach the decoder behind the check (PNG CRCs). */
  fixup?(bytes: Uint8Array): Uint8Array;
  /**
   * Distinct InputError messages the mutations must reach (default 3), the sign that they get past the first
   * check. Formats without headers (a weight shard, CIFAR records) have fewer ways to be wrong.
   */
  minMessages?: number;
  /** Share of the cases that must be refused (default 1/3): most mutations of a structured file break it. */
  refusedShare?: number;
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

/** A tiny plain CNN (conv-BN-ReLU stack, global pool, linear): valid graphs to export and mutate. */
function tinyModel(variant: number): Model {
  const layers = [[4, 'M', 6], [3, 5], [4, 'M', 4, 'M'], [2]][variant % 4] as Array<number | 'M'>;
  return buildModel({ arch: 'plain-cnn', inputShape: [8, 8, 1 + 2 * (variant % 2)], numClasses: 3 + (variant % 3), options: { layers } }, undefined, variant);
}

/**
 * Load a model file the way a job does, dispose it, and fail (as a finding: not an InputError) when the load
 * left tensors behind, whether it succeeded or threw: a refused file must not leak the half-built model.
 */
function loadAndDispose(file: string): unknown {
  const before = tf.memory().numTensors;
  const leak = (what: string) => {
    const n = tf.memory().numTensors - before;
    if (n) throw new Error(`${what} left ${n} tensors behind`);
  };
  let loaded;
  try {
    loaded = loadModelFile(file, file);
  } catch (e) {
    leak(`a refused load (${(e as Error).message.split('\n')[0]})`);
    throw e;
  }
  const info = loaded.info;
  loaded.model.dispose();
  leak('loading and disposing a model');
  return info;
}

async function buildOnnxFile(variant: number): Promise<Uint8Array> {
  if (variant === 0) return fs.readFileSync(path.join(FIXTURES, 'parity_ops.onnx'));
  if (variant === 1) return fs.readFileSync(path.join(FIXTURES, 'parity_plain_bn.onnx'));
  const m = tinyModel(variant);
  try {
    return await exportOnnx(m, { includeNormalization: variant === 3 });
  } finally {
    m.dispose();
  }
}

/**
 * The written model files, made once by prepareFuzzCases: the writers read the weights asynchronously, and the
 * fuzz loop (and each case's makeValidFile) is synchronous.
 */
const written = { onnx: new Map<number, Uint8Array>(), tfjs: new Map<number, { json: Uint8Array; bin: Uint8Array }>() };

/** Write the model files of the ONNX and TensorFlow.js cases (variants 0 to 3); call before runFuzz. */
export async function prepareFuzzCases(): Promise<void> {
  for (const v of [0, 1, 2, 3]) {
    written.onnx.set(v, await buildOnnxFile(v));
    written.tfjs.set(v, await buildTfjsFiles(v));
  }
}

function prepared<T>(m: Map<number, T>, v: number): T {
  const f = m.get(v);
  if (!f) throw new Error(`fuzz case variant ${v} not prepared (call prepareFuzzCases first)`);
  return f;
}
const onnxFile = (v: number) => prepared(written.onnx, v);
const tfjsFiles = (v: number) => prepared(written.tfjs, v);

/** A ModelProto around one graph, for hand-made hostile ONNX files. */
function onnxWith(graph: onnx.IGraphProto): Uint8Array {
  const input = { name: 'x', type: { tensorType: { elemType: 1, shape: { dim: [{ dimValue: 1 }, { dimValue: 1 }, { dimValue: 4 }, { dimValue: 4 }] } } } };
  const output = { name: 'y', type: { tensorType: { elemType: 1, shape: { dim: [{ dimValue: 1 }, { dimValue: 2 }] } } } };
  return onnx.ModelProto.encode({ irVersion: 7, opsetImport: [{ domain: '', version: 13 }], graph: { name: 'g', input: [input], output: [output], ...graph } }).finish();
}

function pbVarint(v: number): Uint8Array {
  const out: number[] = [];
  do {
    out.push((v & 0x7f) | (v > 0x7f ? 0x80 : 0));
    v = Math.floor(v / 128);
  } while (v);
  return Uint8Array.from(out);
}

/** Length-delimited protobuf field `field` holding `body`. */
/**
 * A graph whose node's attribute holds a graph whose node's attribute holds a graph ... `depth` times. Each
 * level ends with its nested graph, so the file is the levels' prefixes, outermost first (built in one pass:
 * wrapping level by level would copy the growing buffer `depth` times).
 */
function nestedOnnxGraphs(depth: number): Uint8Array {
  const prefixes: Uint8Array[] = [];
  let inner = 0; // bytes of the graph nested at this level
  for (let i = 0; i < depth; i++) {
    // GraphProto.node (1) -> NodeProto.attribute (5) -> AttributeProto {name (1) = "g", g (6) = graph}.
    const attr = 3 + 1 + pbVarint(inner).length + inner;
    const node = 1 + pbVarint(attr).length + attr;
    prefixes.push(Buffer.concat([Buffer.from([0x0a]), pbVarint(node), Buffer.from([0x2a]), pbVarint(attr), Buffer.from([0x0a, 0x01, 0x67, 0x32]), pbVarint(inner)]));
    inner = 1 + pbVarint(node).length + node;
  }
  return Buffer.concat([Buffer.from([0x08, 0x07, 0x3a]), pbVarint(inner), ...prefixes.reverse()]); // ir_version 7, ModelProto.graph (7)
}

const TFJS_SHARD = (v: number) => `w${v}.bin`;

/**
 * model.json + shard of a tiny model; variant 2 quantizes the weights to uint8 and variant 3 to float16
 * (what the TensorFlow.js converter's --quantize options write), so the widening code is exercised too.
 */
async function buildTfjsFiles(variant: number, shard = TFJS_SHARD(variant)): Promise<{ json: Uint8Array; bin: Uint8Array }> {
  const m = tinyModel(variant);
  try {
    const { json, bin } = await tfjsArtifactsOf(m, shard);
    const groups = json.weightsManifest as Array<{ paths: string[]; weights: Array<{ name: string; shape: number[]; dtype: string; quantization?: unknown }> }>;
    if (variant < 2) return { json: Buffer.from(JSON.stringify(json)), bin };
    const f = new Float32Array(bin.buffer, bin.byteOffset, bin.byteLength / 4);
    const parts: Uint8Array[] = [];
    let off = 0;
    for (const w of groups[0].weights) {
      const n = w.shape.reduce((a, b) => a * b, 1);
      const x = f.subarray(off, off + n);
      off += n;
      if (variant === 2) {
        const min = Math.min(...x, 0);
        const scale = (Math.max(...x, 0) - min) / 255 || 1;
        parts.push(Uint8Array.from(x, (v) => Math.round((v - min) / scale)));
        w.quantization = { dtype: 'uint8', scale, min };
      } else {
        const h = Uint16Array.from(x, (v) => float16(v));
        parts.push(new Uint8Array(h.buffer));
        w.quantization = { dtype: 'float16' };
      }
    }
    return { json: Buffer.from(JSON.stringify(json)), bin: Buffer.concat(parts) };
  } finally {
    m.dispose();
  }
}

/** float32 -> IEEE half (round to nearest; tiny weights only, no NaN/Inf in the fixtures). */
function float16(v: number): number {
  const f = new Float32Array([v]);
  const b = new Uint32Array(f.buffer)[0];
  const sign = (b >>> 16) & 0x8000;
  const e = ((b >>> 23) & 0xff) - 127 + 15;
  if (e <= 0) return sign;
  if (e >= 31) return sign | 0x7c00;
  return sign | (e << 10) | (((b >>> 13) & 0x3ff) + ((b >>> 12) & 1) > 0x3ff ? 0x3ff : ((b >>> 13) & 0x3ff) + ((b >>> 12) & 1));
}

function tfjsJsonWith(mut: (j: Record<string, any>) => void): Uint8Array {
  const j = JSON.parse(Buffer.from(tfjsFiles(0).json).toString());
  mut(j);
  return Buffer.from(JSON.stringify(j));
}

/** zipSync with a fixed modification time: the same seed must give the same bytes on every run. */
function zipFixed(files: Parameters<typeof zipSync>[0]): Uint8Array {
  return zipSync(files, { mtime: new Date(2020, 0, 1) });
}

function npz(variant: number): Uint8Array {
  const rng = new Rng(4000 + variant);
  const n = 3 + variant;
  const c = variant % 2 ? 1 : 3;
  const x = variant === 1 ? encodeNpy('<f4', [n, 4, 4, c], new Uint8Array(Float32Array.from({ length: n * 16 * c }, () => rng.next()).buffer)) : encodeNpy('|u1', [n, 4, 4, c], Uint8Array.from({ length: n * 16 * c }, () => rng.int(256)));
  const y = encodeNpy('<i8', [n], new Uint8Array(BigInt64Array.from({ length: n }, (_, i) => BigInt((i + variant) % 10)).buffer));
  const [xn, yn] = [['x', 'y'], ['images', 'labels'], ['arr_0', 'arr_1'], ['x_test', 'y_test']][variant % 4];
  const files: Record<string, [Uint8Array, { level: 0 | 6 }]> = { [`${xn}.npy`]: [x, { level: variant % 2 ? 6 : 0 }], [`${yn}.npy`]: [y, { level: variant % 2 ? 6 : 0 }] };
  if (variant === 3) files['mean.npy'] = [encodeNpy('<f4', [3], new Uint8Array(12)), { level: 0 }];
  return zipFixed(files);
}

function png(variant: number): Uint8Array {
  const rng = new Rng(5000 + variant);
  const p = new PNG({ width: 6, height: 6, colorType: [2, 0, 6, 4][variant % 4] as 0 | 2 | 4 | 6, bitDepth: variant === 2 ? 16 : 8, inputHasAlpha: true });
  for (let i = 0; i < 36; i++) {
    const grey = rng.int(256);
    for (let k = 0; k < 3; k++) p.data[4 * i + k] = variant % 2 ? grey : rng.int(256);
    p.data[4 * i + 3] = 255;
  }
  return PNG.sync.write(p, { colorType: [2, 0, 6, 4][variant % 4] as 0 | 2 | 4 | 6, bitDepth: variant === 2 ? 16 : 8 });
}

function jpg(variant: number): Uint8Array {
  const rng = new Rng(6000 + variant);
  const [w, h] = [[8, 8], [16, 8], [8, 16], [12, 12]][variant % 4];
  const data = Buffer.alloc(w * h * 4);
  for (let i = 0; i < w * h; i++) {
    const g = rng.int(256);
    for (let k = 0; k < 3; k++) data[4 * i + k] = variant === 1 ? g : rng.int(256);
    data[4 * i + 3] = 255;
  }
  return jpeg.encode({ data, width: w, height: h }, [90, 50, 75, 20][variant % 4]).data;
}

/** An image folder with two valid classes; the file under fuzzing is one more image of class 1. */
function imageFolderSetup(ext: 'png' | 'jpg') {
  return (dir: string) => {
    for (const k of ['0', '1']) fs.mkdirSync(path.join(dir, k), { recursive: true });
    fs.writeFileSync(path.join(dir, '0', `a.${ext}`), ext === 'png' ? png(0) : jpg(0));
    fs.writeFileSync(path.join(dir, '1', `b.${ext}`), ext === 'png' ? png(1) : jpg(1));
  };
}

const CIFAR_RECORD = 3073;

function cifarBatch(variant: number): Uint8Array {
  const rng = new Rng(7000 + variant);
  const n = 1 + (variant % 3);
  const b = Uint8Array.from({ length: n * CIFAR_RECORD }, () => rng.int(256));
  for (let i = 0; i < n; i++) b[i * CIFAR_RECORD] = (i + variant) % 10;
  return b;
}

function pngHeader(w: number, h: number, depth = 8, colour = 2, interlace = 0): Uint8Array {
  const ihdr = Buffer.alloc(13);
  ihdr.writeUInt32BE(w, 0);
  ihdr.writeUInt32BE(h, 4);
  ihdr[8] = depth;
  ihdr[9] = colour;
  ihdr[12] = interlace;
  return Buffer.concat([Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]), pngChunk('IHDR', ihdr)]);
}

const PNG_END = pngChunk('IEND', new Uint8Array(0));

/** A baseline JPEG of `w` x `h` from jpeg-js with its frame size rewritten (the scan is for 8x8). */
function jpegClaiming(w: number, h: number): Uint8Array {
  const b = Buffer.from(jpg(0));
  for (const f of jpegLengthFields(b)) {
    if (b[f.offset - 2] === 0xff && b[f.offset - 1] === 0xc0) {
      b.writeUInt16BE(h, f.offset + 3);
      b.writeUInt16BE(w, f.offset + 5);
    }
  }
  return b;
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
  {
    name: 'onnx',
    fileName: 'model.onnx',
    makeValidFile: onnxFile,
    // Decoding and importing the graph: the reader and the op-by-op import a job runs before anything else.
    read: (file) => loadAndDispose(file),
    mutators: { protobufVarint },
    hostile: () => {
      const f32 = (n: number) => new Uint8Array(new Float32Array(n).buffer);
      return [
        { label: 'initializer dims 2^20 x 2^20 with 16 bytes', bytes: onnxWith({ initializer: [{ name: 'w', dims: [1 << 20, 1 << 20], dataType: 1, rawData: f32(4) }], node: [{ opType: 'Identity', input: ['x'], output: ['y'] }] }) },
        { label: 'initializer dims 2^62', bytes: onnxWith({ initializer: [{ name: 'w', dims: [2 ** 62], dataType: 7 }], node: [{ opType: 'Identity', input: ['x'], output: ['y'] }] }) },
        { label: 'negative dims', bytes: onnxWith({ initializer: [{ name: 'w', dims: [-4, -4], dataType: 1, rawData: f32(16) }], node: [{ opType: 'Identity', input: ['x'], output: ['y'] }] }) },
        { label: 'float_data shorter than dims', bytes: onnxWith({ initializer: [{ name: 'w', dims: [1000], dataType: 1, floatData: [1, 2] }], node: [{ opType: 'Identity', input: ['x'], output: ['y'] }] }) },
        { label: 'external data', bytes: onnxWith({ initializer: [{ name: 'w', dims: [4], dataType: 1, dataLocation: 1, externalData: [{ key: 'location', value: '/etc/passwd' }] }], node: [{ opType: 'Identity', input: ['x'], output: ['y'] }] }) },
        { label: 'string tensor', bytes: onnxWith({ initializer: [{ name: 'w', dims: [1], dataType: 8, stringData: [Buffer.from('x')] }], node: [{ opType: 'Identity', input: ['x'], output: ['y'] }] }) },
        { label: 'custom-domain op', bytes: onnxWith({ node: [{ opType: 'Exec', domain: 'com.evil', input: ['x'], output: ['y'] }] }) },
        { label: 'subgraphs nested 20000 deep', bytes: nestedOnnxGraphs(20000) },
        { label: 'length prefix 2^31 past the end', bytes: Buffer.from([0x08, 0x07, 0x3a, 0x80, 0x80, 0x80, 0x80, 0x08, 0x0a]) },
        { label: '10-byte varint field numbers', bytes: Buffer.from([0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01, 0x00]) },
        { label: 'Conv with group 0 and a 0-sized kernel', bytes: onnxWith({ initializer: [{ name: 'w', dims: [2, 0, 3, 3], dataType: 1 }], node: [{ opType: 'Conv', input: ['x', 'w'], output: ['y'], attribute: [{ name: 'group', type: 2, i: 0 }] }] }) },
        { label: 'a .pt zip named .onnx', bytes: encodePt(tensors(0)) },
        { label: 'empty', bytes: new Uint8Array(0) },
      ];
    },
    // Weights are float32 in the file and float32 in the model, plus the backend's copy and the plan.
    allocFactor: 24,
  },
  {
    name: 'tfjs model.json',
    fileName: 'model.json',
    makeValidFile: (v) => tfjsFiles(v).json,
    setup: (dir) => {
      for (const v of [0, 1, 2, 3]) fs.writeFileSync(path.join(dir, TFJS_SHARD(v)), tfjsFiles(v).bin);
      fs.mkdirSync(path.join(dir, 'sub'));
      fs.writeFileSync(path.join(dir, '..', 'outside.bin'), Buffer.alloc(4096));
      fs.symlinkSync(path.join(dir, '..', 'outside.bin'), path.join(dir, 'link.bin'));
    },
    read: (file) => loadAndDispose(file),
    hostile: () => [
      { label: 'shard path ../outside.bin', bytes: tfjsJsonWith((j) => (j.weightsManifest[0].paths = ['../outside.bin'])) },
      { label: 'shard path %2e%2e%2foutside.bin', bytes: tfjsJsonWith((j) => (j.weightsManifest[0].paths = ['%2e%2e%2foutside.bin'])) },
      { label: 'shard path malformed %-escape', bytes: tfjsJsonWith((j) => (j.weightsManifest[0].paths = ['w0%.bin'])) },
      { label: 'shard path absolute', bytes: tfjsJsonWith((j) => (j.weightsManifest[0].paths = ['/etc/passwd'])) },
      { label: 'shard is a symlink out of the folder', bytes: tfjsJsonWith((j) => (j.weightsManifest[0].paths = ['link.bin'])) },
      { label: 'shard is a folder', bytes: tfjsJsonWith((j) => (j.weightsManifest[0].paths = ['sub'])) },
      { label: 'shard is a device', bytes: tfjsJsonWith((j) => (j.weightsManifest[0].paths = ['../../../../../../../dev/zero'])) },
      { label: 'weight shape 2^26 x 2^26', bytes: tfjsJsonWith((j) => (j.weightsManifest[0].weights[0].shape = [2 ** 26, 2 ** 26])) },
      { label: 'weight shape [-1]', bytes: tfjsJsonWith((j) => (j.weightsManifest[0].weights[0].shape = [-1])) },
      { label: 'quantization without scale', bytes: tfjsJsonWith((j) => (j.weightsManifest[0].weights[0].quantization = { dtype: 'uint8' })) },
      { label: 'string dtype', bytes: tfjsJsonWith((j) => (j.weightsManifest[0].weights[0].dtype = 'string')) },
      { label: 'layers nested 100k deep', bytes: Buffer.from('{"modelTopology":' + '['.repeat(100_000) + ']'.repeat(100_000) + ',"weightsManifest":[]}') },
      { label: '__proto__ layer config', bytes: tfjsJsonWith((j) => (j.modelTopology.model_config ?? j.modelTopology).config.layers?.push({ class_name: '__proto__', config: { name: '__proto__' } })) },
      { label: 'graph model', bytes: Buffer.from('{"format":"graph-model","modelTopology":{"node":[]},"weightsManifest":[]}') },
    ],
    allocFactor: 64,
  },
  {
    name: 'tfjs weights',
    fileName: 'w0.bin',
    makeValidFile: () => tfjsFiles(0).bin,
    setup: (dir) => fs.writeFileSync(path.join(dir, 'model.json'), tfjsFiles(0).json),
    read: (_file, dir) => loadAndDispose(path.join(dir, 'model.json')),
    hostile: () => [
      { label: 'empty shard', bytes: new Uint8Array(0) },
      { label: 'NaN weights', bytes: new Uint8Array(new Float32Array(tfjsFiles(0).bin.length / 4).fill(NaN).buffer) },
    ],
    allocFactor: 64,
    // Any bytes are valid float32 weights: only the shard's size can be wrong (truncations, splices, appends).
    minMessages: 1,
    refusedShare: 0.05,
  },
  {
    name: 'npz',
    fileName: 'data.npz',
    makeValidFile: npz,
    read: (file) => readNpz(file, { numClasses: 10 }),
    lengthFields: zipLengthFields,
    hostile: () => {
      const stored = Buffer.from(npz(0));
      const deflated = Buffer.from(npz(1));
      const claim = (b: Buffer, size: number) => {
        // Every central-directory and local header's uncompressed size.
        const out = Buffer.from(b);
        for (let i = 0; i + 4 <= out.length; i++) {
          const sig = out.readUInt32LE(i);
          if (sig === 0x04034b50) out.writeUInt32LE(size, i + 22);
          if (sig === 0x02014b50) out.writeUInt32LE(size, i + 24);
        }
        return out;
      };
      const manyEntries = Buffer.from(stored);
      const eocd = manyEntries.lastIndexOf(Buffer.from([0x50, 0x4b, 0x05, 0x06]));
      manyEntries.writeUInt16LE(0xffff, eocd + 8);
      manyEntries.writeUInt16LE(0xffff, eocd + 10);
      const bomb = zipFixed({ 'x.npy': [Buffer.concat([encodeNpy('|u1', [4096, 64, 64, 4], new Uint8Array(0)), Buffer.alloc(4096 * 64 * 64 * 4)]), { level: 9 }], 'y.npy': [encodeNpy('<i8', [4096], new Uint8Array(8 * 4096)), { level: 9 }] });
      return [
        { label: 'deflated entries claim 4 GB', bytes: claim(deflated, 0xffffffff) },
        { label: 'deflated entries claim 1 GB', bytes: claim(deflated, 1 << 30) },
        { label: 'stored entries claim 1 GB', bytes: claim(stored, 1 << 30) },
        { label: 'directory claims 65535 entries', bytes: manyEntries },
        { label: 'deflate bomb (64 MB of zero pixels)', bytes: bomb },
        { label: 'entries named ../../x.npy', bytes: zipFixed({ '../../x.npy': [encodeNpy('|u1', [1, 2, 2], new Uint8Array(4)), { level: 0 }], '/abs/y.npy': [encodeNpy('<i8', [1], new Uint8Array(8)), { level: 0 }] }) },
        { label: 'object arrays (pickled)', bytes: zipFixed({ 'x.npy': [encodeNpy('|O', [1, 1, 1], new Uint8Array(8)), { level: 0 }], 'y.npy': [encodeNpy('|O', [1], new Uint8Array(8)), { level: 0 }] }) },
        { label: 'no .npy entries', bytes: zipFixed({ 'readme.txt': [Buffer.from('hi'), { level: 0 }] }) },
        { label: 'a .pt checkpoint named .npz', bytes: encodePt(tensors(0)) },
      ];
    },
    // uint8 pixels become float32 (4x), deflate expands up to ~1032x.
    allocFactor: 1100 * 5,
  },
  {
    name: 'png folder',
    fileName: path.join('1', 'fuzz.png'),
    makeValidFile: png,
    setup: imageFolderSetup('png'),
    read: (_file, dir) => readImageFolder(dir, { numClasses: 10 }),
    lengthFields: pngLengthFields,
    fixup: fixPngCrcs,
    hostile: () => {
      const idat = (raw: Uint8Array) => pngChunk('IDAT', zlib.deflateSync(raw));
      return [
        { label: '7000x7000 header, 1 row of data', bytes: Buffer.concat([pngHeader(7000, 7000), idat(Buffer.alloc(21001)), PNG_END]) },
        { label: '65535x65535 header', bytes: Buffer.concat([pngHeader(65535, 65535), idat(Buffer.alloc(100)), PNG_END]) },
        { label: 'interlaced 7000x7000, no data', bytes: Buffer.concat([pngHeader(7000, 7000, 8, 2, 1), idat(Buffer.alloc(16)), PNG_END]) },
        { label: 'IDAT inflates to 64 MB for a 6x6 image', bytes: Buffer.concat([pngHeader(6, 6), idat(Buffer.alloc(64 << 20)), PNG_END]) },
        { label: 'interlaced 6x6 with 64 MB of IDAT data', bytes: Buffer.concat([pngHeader(6, 6, 8, 2, 1), idat(Buffer.alloc(64 << 20)), PNG_END]) },
        { label: 'palette image without a palette', bytes: Buffer.concat([pngHeader(6, 6, 8, 3), idat(Buffer.alloc(42)), PNG_END]) },
        { label: 'bit depth 3', bytes: Buffer.concat([pngHeader(6, 6, 3, 0), idat(Buffer.alloc(42)), PNG_END]) },
        { label: 'chunk length 2^31', bytes: Buffer.concat([pngHeader(6, 6), Buffer.from([0x80, 0, 0, 0, 0x49, 0x44, 0x41, 0x54])]) },
        { label: '100k empty chunks', bytes: Buffer.concat([pngHeader(6, 6), ...Array.from({ length: 100_000 }, () => pngChunk('tEXt', new Uint8Array(0))), idat(Buffer.alloc(42 * 6)), PNG_END]) },
        { label: 'no IEND', bytes: Buffer.concat([pngHeader(6, 6), idat(Buffer.alloc(19 * 6))]) },
        { label: 'a JPEG named .png', bytes: jpg(0) },
        { label: 'empty', bytes: new Uint8Array(0) },
      ];
    },
    // One deflated byte can become ~1032 bytes of rows; a 1-bit grey pixel becomes RGBA (4 B) and float32
    // (4 B) twice over, 96 bytes per row byte. The reader's own cap (decoded size backed by the IDAT data)
    // is what keeps a small file small.
    allocFactor: 1100 * 96,
  },
  {
    name: 'jpeg folder',
    fileName: path.join('1', 'fuzz.jpg'),
    makeValidFile: jpg,
    setup: imageFolderSetup('jpg'),
    // Resizing to the model's input, as a job with "resize": true does.
    read: (_file, dir) => readImageFolder(dir, { numClasses: 10, shape: [8, 8, 3], resize: true }),
    lengthFields: jpegLengthFields,
    hostile: () => [
      { label: 'frame claims 7000x7000', bytes: jpegClaiming(7000, 7000) },
      { label: 'frame claims 65535x65535', bytes: jpegClaiming(65535, 65535) },
      { label: 'frame claims 0x0', bytes: jpegClaiming(0, 0) },
      { label: 'frame claims 1x65535', bytes: jpegClaiming(1, 65535) },
      { label: 'SOI only', bytes: Buffer.from([0xff, 0xd8]) },
      { label: 'SOI then 64k of 0xff fill bytes', bytes: Buffer.concat([Buffer.from([0xff, 0xd8]), Buffer.alloc(1 << 16, 0xff)]) },
      { label: 'a PNG named .jpg', bytes: png(0) },
    ],
    // A JPEG needs at least one bit per 8x8 block: 512 pixels per byte, each RGBA (4 B) then float32 (12 B).
    allocFactor: 512 * 20,
  },
  {
    name: 'cifar10 batch',
    fileName: 'data_batch_1.bin',
    makeValidFile: cifarBatch,
    read: (file) => readCifar10(file, 'train', { numClasses: 10, shape: [32, 32, 3] }),
    hostile: () => [
      { label: 'one byte short of a record', bytes: new Uint8Array(CIFAR_RECORD - 1) },
      { label: 'CIFAR-100 record (two label bytes)', bytes: Uint8Array.from({ length: 3074 * 3 }, (_, i) => (i % 3074 === 0 ? 55 : 1)) },
      { label: 'label 255', bytes: Uint8Array.from({ length: CIFAR_RECORD }, (_, i) => (i === 0 ? 255 : 0)) },
      { label: 'empty', bytes: new Uint8Array(0) },
    ],
    // Each pixel byte becomes a float32 (4 B), twice while batches are joined.
    allocFactor: 16,
    // Records have no header: a file is the wrong size or holds a label above 9.
    minMessages: 2,
  },
];
