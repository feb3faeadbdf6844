/**
 * Blended (Chen et al., 2017): x' = (1 - alpha) x + alpha t, alpha 0.2, with t a trigger image resized to the
 * input (a user image) or a seeded uniform-noise image.
 */
import type { Attack } from './attack';
import type { Rng } from '../util/rng';

export function blended(shape: [number, number, number], rng: Rng, alpha = 0.2, trigger?: Float32Array): Attack {
  const t = trigger ?? Float32Array.from({ length: shape[0] * shape[1] * shape[2] }, () => rng.next());
  return {
    id: 'blended',
    cleanLabel: false,
    apply(img) {
      for (let i = 0; i < img.length; i++) img[i] = Math.min(1, Math.max(0, (1 - alpha) * img[i] + alpha * t[i]));
    },
  };
}
