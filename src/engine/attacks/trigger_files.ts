/**
 * The trigger files a user brings: a patch or trigger image (PNG, JPEG or a numpy array) and WaNet's warp grids
 * (`identity_grid`/`noise_grid`, as BackdoorBench saves them in its state_dict.pt, or in an .npz). Images are kept
 * as 8-bit values because BackdoorBench applies every trigger to 8-bit images; arrays are read by the strict npy
 * parser and the .pt files by the restricted unpickler, so nothing in a trigger file is executed. Every problem
 * is one InputError naming the file.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { InputError } from '../errors';
import { decodeImageFile } from '../formats/data/imagefolder';
import { npyTypedView, parseNpy, type Npy } from '../formats/data/npy';
import { readNpzArrays } from '../formats/data/npz';
import { openPtArchive, readTensors } from '../formats/pt';
import { PyDict, TensorRef } from '../formats/pickle';
import { LUMA } from '../formats/data/convert';

/** An 8-bit image, HWC. */
export interface TriggerImage {
  pixels: Uint8Array;
  height: number;
  width: number;
  channels: number;
}

/** Largest trigger image side we accept (a trigger is resized to a classifier input, a few hundred pixels). */
export const MAX_TRIGGER_SIDE = 4096;

/** Convert 8-bit pixels between 1, 3 and 4 channels: grey is replicated, RGB(A) to grey by luma (rounded). */
export function convertChannels8(src: Uint8Array, pixels: number, from: number, to: number): Uint8Array {
  if (from === to) return src;
  const out = new Uint8Array(pixels * to);
  for (let p = 0; p < pixels; p++) {
    if (from === 1) for (let k = 0; k < to; k++) out[p * to + k] = src[p];
    else if (to === 1) out[p] = Math.round(LUMA[0] * src[p * from] + LUMA[1] * src[p * from + 1] + LUMA[2] * src[p * from + 2]);
    else for (let k = 0; k < to; k++) out[p * to + k] = k < 3 ? src[p * from + k] : 255;
  }
  return out;
}

/** Numeric values of an npy array, in order. */
export function npyValues(a: Npy): Float64Array {
  const n = a.shape.reduce((x, y) => x * y, 1);
  const out = new Float64Array(n);
  // The image dtypes in bulk, without a call per value.
  const bulk = npyTypedView(a);
  if (bulk) {
    for (let i = 0; i < n; i++) out[i] = bulk[i];
    return out;
  }
  const dv = new DataView(a.body.buffer, a.body.byteOffset, a.body.byteLength);
  const read: Record<string, (i: number) => number> = {
    '|u1': (i) => a.body[i],
    '|i1': (i) => dv.getInt8(i),
    '<u2': (i) => dv.getUint16(2 * i, true),
    '<i2': (i) => dv.getInt16(2 * i, true),
    '<i4': (i) => dv.getInt32(4 * i, true),
    '<u4': (i) => dv.getUint32(4 * i, true),
    '<i8': (i) => Number(dv.getBigInt64(8 * i, true)),
    '<f4': (i) => dv.getFloat32(4 * i, true),
    '<f8': (i) => dv.getFloat64(8 * i, true),
  };
  const f = read[a.dtype];
  for (let i = 0; i < n; i++) out[i] = f(i);
  return out;
}

/**
 * The pixel scale of an array: 8-bit values (uint8, or float holding 0..255) or [0,1] floats. Floats whose
 * maximum is above 1 are taken as 0..255 when every value lies in that range; anything else is refused.
 */
export function pixelScale(values: ArrayLike<number>, dtype: string, file: string): 255 | 1 {
  // Bytes are finite and within 0..255 by their type.
  if (dtype === '|u1') return 255;
  let min = Infinity;
  let max = -Infinity;
  for (let i = 0; i < values.length; i++) {
    const v = values[i];
    if (!Number.isFinite(v)) throw new InputError(`pixel values must be finite; found ${v} at flat index ${i}`, file);
    if (v < min) min = v;
    if (v > max) max = v;
  }
  if (min < 0) throw new InputError(`pixel values must be in [0,1] or 0..255; found ${min}`, file);
  if (max <= 1) return 1;
  if (max <= 255) return 255;
  throw new InputError(`pixel values must be in [0,1] or 0..255; found ${max}`, file);
}

/** A patch or trigger image: PNG, JPEG, or .npy (H,W or H,W,C with C 1, 3 or 4; uint8, or float in [0,1] or 0..255). */
export function readTriggerImage(file: string): TriggerImage {
  if (/\.npy$/i.test(file)) {
    const a = parseNpy(fs.readFileSync(file), file);
    if (a.shape.length !== 2 && a.shape.length !== 3) throw new InputError(`a trigger image array must be H,W or H,W,C, got (${a.shape.join(',')})`, file);
    const [height, width, channels = 1] = a.shape;
    if (![1, 3, 4].includes(channels)) throw new InputError(`a trigger image array has ${channels} channels; expected 1, 3 or 4 (H,W,C order)`, file);
    checkSides(height, width, file);
    const v = npyValues(a);
    const scale = pixelScale(v, a.dtype, file);
    const pixels = Uint8Array.from(v, (x) => Math.round(scale === 1 ? x * 255 : x));
    return dropAlpha({ pixels, height, width, channels });
  }
  if (!/\.(png|jpe?g)$/i.test(file)) throw new InputError(`a trigger image must be PNG, JPEG or .npy, not ${path.extname(file) || 'a file without extension'}`, file);
  const img = decodeImageFile(file);
  const [height, width, channels] = img.shape;
  checkSides(height, width, file);
  return { pixels: Uint8Array.from(img.data, (x) => Math.round(x * 255)), height, width, channels };
}

function checkSides(h: number, w: number, file: string): void {
  if (h === 0 || w === 0) throw new InputError('the trigger image has no pixels', file);
  if (h > MAX_TRIGGER_SIDE || w > MAX_TRIGGER_SIDE) throw new InputError(`the trigger image is ${w}x${h} pixels, larger than ${MAX_TRIGGER_SIDE} on a side`, file);
}

function dropAlpha(t: TriggerImage): TriggerImage {
  return t.channels === 4 ? { ...t, pixels: convertChannels8(t.pixels, t.height * t.width, 4, 3), channels: 3 } : t;
}

/** WaNet's grids, each H*W*2 float32 in grid_sample's (x, y) order. */
export interface WanetGrids {
  identity: Float32Array;
  noise: Float32Array;
}

/**
 * `identity_grid` and `noise_grid` from a .pt (BackdoorBench's state_dict.pt or a dict of the two) or an .npz;
 * each (1,H,W,2) or (H,W,2) with H, W the model's input.
 */
export function readWanetGrids(file: string, h: number, w: number): WanetGrids {
  let grids: Map<string, { shape: number[]; data: Float32Array }>;
  if (/\.npz$/i.test(file)) {
    const arrays = readNpzArrays(file);
    grids = new Map();
    for (const name of ['identity_grid', 'noise_grid']) {
      const a = arrays.get(name);
      if (!a) throw new InputError(`the .npz has no ${name} array (it has ${[...arrays.keys()].join(', ')})`, file);
      if (a.dtype !== '<f4' && a.dtype !== '<f8') throw new InputError(`${name} must be float32 or float64, not ${a.dtype}`, file);
      grids.set(name, { shape: a.shape, data: Float32Array.from(npyValues(a)) });
    }
  } else if (/\.(pt|pth)$/i.test(file)) {
    const archive = openPtArchive(fs.readFileSync(file), file);
    const root = archive.root;
    if (!(root instanceof PyDict)) throw new InputError('the grids file is not a dict holding identity_grid and noise_grid', file);
    const refs = new Map<string, TensorRef>();
    for (const name of ['identity_grid', 'noise_grid']) {
      const t = root.map.get(name);
      if (!(t instanceof TensorRef)) throw new InputError(`the grids file has no ${name} tensor`, file);
      refs.set(name, t);
    }
    const sd = readTensors(archive, refs);
    grids = new Map();
    for (const [name, t] of sd) {
      if (t.dtype !== 'float32' && t.dtype !== 'float64') throw new InputError(`${name} must be a float tensor, not ${t.dtype}`, file);
      grids.set(name, { shape: t.shape, data: Float32Array.from(t.data as Float32Array) });
    }
  } else {
    throw new InputError('WaNet grids are read from a .pt (BackdoorBench state_dict.pt) or an .npz', file);
  }
  const out: Partial<WanetGrids> = {};
  for (const [name, g] of grids) {
    const s = g.shape.length === 4 && g.shape[0] === 1 ? g.shape.slice(1) : g.shape;
    if (s.length !== 3 || s[2] !== 2) throw new InputError(`${name} has shape (${g.shape.join(',')}); expected (1,H,W,2)`, file);
    if (s[0] !== h || s[1] !== w) throw new InputError(`${name} is ${s[1]}x${s[0]} but the model's input is ${w}x${h}`, file);
    const bad = g.data.findIndex((v) => !Number.isFinite(v));
    if (bad >= 0) throw new InputError(`${name} holds ${g.data[bad]} at flat index ${bad}`, file);
    out[name === 'identity_grid' ? 'identity' : 'noise'] = g.data;
  }
  return out as WanetGrids;
}
