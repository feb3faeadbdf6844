/**
 * Evaluate a model on the clean test set (ACC) and on the triggered test set (ASR, RA). What the triggered set
 * can tell depends on what is known about it: with the true labels, ASR counts the images whose true label is
 * not the attack's label and RA is measured; a user's poisoned set without true labels gives ASR over all of its
 * images and no RA; with no trigger known at all (`attack: unknown`) there is no ASR, RA or DER, and they are
 * null rather than a number that would read as "no backdoor".
 */
import type { ImageSet } from '../data/dataset';
import type { Model } from '../nn/model';
import { predictLabels } from '../nn/train';
import { OrtPredictor } from './ort_eval';
import { buildModel } from '../models';
import { decodeOnnx } from '../formats/onnx';
import type { Metrics, ReportedMetrics } from '../../shared/results';

/**
 * Images per ONNX Runtime call when a test set is evaluated. Smaller batches keep more of a batch's activations
 * in the caches: on the zoo's PreAct-ResNet18 shape (1x28x28; `npx tsx scripts/ort-eval-batch.ts WIDTH THREADS`)
 * 128 images ran 413 us an image on one thread where 256 ran 430 (width 16; width 8: 224 against 235; width
 * 64 within noise) and 237 against 240 on two threads. The FT job of the width-16 victim, which evaluates the
 * victim on one thread beside the training and the purified model on two, ran 0.1-0.5 s faster (three runs
 * alternated). Predictions do not depend on it.
 */
export const ORT_EVAL_BATCH = 128;

export interface TriggeredSet {
  /** Triggered images whose true label is not the target, with their TRUE labels (see `trueLabels`). */
  set: ImageSet;
  /** The label the attack wants for each image (all-to-one: the target; all-to-all: y+1 mod K). */
  attackLabels: Int32Array;
  /**
   * Whether `set.y` holds the images' true labels (default true). False for a poisoned set given without them:
   * then every image counts for ASR and RA is null.
   */
  trueLabels?: boolean;
  /** No trigger is known (`attack: unknown`): the set is empty and ASR, RA and DER are null. */
  unknown?: boolean;
}

/** The triggered set of an audit that knows no trigger. */
export function noTriggeredSet(shape: [number, number, number], numClasses: number): TriggeredSet {
  return { set: { n: 0, shape: [...shape] as [number, number, number], x: new Float32Array(0), y: new Int32Array(0), numClasses }, attackLabels: new Int32Array(0), unknown: true };
}

export async function evaluateModel(model: Model, test: ImageSet, triggered: TriggeredSet, signal?: AbortSignal): Promise<Metrics> {
  const clean = await predictLabels(model, test, 256, signal);
  return metricsOf(test, triggered, clean, await predictLabels(model, triggered.set, 256, signal));
}

/**
 * The same metrics, with inference through ONNX Runtime where it is available for this model (several times
 * faster on the CPU; the same predictions), else on the training backend. `threads`: ONNX Runtime's intra-op
 * threads (1 inside a cell process, where the cores are already shared out).
 */
export async function evaluateModelFast(model: Model, test: ImageSet, triggered: TriggeredSet, signal: AbortSignal | undefined, threads: number): Promise<Metrics & { engine: 'onnxruntime' | 'backend' }> {
  const ort = await OrtPredictor.create(model, threads);
  if (!ort) return { ...(await evaluateModel(model, test, triggered, signal)), engine: 'backend' };
  return metricsThrough(ort, test, triggered, signal);
}

/** The metrics from an ONNX Runtime session, which is released after. */
async function metricsThrough(ort: OrtPredictor, test: ImageSet, triggered: TriggeredSet, signal: AbortSignal | undefined): Promise<Metrics & { engine: 'onnxruntime' }> {
  try {
    return { ...metricsOf(test, triggered, await ort.labels(test, ORT_EVAL_BATCH, signal), await ort.labels(triggered.set, ORT_EVAL_BATCH, signal)), engine: 'onnxruntime' };
  } finally {
    await ort.dispose();
  }
}

/**
 * The same metrics for a model given as the bytes of exportOnnx with its normalization (a lone cell process
 * sends its purified model so, and the job process evaluates it): through ONNX Runtime, or, where it refuses
 * the bytes, on the backend from the graph imported as an ONNX file is (evaluateModelFast's fallback).
 */
export async function evaluateOnnxFast(onnxBytes: Uint8Array, inputShape: [number, number, number], numClasses: number, test: ImageSet, triggered: TriggeredSet, signal: AbortSignal | undefined, threads: number): Promise<Metrics & { engine: 'onnxruntime' | 'backend' }> {
  let ort: OrtPredictor | undefined;
  try {
    ort = await OrtPredictor.fromOnnx(onnxBytes, inputShape, numClasses, threads);
  } catch {
    ort = undefined;
  }
  if (ort) return metricsThrough(ort, test, triggered, signal);
  // The graph takes [0, 1] pixels and normalizes itself.
  const model = buildModel({ arch: 'onnx', inputShape, numClasses, options: { plan: decodeOnnx(onnxBytes, 'purified model') } });
  try {
    return { ...(await evaluateModel(model, test, triggered, signal)), engine: 'backend' };
  } finally {
    model.dispose();
  }
}

function metricsOf(test: ImageSet, triggered: TriggeredSet, clean: Int32Array, bad: Int32Array): Metrics {
  let correct = 0;
  for (let i = 0; i < test.n; i++) if (clean[i] === test.y[i]) correct++;
  const acc = correct / Math.max(1, test.n);
  let hit = 0;
  let robust = 0;
  for (let i = 0; i < triggered.set.n; i++) {
    if (bad[i] === triggered.attackLabels[i]) hit++;
    if (bad[i] === triggered.set.y[i]) robust++;
  }
  const m = triggered.set.n || 1;
  return { acc, asr: hit / m, ra: robust / m };
}

/** The metrics as results report them: ASR and RA null where the triggered set cannot measure them. */
export function reported(m: Metrics, triggered: TriggeredSet): ReportedMetrics {
  if (triggered.unknown) return { acc: m.acc, asr: null, ra: null };
  return { acc: m.acc, asr: m.asr, ra: triggered.trueLabels === false ? null : m.ra };
}

/** SPEC's DER: (max(0, ASR_before - ASR_after) - max(0, ACC_before - ACC_after) + 1) / 2; null without an ASR. */
export function der(before: ReportedMetrics, after: ReportedMetrics): number | null {
  if (before.asr === null || after.asr === null) return null;
  return (Math.max(0, before.asr - after.asr) - Math.max(0, before.acc - after.acc) + 1) / 2;
}
