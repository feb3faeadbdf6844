/**
 * `sau`: Shared Adversarial Unlearning (Wei et al., 2023), as BackdoorBench's defense/sau.py. Per batch:
 *   1. Shared adversarial examples (PGD, L_inf `eps` in pixel space, `steps` signed steps of `stepSize`,
 *      starting at +eps): descend beta1 * L_adv + beta2 * L_share, where L_adv is minus the CE of both the
 *      model being purified f and the frozen victim f0 on the images not yet misclassified, and L_share is
 *      the Jensen-Shannon divergence between f's and f0's predictions on the images where they do not yet
 *      agree on a wrong label; so x' fools both models into the same wrong class.
 *   2. Unlearning step: CE(f(x), y) + lambda * L_sar, with L_sar = -log(1 - p_f(t | x')) over the images
 *      where x' fools the victim (t = f0's label for x', different from y and from f0's label for x), averaged
 *      over the batch: f must stop sharing the victim's adversarial (and so backdoor-like) decisions.
 * Adam with AMSGrad (BackdoorBench's argparser_opt_scheduler makes every Adam so); BatchNorm statistics frozen
 * (BackdoorBench's default). No augmentation: BackdoorBench's loader for SAU's clean data takes the test
 * transform (`get_transform(..., train=False)`), as the PyTorch reference does. x' is x plus a perturbation within
 * the L_inf ball, not clipped to [0,1], as BackdoorBench's get_perturbed_image.
 *
 * Where ONNX Runtime loads, both steps run through it, each one run per step with its objective in the graph:
 * the PGD step of f and f0 together (ort_sau_attack_graph.ts) and the unlearning step (ort_unlearning_ops.ts),
 * their closed forms checked against the backend's autodiff of sharedObjective and unlearningLoss below
 * (test/unit/ort-graph.test.ts), so only where the numbers are computed changes.
 */
import * as tf from '@tensorflow/tfjs-core';
import { Adam } from '../nn/optim';
import { argmaxRows, crossEntropy } from '../nn/train';
import type { Model } from '../nn/model';
import { OrtModelGraph } from '../nn/ort_graph';
import { SauAttackGraph } from '../nn/ort_sau_attack_graph';
import { applyGradients } from '../nn/ort_train';
import { takeFloats } from '../nn/read';
import { trainEpochs } from './common';
import { inputGradient, projectLinf, projectLinfArray } from './adversarial';
import type { Defense, DefenseContext, DefenseOutcome, Profile } from './defense';

export const sau: Defense = {
  id: 'sau',
  title: 'Shared Adversarial Unlearning',
  cost: 8.2,
  defaults(profile: Profile) {
    return profile === 'paper'
      ? { epochs: 100, lr: 1e-4, batchSize: 256, eps: 0.2, steps: 5, stepSize: 0.2, beta1: 0.01, beta2: 1, lambda: 1 }
      : { epochs: 20, lr: 1e-4, batchSize: 64, eps: 0.2, steps: 5, stepSize: 0.2, beta1: 0.01, beta2: 1, lambda: 1 };
  },
  departures(profile: Profile) {
    // The former fast profile (Adam 1e-3, batches of 32) cost PyTorch-trained victims half their accuracy.
    return profile === 'fast' ? 'batch 64 (BackdoorBench: 256) so that a 500-image aux set gets 8 steps an epoch; 20 epochs (100)' : undefined;
  },
  async run(ctx: DefenseContext): Promise<DefenseOutcome> {
    const p = ctx.params as Record<string, number>;
    const frozen = ctx.victim;
    const model = ctx.victim.clone();
    const opt = new Adam(p.lr, 0.9, 0.999, 1e-8, 0, true);
    const [h, w, c] = ctx.aux.shape;
    const size = h * w * c;
    const k = model.numClasses;
    let shared = 0;
    let seen = 0;
    const graphs = ctx.ortTraining ? await SauGraphs.create(model, frozen, p, ctx.ortThreads ?? 1) : undefined;
    // The frozen victim's label of each aux image (-1: not yet known). Neither its weights nor its BatchNorm
    // statistics change and the images are not augmented, so the first epoch's labels hold for every epoch.
    const victimLabels = new Int32Array(ctx.aux.n).fill(-1);
    if (ctx.ortTraining && !graphs) ctx.training?.backendWhy.add('SAU: the ONNX graphs do not cover this model');
    try {
      await trainEpochs(ctx, model, opt, {
        epochs: p.epochs,
        lr: p.lr,
        schedule: 'constant',
        batchSize: p.batchSize,
        bnTrain: false,
        augment: { cropPadding: 0, flip: false },
        ortStep: graphs
          ? async (x, labels, indices) => {
              const out = await sauStepOnOrt(graphs, model, opt, x, labels, p, { of: victimLabels, indices });
              shared += out.shared;
              seen += labels.length;
              return out.loss;
            }
          : undefined,
        prepare: async (s) => {
          const packed = sharedAdversarial(model, frozen, s.x, s.y, p);
          let flags: number[];
          try {
            flags = Array.from(await takeFloats(tf.slice(packed, [0, size + 1], [s.x.shape[0], 1])));
          } catch (e) {
            packed.dispose();
            throw e;
          }
          shared += flags.reduce((a, b) => a + b, 0);
          seen += s.x.shape[0];
          return packed;
        },
        loss: (s) => {
          const n = s.x.shape[0];
          const packed = s.prepared!;
          const xAdv = tf.reshape(tf.slice(packed, [0, 0], [n, size]), [n, h, w, c]) as tf.Tensor4D;
          const refLabel = tf.cast(tf.reshape(tf.slice(packed, [0, size], [n, 1]), [n]), 'int32') as tf.Tensor1D;
          const poison = tf.reshape(tf.slice(packed, [0, size + 1], [n, 1]), [n]);
          return unlearningLoss(model.forward(s.x, s.ctx), s.y, model.forward(xAdv, s.ctx), refLabel, poison as tf.Tensor1D, k, p.lambda);
        },
      });
    } catch (e) {
      model.dispose();
      throw e;
    } finally {
      opt.dispose();
      await graphs?.close();
    }
    return { model, details: { eps: p.eps, steps: p.steps, epochs: p.epochs, sharedAdversarialFraction: Math.round((shared / Math.max(1, seen)) * 1000) / 1000 } };
  },
};

/**
 * The PGD objective of step 1 from the logits of f (`a`) and f0 (`b`) at x': beta1 * L_adv + beta2 * L_share,
 * with the 0/1 masks of the images not yet fooled by f, by f0, and not yet shared.
 */
export function sharedObjective(a: tf.Tensor2D, b: tf.Tensor2D, y: tf.Tensor1D, m: { notF: tf.Tensor; not0: tf.Tensor; notShared: tf.Tensor }, p: Record<string, number>, batch?: number): tf.Scalar {
  // Averaged over the batch; `batch` when a and b hold only some of its rows (sauStepOnOrt's active rows).
  const n = batch ?? a.shape[0];
  const k = a.shape[1];
  const ceA = tf.neg(tf.sum(tf.mul(tf.oneHot(y, k), tf.logSoftmax(a)), 1));
  const ceB = tf.neg(tf.sum(tf.mul(tf.oneHot(y, k), tf.logSoftmax(b)), 1));
  const adv = tf.div(tf.neg(tf.add(tf.sum(tf.mul(ceA, m.notF)), tf.sum(tf.mul(ceB, m.not0)))), 2 * n);
  const share = tf.div(tf.sum(tf.mul(jsDivergence(tf.softmax(a) as tf.Tensor2D, tf.softmax(b) as tf.Tensor2D), m.notShared)), n);
  return tf.add(tf.mul(adv, p.beta1), tf.mul(share, p.beta2)) as tf.Scalar;
}

/** Step 2's loss from f's logits on x and on x': CE(f(x), y) + lambda * L_sar over the images x' fools f0 on. */
export function unlearningLoss(clean: tf.Tensor2D, y: tf.Tensor1D, adv: tf.Tensor2D, refLabel: tf.Tensor1D, poison: tf.Tensor1D, k: number, lambda: number): tf.Scalar {
  const n = clean.shape[0];
  const pos = tf.clipByValue(tf.sum(tf.mul(tf.softmax(adv), tf.oneHot(refLabel, k)), 1), 0.001, 1);
  const sar = tf.div(tf.sum(tf.mul(tf.neg(tf.log(tf.sub(1 + 1e-6, pos))), poison)), n);
  return tf.add(crossEntropy(clean, y), tf.mul(sar, lambda)) as tf.Scalar;
}

/** Per-image Jensen-Shannon divergence of two probability rows. */
function jsDivergence(a: tf.Tensor2D, b: tf.Tensor2D): tf.Tensor1D {
  return tf.tidy(() => {
    const pa = tf.clipByValue(a, 1e-8, 1);
    const pb = tf.clipByValue(b, 1e-8, 1);
    const m = tf.log(tf.mul(tf.add(pa, pb), 0.5));
    const kl = (p: tf.Tensor) => tf.sum(tf.mul(p, tf.sub(tf.log(p), m)), 1);
    return tf.mul(tf.add(kl(pa), kl(pb)), 0.5) as tf.Tensor1D;
  });
}

/**
 * The shared adversarial examples of a batch, packed with what the unlearning step needs: [x' flattened,
 * f0's label for x', 1 where x' fools f0 (label differs from y and from f0's label for x)].
 */
function sharedAdversarial(f: Model, f0: Model, x: tf.Tensor4D, y: tf.Tensor1D, p: Record<string, number>): tf.Tensor {
  return tf.tidy(() => {
    const n = x.shape[0];
    const cleanF = tf.argMax(f.forward(x, { training: false }), 1);
    const cleanF0 = tf.argMax(f0.forward(x, { training: false }), 1);
    let xAdv = projectLinf(x, tf.add(x, p.eps) as tf.Tensor4D, p.eps);
    for (let i = 0; i < p.steps; i++) {
      const next = tf.tidy(() => {
        // Which images are already fooled (by each model) and shared, decided outside the gradient.
        const lf = f.forward(xAdv, { training: false });
        const l0 = f0.forward(xAdv, { training: false });
        const predF = tf.argMax(lf, 1);
        const pred0 = tf.argMax(l0, 1);
        const fooledF = tf.notEqual(predF, cleanF);
        const fooled0 = tf.notEqual(pred0, cleanF0);
        const isShared = tf.logicalAnd(tf.logicalAnd(fooledF, fooled0), tf.equal(predF, pred0));
        const notF = tf.cast(tf.logicalNot(fooledF), 'float32');
        const not0 = tf.cast(tf.logicalNot(fooled0), 'float32');
        const notShared = tf.cast(tf.logicalNot(isShared), 'float32');
        const g = inputGradient(xAdv, (xi) => sharedObjective(f.forward(xi, { training: false }), f0.forward(xi, { training: false }), y, { notF, not0, notShared }, p));
        return projectLinf(x, tf.sub(xAdv, tf.mul(tf.sign(g), p.stepSize)) as tf.Tensor4D, p.eps);
      });
      xAdv = next;
    }
    const refAdv = tf.argMax(f0.forward(xAdv, { training: false }), 1);
    const poison = tf.logicalAnd(tf.notEqual(refAdv, y), tf.notEqual(refAdv, cleanF0));
    return tf.concat([tf.reshape(xAdv, [n, -1]), tf.reshape(tf.cast(refAdv, 'float32'), [n, 1]), tf.reshape(tf.cast(poison, 'float32'), [n, 1])], 1);
  });
}

/**
 * The ONNX Runtime graphs of SAU: forward passes of f and f0 on the clean images (both with frozen BatchNorm
 * statistics, as every pass of SAU), the PGD step of both models with its objective (ort_sau_attack_graph.ts,
 * one run a step), and f's weight gradients for the unlearning step, whose graph computes its loss itself
 * (`unlearning`), one run per step.
 */
class SauGraphs {
  private constructor(
    readonly f: OrtModelGraph,
    readonly attack: SauAttackGraph,
    readonly fWeights: OrtModelGraph,
    readonly f0: OrtModelGraph,
  ) {}

  static async create(f: Model, f0: Model, p: Record<string, number>, threads: number): Promise<SauGraphs | undefined> {
    const made = await Promise.all([
      OrtModelGraph.create(f, { bnTrain: false, loss: 'none' }, threads),
      SauAttackGraph.create(f, f0, p.beta1, p.beta2, threads),
      OrtModelGraph.create(f, { bnTrain: false, loss: 'ce', paramGrads: true, unlearning: { lambda: p.lambda } }, threads),
      OrtModelGraph.create(f0, { bnTrain: false, loss: 'none', constantWeights: true }, threads),
    ]);
    if (made.some((g) => !g)) {
      await Promise.all(made.map((g) => g?.close()));
      return undefined;
    }
    const [a, b, c, d] = made as [OrtModelGraph, SauAttackGraph, OrtModelGraph, OrtModelGraph];
    return new SauGraphs(a, b, c, d);
  }

  async close(): Promise<void> {
    await Promise.all([this.f, this.attack, this.fWeights, this.f0].map((g) => g.close()));
  }
}

/**
 * One SAU batch through ONNX Runtime: the shared adversarial examples (step 1) and the unlearning step (step 2)
 * with the same objectives as the backend path; returns the step's loss and how many x' fooled the victim.
 */
async function sauStepOnOrt(g: SauGraphs, model: Model, opt: Adam, x: Float32Array, labels: Int32Array, p: Record<string, number>, victim: { of: Int32Array; indices: Int32Array }): Promise<{ loss: number; shared: number }> {
  const n = labels.length;
  const k = model.numClasses;
  const cleanF = argmaxRows(await g.f.logits(x, n), k);
  // f0's labels of the clean images, computed at an image's first batch and kept (an image's label does not
  // depend on the batch it is in): a forward pass of the victim per batch saved from the second epoch on.
  let cleanF0: Int32Array = Int32Array.from(victim.indices, (i) => victim.of[i]);
  if (cleanF0.includes(-1)) {
    cleanF0 = argmaxRows(await g.f0.logits(x, n), k);
    victim.indices.forEach((i, j) => (victim.of[i] = cleanF0[j]));
  }
  let xAdv = projectLinfArray(x, x.map((v) => v + p.eps), p.eps);
  const size = x.length / n;
  // The rows whose x' f and f0 do not yet share. A shared row's objective terms are all masked out, so its
  // gradient is zero and it does not move; f and f0 are fixed during the attack, so it stays shared: later steps
  // run on the other rows alone (per row the same numbers, BatchNorm being frozen; the objective keeps the
  // whole batch's normalizer). BackdoorBench stops once every row is shared.
  let active = Int32Array.from({ length: n }, (_, j) => j);
  const weights = await g.attack.readWeights();
  for (let i = 0; i < p.steps && active.length > 0; i++) {
    const m = active.length;
    const rows = active;
    const pick = (a: Int32Array): Int32Array => (m === n ? a : Int32Array.from(rows, (r) => a[r]));
    let xa = xAdv;
    if (m < n) {
      xa = new Float32Array(m * size);
      rows.forEach((r, q) => xa.set(xAdv.subarray(r * size, (r + 1) * size), q * size));
    }
    // f's and f0's pixel gradients of the objective, summed, and the rows not yet shared, from one run.
    const { dx, notShared } = await g.attack.step(xa, m, pick(labels), pick(cleanF), pick(cleanF0), n, weights);
    const stepped = Float32Array.from(xAdv);
    rows.forEach((r, q) => {
      for (let j = 0; j < size; j++) stepped[r * size + j] = xAdv[r * size + j] - Math.sign(dx[q * size + j]) * p.stepSize;
    });
    xAdv = projectLinfArray(x, stepped, p.eps);
    active = rows.filter((_, q) => notShared[q] === 1);
  }
  const refAdv = argmaxRows(await g.f0.logits(xAdv, n), k);
  const poison = Float32Array.from(refAdv, (v, j) => (v !== labels[j] && v !== cleanF0[j] ? 1 : 0));
  // Step 2 on x and x' as one batch, its loss in the graph (ort_unlearning_ops.ts).
  const both = new Float32Array(2 * x.length);
  both.set(x, 0);
  both.set(xAdv, x.length);
  const run = await g.fWeights.run(both, 2 * n, { unlearning: { labels, ref: refAdv, poison } });
  applyGradients(model, opt, run.grads!);
  return { loss: run.loss!, shared: poison.reduce((a, b) => a + b, 0) };
}
