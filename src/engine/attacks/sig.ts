/**
 * SIG (Barni et al., 2019), clean-label: x' = clip(x + delta * sin(2 pi j f / W)) with j the column, delta = 40/255
 * and f = 6. Poisoning draws only from the target class and keeps the labels.
 */
import type { Attack } from './attack';

export function sig(amplitude = 40 / 255, frequency = 6): Attack {
  return {
    id: 'sig',
    cleanLabel: true,
    apply(img, [h, w, c]) {
      for (let y = 0; y < h; y++)
        for (let x = 0; x < w; x++) {
          const s = amplitude * Math.sin((2 * Math.PI * x * frequency) / w);
          for (let k = 0; k < c; k++) {
            const i = (y * w + x) * c + k;
            img[i] = Math.min(1, Math.max(0, img[i] + s));
          }
        }
    },
  };
}
