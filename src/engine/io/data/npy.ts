/**
 * `.npy` pairs: images (N,H,W) or (N,H,W,C), uint8 or float32/float64 in [0,1]; labels (N) of any integer type.
 * A strict parser of the NPY v1-3 header (our own: the format is tiny and the npm readers we found do not check
 * sizes against the file); C order only.
 */
import * as fs from 'node:fs';
import type { ImageSet } from '../../data/dataset';
import { InputError } from '../../errors';

interface Npy {
  dtype: string;
  shape: number[];
  body: Buffer;
}

export function parseNpy(buf: Buffer, file: string): Npy {
  if (buf.length < 10 || buf.toString('latin1', 0, 6) !== '\x93NUMPY') throw new InputError('not a .npy file (bad magic)', file);
  const major = buf[6];
  // v1 has a 2-byte header length, v2/v3 a 4-byte one; anything else (or too short to hold it) is not NPY.
  if (major < 1 || major > 3 || buf.length < (major === 1 ? 10 : 12)) throw new InputError(`.npy header is truncated or of unknown version ${major}`, file);
  const headerLen = major === 1 ? buf.readUInt16LE(8) : buf.readUInt32LE(8);
  const start = (major === 1 ? 10 : 12) + headerLen;
  if (start > buf.length) throw new InputError('.npy header is truncated', file);
  const header = buf.toString('latin1', major === 1 ? 10 : 12, start);
  const descr = /'descr':\s*'([^']+)'/.exec(header)?.[1];
  const fortran = /'fortran_order':\s*(True|False)/.exec(header)?.[1];
  const shapeText = /'shape':\s*\(([^)]*)\)/.exec(header)?.[1];
  if (!descr || !fortran || shapeText === undefined) throw new InputError('.npy header is malformed', file);
  if (fortran === 'True') throw new InputError('Fortran-ordered .npy arrays are not supported; save with np.ascontiguousarray', file);
  const shape = shapeText.split(',').map((s) => s.trim()).filter(Boolean).map(Number);
  if (shape.some((d) => !Number.isInteger(d) || d < 0)) throw new InputError('.npy shape is malformed', file);
  const sizes: Record<string, number> = { '|u1': 1, '<f4': 4, '<f8': 8, '<i8': 8, '<i4': 4, '|i1': 1, '<u2': 2, '<i2': 2 };
  const item = sizes[descr];
  if (!item) throw new InputError(`unsupported .npy dtype ${descr}`, file);
  const count = shape.reduce((a, b) => a * b, 1);
  if (buf.length - start !== count * item) throw new InputError(`.npy header promises ${count * item} bytes of data, the file has ${buf.length - start}`, file);
  return { dtype: descr, shape, body: buf.subarray(start) };
}

function values(a: Npy): Float64Array {
  const n = a.body.length;
  const dv = new DataView(a.body.buffer, a.body.byteOffset, n);
  const get: Record<string, [number, (o: number) => number]> = {
    '|u1': [1, (o) => dv.getUint8(o)],
    '|i1': [1, (o) => dv.getInt8(o)],
    '<i2': [2, (o) => dv.getInt16(o, true)],
    '<u2': [2, (o) => dv.getUint16(o, true)],
    '<i4': [4, (o) => dv.getInt32(o, true)],
    '<i8': [8, (o) => Number(dv.getBigInt64(o, true))],
    '<f4': [4, (o) => dv.getFloat32(o, true)],
    '<f8': [8, (o) => dv.getFloat64(o, true)],
  };
  const [size, read] = get[a.dtype];
  return Float64Array.from({ length: n / size }, (_, i) => read(i * size));
}

export function readNpyPair(imagesFile: string, labelsFile: string, numClasses?: number): ImageSet {
  const img = parseNpy(fs.readFileSync(imagesFile), imagesFile);
  const lab = parseNpy(fs.readFileSync(labelsFile), labelsFile);
  if (img.shape.length !== 3 && img.shape.length !== 4) throw new InputError(`images must be (N,H,W) or (N,H,W,C), got (${img.shape})`, imagesFile);
  if (lab.shape.length !== 1 || lab.shape[0] !== img.shape[0]) throw new InputError(`${lab.shape[0]} labels for ${img.shape[0]} images`, labelsFile);
  const [n, h, w, c = 1] = img.shape;
  const v = values(img);
  const scale = img.dtype === '|u1' ? 1 / 255 : 1;
  const x = Float32Array.from(v, (p) => p * scale);
  if (scale === 1 && x.some((p) => !(p >= 0 && p <= 1))) throw new InputError('float images must be in [0,1]', imagesFile);
  const y = Int32Array.from(values(lab));
  const k = numClasses ?? Math.max(...y) + 1;
  const bad = y.findIndex((l) => l < 0 || l >= k);
  if (bad >= 0) throw new InputError(`label ${y[bad]} at index ${bad} is outside the model's ${k} classes`, labelsFile);
  return { n, shape: [h, w, c], x, y, numClasses: k };
}
