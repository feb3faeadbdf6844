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
 * `<conv>.inserted.0.*` and `<conv>.inserted.1.*`.
 */
import * as tf from '@tensorflow/tfjs-core';
import { BatchNorm2d, Conv2d, Sequential } from '../nn/layers';
import { SGD } from '../nn/optim';
import { crossEntropy, makeBatch } from '../nn/train';
import { takeAllFloats } from '../nn/read';
import type { ImageSet } from '../data/dataset';
import type { Model } from '../nn/model';
import { Rng } from '../util/rng';
import { trainEpochs } from './common';
import { inputGradient, projectL2 } from './adversarial';
import type { Defense, DefenseContext, DefenseOutcome, Profile } from './defense';

/**
 * Per-channel mean and variance of what the polarizer receives, over the auxiliary set (eval mode: the frozen
 * backbone in front of it), written into the polarizer's BatchNorm running statistics.
 */
async function fitPolarizerStatistics(model: Model, bn: BatchNorm2d, aux: ImageSet, batchSize = 128): Promise<void> {
  let sum: Float64Array | undefined;
  let sumSq: Float64Array | undefined;
  for (let s = 0; s < aux.n; s += batchSize) {
    const idx = Array.from({ length: Math.min(batchSize, aux.n - s) }, (_, i) => s + i);
    const [m, v] = await takeAllFloats(
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

function polarizer(channels: number): () => Sequential {
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
function targetedAdversarial(model: Model, x: tf.Tensor4D, y: tf.Tensor1D, eps: number, steps: number, advStep: number): tf.Tensor {
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

export const npd: Defense = {
  id: 'npd',
  title: 'Neural Polarizer',
  cost: 4.3,
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
    try {
      // Warm-up: the polarizer's BatchNorm takes the statistics of its input, then a few slow clean epochs.
      await fitPolarizerStatistics(model, polBn, ctx.aux);
      await trainEpochs(ctx, model, warm, { epochs: p.warmupEpochs, lr: p.warmupLr, schedule: 'constant', batchSize: p.batchSize, vars, bnTrain: false, augment: plain, progressTotal: total, label: 'warm-up epoch' });
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
        prepare: (s) => targetedAdversarial(model, s.x, s.y, eps, p.steps, p.advStep),
        loss: (s) => {
          const n = s.x.shape[0];
          const packed = s.prepared!;
          const xAdv = tf.reshape(tf.slice(packed, [0, 0], [n, h * w * c]), [n, h, w, c]) as tf.Tensor4D;
          const target = tf.cast(tf.reshape(tf.slice(packed, [0, h * w * c], [n, 1]), [n]), 'int32') as tf.Tensor1D;
          const own = tf.cast(tf.reshape(tf.slice(packed, [0, h * w * c + 1], [n, 1]), [n]), 'int32') as tf.Tensor1D;
          const k = model.numClasses;
          const clean = crossEntropy(model.forward(s.x, s.ctx), s.y);
          const advLogits = model.forward(xAdv, s.ctx);
          const pAdv = tf.softmax(advLogits);
          const back = crossEntropy(advLogits, own);
          // The most probable class of x_adv other than the true one.
          const wrong = tf.argMax(tf.sub(pAdv, tf.mul(tf.oneHot(s.y, k), 2)), 1);
          const away = (cls: tf.Tensor) => tf.mean(tf.neg(tf.log(tf.add(tf.sub(1.0001, tf.sum(tf.mul(pAdv, tf.oneHot(cls as tf.Tensor1D, k)), 1)), 1e-12))));
          const polarize = tf.add(tf.add(back, away(wrong)), away(target));
          return tf.add(clean, tf.mul(polarize, p.lambda)) as tf.Scalar;
        },
      });
    } catch (e) {
      model.dispose();
      throw e;
    } finally {
      warm.dispose();
      opt.dispose();
    }
    return { model, details: { insertedBefore: at, eps, steps: p.steps, epochs: p.epochs } };
  },
};
