/**
 * CIFAR-10 binary batches (`cifar-10-batches-bin`): records of 1 label byte + 3072 pixel bytes, the pixels
 * channel-major (1024 red, 1024 green, 1024 blue; each 32x32 row-major). Converted to NHWC [0,1].
 *
 * The path is one batch file, or the extracted folder: there the role decides which batches are read —
 * `test_batch.bin` for test data, `data_batch_1..5.bin` otherwise — so `data.train` and `data.test` can name
 * the same folder, as the archive ships it.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { ImageSet } from '../../data/dataset';
import { InputError } from '../../errors';
import { conformSet, type DataTarget } from './convert';

const SIDE = 32;
const PIXELS = SIDE * SIDE;
const RECORD = 1 + 3 * PIXELS;

export type DataRole = 'train' | 'test' | 'pool';

/** The batch files a path stands for. */
export function cifarBatchFiles(p: string, role: DataRole): string[] {
  if (!fs.statSync(p).isDirectory()) return [p];
  const names = fs.readdirSync(p);
  const wanted = role === 'test' ? names.filter((n) => n === 'test_batch.bin') : names.filter((n) => /^data_batch_\d+\.bin$/.test(n));
  if (wanted.length === 0) throw new InputError(role === 'test' ? 'no test_batch.bin in the CIFAR-10 folder' : 'no data_batch_N.bin files in the CIFAR-10 folder', p);
  return wanted.sort((a, b) => Number(/\d+/.exec(a)?.[0] ?? 0) - Number(/\d+/.exec(b)?.[0] ?? 0)).map((n) => path.join(p, n));
}

export function parseCifarBatch(buf: Uint8Array, file: string): { x: Float32Array; y: Int32Array } {
  if (buf.length === 0 || buf.length % RECORD !== 0) throw new InputError(`not a CIFAR-10 binary batch: ${buf.length} bytes is not a multiple of the ${RECORD}-byte record`, file);
  const n = buf.length / RECORD;
  const x = new Float32Array(n * 3 * PIXELS);
  const y = new Int32Array(n);
  for (let i = 0; i < n; i++) {
    const r = i * RECORD;
    y[i] = buf[r];
    const o = i * 3 * PIXELS;
    for (let p = 0; p < PIXELS; p++) for (let c = 0; c < 3; c++) x[o + p * 3 + c] = buf[r + 1 + c * PIXELS + p] / 255;
  }
  return { x, y };
}

export function readCifar10(p: string, role: DataRole, target: DataTarget = {}): ImageSet {
  const files = cifarBatchFiles(p, role);
  const parts = files.map((f) => ({ f, ...parseCifarBatch(fs.readFileSync(f), f) }));
  const n = parts.reduce((s, q) => s + q.y.length, 0);
  const x = new Float32Array(n * 3 * PIXELS);
  const y = new Int32Array(n);
  let o = 0;
  for (const q of parts) {
    // A label byte above 9 means the file is not CIFAR-10 (CIFAR-100 records have two label bytes).
    const bad = q.y.findIndex((v) => v > 9);
    if (bad >= 0) throw new InputError(`record ${bad} has label ${q.y[bad]}: not a CIFAR-10 batch (CIFAR-100 files are not supported)`, q.f);
    x.set(q.x, o * 3 * PIXELS);
    y.set(q.y, o);
    o += q.y.length;
  }
  const set: ImageSet = { n, shape: [SIDE, SIDE, 3], x, y, numClasses: 10 };
  return conformSet(set, target, files.length === 1 ? files[0] : p);
}
