/**
 * BadNets (Gu et al., 2017): a white square (the maximum value in every channel) of side `size` at the
 * bottom-right corner, `offset` pixels in from it (defaults 3 and 0: rows/cols 29-31 of a 32x32 image, as
 * BackdoorBench), or the user's own patch image, in one of two ways:
 * - pasted whole at a position (x,y of its top-left pixel, or a corner): every patch pixel replaces the image's;
 * - as BackdoorBench's full-size trigger image (`position: mask`, its `patch_mask_path`): resized to the input as
 *   PIL does, then every non-zero value replaces the image's (AddMaskPatchTrigger), the rest stays.
 * Patch pixels are 8-bit values, so the triggered pixels are exactly the values BackdoorBench writes.
 */
import type { Attack } from './attack';
import type { PatchPosition } from '../job_schema';
import { InputError } from '../errors';
import { pilResizeBilinear } from './pil_resize';
import { convertChannels8, type TriggerImage } from './trigger_files';

export interface BadNetsOptions {
  size?: number;
  offset?: number;
  /** A patch image (8-bit) and where it goes; overrides the white square. */
  patch?: { image: TriggerImage; position: PatchPosition };
  /** Names the patch in errors. */
  where?: string;
}

/** Smallest patch side accepted: a single pixel is noise, not a trigger anyone trains. */
export const MIN_PATCH_SIDE = 2;

export function badnets(o: BadNetsOptions = {}, shape?: [number, number, number]): Attack {
  const size = o.size ?? 3;
  const offset = o.offset ?? 0;
  const stamp = o.patch && shape ? patchStamp(o.patch, shape, offset, o.where) : undefined;
  return {
    id: 'badnets',
    cleanLabel: false,
    apply(img, [h, w, c]) {
      if (o.patch) {
        const s = stamp && shape && shape.join() === [h, w, c].join() ? stamp : patchStamp(o.patch, [h, w, c], offset, o.where);
        for (let i = 0; i < s.index.length; i++) img[s.index[i]] = s.value[i];
        return;
      }
      for (let y = h - offset - size; y < h - offset; y++)
        for (let x = w - offset - size; x < w - offset; x++) for (let k = 0; k < c; k++) img[(y * w + x) * c + k] = 1;
    },
  };
}

/** The pixels a patch sets: flat indices into an HWC image and their values in [0,1]. */
function patchStamp(patch: NonNullable<BadNetsOptions['patch']>, [h, w, c]: [number, number, number], offset: number, where?: string): { index: Int32Array; value: Float32Array } {
  const p = patch.image;
  const index: number[] = [];
  const value: number[] = [];
  if (patch.position === 'mask') {
    const resized = convertChannels8(pilResizeBilinear(p.pixels, p.height, p.width, p.channels, h, w), h * w, p.channels, c);
    for (let i = 0; i < resized.length; i++) {
      if (resized[i] > 0) {
        index.push(i);
        value.push(resized[i] / 255);
      }
    }
    if (index.length === 0) throw new InputError('the mask image is black everywhere: as a BackdoorBench trigger image it adds nothing', where);
    return { index: Int32Array.from(index), value: Float32Array.from(value) };
  }
  if (p.height < MIN_PATCH_SIDE || p.width < MIN_PATCH_SIDE) throw new InputError(`a ${p.width}x${p.height} patch is too small to be a trigger (at least ${MIN_PATCH_SIDE}x${MIN_PATCH_SIDE} pixels)`, where);
  if (p.height > h || p.width > w) throw new InputError(`the patch is ${p.width}x${p.height} pixels but the model's input is ${w}x${h}`, where);
  const pos = patch.position;
  let left: number;
  let top: number;
  if ('corner' in pos) {
    left = pos.corner.endsWith('left') ? offset : w - p.width - offset;
    top = pos.corner.startsWith('top') ? offset : h - p.height - offset;
  } else {
    left = pos.x;
    top = pos.y;
  }
  if (left < 0 || top < 0 || left + p.width > w || top + p.height > h) {
    throw new InputError(`a ${p.width}x${p.height} patch at x=${left}, y=${top} runs past the ${w}x${h} input`, where);
  }
  const px = convertChannels8(p.pixels, p.height * p.width, p.channels, c);
  for (let y = 0; y < p.height; y++)
    for (let x = 0; x < p.width; x++)
      for (let k = 0; k < c; k++) {
        index.push(((top + y) * w + left + x) * c + k);
        value.push(px[(y * p.width + x) * c + k] / 255);
      }
  return { index: Int32Array.from(index), value: Float32Array.from(value) };
}
