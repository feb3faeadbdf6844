/**
 * A few x / g(x) pairs of a calibrated auxiliary set for the panel's gallery, small enough to travel inside
 * results.json. Pixels are 8-bit (what a screen shows); the perturbation is stored separately, scaled so that
 * the bound delta is full scale, because most of it is below one 8-bit step and would vanish in g(x) - x.
 */
import { imageSize, type ImageSet } from '../data/dataset';
import type { GicSample } from '../../shared/results';

/** One image per class in class order (the first of each in the set), up to `count`. */
export function gallerySamples(raw: ImageSet, calibrated: ImageSet, delta: number, count = 6): GicSample[] {
  if (raw.n !== calibrated.n || imageSize(raw) !== imageSize(calibrated)) throw new Error('gallerySamples: the calibrated set does not match the raw one');
  const size = imageSize(raw);
  const firstOfClass = new Map<number, number>();
  for (let i = 0; i < raw.n; i++) if (!firstOfClass.has(raw.y[i])) firstOfClass.set(raw.y[i], i);
  const picks = [...firstOfClass.entries()].sort((a, b) => a[0] - b[0]).slice(0, count);
  return picks.map(([label, i]) => {
    const x = raw.x.subarray(i * size, (i + 1) * size);
    const gx = calibrated.x.subarray(i * size, (i + 1) * size);
    const diff = new Float32Array(size);
    for (let j = 0; j < size; j++) diff[j] = Math.abs(gx[j] - x[j]) / delta;
    return { label, shape: [...raw.shape] as [number, number, number], x: toBase64Bytes(x), gx: toBase64Bytes(gx), diff: toBase64Bytes(diff) };
  });
}

/** Values in [0, 1] (clamped) as base64 of rounded bytes. */
function toBase64Bytes(v: Float32Array): string {
  const bytes = new Uint8Array(v.length);
  for (let j = 0; j < v.length; j++) bytes[j] = Math.round(Math.min(1, Math.max(0, v[j])) * 255);
  return Buffer.from(bytes).toString('base64');
}
