/**
 * Attacks by job id, and the two things the engine does with an attack: poison a training set (to build a
 * victim) and build the triggered test set (to measure ASR and RA).
 */
import type { ImageSet } from '../data/dataset';
import { cloneSet, imageSize } from '../data/dataset';
import type { Rng } from '../util/rng';
import type { TriggeredSet } from '../metrics/evaluate';
import { InputError } from '../errors';
import type { Attack } from './attack';
import { badnets, type BadNetsOptions } from './badnets';
import { blended } from './blended';
import { sig } from './sig';
import { wanet } from './wanet';

export type { Attack };

export interface AttackSpec {
  type: 'badnets' | 'blended' | 'sig' | 'wanet';
  size?: number;
  offset?: number;
  patch?: BadNetsOptions['patch'];
  alpha?: number;
  image?: Float32Array;
  amplitude?: number;
  frequency?: number;
  k?: number;
  s?: number;
}

export function makeAttack(spec: AttackSpec, shape: [number, number, number], rng: Rng): Attack {
  switch (spec.type) {
    case 'badnets':
      return badnets({ size: spec.size, offset: spec.offset, patch: spec.patch });
    case 'blended':
      return blended(shape, rng, spec.alpha ?? 0.2, spec.image);
    case 'sig':
      return sig(spec.amplitude, spec.frequency);
    case 'wanet':
      return wanet(shape, rng, spec.k, spec.s);
    default:
      throw new InputError(`unknown attack "${(spec as { type: string }).type}"`, 'attack.type');
  }
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
