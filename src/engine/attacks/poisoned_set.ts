/**
 * `poisoned-set`: the user's own triggered test images, for a backdoor whose trigger we cannot rebuild. ASR is
 * the fraction of them classified as the target, counted over those whose true label is not the target when the
 * true labels are given (and then RA is measured too), over all of them when they are not (the results say so).
 *
 * Any data source format is read; for arrays (.npy, .npz) the layout and value range are detected rather than
 * assumed, because a set exported from PyTorch is N,C,H,W floats while one saved from numpy is N,H,W,C uint8:
 * N,H,W,C or N,C,H,W (whichever matches the model's input; N,H,W,C when both do), and uint8, float in [0,1] or
 * float in 0..255 (BackdoorBench's tensors). What cannot be told apart, or does not fit the model, is refused
 * with one line naming the file.
 */
import * as fs from 'node:fs';
import type { ImageSet } from '../data/dataset';
import { InputError } from '../errors';
import type { ResolvedDataSource } from '../job_schema';
import type { AttackInfo } from '../../shared/results';
import type { TriggeredSet } from '../metrics/evaluate';
import { loadDataSource } from '../formats/data';
import { conformSet, checkLabels, type Shape } from '../formats/data/convert';
import { npyTypedView, parseNpy, type Npy } from '../formats/data/npy';
import { readNpzArrays } from '../formats/data/npz';
import { npyValues, pixelScale } from './trigger_files';

export interface PoisonedSetOptions {
  target: number;
  allToAll: boolean;
  /** The model's input and classes. */
  shape: Shape;
  numClasses: number;
}

/** The triggered set the job measures ASR on, and what the results say about it. */
export function loadPoisonedSet(src: ResolvedDataSource, field: string, o: PoisonedSetOptions): { triggered: TriggeredSet; info: AttackInfo } {
  const { set, trueLabels } = readImages(src, field, o);
  return poisonedTriggeredSet(set, trueLabels, o, src.path ?? field);
}

/** Build the triggered set from images and (maybe) their true labels. */
export function poisonedTriggeredSet(set: ImageSet, trueLabels: boolean, o: Pick<PoisonedSetOptions, 'target' | 'allToAll'>, where: string): { triggered: TriggeredSet; info: AttackInfo } {
  if (set.n === 0) throw new InputError('the poisoned set holds no images', where);
  if (!trueLabels) {
    if (o.allToAll) throw new InputError('an all-to-all attack sends each image to its own label + 1: give the true labels of the poisoned set', where);
    return {
      triggered: { set, attackLabels: new Int32Array(set.n).fill(o.target), trueLabels: false },
      info: { type: 'poisoned-set', target: o.target, images: set.n, trueLabels: false, note: `no true labels: ASR counts all ${set.n} images (those of class ${o.target} too) and RA is n/a` },
    };
  }
  const keep: number[] = [];
  for (let i = 0; i < set.n; i++) if (o.allToAll || set.y[i] !== o.target) keep.push(i);
  if (keep.length === 0) throw new InputError(`every image of the poisoned set is of the target class ${o.target}: ASR counts only the others`, where);
  const attackLabelOf = (label: number) => (o.allToAll ? (label + 1) % set.numClasses : o.target);
  // Nothing to drop (a poisoned test set usually leaves the target class out): the set as it is, not a copy.
  if (keep.length === set.n) {
    return {
      triggered: { set, attackLabels: Int32Array.from(set.y, attackLabelOf) },
      info: { type: 'poisoned-set', target: o.target, images: set.n, trueLabels: true },
    };
  }
  const size = set.shape[0] * set.shape[1] * set.shape[2];
  const x = new Float32Array(keep.length * size);
  const y = new Int32Array(keep.length);
  const attackLabels = new Int32Array(keep.length);
  keep.forEach((j, i) => {
    x.set(set.x.subarray(j * size, (j + 1) * size), i * size);
    y[i] = set.y[j];
    attackLabels[i] = attackLabelOf(set.y[j]);
  });
  const dropped = set.n - keep.length;
  return {
    triggered: { set: { n: keep.length, shape: set.shape, x, y, numClasses: set.numClasses }, attackLabels },
    info: { type: 'poisoned-set', target: o.target, images: keep.length, trueLabels: true, ...(dropped ? { note: `${dropped} of ${set.n} images are of the target class and not counted` } : {}) },
  };
}

function readImages(src: ResolvedDataSource, field: string, o: PoisonedSetOptions): { set: ImageSet; trueLabels: boolean } {
  const target = { shape: o.shape, numClasses: o.numClasses, resize: src.resize ?? false };
  if (src.format === 'npy') {
    const images = parseNpy(fs.readFileSync(src.path!), src.path!);
    const labels = src.labels ? parseNpy(fs.readFileSync(src.labels), src.labels) : undefined;
    return fromArrays(images, labels, { images: src.path!, labels: src.labels ?? src.path! }, o, target.resize);
  }
  if (src.format === 'npz') {
    const arrays = readNpzArrays(src.path!);
    const imageNames = [...arrays].filter(([, a]) => a.shape.length === 3 || a.shape.length === 4).map(([n]) => n);
    const labelNames = [...arrays].filter(([, a]) => a.shape.length === 1).map(([n]) => n);
    const pick = (names: string[], pref: string[], what: string) => {
      if (names.length <= 1) return names[0];
      const p = pref.find((n) => names.includes(n));
      if (!p) throw new InputError(`cannot tell which array holds the ${what}: ${names.join(', ')}; name it ${pref[0]}`, src.path!);
      return p;
    };
    const xName = pick(imageNames, ['x', 'images', 'x_test', 'data'], 'images');
    if (!xName) throw new InputError(`the .npz holds no array of rank 3 or 4 (images); it has ${[...arrays.keys()].join(', ')}`, src.path!);
    const yName = pick(labelNames, ['y', 'labels', 'y_test', 'targets'], 'labels');
    return fromArrays(arrays.get(xName)!, yName ? arrays.get(yName) : undefined, { images: `${src.path}:${xName}.npy`, labels: `${src.path}:${yName}.npy` }, o, target.resize);
  }
  // Image folders, IDX and CIFAR batches always carry labels: the images' true labels.
  return { set: loadDataSource(src, field, target, 'test'), trueLabels: true };
}

/** Images (N,H,W / N,H,W,C / N,C,H,W; uint8, [0,1] or 0..255) and optional labels to a set at the model's input. */
function fromArrays(images: Npy, labels: Npy | undefined, where: { images: string; labels: string }, o: PoisonedSetOptions, resize: boolean): { set: ImageSet; trueLabels: boolean } {
  const s = images.shape;
  if (s.length !== 3 && s.length !== 4) throw new InputError(`images must be N,H,W or N,H,W,C or N,C,H,W, got (${s.join(',')})`, where.images);
  const n = s[0];
  let h: number;
  let w: number;
  let c: number;
  let channelsFirst = false;
  if (s.length === 3) [h, w, c] = [s[1], s[2], 1];
  else {
    const lastOk = [1, 3, 4].includes(s[3]);
    const firstOk = [1, 3, 4].includes(s[1]);
    const fits = (hh: number, ww: number) => resize || (hh === o.shape[0] && ww === o.shape[1]);
    if (lastOk && (fits(s[1], s[2]) || !firstOk)) [h, w, c] = [s[1], s[2], s[3]];
    else if (firstOk && (fits(s[2], s[3]) || !lastOk)) {
      [c, h, w] = [s[1], s[2], s[3]];
      channelsFirst = true;
    } else throw new InputError(`images of shape (${s.join(',')}) have no channel axis of size 1, 3 or 4 (N,H,W,C or N,C,H,W)`, where.images);
  }
  if (labels && (labels.shape.length !== 1 || labels.shape[0] !== n)) throw new InputError(`${n} images but ${labels.shape.length === 1 ? labels.shape[0] : `(${labels.shape.join(',')})`} labels`, where.labels);
  if (!['|u1', '<f4', '<f8'].includes(images.dtype)) throw new InputError(`images must be uint8 or float, not ${images.dtype}`, where.images);
  // The file's own bytes where they can be read as they are: a copy as doubles would be 8 bytes a value of fresh
  // memory, 56 MB for the zoo's 9,000 triggered images.
  const v = npyTypedView(images) ?? npyValues(images);
  const scale = pixelScale(v, images.dtype, where.images);
  const x = new Float32Array(v.length);
  if (!channelsFirst && !(scale === 255 && v instanceof Float64Array)) {
    // Channels last: the values in their order, by the typed arrays' own copy, then divided in place: a byte or a
    // float32 is exact in float32, so x / 255 rounds as v / 255 does. (Doubles of 0..255 are divided before they
    // are rounded, below.)
    x.set(v);
    if (scale === 255) divideBy255(x);
  } else {
    const hw = h * w;
    for (let i = 0; i < n; i++)
      for (let p = 0; p < hw; p++)
        for (let k = 0; k < c; k++) {
          const from = channelsFirst ? (i * c + k) * hw + p : (i * hw + p) * c + k;
          x[(i * hw + p) * c + k] = scale === 255 ? v[from] / 255 : v[from];
        }
  }
  let y = new Int32Array(n);
  if (labels) {
    const lv = npyValues(labels);
    for (let i = 0; i < n; i++) {
      if (!Number.isInteger(lv[i])) throw new InputError(`labels must be integers; found ${lv[i]} at index ${i}`, where.labels);
      if (lv[i] < 0 || lv[i] >= o.numClasses) throw new InputError(`label ${lv[i]} at index ${i} is outside the model's ${o.numClasses} classes`, where.labels);
    }
    y = Int32Array.from(lv);
    checkLabels(y, o.numClasses, where.labels);
  }
  const set = conformSet({ n, shape: [h, w, c], x, y, numClasses: o.numClasses }, { shape: o.shape, resize }, where.images);
  return { set, trueLabels: !!labels };
}

function divideBy255(x: Float32Array): void {
  for (let i = 0; i < x.length; i++) x[i] = x[i] / 255;
}
