/**
 * Attacks by job id, and the two things the engine does with an attack: poison a training set (to build a
 * victim) and build the triggered test set (to measure ASR and RA).
 */
import type { ImageSet } from '../data/dataset';
import { cloneSet, imageSize } from '../data/dataset';
import { Rng } from '../util/rng';
import type { TriggeredSet } from '../metrics/evaluate';
import { InputError } from '../errors';
import type { Attack } from './attack';
import { badnets, type BadNetsOptions } from './badnets';
import { blended } from './blended';
import { sig } from './sig';
import { wanet, wanetFromGrids } from './wanet';
import { readTriggerImage, readWanetGrids, type TriggerImage, type WanetGrids } from './trigger_files';
import { noTriggeredSet } from '../metrics/evaluate';
import type { AttackJobSpec } from '../job_schema';
import type { AttackInfo } from '../../shared/results';
import type { BackdoorBenchRecord } from '../formats/backdoorbench';
import { loadPoisonedSet, poisonedTriggeredSet } from './poisoned_set';
import { conformSet } from '../formats/data/convert';

export type { Attack };

export interface AttackSpec {
  type: 'badnets' | 'blended' | 'sig' | 'wanet';
  size?: number;
  offset?: number;
  patch?: BadNetsOptions['patch'];
  alpha?: number;
  image?: Float32Array | TriggerImage;
  amplitude?: number;
  frequency?: number;
  k?: number;
  s?: number;
  /** WaNet: a trained victim's grids instead of a seeded field. */
  grids?: WanetGrids;
  /** The model's input normalization (WaNet's grids are applied to normalized images, as BackdoorBench does). */
  normalize?: { mean: number[]; std: number[] };
  /** Names the trigger file in errors. */
  where?: string;
}

export function makeAttack(spec: AttackSpec, shape: [number, number, number], rng: Rng): Attack {
  switch (spec.type) {
    case 'badnets':
      return badnets({ size: spec.size, offset: spec.offset, patch: spec.patch, where: spec.where }, shape);
    case 'blended':
      return blended(shape, rng, spec.alpha ?? 0.2, spec.image);
    case 'sig':
      return sig(spec.amplitude, spec.frequency);
    case 'wanet':
      return spec.grids ? wanetFromGrids(spec.grids, shape, spec.s, spec.normalize) : wanet(shape, rng, spec.k, spec.s);
    default:
      throw new InputError(`unknown attack "${(spec as { type: string }).type}"`, 'attack.type');
  }
}

export interface TriggeredSetContext {
  /** The clean test set (at the model's input). */
  test: ImageSet;
  shape: [number, number, number];
  numClasses: number;
  normalize?: { mean: number[]; std: number[] };
  /** The model file's BackdoorBench record, if it is one. */
  record?: BackdoorBenchRecord;
  /** The job's random stream for the attack (seeded triggers). */
  rng: Rng;
  /** `<job file>: ` for error locations. */
  label: string;
}

/**
 * The triggered set of a job's attack, and what the results say about it. No attack in the job means the model
 * file's BackdoorBench record when it has one, else no trigger known. Trigger files are read here, once the
 * model's input shape is known.
 */
export function jobTriggeredSet(spec: AttackJobSpec | undefined, c: TriggeredSetContext): { triggered: TriggeredSet; info: AttackInfo } {
  const a: AttackJobSpec = spec ?? (c.record ? { type: 'record', target: 0, allToAll: false } : { type: 'unknown', target: 0, allToAll: false });
  switch (a.type) {
    case 'unknown':
      return { triggered: noTriggeredSet(c.shape, c.numClasses), info: { type: 'unknown', target: a.target, images: 0, trueLabels: false, note: 'no trigger known: ASR, RA and DER are n/a; Neural Cleanse looks for one' } };
    case 'poisoned-set':
      return loadPoisonedSet(a.data, `${c.label}attack.data`, { target: a.target, allToAll: a.allToAll, shape: c.shape, numClasses: c.numClasses });
    case 'record':
      return recordTriggeredSet(c);
    default: {
      const spec2 = engineSpec(a, c);
      // WaNet's own seed, when given, fixes its warp field whatever the job seed.
      const attack = makeAttack(spec2, c.shape, a.type === 'wanet' && a.seed !== undefined ? new Rng(a.seed).fork('wanet') : c.rng);
      const triggered = triggeredTestSet(c.test, attack, { target: a.target, allToAll: a.allToAll });
      return { triggered, info: { type: a.type, target: a.target, images: triggered.set.n, trueLabels: true } };
    }
  }
}

/** The job's attack with its files decoded. */
function engineSpec(a: Exclude<AttackJobSpec, { type: 'unknown' | 'poisoned-set' | 'record' }>, c: TriggeredSetContext): AttackSpec {
  const base = { type: a.type, normalize: c.normalize };
  switch (a.type) {
    case 'badnets':
      return { ...base, size: a.size, offset: a.offset, ...(a.patchFile ? { patch: { image: readTriggerImage(a.patchFile.path), position: a.patchFile.position }, where: `${c.label}attack.patch.image` } : {}) };
    case 'blended':
      return { ...base, alpha: a.alpha, ...(a.imageFile ? { image: readTriggerImage(a.imageFile) } : {}) };
    case 'sig':
      return { ...base, frequency: a.frequency, amplitude: a.amplitude };
    case 'wanet':
      return { ...base, k: a.k, s: a.s, ...(a.gridsFile ? { grids: readWanetGrids(a.gridsFile, c.shape[0], c.shape[1]) } : {}) };
  }
}

/** A BackdoorBench record's bd_test: attack labels as stored; true labels where the layout keeps them. */
function recordTriggeredSet(c: TriggeredSetContext): { triggered: TriggeredSet; info: AttackInfo } {
  if (!c.record) throw new InputError('"record" takes the poisoned test set of a BackdoorBench attack record, but the model file is not one', `${c.label}attack.type`);
  const where = `${c.label}model`;
  const p = c.record.poisonedSet();
  const labels = p.trueLabels ?? new Int32Array(p.n);
  const set = conformSet({ n: p.n, shape: p.shape, x: p.x, y: labels, numClasses: c.numClasses }, { shape: c.shape, numClasses: c.numClasses }, where);
  const bad = p.attackLabels.findIndex((v) => !(v >= 0 && v < c.numClasses));
  if (bad >= 0) throw new InputError(`bd_test label ${p.attackLabels[bad]} at index ${bad} is outside the model's ${c.numClasses} classes`, where);
  const counts = new Map<number, number>();
  for (const v of p.attackLabels) counts.set(v, (counts.get(v) ?? 0) + 1);
  const target = [...counts].sort((x, y) => y[1] - x[1])[0][0];
  if (p.trueLabels) {
    // The stored attack labels are the truth about the attack (all-to-one or all-to-all alike).
    const keep: number[] = [];
    for (let i = 0; i < p.n; i++) if (p.trueLabels[i] !== p.attackLabels[i]) keep.push(i);
    const size = c.shape[0] * c.shape[1] * c.shape[2];
    const x = new Float32Array(keep.length * size);
    keep.forEach((j, i) => x.set(set.x.subarray(j * size, (j + 1) * size), i * size));
    const triggered: TriggeredSet = { set: { ...set, n: keep.length, x, y: Int32Array.from(keep, (j) => p.trueLabels![j]) }, attackLabels: Int32Array.from(keep, (j) => p.attackLabels[j]) };
    return { triggered, info: { type: 'record', target, images: keep.length, trueLabels: true, note: `BackdoorBench record (${c.record.modelName}, ${c.record.cleanData ?? 'unknown data set'}): its bd_test with true labels` } };
  }
  const { triggered, info } = poisonedTriggeredSet(set, false, { target, allToAll: false }, where);
  // bd_test's labels are the attack labels image by image (all-to-all records too).
  triggered.attackLabels = p.attackLabels.slice();
  return { triggered, info: { ...info, type: 'record', note: `BackdoorBench record (${c.record.modelName}, ${c.record.cleanData ?? 'unknown data set'}): bd_test keeps no true labels, so ASR counts all ${p.n} images and RA is n/a` } };
}

/** The label an attack wants for an image of true label y. */
export function attackLabel(y: number, target: number, numClasses: number, allToAll: boolean): number {
  return allToAll ? (y + 1) % numClasses : target;
}

export interface PoisonOptions {
  pratio: number;
  target: number;
  allToAll?: boolean;
  rng: Rng;
}

/**
 * A poisoned copy of a training set: round(pratio * N) indices drawn uniformly from all classes (dirty label:
 * relabelled to the attack label), or from the target class only for clean-label attacks (labels kept).
 */
export function poisonTrainingSet(set: ImageSet, attack: Attack, o: PoisonOptions): { set: ImageSet; poisonedIndices: Int32Array } {
  const out = cloneSet(set);
  const size = imageSize(set);
  const candidates: number[] = [];
  for (let i = 0; i < set.n; i++) if (!attack.cleanLabel || set.y[i] === o.target) candidates.push(i);
  const count = Math.min(candidates.length, Math.round(o.pratio * set.n));
  o.rng.shuffle(candidates);
  const chosen = Int32Array.from(candidates.slice(0, count)).sort();
  for (const i of chosen) {
    attack.apply(out.x.subarray(i * size, (i + 1) * size), set.shape);
    if (!attack.cleanLabel) out.y[i] = attackLabel(set.y[i], o.target, set.numClasses, o.allToAll ?? false);
  }
  return { set: out, poisonedIndices: chosen };
}

/** Every test image whose label is not the target, triggered, with its true label kept. */
export function triggeredTestSet(set: ImageSet, attack: Attack, o: { target: number; allToAll?: boolean }): TriggeredSet {
  const keep: number[] = [];
  for (let i = 0; i < set.n; i++) if (o.allToAll || set.y[i] !== o.target) keep.push(i);
  const size = imageSize(set);
  const x = new Float32Array(keep.length * size);
  const y = new Int32Array(keep.length);
  const attackLabels = new Int32Array(keep.length);
  keep.forEach((j, i) => {
    const img = x.subarray(i * size, (i + 1) * size);
    img.set(set.x.subarray(j * size, (j + 1) * size));
    attack.apply(img, set.shape);
    y[i] = set.y[j];
    attackLabels[i] = attackLabel(set.y[j], o.target, set.numClasses, o.allToAll ?? false);
  });
  return { set: { n: keep.length, shape: [...set.shape] as [number, number, number], x, y, numClasses: set.numClasses }, attackLabels };
}
