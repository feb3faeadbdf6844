/**
 * Distribution shifts that turn an in-distribution auxiliary set into an `ood` one (SPEC section 6). Each
 * returns a new set (the input is never changed), is seeded, and clips pixels to [0,1].
 *   brightness: x * f, f ~ U[0.5, 1.5] per image      contrast: mean + 0.5 (x - mean) per image
 *   blur: Gaussian, 3x3, sigma ~ U[0.1, 2] per image   noise: x + N(0, 0.1)
 *   rotation: up to 30 degrees, bilinear, zero fill    jitter: brightness, contrast and saturation together
 */
import type { ImageSet } from '../data/dataset';
import { cloneSet, imageSize } from '../data/dataset';
import type { Rng } from '../util/rng';
import { InputError } from '../errors';

import { SHIFT_NAMES, type ShiftName } from '../catalog';

/** The shifts this module implements: the catalog's names (the record below has one function per name). */
export const SHIFTS = SHIFT_NAMES;
export type { ShiftName };

const clip = (v: number) => (v < 0 ? 0 : v > 1 ? 1 : v);

type ImageShift = (img: Float32Array, shape: [number, number, number], rng: Rng) => void;

function scaleBrightness(img: Float32Array, f: number): void {
  for (let i = 0; i < img.length; i++) img[i] = clip(img[i] * f);
}

function scaleContrast(img: Float32Array, f: number): void {
  let mean = 0;
  for (let i = 0; i < img.length; i++) mean += img[i];
  mean /= img.length;
  for (let i = 0; i < img.length; i++) img[i] = clip(mean + f * (img[i] - mean));
}

function scaleSaturation(img: Float32Array, [h, w, c]: [number, number, number], f: number): void {
  if (c !== 3) return; // grey images have no saturation
  for (let p = 0; p < h * w; p++) {
    const o = p * 3;
    const grey = 0.299 * img[o] + 0.587 * img[o + 1] + 0.114 * img[o + 2];
    for (let k = 0; k < 3; k++) img[o + k] = clip(grey + f * (img[o + k] - grey));
  }
}

const shifts: Record<ShiftName, ImageShift> = {
  brightness: (img, _s, rng) => scaleBrightness(img, rng.uniform(0.5, 1.5)),
  contrast: (img) => scaleContrast(img, 0.5),
  noise: (img, _s, rng) => {
    for (let i = 0; i < img.length; i++) img[i] = clip(img[i] + 0.1 * rng.normal());
  },
  blur: (img, [h, w, c], rng) => {
    const sigma = rng.uniform(0.1, 2);
    const g = [-1, 0, 1].map((d) => Math.exp(-(d * d) / (2 * sigma * sigma)));
    const sum = g.reduce((a, b) => a + b, 0);
    const k = g.map((v) => v / sum);
    // Separable 3x3 Gaussian with edge replication.
    const tmp = new Float32Array(img.length);
    for (let y = 0; y < h; y++)
      for (let x = 0; x < w; x++)
        for (let ch = 0; ch < c; ch++) {
          let v = 0;
          for (let d = -1; d <= 1; d++) v += k[d + 1] * img[(y * w + Math.min(w - 1, Math.max(0, x + d))) * c + ch];
          tmp[(y * w + x) * c + ch] = v;
        }
    for (let y = 0; y < h; y++)
      for (let x = 0; x < w; x++)
        for (let ch = 0; ch < c; ch++) {
          let v = 0;
          for (let d = -1; d <= 1; d++) v += k[d + 1] * tmp[(Math.min(h - 1, Math.max(0, y + d)) * w + x) * c + ch];
          img[(y * w + x) * c + ch] = clip(v);
        }
  },
  rotation: (img, [h, w, c], rng) => {
    const angle = (rng.uniform(-30, 30) * Math.PI) / 180;
    const cos = Math.cos(angle);
    const sin = Math.sin(angle);
    const src = img.slice();
    const cy = (h - 1) / 2;
    const cx = (w - 1) / 2;
    for (let y = 0; y < h; y++)
      for (let x = 0; x < w; x++) {
        // Inverse mapping: where in the source does this output pixel come from.
        const sx = cos * (x - cx) + sin * (y - cy) + cx;
        const sy = -sin * (x - cx) + cos * (y - cy) + cy;
        const x0 = Math.floor(sx);
        const y0 = Math.floor(sy);
        const ax = sx - x0;
        const ay = sy - y0;
        for (let ch = 0; ch < c; ch++) {
          const p = (yy: number, xx: number) => (yy < 0 || xx < 0 || yy >= h || xx >= w ? 0 : src[(yy * w + xx) * c + ch]);
          const v = (1 - ay) * ((1 - ax) * p(y0, x0) + ax * p(y0, x0 + 1)) + ay * ((1 - ax) * p(y0 + 1, x0) + ax * p(y0 + 1, x0 + 1));
          img[(y * w + x) * c + ch] = clip(v);
        }
      }
  },
  jitter: (img, shape, rng) => {
    scaleBrightness(img, rng.uniform(0.6, 1.4));
    scaleContrast(img, rng.uniform(0.6, 1.4));
    scaleSaturation(img, shape, rng.uniform(0.6, 1.4));
  },
};

export function applyShift(set: ImageSet, shift: string, rng: Rng): ImageSet {
  const f = shifts[shift as ShiftName];
  if (!f) throw new InputError(`unknown shift "${shift}" (known: ${SHIFTS.join(', ')})`, 'aux.shift');
  const out = cloneSet(set);
  const size = imageSize(set);
  for (let i = 0; i < set.n; i++) f(out.x.subarray(i * size, (i + 1) * size), set.shape, rng);
  return out;
}
