/**
 * `nc`: Neural Cleanse (Wang et al., 2019): backdoor detection and unlearning. For every label, reverse-engineer
 * the smallest trigger (mask m in [0,1]^{HxW}, pattern p in [0,1]^{HxWxC}, x' = (1 - m) x + m p) that sends the
 * auxiliary images to that label: Adam on tanh-parametrized m and p minimizing CE(f(x'), label) + cost * |m|_1,
 * with the cost raised while the reversed trigger succeeds and lowered while it fails. A label whose mask norm
 * is an outlier on the small side (anomaly index > 2 by the median absolute deviation; `fast` takes the index of
 * the norms' logarithms, see detectTriggers) is flagged. If any is,
 * the model is fine-tuned on the auxiliary set with 20% of the images stamped with a flagged label's reversed
 * trigger and keeping their true labels. The anomaly indices are reported as `detection.nc`.
 */
import * as tf from '@tensorflow/tfjs-core';
import type { ImageSet } from '../data/dataset';
import { cloneSet, imageSize } from '../data/dataset';
import type { Model } from '../nn/model';
import { Adam, SGD } from '../nn/optim';
import { argmaxRows, crossEntropy, makeBatch } from '../nn/train';
import { OrtModelGraph } from '../nn/ort_graph';
import { takeAllFloats, takeFloats, takeScalar } from '../nn/read';
import { JobError } from '../errors';
import { Pacer, trainEpochs } from './common';
import type { Defense, DefenseContext, DefenseOutcome, Profile } from './defense';
import type { ReversedTriggerImage } from '../../shared/results';

export interface ReversedTrigger {
  label: number;
  mask: Float32Array; // H*W
  pattern: Float32Array; // H*W*C
  l1: number;
  successRate: number;
}

/** Anomaly index of each value: |v - median| / (1.4826 * MAD). */
export function anomalyIndices(values: number[]): number[] {
  const median = (a: number[]) => {
    const s = [...a].sort((x, y) => x - y);
    const m = s.length >> 1;
    return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
  };
  const med = median(values);
  const mad = 1.4826 * median(values.map((v) => Math.abs(v - med)));
  return values.map((v) => (mad > 0 ? Math.abs(v - med) / mad : 0));
}

/**
 * The labels whose mask norm is an outlier on the small side: anomaly index above `threshold` and norm below
 * the median. On the log scale the index measures how many times smaller a mask is than the typical one. Mask
 * norms of clean labels spread multiplicatively (on Fashion-MNIST from about 45 to 130 pixels: some classes
 * are a few strokes away from each other, others are not), which inflates the linear MAD so much that a 3x3
 * patch's mask of 8 pixels scores 1.7 there and 4.9 on the log scale.
 */
export function flagSmallNorms(norms: number[], scale: 'linear' | 'log', threshold: number): { anomaly: number[]; flagged: number[] } {
  const anomaly = anomalyIndices(scale === 'log' ? norms.map((v) => Math.log(Math.max(v, 1e-6))) : norms);
  const median = [...norms].sort((a, b) => a - b)[norms.length >> 1];
  const flagged = norms.map((v, i) => i).filter((i) => anomaly[i] > threshold && norms[i] < median);
  return { anomaly, flagged };
}

/**
 * A reversed trigger as the panel shows it: mask x pattern and the mask as 8-bit pixels (base64), the mask's L1.
 * No file: the caller names one where it writes a PNG.
 */
export function triggerImage(t: ReversedTrigger, shape: readonly [number, number, number]): ReversedTriggerImage {
  const [h, w, c] = shape;
  const image = new Uint8Array(h * w * c);
  const mask = new Uint8Array(h * w);
  for (let p = 0; p < h * w; p++) {
    mask[p] = Math.round(255 * t.mask[p]);
    for (let k = 0; k < c; k++) image[p * c + k] = Math.round(255 * t.mask[p] * t.pattern[p * c + k]);
  }
  return { label: t.label, shape: [h, w, c], image: Buffer.from(image).toString('base64'), mask: Buffer.from(mask).toString('base64'), maskL1: Math.round(t.l1 * 100) / 100 };
}

/** At most this many reversed triggers travel with the results (the flagged ones and the smallest masks). */
export const MAX_TRIGGER_IMAGES = 100;

/** The triggers worth showing: every class up to MAX_TRIGGER_IMAGES, else the flagged and smallest masks. */
export function triggersToShow(triggers: readonly ReversedTrigger[], flagged: readonly number[]): ReversedTrigger[] {
  if (triggers.length <= MAX_TRIGGER_IMAGES) return triggers.slice();
  const chosen = new Set(flagged);
  for (const t of [...triggers].sort((a, b) => a.l1 - b.l1)) {
    if (chosen.size >= MAX_TRIGGER_IMAGES) break;
    chosen.add(t.label);
  }
  return triggers.filter((t) => chosen.has(t.label));
}

/**
 * Reverse the trigger of `label`: Adam on the mask and pattern (tanh-parametrized) minimizing CE towards the
 * label plus cost * |mask|. With `graph` (an ONNX Runtime graph of the model's cross-entropy and its pixel
 * gradient) the network's forward and backward run there, and only the stamping, whose gradient is the pixel
 * gradient times its Jacobian, and the L1 term stay on the backend.
 */
async function reverseTrigger(model: Model, aux: ImageSet, label: number, p: Record<string, number>, ctx: DefenseContext, graph?: OrtModelGraph): Promise<ReversedTrigger> {
  const [h, w, c] = aux.shape;
  const maskRaw = tf.tidy(() => tf.variable(tf.zeros([1, h, w, 1])));
  const init = Float32Array.from({ length: h * w * c }, () => ctx.rng.uniform(-1, 1));
  const patternRaw = tf.tidy(() => tf.variable(tf.tensor4d(init, [1, h, w, c])));
  const opt = new Adam(p.lr, 0.5, 0.9);
  let cost = p.initCost;
  let successRate = 0;
  const target = tf.fill([p.batchSize], label, 'int32') as tf.Tensor1D;
  const stamp = (x: tf.Tensor4D) => {
    const m = tf.div(tf.add(tf.tanh(maskRaw), 1), 2);
    const pat = tf.div(tf.add(tf.tanh(patternRaw), 1), 2);
    return tf.add(tf.mul(tf.sub(1, m), x), tf.mul(m, pat)) as tf.Tensor4D;
  };
  const pacer = new Pacer(ctx);
  try {
    for (let step = 0; step < p.steps; step++) {
      await pacer.tick(label, model.numClasses + 1, `reversing the trigger of label ${label}, step ${step + 1}/${p.steps}`);
      const idx = Array.from({ length: p.batchSize }, () => ctx.rng.int(aux.n));
      const x = makeBatch(aux, idx, undefined, undefined);
      let hits = 0;
      // The batch is freed however the step ends (a diverged loss or a failed graph run throws).
      try {
        if (graph) {
          const stamped = await takeFloats(tf.tidy(() => stamp(x)));
          const r = await graph.run(stamped, p.batchSize, { labels: new Int32Array(p.batchSize).fill(label) });
          if (!Number.isFinite(r.loss!)) throw new JobError('trigger reversal diverged (loss is not finite)');
          for (const predicted of argmaxRows(r.logits!, model.numClasses)) if (predicted === label) hits++;
          tf.tidy(() => {
            // d CE / d mask and pattern = the pixel gradient through the stamping (a surrogate with that gradient).
            const dStamped = tf.tensor4d(r.dx!, x.shape);
            const { value, grads } = tf.variableGrads(() => {
              const l1 = tf.sum(tf.div(tf.add(tf.tanh(maskRaw), 1), 2));
              return tf.add(tf.sum(tf.mul(stamp(x), dStamped)), tf.mul(l1, cost)) as tf.Scalar;
            }, [maskRaw, patternRaw]);
            opt.step([maskRaw, patternRaw], [grads[maskRaw.name], grads[patternRaw.name]]);
            value.dispose();
          });
        } else {
          // The hit count is kept out of the gradient's scope and read after the step: tidy cannot wait for a read.
          const hitsT = tf.tidy(() => {
            let h: tf.Tensor | undefined;
            const { value, grads } = tf.variableGrads(() => {
              const logits = model.forward(stamp(x), { training: false });
              h = tf.keep(tf.sum(tf.cast(tf.equal(tf.argMax(logits, 1), label), 'float32')));
              const l1 = tf.sum(tf.div(tf.add(tf.tanh(maskRaw), 1), 2));
              return tf.add(crossEntropy(logits, target), tf.mul(l1, cost)) as tf.Scalar;
            }, [maskRaw, patternRaw]);
            opt.step([maskRaw, patternRaw], [grads[maskRaw.name], grads[patternRaw.name]]);
            value.dispose();
            return h as unknown as tf.Tensor;
          });
          hits = await takeScalar(hitsT);
        }
      } finally {
        x.dispose();
      }
      successRate = hits / p.batchSize;
      // Cost schedule: shrink the mask harder while the trigger works, relax when it stops working.
      cost = successRate >= p.successThreshold ? cost * p.costUp : cost / p.costDown;
      cost = Math.min(Math.max(cost, 1e-6), 1);
    }
    const [mask, pattern] = await takeAllFloats(tf.tidy(() => [tf.div(tf.add(tf.tanh(maskRaw), 1), 2), tf.div(tf.add(tf.tanh(patternRaw), 1), 2)]));
    const l1 = mask.reduce((a, b) => a + b, 0);
    return { label, mask, pattern, l1, successRate };
  } finally {
    maskRaw.dispose();
    patternRaw.dispose();
    target.dispose();
    opt.dispose();
  }
}

/** Stamp a reversed trigger onto a copy of some images (true labels kept). */
export function stampSet(set: ImageSet, t: ReversedTrigger, indices: number[]): ImageSet {
  const out = cloneSet(set);
  const [h, w, c] = set.shape;
  const size = imageSize(set);
  for (const i of indices) {
    for (let y = 0; y < h; y++)
      for (let x = 0; x < w; x++) {
        const m = t.mask[y * w + x];
        for (let k = 0; k < c; k++) {
          const o = i * size + (y * w + x) * c + k;
          out.x[o] = (1 - m) * out.x[o] + m * t.pattern[(y * w + x) * c + k];
        }
      }
  }
  return out;
}

/**
 * NC's detection alone: a reversed trigger per label, the anomaly index of each mask's L1 norm and the flagged
 * labels (small-side outliers). The audit of a model whose trigger is unknown runs this on its own.
 */
export async function detectTriggers(ctx: DefenseContext): Promise<{ triggers: ReversedTrigger[]; norms: number[]; flagged: number[]; detection: { anomalyIndex: number[]; flagged: number[] } }> {
  const p = ctx.params as Record<string, number>;
  const k = ctx.victim.numClasses;
  const triggers: ReversedTrigger[] = [];
  const graph = ctx.ortTraining ? await OrtModelGraph.create(ctx.victim, { bnTrain: false, loss: 'ce', inputGrad: true, paramGrads: false, constantWeights: true }, ctx.ortThreads ?? 1) : undefined;
  if (ctx.ortTraining && !graph) ctx.training?.backendWhy.add('trigger reversal: the ONNX graph does not cover this model');
  try {
    for (let label = 0; label < k; label++) {
      triggers.push(await reverseTrigger(ctx.victim, ctx.aux, label, p, ctx, graph));
      if (ctx.training) ctx.training[graph ? 'onnxruntimeSteps' : 'backendSteps'] += p.steps;
      ctx.progress(label + 1, k + 1, `reversed trigger for label ${label}`);
    }
  } finally {
    await graph?.close();
  }
  const norms = triggers.map((t) => t.l1);
  const { anomaly, flagged } = flagSmallNorms(norms, ctx.params.anomalyScale === 'log' ? 'log' : 'linear', p.anomalyThreshold);
  return { triggers, norms, flagged, detection: { anomalyIndex: anomaly.map((a) => Math.round(a * 1000) / 1000), flagged } };
}

export const nc: Defense = {
  id: 'nc',
  title: 'Neural Cleanse',
  cost: 2.9,
  choices: { anomalyScale: ['linear', 'log'] },
  defaults(profile: Profile) {
    return {
      steps: profile === 'paper' ? 1000 : 150,
      lr: 0.1,
      // The fast profile reverses with half-size batches: 10 labels x 150 steps dominate its time.
      batchSize: profile === 'paper' ? 64 : 32,
      initCost: 1e-3,
      costUp: 1.5,
      costDown: 1.5 ** 1.5,
      successThreshold: 0.99,
      anomalyThreshold: 2,
      // NC's authors compute the index on the norms themselves (`paper`); `fast` on their logarithms.
      anomalyScale: profile === 'paper' ? 'linear' : 'log',
      stampFraction: 0.2,
      epochs: profile === 'paper' ? 20 : 10,
      ftLr: 0.01,
    };
  },
  departures(profile: Profile) {
    return profile === 'fast' ? '150 reversal steps of batch 32 per label (paper profile: 1000 of 64); anomaly index of the log mask norms (NC: the norms)' : undefined;
  },
  async run(ctx: DefenseContext): Promise<DefenseOutcome> {
    const p = ctx.params as Record<string, number>;
    const k = ctx.victim.numClasses;
    const found = await detectTriggers(ctx);
    const { triggers, norms, flagged } = found;
    // Every class's reversed trigger travels with the verdict: the panel shows them beside the anomaly index.
    const detection = { ...found.detection, triggers: triggersToShow(triggers, flagged).map((t) => triggerImage(t, ctx.aux.shape)) };
    const model = ctx.victim.clone();
    if (flagged.length === 0) return { model, detection, details: { flagged, unlearned: false, maskL1: norms } };
    try {
      // Unlearning: stamp a fraction of the aux set with the flagged triggers, keep the true labels, fine-tune.
      const order = Array.from(ctx.rng.permutation(ctx.aux.n));
      const count = Math.round(p.stampFraction * ctx.aux.n);
      let data = ctx.aux;
      flagged.forEach((label, j) => {
        const part = order.slice((j * count) / flagged.length, ((j + 1) * count) / flagged.length);
        data = stampSet(data, triggers[label], part);
      });
      const opt = new SGD(p.ftLr, 0.9, 5e-4);
      try {
        // Progress continues from the reversal's (label + 1) / (k + 1): the unlearning is the last of k + 1
        // equal parts, counted in epochs.
        await trainEpochs(ctx, model, opt, { epochs: p.epochs, lr: p.ftLr, batchSize: 64, data, label: 'unlearning epoch', progressBase: k * p.epochs, progressTotal: (k + 1) * p.epochs });
      } finally {
        opt.dispose();
      }
    } catch (e) {
      model.dispose();
      throw e;
    }
    ctx.progress(k + 1, k + 1);
    return { model, detection, details: { flagged, unlearned: true, maskL1: norms } };
  },
};
