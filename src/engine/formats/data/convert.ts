/**
 * Bringing a data set to the model's input: channel conversion (grey <-> RGB, always: it loses nothing the
 * model could use) and resizing (only when the data source asks for it with `"resize": true`, since a
 * silent resize of, say, 32x32 images for a 28x28 model usually means the wrong data set was given).
 * Labels are checked against the model's classes. Every problem is one InputError naming the file or field.
 */
import type { ImageSet } from '../../data/dataset';
import { InputError } from '../../errors';

export type Shape = [number, number, number];

/** What a data set must match: the model's input and classes. */
export interface DataTarget {
  shape?: Shape;
  numClasses?: number;
  /** Resize images whose height/width differ from `shape` (bilinear, antialiased when shrinking). */
  resize?: boolean;
}

/** ITU-R BT.601 luma, as PIL's convert('L') and torchvision's Grayscale use. */
export const LUMA = [0.299, 0.587, 0.114] as const;

/**
 * Convert pixels from `from` to `to` channels: 1 -> 3 replicates, 3 -> 1 takes the luma, 4 (RGBA) drops
 * alpha first. Any other combination makes no sense and is refused.
 */
export function convertChannels(src: Float32Array, pixels: number, from: number, to: number, where?: string): Float32Array {
  if (from === to) return src;
  const out = new Float32Array(pixels * to);
  const rgbLike = from === 3 || from === 4;
  if (from === 1 && (to === 3 || to === 4)) {
    for (let p = 0; p < pixels; p++) {
      for (let c = 0; c < 3; c++) out[p * to + c] = src[p];
      if (to === 4) out[p * to + 3] = 1;
    }
    return out;
  }
  if (rgbLike && to === 1) {
    for (let p = 0; p < pixels; p++) {
      const o = p * from;
      out[p] = Math.min(1, LUMA[0] * src[o] + LUMA[1] * src[o + 1] + LUMA[2] * src[o + 2]);
    }
    return out;
  }
  if (rgbLike && to === 3) {
    for (let p = 0; p < pixels; p++) for (let c = 0; c < 3; c++) out[p * 3 + c] = src[p * from + c];
    return out;
  }
  throw new InputError(`cannot convert ${from}-channel images to the model's ${to} channels`, where);
}

/** Filter weights of one output coordinate: triangle kernel, widened by the scale when shrinking (antialias). */
function resampleWeights(inSize: number, outSize: number): { start: Int32Array; count: Int32Array; w: Float32Array; max: number } {
  const scale = inSize / outSize;
  const support = Math.max(1, scale);
  const max = Math.ceil(support) * 2 + 1;
  const start = new Int32Array(outSize);
  const count = new Int32Array(outSize);
  const w = new Float32Array(outSize * max);
  for (let o = 0; o < outSize; o++) {
    // Half-pixel centres (align_corners=False), as PIL and torch's antialiased interpolate.
    const centre = (o + 0.5) * scale;
    const lo = Math.max(0, Math.floor(centre - support));
    const hi = Math.min(inSize, Math.ceil(centre + support));
    let sum = 0;
    let k = 0;
    for (let i = lo; i < hi && k < max; i++, k++) {
      const v = Math.max(0, 1 - Math.abs((i + 0.5 - centre) / support));
      w[o * max + k] = v;
      sum += v;
    }
    // Normalize so a constant image stays constant; at least one tap always has weight (sum > 0).
    for (let j = 0; j < k; j++) w[o * max + j] /= sum;
    start[o] = lo;
    count[o] = k;
  }
  return { start, count, w, max };
}

/** Resize one HWC image (separable, rows then columns). */
export function resizeImage(src: Float32Array, [h, w, c]: Shape, oh: number, ow: number): Float32Array {
  if (h === oh && w === ow) return src;
  const rx = resampleWeights(w, ow);
  const ry = resampleWeights(h, oh);
  const tmp = new Float32Array(h * ow * c);
  for (let y = 0; y < h; y++)
    for (let x = 0; x < ow; x++)
      for (let ch = 0; ch < c; ch++) {
        let v = 0;
        for (let k = 0; k < rx.count[x]; k++) v += rx.w[x * rx.max + k] * src[(y * w + rx.start[x] + k) * c + ch];
        tmp[(y * ow + x) * c + ch] = v;
      }
  const out = new Float32Array(oh * ow * c);
  for (let y = 0; y < oh; y++)
    for (let x = 0; x < ow; x++)
      for (let ch = 0; ch < c; ch++) {
        let v = 0;
        for (let k = 0; k < ry.count[y]; k++) v += ry.w[y * ry.max + k] * tmp[((ry.start[y] + k) * ow + x) * c + ch];
        out[(y * ow + x) * c + ch] = Math.min(1, Math.max(0, v));
      }
  return out;
}

/** Refuse labels outside [0, numClasses). */
export function checkLabels(y: Int32Array, numClasses: number, where?: string): void {
  for (let i = 0; i < y.length; i++) {
    if (!(y[i] >= 0 && y[i] < numClasses)) throw new InputError(`label ${y[i]} at index ${i} is outside the model's ${numClasses} classes (0..${numClasses - 1})`, where);
  }
}

function sizeHint(from: Shape, to: Shape): string {
  return `images are ${from[0]}x${from[1]} but the model takes ${to[0]}x${to[1]}; add "resize": true to the data source to resize them`;
}

/**
 * A set at the model's input shape and classes. Returns the input unchanged when nothing needs converting.
 * Without `resize`, a different height/width is refused.
 */
export function conformSet(set: ImageSet, target: DataTarget, where?: string): ImageSet {
  let out = set;
  if (target.numClasses !== undefined) {
    checkLabels(set.y, target.numClasses, where);
    out = { ...out, numClasses: target.numClasses };
  }
  const want = target.shape;
  if (!want) return out;
  const [h, w, c] = set.shape;
  const [th, tw, tc] = want;
  if ((h !== th || w !== tw) && !target.resize) throw new InputError(sizeHint(set.shape, want), where);
  if (h === th && w === tw && c === tc) return out;
  const inSize = h * w * c;
  const x = new Float32Array(set.n * th * tw * tc);
  for (let i = 0; i < set.n; i++) {
    const img = set.x.subarray(i * inSize, (i + 1) * inSize);
    const conv = convertChannels(img, h * w, c, tc, where);
    x.set(resizeImage(conv, [h, w, tc], th, tw), i * th * tw * tc);
  }
  return { ...out, shape: [th, tw, tc], x };
}

/**
 * Images of possibly different sizes (an image folder) to one shape: the target's when resizing, else they
 * must all agree (with each other and, when the target is known, with the model).
 */
export function stackImages(images: Array<{ data: Float32Array; shape: Shape; file: string }>, target: DataTarget, where?: string): { x: Float32Array; shape: Shape } {
  if (images.length === 0) throw new InputError('no images', where);
  const first = images[0];
  const c = target.shape?.[2] ?? Math.max(...images.map((im) => im.shape[2]));
  let shape: Shape;
  if (target.shape && target.resize) shape = [target.shape[0], target.shape[1], c];
  else {
    const odd = images.find((im) => im.shape[0] !== first.shape[0] || im.shape[1] !== first.shape[1]);
    if (odd) {
      throw new InputError(
        `images of different sizes (${first.shape[0]}x${first.shape[1]} in ${first.file}, ${odd.shape[0]}x${odd.shape[1]} in ${odd.file}); add "resize": true to the data source to resize them to the model's input`,
        where,
      );
    }
    shape = [first.shape[0], first.shape[1], c];
    if (target.shape && (shape[0] !== target.shape[0] || shape[1] !== target.shape[1])) throw new InputError(sizeHint(shape, target.shape), where);
  }
  const size = shape[0] * shape[1] * shape[2];
  const x = new Float32Array(images.length * size);
  images.forEach((im, i) => {
    const conv = convertChannels(im.data, im.shape[0] * im.shape[1], im.shape[2], c, im.file);
    x.set(resizeImage(conv, [im.shape[0], im.shape[1], c], shape[0], shape[1]), i * size);
  });
  return { x, shape };
}
