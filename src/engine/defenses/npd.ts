/**
 * `npd`: Neural Polarizer Defense (Zhu et al., 2023). Insert a polarizer — a 1x1 convolution initialized to
 * the identity, followed by BatchNorm — in front of the last block's first convolution, freeze the backbone and
 * train only the polarizer so that targeted adversarial examples (L2, norm `eps`, `steps` PGD steps, aimed at
 * the wrong class the model finds most reachable) are classified correctly:
 * CE(f(x), y) + lambda * [CE(f(x_adv), y) - log(1 - p_t(x_adv)) + relu(z_t(x_adv) - z_y(x_adv))],
 * i.e. the clean loss plus three polarizing terms that pull adversarial inputs back to the true class, away
 * from the target class, and give the true logit the margin over the target's. The backbone's BatchNorm statistics stay frozen; the polarizer's BatchNorm acts as a
 * learnable per-channel affine map (its running statistics start at 0/1). The polarizer is saved with the
 * model as `<conv>.inserted.0.*` and `<conv>.inserted.1.*`.
 */
import * as tf from '@tensorflow/tfjs-core';
import { BatchNorm2d, Conv2d, Sequential } from '../nn/layers';
import { Adam } from '../nn/optim';
import { crossEntropy } from '../nn/train';
import type { Model } from '../nn/model';
import { Rng } from '../util/rng';
import { trainEpochs } from './common';
import { inputGradient, projectL2 } from './adversarial';
import type { Defense, DefenseContext, DefenseOutcome, Profile } from './defense';

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

/** Targeted L2 PGD toward the most probable wrong class; returns [x_adv, target labels]. */
function targetedAdversarial(model: Model, x: tf.Tensor4D, y: tf.Tensor1D, eps: number, steps: number): tf.Tensor {
  return tf.tidy(() => {
    const k = model.numClasses;
    const logits0 = model.forward(x, { training: false });
    const target = tf.argMax(tf.sub(logits0, tf.mul(tf.oneHot(y, k), 1e9)), 1) as tf.Tensor1D;
    let xAdv = x;
    const stepSize = (2.5 * eps) / Math.max(1, steps);
    for (let i = 0; i < steps; i++) {
      const g = inputGradient(xAdv, (xi) => tf.neg(crossEntropy(model.forward(xi, { training: false }), target)) as tf.Scalar);
      const gn = tf.div(g, tf.add(tf.sqrt(tf.sum(tf.square(g), [1, 2, 3], true)), 1e-12));
      xAdv = projectL2(x, tf.add(xAdv, tf.mul(gn, stepSize)) as tf.Tensor4D, eps);
    }
    // One tensor per batch (fit() disposes it): flattened x_adv with the target label as a last column.
    return tf.concat([tf.reshape(xAdv, [x.shape[0], -1]), tf.reshape(tf.cast(target, 'float32'), [-1, 1])], 1);
  });
}

export const npd: Defense = {
  id: 'npd',
  title: 'Neural Polarizer',
  defaults(profile: Profile) {
    return profile === 'paper'
      ? { warmupEpochs: 5, epochs: 50, lr: 0.01, batchSize: 128, eps: 3.0, steps: 2, lambda: 0.4 }
      : { warmupEpochs: 1, epochs: 10, lr: 0.01, batchSize: 64, eps: 3.0, steps: 2, lambda: 0.4 };
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
    const opt = new Adam(p.lr);
    const [h, w, c] = ctx.aux.shape;
    const total = p.warmupEpochs + p.epochs;
    try {
      // Warm-up: the polarizer learns to pass clean data through unchanged.
      await trainEpochs(ctx, model, opt, { epochs: p.warmupEpochs, lr: p.lr, batchSize: p.batchSize, vars, bnTrain: false, progressTotal: total, label: 'warm-up epoch' });
      await trainEpochs(ctx, model, opt, {
        epochs: p.epochs,
        lr: p.lr,
        batchSize: p.batchSize,
        vars,
        bnTrain: false,
        progressBase: p.warmupEpochs,
        progressTotal: total,
        label: 'epoch',
        prepare: (s) => targetedAdversarial(model, s.x, s.y, p.eps, p.steps),
        loss: (s) => {
          const n = s.x.shape[0];
          const packed = s.prepared!;
          const xAdv = tf.reshape(tf.slice(packed, [0, 0], [n, h * w * c]), [n, h, w, c]) as tf.Tensor4D;
          const target = tf.cast(tf.reshape(tf.slice(packed, [0, h * w * c], [n, 1]), [n]), 'int32') as tf.Tensor1D;
          const k = model.numClasses;
          const clean = crossEntropy(model.forward(s.x, s.ctx), s.y);
          const advLogits = model.forward(xAdv, s.ctx);
          const pAdv = tf.softmax(advLogits);
          const toTrue = crossEntropy(advLogits, s.y);
          const awayFromTarget = tf.mean(tf.neg(tf.log(tf.add(tf.sub(1, tf.sum(tf.mul(pAdv, tf.oneHot(target, k)), 1)), 1e-6))));
          // Margin term: the true class should beat the target class on adversarial inputs.
          const margin = tf.mean(tf.relu(tf.sub(tf.sum(tf.mul(advLogits, tf.oneHot(target, k)), 1), tf.sum(tf.mul(advLogits, tf.oneHot(s.y, k)), 1))));
          return tf.add(clean, tf.mul(tf.add(tf.add(toTrue, awayFromTarget), margin), p.lambda)) as tf.Scalar;
        },
      });
    } catch (e) {
      model.dispose();
      throw e;
    } finally {
      opt.dispose();
    }
    return { model, details: { insertedBefore: at, eps: p.eps, steps: p.steps } };
  },
};
