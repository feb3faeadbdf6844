/**
 * Pieces several defenses share: an epoch loop that reports progress and yields between epochs (so that
 * cancellation and progress events get through), and the auxiliary train/validation split used wherever
 * BackdoorBench would have peeked at the test set.
 */
import type { ImageSet } from '../data/dataset';
import { subset } from '../data/dataset';
import type { Model } from '../nn/model';
import type { Optimizer } from '../nn/optim';
import { cosineLr } from '../nn/optim';
import { fit, predictLabels, type FitOptions } from '../nn/train';
import type { Rng } from '../util/rng';
import type { DefenseContext } from './defense';
import { yieldToLoop } from './defense';

export interface EpochLoopOptions extends Partial<Omit<FitOptions, 'epochs' | 'optimizer' | 'lr' | 'rng'>> {
  epochs: number;
  lr: number;
  batchSize: number;
  /** Cosine (default) or constant learning rate over the epochs. */
  schedule?: 'cosine' | 'constant';
  /** Training data (default: the auxiliary set). */
  data?: ImageSet;
  /** Progress offset and total when this loop is one phase of a longer defense. */
  progressBase?: number;
  progressTotal?: number;
  label?: string;
}

/** Train for `epochs`, one fit() call per epoch with the scheduled rate, yielding in between. */
export async function trainEpochs(ctx: DefenseContext, model: Model, optimizer: Optimizer, o: EpochLoopOptions): Promise<void> {
  const base = o.progressBase ?? 0;
  const total = o.progressTotal ?? o.epochs;
  for (let e = 0; e < o.epochs; e++) {
    const lr = o.schedule === 'constant' ? o.lr : cosineLr(o.lr, e, o.epochs);
    fit(model, o.data ?? ctx.aux, {
      ...o,
      epochs: 1,
      optimizer,
      lr,
      schedule: 'constant',
      augment: o.augment ?? ctx.augment,
      rng: ctx.rng,
      signal: ctx.signal,
      dropLast: o.dropLast ?? true,
    });
    ctx.progress(base + e + 1, total, `${o.label ?? 'epoch'} ${e + 1}/${o.epochs}`);
    await yieldToLoop();
  }
}

/** Seeded, class-stratified split of the auxiliary set into train and validation parts. */
export function splitAux(aux: ImageSet, valFraction: number, rng: Rng): { train: ImageSet; val: ImageSet } {
  const byClass: number[][] = Array.from({ length: aux.numClasses }, () => []);
  for (let i = 0; i < aux.n; i++) byClass[aux.y[i]].push(i);
  const train: number[] = [];
  const val: number[] = [];
  for (const idx of byClass) {
    rng.shuffle(idx);
    const k = Math.round(idx.length * valFraction);
    val.push(...idx.slice(0, k));
    train.push(...idx.slice(k));
  }
  return { train: subset(aux, train), val: subset(aux, val) };
}

/** Top-1 accuracy of a model on a set (aux validation splits; never the test set). */
export function accuracyOn(model: Model, set: ImageSet): number {
  const pred = predictLabels(model, set);
  let ok = 0;
  for (let i = 0; i < set.n; i++) if (pred[i] === set.y[i]) ok++;
  return ok / Math.max(1, set.n);
}
