/**
 * `.npy` pairs: images (N,H,W) or (N,H,W,C), uint8 or float32/float64 in [0,1]; labels (N) of any integer type.
 * A strict parser of the NPY v1-3 header (our own: the format is tiny and the npm readers we found do not check
 * sizes against the file); C order only. Also the writer the engine uses for calibrated images.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import { maxOf, type ImageSet } from '../../data/dataset';
import { InputError } from '../../errors';
import { conformSet, type DataTarget } from './convert';

export interface Npy {
  dtype: string;
  shape: number[];
  body: Uint8Array;
}

const ITEM_SIZE: Record<string, number> = { '|u1': 1, '|i1': 1, '<u2': 2, '<i2': 2, '<i4': 4, '<u4': 4, '<i8': 8, '<f4': 4, '<f8': 8 };

export function parseNpy(buf: Uint8Array, file: string): Npy {
  const b = Buffer.from(buf.buffer, buf.byteOffset, buf.byteLength);
  if (b.length < 10 || b.toString('latin1', 0, 6) !== '\x93NUMPY') throw new InputError('not a .npy file (bad magic)', file);
  const major = b[6];
  if (major < 1 || major > 3) throw new InputError(`unsupported .npy version ${major}`, file);
  if (major !== 1 && b.length < 12) throw new InputError('.npy header is truncated', file);
  const headerLen = major === 1 ? b.readUInt16LE(8) : b.readUInt32LE(8);
  const start = (major === 1 ? 10 : 12) + headerLen;
  if (start > b.length) throw new InputError('.npy header is truncated', file);
  const header = b.toString('latin1', major === 1 ? 10 : 12, start);
  const descr = /'descr':\s*'([^']+)'/.exec(header)?.[1];
  const fortran = /'fortran_order':\s*(True|False)/.exec(header)?.[1];
  const shapeText = /'shape':\s*\(([^)]*)\)/.exec(header)?.[1];
  if (!descr || !fortran || shapeText === undefined) throw new InputError('.npy header is malformed', file);
  if (fortran === 'True') throw new InputError('Fortran-ordered .npy arrays are not supported; save with np.ascontiguousarray', file);
  const shape = shapeText.split(',').map((s) => s.trim()).filter(Boolean).map(Number);
  if (shape.some((d) => !Number.isSafeInteger(d) || d < 0)) throw new InputError('.npy shape is malformed', file);
  const item = ITEM_SIZE[descr];
  if (!item) throw new InputError(`unsupported .npy dtype ${descr} (uint8, float32/64 images; integer labels)`, file);
  const count = shape.reduce((a, x) => a * x, 1);
  if (b.length - start !== count * item) throw new InputError(`.npy header promises ${count * item} bytes of data, the file has ${b.length - start}`, file);
  // A plain Uint8Array over the data, not a Buffer's subarray (a Buffer, readFileSync's): V8 keeps its fast element
  // paths (typed-array copies, indexed loads) for the base class only, and reading the zoo's 10,000 test images
  // through a Buffer took 85 ms against 9.
  return { dtype: descr, shape, body: new Uint8Array(buf.buffer, buf.byteOffset + start, buf.byteLength - start) };
}

const count = (a: Npy) => a.body.byteLength / ITEM_SIZE[a.dtype];

/**
 * The values of an npy array of uint8, or of little-endian float32/float64 on a little-endian machine with the
 * body aligned for it, as a typed array over its bytes (no copy); undefined for the rest, which go through
 * readAt.
 */
export function npyTypedView(a: Npy): Uint8Array | Float32Array | Float64Array | undefined {
  const { buffer, byteOffset } = a.body;
  const n = count(a);
  if (a.dtype === '|u1') return a.body;
  if (os.endianness() !== 'LE') return undefined;
  if (a.dtype === '<f4' && byteOffset % 4 === 0) return new Float32Array(buffer, byteOffset, n);
  if (a.dtype === '<f8' && byteOffset % 8 === 0) return new Float64Array(buffer, byteOffset, n);
  return undefined;
}

/** The array's values as float32 (pixels) or as numbers read one by one (labels). */
function readAt(a: Npy): (i: number) => number {
  const dv = new DataView(a.body.buffer, a.body.byteOffset, a.body.byteLength);
  switch (a.dtype) {
    case '|u1':
      return (i) => a.body[i];
    case '|i1':
      return (i) => dv.getInt8(i);
    case '<i2':
      return (i) => dv.getInt16(2 * i, true);
    case '<u2':
      return (i) => dv.getUint16(2 * i, true);
    case '<i4':
      return (i) => dv.getInt32(4 * i, true);
    case '<u4':
      return (i) => dv.getUint32(4 * i, true);
    case '<i8':
      return (i) => Number(dv.getBigInt64(8 * i, true));
    case '<f4':
      return (i) => dv.getFloat32(4 * i, true);
    default:
      return (i) => dv.getFloat64(8 * i, true);
  }
}

/** Labels beyond this are not class indices of any classifier we load (and would not fit an Int32Array). */
const MAX_LABEL = 65_535;

/**
 * Images and labels arrays to an ImageSet: uint8 pixels are divided by 255, float pixels must already be in
 * [0,1]; labels must be integers (a float label array is accepted only if every value is integral).
 */
export function npyToImageSet(img: Npy, lab: Npy, where: { images: string; labels: string }, target: DataTarget = {}): ImageSet {
  if (img.shape.length !== 3 && img.shape.length !== 4) throw new InputError(`images must be (N,H,W) or (N,H,W,C), got (${img.shape.join(',')})`, where.images);
  if (lab.shape.length !== 1 || lab.shape[0] !== img.shape[0]) throw new InputError(`labels of shape (${lab.shape.join(',')}) for ${img.shape[0]} images`, where.labels);
  const [n, h, w, c = 1] = img.shape;
  if (c !== 1 && c !== 3 && c !== 4) throw new InputError(`images have ${c} channels; expected 1, 3 or 4 (N,H,W,C order)`, where.images);
  if (img.dtype !== '|u1' && img.dtype !== '<f4' && img.dtype !== '<f8') throw new InputError(`images must be uint8 or float in [0,1], not ${img.dtype}`, where.images);
  const x = new Float32Array(count(img));
  const scale = img.dtype === '|u1' ? 1 / 255 : 1;
  // In bulk where the bytes can be read as they are: float arrays by the typed arrays' own copy (a memcpy for
  // float32, float64 rounded as an assignment rounds), bytes scaled by a plain loop. (What is left of the time
  // here is the fresh float array's page faults: about 80 ms for the zoo's 10,000 test images on a virtual machine
  // whose host backs memory lazily.)
  const bulk = npyTypedView(img);
  if (bulk instanceof Uint8Array) scaleBytes(bulk, x, scale);
  else if (bulk) x.set(bulk);
  else {
    const get = readAt(img);
    for (let i = 0; i < x.length; i++) x[i] = get(i) * scale;
  }
  if (scale === 1) {
    const bad = firstOutsideUnit(x);
    if (bad >= 0) throw new InputError(`float images must be in [0,1]; found ${x[bad]} at flat index ${bad}`, where.images);
  }
  const getL = readAt(lab);
  const y = new Int32Array(n);
  for (let i = 0; i < n; i++) {
    const v = getL(i);
    if (!Number.isInteger(v)) throw new InputError(`labels must be integers; found ${v} at index ${i}`, where.labels);
    if (v < 0) throw new InputError(`label ${v} at index ${i} is negative`, where.labels);
    // Checked before the Int32Array takes it: 2^62 would silently wrap to class 0.
    if (v > MAX_LABEL) throw new InputError(`label ${v} at index ${i} is not a class index (largest accepted ${MAX_LABEL})`, where.labels);
    y[i] = v;
  }
  const k = target.numClasses ?? (n ? maxOf(y) + 1 : 0);
  let set: ImageSet = { n, shape: [h, w, c], x, y, numClasses: k };
  // Labels are checked first so that their error names the labels file.
  if (target.numClasses !== undefined) set = conformSet(set, { numClasses: target.numClasses }, where.labels);
  return conformSet(set, { shape: target.shape, resize: target.resize }, where.images);
}

function scaleBytes(from: Uint8Array, to: Float32Array, scale: number): void {
  for (let i = 0; i < to.length; i++) to[i] = from[i] * scale;
}

/** The first index whose value is not in [0,1] (NaN included), or -1. */
function firstOutsideUnit(x: Float32Array): number {
  for (let i = 0; i < x.length; i++) {
    const p = x[i];
    if (!(p >= 0 && p <= 1)) return i;
  }
  return -1;
}

export function readNpyPair(imagesFile: string, labelsFile: string, target: DataTarget = {}): ImageSet {
  const img = parseNpy(fs.readFileSync(imagesFile), imagesFile);
  const lab = parseNpy(fs.readFileSync(labelsFile), labelsFile);
  return npyToImageSet(img, lab, { images: imagesFile, labels: labelsFile }, target);
}

/** An .npy (version 1.0) file's bytes for a float32, int64 or uint8 array in C order. */
export function encodeNpy(data: Float32Array | BigInt64Array | Uint8Array, shape: number[]): Uint8Array {
  const descr = data instanceof Float32Array ? '<f4' : data instanceof BigInt64Array ? '<i8' : '|u1';
  if (shape.reduce((a, x) => a * x, 1) !== data.length) throw new Error(`encodeNpy: shape (${shape}) does not match ${data.length} values`);
  const shapeText = shape.length === 1 ? `(${shape[0]},)` : `(${shape.join(', ')})`;
  let header = `{'descr': '${descr}', 'fortran_order': False, 'shape': ${shapeText}, }`;
  // Pad with spaces and end with a newline so that the data starts 64-byte aligned, as numpy writes it.
  const total = 10 + header.length + 1;
  header += ' '.repeat((64 - (total % 64)) % 64) + '\n';
  const out = new Uint8Array(10 + header.length + data.byteLength);
  out.set([0x93, 0x4e, 0x55, 0x4d, 0x50, 0x59, 1, 0], 0);
  new DataView(out.buffer).setUint16(8, header.length, true);
  out.set(Buffer.from(header, 'latin1'), 10);
  // Little-endian hosts (all Node targets we ship for) hold typed arrays in .npy's byte order already.
  out.set(new Uint8Array(data.buffer, data.byteOffset, data.byteLength), 10 + header.length);
  return out;
}
