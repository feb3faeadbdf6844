/**
 * WaNet (Nguyen & Tran, 2021): a smooth warp. A k x k field of uniform(-1,1) 2-vectors, divided by its mean
 * absolute value, upsampled bicubically to H x W; the sampling grid is clamp(identity + s * field / H, -1, 1)
 * (s = 0.5) in normalized [-1,1] coordinates, and the image is resampled bilinearly. Seeded.
 *
 * The warp of a victim someone else trained comes with its grids (`identity_grid`, `noise_grid`, BackdoorBench's
 * state_dict.pt): `wanetFromGrids` then rebuilds the poisoned test images as BackdoorBench's attack/wanet.py
 * does, in float32 arithmetic step by step: ToTensor (v / 255), the data set's normalization, grid_sample
 * (bilinear, align_corners, zero padding; the weights as PyTorch's vectorized CPU kernel forms them), the
 * inverse normalization (as BackdoorBench's denormalizer: divide by 1/std, subtract -mean) and ToPILImage
 * (times 255, truncated to 8 bits).
 */
import type { Attack } from './attack';
import type { Rng } from '../util/rng';
import type { WanetGrids } from './trigger_files';

const f32 = Math.fround;

/** Cubic convolution weight (a = -0.75, as PyTorch's bicubic). */
function cubic(t: number): number {
  const a = -0.75;
  const x = Math.abs(t);
  if (x <= 1) return (a + 2) * x ** 3 - (a + 3) * x ** 2 + 1;
  if (x < 2) return a * x ** 3 - 5 * a * x ** 2 + 8 * a * x - 4 * a;
  return 0;
}

/** Bicubic upsampling of a k x k grid to h x w with align_corners=True semantics (corners map to corners). */
export function upsampleBicubic(src: Float64Array, k: number, h: number, w: number): Float64Array {
  const out = new Float64Array(h * w);
  for (let y = 0; y < h; y++) {
    const sy = h > 1 ? (y * (k - 1)) / (h - 1) : 0;
    const y0 = Math.floor(sy);
    for (let x = 0; x < w; x++) {
      const sx = w > 1 ? (x * (k - 1)) / (w - 1) : 0;
      const x0 = Math.floor(sx);
      let v = 0;
      for (let m = -1; m <= 2; m++)
        for (let n = -1; n <= 2; n++) {
          const yy = Math.min(k - 1, Math.max(0, y0 + m));
          const xx = Math.min(k - 1, Math.max(0, x0 + n));
          v += src[yy * k + xx] * cubic(sy - (y0 + m)) * cubic(sx - (x0 + n));
        }
      out[y * w + x] = v;
    }
  }
  return out;
}

export function wanet(shape: [number, number, number], rng: Rng, k = 4, s = 0.5): Attack {
  const [h, w] = shape;
  const fy = new Float64Array(k * k);
  const fx = new Float64Array(k * k);
  for (let i = 0; i < k * k; i++) {
    fx[i] = rng.uniform(-1, 1);
    fy[i] = rng.uniform(-1, 1);
  }
  let meanAbs = 0;
  for (let i = 0; i < k * k; i++) meanAbs += Math.abs(fx[i]) + Math.abs(fy[i]);
  meanAbs /= 2 * k * k;
  for (let i = 0; i < k * k; i++) {
    fx[i] /= meanAbs;
    fy[i] /= meanAbs;
  }
  const ux = upsampleBicubic(fx, k, h, w);
  const uy = upsampleBicubic(fy, k, h, w);
  // Source coordinates in pixels for every output pixel (grid_sample with align_corners=True).
  const srcX = new Float64Array(h * w);
  const srcY = new Float64Array(h * w);
  for (let y = 0; y < h; y++)
    for (let x = 0; x < w; x++) {
      const gx = Math.min(1, Math.max(-1, (w > 1 ? (2 * x) / (w - 1) - 1 : 0) + (s * ux[y * w + x]) / h));
      const gy = Math.min(1, Math.max(-1, (h > 1 ? (2 * y) / (h - 1) - 1 : 0) + (s * uy[y * w + x]) / h));
      srcX[y * w + x] = ((gx + 1) / 2) * (w - 1);
      srcY[y * w + x] = ((gy + 1) / 2) * (h - 1);
    }
  return {
    id: 'wanet',
    cleanLabel: false,
    apply(img, [hh, ww, c]) {
      const src = img.slice();
      for (let y = 0; y < hh; y++)
        for (let x = 0; x < ww; x++) {
          const sx = srcX[y * ww + x];
          const sy = srcY[y * ww + x];
          const x0 = Math.floor(sx);
          const y0 = Math.floor(sy);
          const x1 = Math.min(ww - 1, x0 + 1);
          const y1 = Math.min(hh - 1, y0 + 1);
          const ax = sx - x0;
          const ay = sy - y0;
          for (let ch = 0; ch < c; ch++) {
            const p = (yy: number, xx: number) => src[(yy * ww + xx) * c + ch];
            const v = (1 - ay) * ((1 - ax) * p(y0, x0) + ax * p(y0, x1)) + ay * ((1 - ax) * p(y1, x0) + ax * p(y1, x1));
            img[(y * ww + x) * c + ch] = Math.min(1, Math.max(0, v));
          }
        }
    },
  };
}

/** WaNet from a trained victim's grids, bit for bit as BackdoorBench builds its poisoned test set (see above). */
export function wanetFromGrids(grids: WanetGrids, [h, w]: [number, number, number], s = 0.5, normalize?: { mean: number[]; std: number[] }, gridRescale = 1): Attack {
  // grid = clamp((identity + s * noise / H) * rescale, -1, 1), each operation rounded to float32.
  const n = h * w * 2;
  const grid = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    const v = f32(f32(grids.identity[i] + f32(f32(f32(s) * grids.noise[i]) / h)) * f32(gridRescale));
    grid[i] = Math.min(1, Math.max(-1, v));
  }
  // Unnormalized source coordinates and the four bilinear weights per output pixel.
  const sx = f32(f32(w - 1) / 2);
  const sy = f32(f32(h - 1) / 2);
  const x0 = new Int32Array(h * w);
  const y0 = new Int32Array(h * w);
  const wts = new Float32Array(h * w * 4);
  for (let p = 0; p < h * w; p++) {
    const ix = f32(f32(grid[2 * p] + 1) * sx);
    const iy = f32(f32(grid[2 * p + 1] + 1) * sy);
    const xw = Math.floor(ix);
    const yn = Math.floor(iy);
    const we = f32(ix - xw);
    const e = f32(1 - we);
    const nn = f32(iy - yn);
    const so = f32(1 - nn);
    x0[p] = xw;
    y0[p] = yn;
    wts.set([f32(so * e), f32(so * we), f32(nn * e), f32(nn * we)], p * 4);
  }
  return {
    id: 'wanet',
    cleanLabel: false,
    apply(img, [hh, ww, c]) {
      if (hh !== h || ww !== w) throw new Error(`WaNet grids are ${w}x${h}, the image ${ww}x${hh}`);
      const mean = (k: number) => f32(normalize ? (normalize.mean.length === 1 ? normalize.mean[0] : normalize.mean[k]) : 0);
      const std = (k: number) => (normalize ? (normalize.std.length === 1 ? normalize.std[0] : normalize.std[k]) : 1);
      // The normalized input, as the data loader hands it to grid_sample.
      const src = new Float32Array(img.length);
      for (let i = 0; i < img.length; i++) {
        const k = i % c;
        const t = f32(Math.round(img[i] * 255) / 255);
        src[i] = normalize ? f32(f32(t - mean(k)) / f32(std(k))) : t;
      }
      const at = (y: number, x: number, k: number) => (x >= 0 && x < w && y >= 0 && y < h ? src[(y * w + x) * c + k] : 0);
      for (let p = 0; p < h * w; p++) {
        const xw = x0[p];
        const yn = y0[p];
        for (let k = 0; k < c; k++) {
          let v = f32(at(yn, xw, k) * wts[p * 4]);
          v = f32(v + f32(at(yn, xw + 1, k) * wts[p * 4 + 1]));
          v = f32(v + f32(at(yn + 1, xw, k) * wts[p * 4 + 2]));
          v = f32(v + f32(at(yn + 1, xw + 1, k) * wts[p * 4 + 3]));
          if (normalize) v = f32(f32(v / f32(1 / std(k))) - f32(-mean(k)));
          const byte = Math.trunc(f32(v * 255));
          img[p * c + k] = Math.min(255, Math.max(0, byte)) / 255;
        }
      }
    },
  };
}
