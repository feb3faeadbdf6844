/**
 * Blended (Chen et al., 2017): x' = (1 - alpha) x + alpha t, alpha 0.2, with t a trigger image resized to the
 * input (a user image) or a seeded uniform-noise image.
 *
 * A user image is applied as BackdoorBench applies it, to the 8-bit value: the image is resized as PIL does,
 * read as torchvision's ToTensor reads it (v / 255 in float32) and scaled back by 255 in float32; alpha t is a
 * float32 product, (1 - alpha) x a double one, and the sum is clipped and truncated to 8 bits (numpy's
 * `astype(np.uint8)`). The float32 steps matter: 0.2 * 255 is 51 in double but 50.99999 in float32, one grey
 * level less after truncation.
 */
import type { Attack } from './attack';
import type { Rng } from '../util/rng';
import { pilResizeBilinear } from './pil_resize';
import { convertChannels8, type TriggerImage } from './trigger_files';

const f32 = Math.fround;

export function blended(shape: [number, number, number], rng: Rng, alpha = 0.2, trigger?: Float32Array | TriggerImage): Attack {
  if (trigger && !(trigger instanceof Float32Array)) return blendedImage(shape, alpha, trigger);
  const t = trigger ?? Float32Array.from({ length: shape[0] * shape[1] * shape[2] }, () => rng.next());
  return {
    id: 'blended',
    cleanLabel: false,
    apply(img) {
      for (let i = 0; i < img.length; i++) img[i] = Math.min(1, Math.max(0, (1 - alpha) * img[i] + alpha * t[i]));
    },
  };
}

function blendedImage([h, w, c]: [number, number, number], alpha: number, image: TriggerImage): Attack {
  const t8 = convertChannels8(pilResizeBilinear(image.pixels, image.height, image.width, image.channels, h, w), h * w, image.channels, c);
  // alpha * (ToTensor(t) * 255), all in float32.
  const at = Float64Array.from(t8, (v) => f32(f32(alpha) * f32(f32(v / 255) * 255)));
  const keep = 1 - alpha;
  return {
    id: 'blended',
    cleanLabel: false,
    apply(img) {
      for (let i = 0; i < img.length; i++) {
        const v = keep * Math.round(img[i] * 255) + at[i];
        img[i] = Math.trunc(Math.min(255, Math.max(0, v))) / 255;
      }
    },
  };
}
