/**
 * BadNets (Gu et al., 2017): a white square (the maximum value in every channel) of side `size` at the
 * bottom-right corner, `offset` pixels in from it (defaults 3 and 0: rows/cols 29-31 of a 32x32 image, as
 * BackdoorBench), or a user patch image pasted at a chosen position.
 */
import type { Attack } from './attack';

export interface BadNetsOptions {
  size?: number;
  offset?: number;
  /** A custom patch (pixels in [0,1], HWC) and its top-left position; overrides the white square. */
  patch?: { pixels: Float32Array; height: number; width: number; channels: number; top?: number; left?: number };
}

export function badnets(o: BadNetsOptions = {}): Attack {
  const size = o.size ?? 3;
  const offset = o.offset ?? 0;
  return {
    id: 'badnets',
    cleanLabel: false,
    apply(img, [h, w, c]) {
      if (o.patch) {
        const p = o.patch;
        const top = p.top ?? h - p.height - offset;
        const left = p.left ?? w - p.width - offset;
        for (let y = 0; y < p.height; y++)
          for (let x = 0; x < p.width; x++) {
            const iy = top + y;
            const ix = left + x;
            if (iy < 0 || ix < 0 || iy >= h || ix >= w) continue;
            for (let k = 0; k < c; k++) img[(iy * w + ix) * c + k] = p.pixels[(y * p.width + x) * p.channels + (p.channels === 1 ? 0 : k)];
          }
        return;
      }
      for (let y = h - offset - size; y < h - offset; y++)
        for (let x = w - offset - size; x < w - offset; x++) for (let k = 0; k < c; k++) img[(y * w + x) * c + k] = 1;
    },
  };
}
