/**
 * `.npz` archives (numpy's savez / savez_compressed): a zip of .npy arrays, read with fflate (already the
 * project's zip library for PyTorch checkpoints). The images and labels arrays are found by shape — one
 * array of rank 3 or 4 and one of rank 1 — or, when there are more, by the usual names (x/images/data,
 * y/labels/targets). Sizes declared in the zip directory are checked before anything is inflated.
 */
import * as fs from 'node:fs';
import { zipSync } from 'fflate';
import { unzipChecked } from '../zip';
import { encodeNpy, npyToImageSet, parseNpy, type Npy } from './npy';
import type { ImageSet } from '../../data/dataset';
import { InputError } from '../../errors';
import type { DataTarget } from './convert';

/** Inflated bytes we accept from one archive (the engine holds data sets in memory). */
const MAX_TOTAL = 4 * 1024 ** 3;
const IMAGE_NAMES = ['x', 'images', 'x_train', 'x_test', 'data', 'arr_0'];
const LABEL_NAMES = ['y', 'labels', 'y_train', 'y_test', 'targets', 'arr_1'];

export function readNpzArrays(file: string): Map<string, Npy> {
  const buf = fs.readFileSync(file);
  if (buf.length < 4 || buf.readUInt32LE(0) !== 0x04034b50) throw new InputError('not an .npz file (not a zip archive)', file);
  // Declared sizes are checked against the file before anything is inflated (fflate allocates what the
  // header claims): a 600-byte file claiming a 4 GB array is refused, not allocated.
  const files = unzipChecked(buf, file, (name) => name.endsWith('.npy'), { maxEntry: MAX_TOTAL, maxTotal: MAX_TOTAL, what: '.npz archive' });
  const out = new Map<string, Npy>();
  for (const [name, bytes] of Object.entries(files)) out.set(name.slice(0, -4), parseNpy(bytes, `${file}:${name}`));
  if (out.size === 0) throw new InputError('the .npz archive holds no arrays', file);
  return out;
}

function pick(arrays: Map<string, Npy>, ranks: number[], names: string[], what: string, file: string): string {
  const candidates = [...arrays].filter(([, a]) => ranks.includes(a.shape.length)).map(([n]) => n);
  if (candidates.length === 1) return candidates[0];
  const named = names.find((n) => candidates.includes(n));
  if (named) return named;
  const list = [...arrays].map(([n, a]) => `${n} (${a.shape.join(',')})`).join(', ');
  throw new InputError(`cannot tell which array holds the ${what}: ${candidates.length ? `several candidates` : 'none of rank ' + ranks.join(' or ')} among ${list}; name them ${names[0]} and ${what === 'images' ? 'y' : 'x'}`, file);
}

export function readNpz(file: string, target: DataTarget = {}): ImageSet {
  const arrays = readNpzArrays(file);
  const xName = pick(arrays, [3, 4], IMAGE_NAMES, 'images', file);
  const yName = pick(arrays, [1], LABEL_NAMES, 'labels', file);
  return npyToImageSet(arrays.get(xName)!, arrays.get(yName)!, { images: `${file}:${xName}.npy`, labels: `${file}:${yName}.npy` }, target);
}

/** An uncompressed .npz (what np.savez writes) of named arrays: `np.load` and readNpz read it. */
export function encodeNpz(arrays: Array<[string, Float32Array | BigInt64Array | Uint8Array, number[]]>): Uint8Array {
  // Stored entries: calibrated float images barely compress, and stored data is what np.savez produces.
  const entries: Record<string, [Uint8Array, { level: 0 }]> = {};
  for (const [name, data, shape] of arrays) entries[`${name}.npy`] = [encodeNpy(data, shape), { level: 0 }];
  return zipSync(entries);
}
