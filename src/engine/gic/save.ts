/**
 * GIC outputs of a job, next to the purified models:
 * - `gic-<aux>.safetensors`: the calibration network g (h's conv weights in PyTorch OIHW layout under `h.*`,
 *   the input-independent term as `offset` [1,C,H,W]); `__metadata__` records the transform, delta, norm, width
 *   and the input shape, so `decodeGicNet` rebuilds g exactly and anyone can re-apply it. Format gic@2 is
 *   r = delta * tanh((h(x) + offset) / delta) for L_inf; gic@1 files (r = delta * tanh(h(x) + offset)) still
 *   load and re-apply exactly as they were written. The L2 transform is the same in both.
 * - `gic-<aux>.npz`: the calibrated auxiliary set the defenses were given, `x` float32 (N,H,W,C) in [0,1]
 *   and `y` int64 (N) — float32 rather than uint8 because rounding to 8 bits could move an image out of the
 *   delta-ball; `np.load` reads it, and so does the engine (an `npz` data source).
 * Both are written atomically (util/atomic).
 */
import * as tf from '@tensorflow/tfjs-core';
import * as path from 'node:path';
import type { ImageSet } from '../data/dataset';
import { GicNet, GIC_DEFAULTS, type GicNorm } from './gic';
import { assignFromPt, ptShape, toPt, type PtTensor } from '../nn/module';
import { takeFloats } from '../nn/read';
import { encodeSafetensors, decodeSafetensors } from '../formats/safetensors';
import { encodeNpz } from '../formats/data/npz';
import { writeFileAtomic } from '../util/atomic';
import { InputError } from '../errors';
import * as fs from 'node:fs';

export const GIC_FORMAT = 'backdoor-audit/gic@2';
/** The previous format: the same file layout, L_inf residual delta * tanh(h(x) + offset). */
const GIC_FORMAT_V1 = 'backdoor-audit/gic@1';

export async function gicStateDict(net: GicNet): Promise<Map<string, PtTensor>> {
  const sd = new Map<string, PtTensor>();
  for (const [name, p] of net.h.namedParams()) sd.set(`h.${name}`, await toPt(p));
  if (net.globalTerm) {
    const [h, w, c] = net.shape;
    const data = await takeFloats(tf.tidy(() => tf.transpose(tf.reshape(net.globalTerm!, [1, h, w, c]), [0, 3, 1, 2])));
    sd.set('offset', { shape: [1, c, h, w], dtype: 'float32', data });
  }
  return sd;
}

export async function encodeGicNet(net: GicNet): Promise<Uint8Array> {
  const o = net.o;
  const legacy = net.legacyTanh && o.norm === 'inf';
  return encodeSafetensors(await gicStateDict(net), {
    format: legacy ? GIC_FORMAT_V1 : GIC_FORMAT,
    transform:
      o.norm === 'inf'
        ? legacy
          ? 'g(x) = clip01(x + delta * tanh(h(x) + offset))'
          : 'g(x) = clip01(x + delta * tanh((h(x) + offset) / delta))'
        : 'g(x) = clip01(x + P_delta(h(x) + offset)), P_delta the per-image L2-ball projection',
    delta: String(o.delta),
    norm: o.norm,
    width: String(o.width),
    inputShape: JSON.stringify(net.shape),
    layout: 'h: Conv3x3(C,w) ReLU Conv3x3(w,w) ReLU Conv3x3(w,C), padding 1; NCHW tensors, OIHW kernels',
  });
}

/** Rebuild a saved g. */
export function decodeGicNet(buf: Uint8Array, where: string): GicNet {
  const { stateDict, metadata } = decodeSafetensors(buf, where);
  if (metadata.format !== GIC_FORMAT && metadata.format !== GIC_FORMAT_V1) throw new InputError(`not a GIC network (format ${metadata.format ?? 'missing'})`, where);
  const shape = JSON.parse(metadata.inputShape) as [number, number, number];
  const norm = metadata.norm as GicNorm;
  const net = new GicNet(shape, { ...GIC_DEFAULTS, delta: Number(metadata.delta), norm, width: Number(metadata.width), globalTerm: stateDict.has('offset') }, metadata.format === GIC_FORMAT_V1);
  for (const [name, p] of net.h.namedParams()) {
    const t = stateDict.get(`h.${name}`);
    if (!t || t.shape.join() !== ptShape(p).join()) {
      net.dispose();
      throw new InputError(`GIC network tensor h.${name} is missing or has the wrong shape`, where);
    }
    assignFromPt(p, t);
  }
  const off = stateDict.get('offset');
  if (off && net.globalTerm) {
    const [h, w, c] = shape;
    const data = Float32Array.from(off.data as Float32Array);
    tf.tidy(() => net.globalTerm!.assign(tf.reshape(tf.transpose(tf.tensor4d(data, [1, c, h, w]), [0, 2, 3, 1]), [h, w, c])));
  }
  return net;
}

export function encodeCalibratedSet(set: ImageSet): Uint8Array {
  return encodeNpz([
    ['x', set.x, [set.n, ...set.shape]],
    ['y', BigInt64Array.from(set.y, (v) => BigInt(v)), [set.n]],
  ]);
}

/**
 * Write g and the calibrated set for auxiliary set `aux` into `dir`; returns the file names. `taken` tells
 * whether a name is already used (e.g. by an earlier run in the out dir): then a numbered name is chosen.
 */
export async function saveCalibration(net: GicNet, set: ImageSet, dir: string, aux: string, taken: (name: string) => boolean = () => false): Promise<{ net: string; images: string }> {
  // Read g's weights first: the names are chosen and written with no await in between.
  const netBytes = await encodeGicNet(net);
  const free = (base: string, ext: string) => {
    for (let i = 0; ; i++) {
      const name = i === 0 ? `${base}.${ext}` : `${base}-${i}.${ext}`;
      if (!taken(name) && !fs.existsSync(path.join(dir, name))) return name;
    }
  };
  const netName = free(`gic-${aux}`, 'safetensors');
  const imagesName = free(`gic-${aux}`, 'npz');
  writeFileAtomic(path.join(dir, netName), netBytes);
  writeFileAtomic(path.join(dir, imagesName), encodeCalibratedSet(set));
  return { net: netName, images: imagesName };
}
