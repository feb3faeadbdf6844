/**
 * Bilinear resizing of 8-bit images exactly as PIL does it (`Image.resize(size, BILINEAR)`, which torchvision's
 * `Resize` calls on PIL images). BackdoorBench resizes every trigger image this way (BadNets' mask image, the
 * Blended image) before applying it, so a trigger built from the same file must go through the same integer
 * arithmetic to be the same trigger, pixel for pixel: a float resize differs by one grey level here and there.
 *
 * The algorithm (Pillow's libImaging/Resample.c, read to learn it, written anew): separable, horizontal pass
 * first then vertical, each a convolution with a triangle filter widened by the scale factor when shrinking
 * (antialiasing), coefficients normalized to sum 1 and then turned into 22-bit fixed point, sums rounded by a
 * half added up front and clipped to 0..255. A pass is skipped when its size does not change.
 */

const PRECISION_BITS = 32 - 8 - 2;

/** Per output coordinate: first input index, tap count and fixed-point coefficients (`ksize` per output). */
function coefficients(inSize: number, outSize: number): { bounds: Int32Array; kk: Int32Array; ksize: number } {
  const scale = inSize / outSize;
  const filterscale = Math.max(1, scale);
  const support = 1.0 * filterscale; // the bilinear filter's support is 1
  const ksize = Math.ceil(support) * 2 + 1;
  const bounds = new Int32Array(outSize * 2);
  const kk = new Int32Array(outSize * ksize);
  const k = new Float64Array(ksize);
  for (let xx = 0; xx < outSize; xx++) {
    const center = (xx + 0.5) * scale;
    const ss = 1.0 / filterscale;
    const xmin = Math.max(0, Math.trunc(center - support + 0.5));
    const xmax = Math.min(inSize, Math.trunc(center + support + 0.5)) - xmin;
    let ww = 0;
    for (let x = 0; x < xmax; x++) {
      const t = Math.abs((x + xmin - center + 0.5) * ss);
      const w = t < 1 ? 1 - t : 0;
      k[x] = w;
      ww += w;
    }
    for (let x = 0; x < ksize; x++) {
      const v = x < xmax && ww !== 0 ? k[x] / ww : 0;
      kk[xx * ksize + x] = v < 0 ? Math.trunc(-0.5 + v * (1 << PRECISION_BITS)) : Math.trunc(0.5 + v * (1 << PRECISION_BITS));
    }
    bounds[xx * 2] = xmin;
    bounds[xx * 2 + 1] = xmax;
  }
  return { bounds, kk, ksize };
}

function clip8(v: number): number {
  if (v >= 1 << (PRECISION_BITS + 8)) return 255;
  if (v <= 0) return 0;
  return v >> PRECISION_BITS;
}

/** Resize an 8-bit HWC image (`c` channels, each resampled on its own) to oh x ow, as PIL's BILINEAR. */
export function pilResizeBilinear(src: Uint8Array, h: number, w: number, c: number, oh: number, ow: number): Uint8Array {
  let cur = src;
  let curW = w;
  if (ow !== w) {
    const { bounds, kk, ksize } = coefficients(w, ow);
    const out = new Uint8Array(h * ow * c);
    for (let y = 0; y < h; y++)
      for (let xx = 0; xx < ow; xx++) {
        const xmin = bounds[xx * 2];
        const xmax = bounds[xx * 2 + 1];
        for (let ch = 0; ch < c; ch++) {
          let ss = 1 << (PRECISION_BITS - 1);
          for (let x = 0; x < xmax; x++) ss += cur[(y * curW + x + xmin) * c + ch] * kk[xx * ksize + x];
          out[(y * ow + xx) * c + ch] = clip8(ss);
        }
      }
    cur = out;
    curW = ow;
  }
  if (oh !== h) {
    const { bounds, kk, ksize } = coefficients(h, oh);
    const out = new Uint8Array(oh * curW * c);
    for (let yy = 0; yy < oh; yy++) {
      const ymin = bounds[yy * 2];
      const ymax = bounds[yy * 2 + 1];
      for (let x = 0; x < curW; x++)
        for (let ch = 0; ch < c; ch++) {
          let ss = 1 << (PRECISION_BITS - 1);
          for (let y = 0; y < ymax; y++) ss += cur[((y + ymin) * curW + x) * c + ch] * kk[yy * ksize + y];
          out[(yy * curW + x) * c + ch] = clip8(ss);
        }
    }
    cur = out;
  }
  return cur === src ? src.slice() : cur;
}
