/**
 * `npd`: Neural Polarizer Defense (Zhu et al., 2023), as BackdoorBench's defense/npd.py ("convbn" polarizer).
 * Insert a polarizer — a 1x1 convolution initialized to the identity, followed by BatchNorm — in front of the
 * last block's first convolution, freeze the backbone and train only the polarizer. Per batch, targeted
 * adversarial examples are made against the current model: the target is the most probable wrong class,
 * `steps` signed-gradient steps of `advStep` per pixel descend CE toward it, projected on the L2 ball of radius
 * `eps` (3.0, BackdoorBench's CIFAR-10 value, in pixel space) around the image. The loss is
 *   CE(f(x), y) + lambda * [CE(f(x_adv), f's clean prediction) - log(1 - p_u(x_adv)) - log(1 - p_t(x_adv))]
 * with t the attack's target and u the most probable class of x_adv other than y: the clean loss plus the
 * polarizing terms that pull adversarial inputs back and push them off both the attack's target and their own
 * most likely wrong class. Three details of BackdoorBench matter here and are kept:
 *   - Its warm-up runs the polarizer in train mode, so the polarizer's BatchNorm ends the warm-up holding the
 *     statistics of the features it receives, and from then on (eval mode) standardizes them per channel.
 *     We set those statistics directly from the auxiliary set (what the warm-up's running averages converge
 *     to) and then warm up with them. With statistics left at 0/1 the polarizer starts as an exact identity in
 *     the features' own scale, learns far less, and on a BadNets MNIST victim purified or not depending on
 *     the random stream (ASR 0.05 to 0.83).
 *   - The radius is not rescaled by the input size: a 3x3 patch trigger at half intensity has L2 norm 1.5, and
 *     a radius scaled down for 28x28x1 (1.52) left the attack no room to find it.
 *   - The polarizer trains at a constant rate (BackdoorBench's scheduler belongs to another optimizer) and on
 *     unaugmented images (its transform is the test-time one).
 * The backbone's BatchNorm statistics stay frozen. The polarizer is saved with the model as
 * `<conv>.inserted.0.*` and `<conv>.inserted.1.*`. Where ONNX Runtime loads, every step runs there (NpdGraphs:
 * the graphs give gradients to the polarizer's parameters only); the loss of a few numbers per image and the
 * update stay on the backend.
 */
import * as tf from '@tensorflow/tfjs-core';
import { BatchNorm2d, Conv2d, Sequential } from '../nn/layers';
import { SGD } from '../nn/optim';
import { argmaxRows, crossEntropy, makeBatch, makeBatchArray } from '../nn/train';
import { OrtModelGraph } from '../nn/ort_graph';
import { stepByKey } from '../nn/ort_train';
import { takeAllFloats } from '../nn/read';
import type { ImageSet } from '../data/dataset';
import type { Model } from '../nn/model';
import { Rng } from '../util/rng';
import { trainEpochs } from './common';
import { inputGradient, pairedBatchGradients, projectL2, projectL2Array } from './adversarial';
import type { Defense, DefenseContext, DefenseOutcome, Profile } from './defense';

/**
 * Per-channel mean and variance of what the polarizer receives, over the auxiliary set (eval mode: the frozen
 * backbone in front of it), written into the polarizer's BatchNorm running statistics.
 */
async function fitPolarizerStatistics(model: Model, bn: BatchNorm2d, aux: ImageSet, graph?: OrtModelGraph, batchSize = 128): Promise<void> {
  let sum: Float64Array | undefined;
  let sumSq: Float64Array | undefined;
  for (let s = 0; s < aux.n; s += batchSize) {
    const idx = Array.from({ length: Math.min(batchSize, aux.n - s) }, (_, i) => s + i);
    const [m, v] = graph
      ? await graph.run(makeBatchArray(aux, idx, undefined, undefined), idx.length).then((r) => [r.inputStats!.get(bn.path)!.mean, r.inputStats!.get(bn.path)!.variance])
      : await takeAllFloats(
          tf.tidy(() => {
            const stats = new Map<string, { mean: tf.Tensor1D; variance: tf.Tensor1D }>();
            model.forward(makeBatch(aux, idx, undefined, undefined), { training: false, bnInputStats: stats });
            const st = stats.get(bn.path)!;
            return [st.mean, st.variance];
          }),
        );
    sum ??= new Float64Array(m.length);
    sumSq ??= new Float64Array(m.length);
    for (let i = 0; i < m.length; i++) {
      sum[i] += m[i] * idx.length;
      sumSq[i] += (v[i] + m[i] * m[i]) * idx.length;
    }
  }
  const mean = Float32Array.from(sum!, (v) => v / aux.n);
  const variance = Float32Array.from(sumSq!, (v, i) => Math.max(0, v / aux.n - mean[i] * mean[i]));
  tf.tidy(() => {
    bn.runningMean.assign(tf.tensor1d(mean));
    bn.runningVar.assign(tf.tensor1d(variance));
  });
}

export function polarizer(channels: number): () => Sequential {
  return () => {
    const conv = new Conv2d(channels, channels, 1, { bias: true }, new Rng(0));
    const eye = new Float32Array(channels * channels);
    for (let i = 0; i < channels; i++) eye[i * channels + i] = 1;
    tf.tidy(() => {
      conv.weight.assign(tf.tensor4d(eye, [1, 1, channels, channels]));
      conv.bias!.assign(tf.zeros([channels]));
    });
    return new Sequential([conv, new BatchNorm2d(channels)]);
  };
}

/**
 * Targeted attack toward the most probable wrong class: signed steps of `advStep` per pixel, each projected
 * on the L2 ball of radius eps. Returns x_adv with the target label as a last column (one tensor per batch:
 * fit() disposes it).
 */
export function targetedAdversarial(model: Model, x: tf.Tensor4D, y: tf.Tensor1D, eps: number, steps: number, advStep: number): tf.Tensor {
  return tf.tidy(() => {
    const k = model.numClasses;
    const logits0 = model.forward(x, { training: false });
    const target = tf.argMax(tf.sub(logits0, tf.mul(tf.oneHot(y, k), 1e9)), 1) as tf.Tensor1D;
    let xAdv = x;
    for (let i = 0; i < steps; i++) {
      const g = inputGradient(xAdv, (xi) => crossEntropy(model.forward(xi, { training: false }), target));
      xAdv = projectL2(x, tf.sub(xAdv, tf.mul(tf.sign(g), advStep)) as tf.Tensor4D, eps);
    }
    const own = tf.argMax(logits0, 1);
    return tf.concat([tf.reshape(xAdv, [x.shape[0], -1]), tf.reshape(tf.cast(target, 'float32'), [-1, 1]), tf.reshape(tf.cast(own, 'float32'), [-1, 1])], 1);
  });
}

/**
 * NPD's objective from the logits of the clean batch and of its adversarial examples: the clean cross-entropy
 * plus lambda times the polarizing terms (back to f's clean prediction `own`, away from x_adv's most likely wrong
 * class and from the attack's target).
 */
export function npdLoss(cleanLogits: tf.Tensor2D, y: tf.Tensor1D, advLogits: tf.Tensor2D, own: tf.Tensor1D, target: tf.Tensor1D, k: number, lambda: number): tf.Scalar {
  const clean = crossEntropy(cleanLogits, y);
  const pAdv = tf.softmax(advLogits);
  const back = crossEntropy(advLogits, own);
  // The most probable class of x_adv other than the true one.
  const wrong = tf.argMax(tf.sub(pAdv, tf.mul(tf.oneHot(y, k), 2)), 1);
  const away = (cls: tf.Tensor) => tf.mean(tf.neg(tf.log(tf.add(tf.sub(1.0001, tf.sum(tf.mul(pAdv, tf.oneHot(cls as tf.Tensor1D, k)), 1)), 1e-12))));
  const polarize = tf.add(tf.add(back, away(wrong)), away(target));
  return tf.add(clean, tf.mul(polarize, lambda)) as tf.Scalar;
}

/**
 * NPD's graphs through ONNX Runtime, the backbone frozen and only the polarizer's parameters getting gradients:
 * the forward pass (with every BatchNorm's input statistics, for the polarizer's), the cross-entropy's pixel
 * gradient (the targeted attack), the cross-entropy step (warm-up) and the seeded product over the clean and
 * adversarial batch (the main loss, computed from the logits here).
 */
export class NpdGraphs {
  private constructor(
    readonly forward: OrtModelGraph,
    readonly pixels: OrtModelGraph,
    readonly clean: OrtModelGraph,
    readonly weights: OrtModelGraph,
    /** The graph keys of the polarizer's variables, in their order. */
    readonly keys: string[],
  ) {}

  static async create(model: Model, vars: tf.Variable[], threads: number): Promise<NpdGraphs | undefined> {
    const byVariable = new Map(model.root.namedParams().map(([key, p]) => [p.variable, key]));
    const keys = vars.map((v) => byVariable.get(v)!);
    const made = await Promise.all([
      OrtModelGraph.create(model, { bnTrain: false, loss: 'none', inputStats: true }, threads),
      OrtModelGraph.create(model, { bnTrain: false, loss: 'ce', inputGrad: true, paramGrads: false }, threads),
      OrtModelGraph.create(model, { bnTrain: false, loss: 'ce', trainable: keys }, threads),
      OrtModelGraph.create(model, { bnTrain: false, loss: 'seed', trainable: keys, split: true }, threads),
    ]);
    if (made.some((g) => !g)) {
      await Promise.all(made.map((g) => g?.close()));
      return undefined;
    }
    const [f, px, c, w] = made as OrtModelGraph[];
    return new NpdGraphs(f, px, c, w, keys);
  }

  /** The optimizer step of the polarizer's variables with gradients by graph key. */
  apply(vars: tf.Variable[], opt: SGD, grads: Map<string, Float32Array>): void {
    stepByKey(
      opt,
      vars.map((v, i) => [this.keys[i], v]),
      grads,
    );
  }

  /** A warm-up step: the clean cross-entropy's gradients, then the update. */
  async cleanStep(vars: tf.Variable[], opt: SGD, x: Float32Array, labels: Int32Array): Promise<number> {
    const run = await this.clean.run(x, labels.length, { labels });
    this.apply(vars, opt, run.grads!);
    return run.loss!;
  }

  /**
   * A main step, as the backend path's: the targeted attack from the current model's logits (signed steps of
   * the cross-entropy toward the target, projected on the L2 ball), then NPD's loss over the clean and the
   * adversarial batch as one batch of 2n (BatchNorm is frozen, so the images do not interact), then the update.
   */
  async step(model: Model, vars: tf.Variable[], opt: SGD, x: Float32Array, labels: Int32Array, p: Record<string, number>): Promise<number> {
    const n = labels.length;
    const k = model.numClasses;
    const size = x.length / n;
    const logits0 = await this.forward.logits(x, n);
    const own = argmaxRows(logits0, k);
    const target = argmaxRows(Float32Array.from(logits0, (v, i) => (i % k === labels[Math.floor(i / k)] ? v - 1e9 : v)), k);
    let xAdv = x;
    for (let i = 0; i < p.steps; i++) {
      const dx = (await this.pixels.run(xAdv, n, { labels: target })).dx!;
      xAdv = projectL2Array(x, Float32Array.from(xAdv, (v, j) => v - Math.sign(dx[j]) * p.advStep), p.eps, size);
    }
    const { value, run } = await pairedBatchGradients(this.weights, x, xAdv, n, k, (clean, adv) =>
      npdLoss(clean, tf.tensor1d(labels, 'int32'), adv, tf.tensor1d(own, 'int32'), tf.tensor1d(target, 'int32'), k, p.lambda),
    );
    this.apply(vars, opt, run.grads!);
    return value;
  }

  async close(): Promise<void> {
    await Promise.all([this.forward, this.pixels, this.clean, this.weights].map((g) => g.close()));
  }
}

export const npd: Defense = {
  id: 'npd',
  title: 'Neural Polarizer',
  cost: 1.7,
  defaults(profile: Profile) {
    return profile === 'paper'
      ? { warmupEpochs: 5, warmupLr: 1e-4, epochs: 50, lr: 0.01, momentum: 0.9, weightDecay: 5e-4, batchSize: 128, eps: 3.0, steps: 2, advStep: 0.1, lambda: 0.4 }
      : { warmupEpochs: 2, warmupLr: 1e-4, epochs: 20, lr: 0.01, momentum: 0.9, weightDecay: 5e-4, batchSize: 64, eps: 3.0, steps: 2, advStep: 0.1, lambda: 0.4 };
  },
  departures(profile: Profile) {
    return profile === 'fast' ? 'batch 64 (BackdoorBench: 128) for a 500-image aux set; 2 warm-up epochs (5) and 20 epochs (50)' : undefined;
  },
  async run(ctx: DefenseContext): Promise<DefenseOutcome> {
    const p = ctx.params as Record<string, number>;
    const model = ctx.victim.clone();
    const at = model.layout.lastBlockConv;
    const conv = model.root.find(at);
    if (!(conv instanceof Conv2d)) {
      model.dispose();
      throw new Error(`npd: ${at} is not a convolution`);
    }
    const pol = model.insertBefore(at, polarizer(conv.inChannels));
    const vars = pol.trainableVariables();
    const polBn = [...pol.modules()].find((m): m is BatchNorm2d => m instanceof BatchNorm2d)!;
    const warm = new SGD(p.warmupLr);
    const opt = new SGD(p.lr, p.momentum, p.weightDecay);
    const [h, w, c] = ctx.aux.shape;
    const total = p.warmupEpochs + p.epochs;
    const eps = p.eps;
    const plain = { cropPadding: 0, flip: false };
    let graphs: NpdGraphs | undefined;
    try {
      graphs = ctx.ortTraining ? await NpdGraphs.create(model, vars, ctx.ortThreads ?? 1) : undefined;
      if (ctx.ortTraining && !graphs) ctx.training?.backendWhy.add('NPD: the ONNX graphs do not cover this model');
      // Warm-up: the polarizer's BatchNorm takes the statistics of its input, then a few slow clean epochs.
      await fitPolarizerStatistics(model, polBn, ctx.aux, graphs?.forward);
      await trainEpochs(ctx, model, warm, {
        epochs: p.warmupEpochs,
        lr: p.warmupLr,
        schedule: 'constant',
        batchSize: p.batchSize,
        vars,
        bnTrain: false,
        augment: plain,
        progressTotal: total,
        label: 'warm-up epoch',
        ortStep: graphs ? (x, labels) => graphs!.cleanStep(vars, warm, x, labels) : undefined,
      });
      await trainEpochs(ctx, model, opt, {
        epochs: p.epochs,
        lr: p.lr,
        schedule: 'constant',
        augment: plain,
        batchSize: p.batchSize,
        vars,
        bnTrain: false,
        progressBase: p.warmupEpochs,
        progressTotal: total,
        label: 'epoch',
        ortStep: graphs ? (x, labels) => graphs!.step(model, vars, opt, x, labels, p) : undefined,
        prepare: (s) => targetedAdversarial(model, s.x, s.y, eps, p.steps, p.advStep),
        loss: (s) => {
          const n = s.x.shape[0];
          const packed = s.prepared!;
          const xAdv = tf.reshape(tf.slice(packed, [0, 0], [n, h * w * c]), [n, h, w, c]) as tf.Tensor4D;
          const target = tf.cast(tf.reshape(tf.slice(packed, [0, h * w * c], [n, 1]), [n]), 'int32') as tf.Tensor1D;
          const own = tf.cast(tf.reshape(tf.slice(packed, [0, h * w * c + 1], [n, 1]), [n]), 'int32') as tf.Tensor1D;
          return npdLoss(model.forward(s.x, s.ctx), s.y, model.forward(xAdv, s.ctx), own, target, model.numClasses, p.lambda);
        },
      });
    } catch (e) {
      model.dispose();
      throw e;
    } finally {
      warm.dispose();
      opt.dispose();
      await graphs?.close();
    }
    return { model, details: { insertedBefore: at, eps, steps: p.steps, epochs: p.epochs } };
  },
};
