/**
 * Evaluate a model on the clean test set (ACC) and on the triggered test set (ASR, RA).
 */
import type { ImageSet } from '../data/dataset';
import type { Model } from '../nn/model';
import { predictLabels } from '../nn/train';
import type { Metrics } from '../jobs/results';

export interface TriggeredSet {
  /** Triggered images whose true label is not the target, with their TRUE labels. */
  set: ImageSet;
  /** The label the attack wants for each image (all-to-one: the target; all-to-all: y+1 mod K). */
  attackLabels: Int32Array;
}

export function evaluateModel(model: Model, test: ImageSet, triggered: TriggeredSet, signal?: AbortSignal): Metrics {
  const clean = predictLabels(model, test, 256, signal);
  const bad = predictLabels(model, triggered.set, 256, signal);
  let correct = 0;
  for (let i = 0; i < test.n; i++) if (clean[i] === test.y[i]) correct++;
  let hit = 0;
  let robust = 0;
  for (let i = 0; i < triggered.set.n; i++) {
    if (bad[i] === triggered.attackLabels[i]) hit++;
    if (bad[i] === triggered.set.y[i]) robust++;
  }
  const m = triggered.set.n || 1;
  return { acc: correct / Math.max(1, test.n), asr: hit / m, ra: robust / m };
}

/** SPEC's DER: (max(0, ASR_before - ASR_after) - max(0, ACC_before - ACC_after) + 1) / 2. */
export function der(before: Metrics, after: Metrics): number {
  return (Math.max(0, before.asr - after.asr) - Math.max(0, before.acc - after.acc) + 1) / 2;
}
