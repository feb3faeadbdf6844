/**
 * Evaluate a model on the clean test set (ACC) and on the triggered test set (ASR, RA).
 */
import type { ImageSet } from '../data/dataset';
import type { Model } from '../nn/model';
import { predictLabels } from '../nn/train';
import { OrtPredictor } from './ort_eval';
import type { Metrics } from '../jobs/results';

export interface TriggeredSet {
  /** Triggered images whose true label is not the target, with their TRUE labels. */
  set: ImageSet;
  /** The label the attack wants for each image (all-to-one: the target; all-to-all: y+1 mod K). */
  attackLabels: Int32Array;
}

export function evaluateModel(model: Model, test: ImageSet, triggered: TriggeredSet, signal?: AbortSignal): Metrics {
  return metricsOf(test, triggered, predictLabels(model, test, 256, signal), predictLabels(model, triggered.set, 256, signal));
}

/**
 * The same metrics, with inference through ONNX Runtime where it is available for this model (several times
 * faster on the CPU; the same predictions), else on the training backend. `threads`: ONNX Runtime's intra-op
 * threads (1 inside a cell worker, where the cores are already shared out).
 */
export async function evaluateModelFast(model: Model, test: ImageSet, triggered: TriggeredSet, signal: AbortSignal | undefined, threads: number): Promise<Metrics & { engine: 'onnxruntime' | 'backend' }> {
  const ort = await OrtPredictor.create(model, threads);
  if (!ort) return { ...evaluateModel(model, test, triggered, signal), engine: 'backend' };
  try {
    return { ...metricsOf(test, triggered, await ort.labels(test, 256, signal), await ort.labels(triggered.set, 256, signal)), engine: 'onnxruntime' };
  } finally {
    await ort.dispose();
  }
}

/**
 * ACC/ASR of a model given as ONNX bytes (exportOnnx with normalization), through ONNX Runtime: how the main
 * thread evaluates the purified models of cell workers, which cannot load ONNX Runtime themselves.
 */
export async function evaluateOnnx(bytes: Uint8Array, shape: [number, number, number], classes: number, test: ImageSet, triggered: TriggeredSet, signal: AbortSignal | undefined, threads: number, batchSize = 256): Promise<Metrics> {
  const ort = await OrtPredictor.fromOnnx(bytes, shape, classes, threads);
  try {
    // Each batch is one round trip through this thread's event loop, which may be busy: large batches.
    return metricsOf(test, triggered, await ort.labels(test, batchSize, signal), await ort.labels(triggered.set, batchSize, signal));
  } finally {
    await ort.dispose();
  }
}

function metricsOf(test: ImageSet, triggered: TriggeredSet, clean: Int32Array, bad: Int32Array): Metrics {
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
