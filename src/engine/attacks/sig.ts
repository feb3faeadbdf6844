/**
 * SIG (Barni et al., 2019), clean-label: x' = clip(x + delta * sin(2 pi j f / W)) with j the column, delta = 40
 * (of 255) and f = 6. Poisoning draws only from the target class and keeps the labels.
 *
 * Applied as BackdoorBench's sigTriggerAttack applies it, to 8-bit values: the pattern is held in float32, added
 * to the integer pixel in double, clipped to 0..255 and truncated to 8 bits.
 */
import type { Attack } from './attack';

export function sig(amplitude = 40 / 255, frequency = 6): Attack {
  // The amplitude is given on [0,1] pixels; BackdoorBench's delta is on 0..255 (40/255 * 255 is 40 up to rounding).
  const delta = Math.round(amplitude * 255 * 1e9) / 1e9;
  let pattern: Float64Array | undefined;
  let width = -1;
  return {
    id: 'sig',
    cleanLabel: true,
    apply(img, [h, w, c]) {
      if (width !== w) {
        pattern = Float64Array.from({ length: w }, (_, j) => Math.fround(delta * Math.sin((2 * Math.PI * j * frequency) / w)));
        width = w;
      }
      for (let y = 0; y < h; y++)
        for (let x = 0; x < w; x++) {
          const s = pattern![x];
          for (let k = 0; k < c; k++) {
            const i = (y * w + x) * c + k;
            img[i] = Math.trunc(Math.min(255, Math.max(0, Math.round(img[i] * 255) + s))) / 255;
          }
        }
    },
  };
}
