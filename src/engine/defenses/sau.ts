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
 * Adam; BatchNorm statistics frozen (BackdoorBench's default).
 */
import * as tf from '@tensorflow/tfjs-core';
import { Adam } from '../nn/optim';
import { crossEntropy } from '../nn/train';
import type { Model } from '../nn/model';
import { trainEpochs } from './common';
import { inputGradient, projectLinf } from './adversarial';
import type { Defense, DefenseContext, DefenseOutcome, Profile } from './defense';

export const sau: Defense = {
  id: 'sau',
  title: 'Shared Adversarial Unlearning',
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
    const opt = new Adam(p.lr);
    const [h, w, c] = ctx.aux.shape;
    const size = h * w * c;
    const k = model.numClasses;
    let shared = 0;
    let seen = 0;
    try {
      await trainEpochs(ctx, model, opt, {
        epochs: p.epochs,
        lr: p.lr,
        schedule: 'constant',
        batchSize: p.batchSize,
        bnTrain: false,
        prepare: (s) => {
          const packed = sharedAdversarial(model, frozen, s.x, s.y, p);
          const flags = Array.from(tf.tidy(() => tf.slice(packed, [0, size + 1], [s.x.shape[0], 1]).dataSync() as Float32Array));
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
          const pAdv = tf.softmax(model.forward(xAdv, s.ctx));
          const pos = tf.clipByValue(tf.sum(tf.mul(pAdv, tf.oneHot(refLabel, k)), 1), 0.001, 1);
          const sar = tf.div(tf.sum(tf.mul(tf.neg(tf.log(tf.sub(1 + 1e-6, pos))), poison)), n);
          return tf.add(crossEntropy(model.forward(s.x, s.ctx), s.y), tf.mul(sar, p.lambda)) as tf.Scalar;
        },
      });
    } catch (e) {
      model.dispose();
      throw e;
    } finally {
      opt.dispose();
    }
    return { model, details: { eps: p.eps, steps: p.steps, epochs: p.epochs, sharedAdversarialFraction: Math.round((shared / Math.max(1, seen)) * 1000) / 1000 } };
  },
};

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
        const g = inputGradient(xAdv, (xi) => {
          const a = f.forward(xi, { training: false });
          const b = f0.forward(xi, { training: false });
          const ceA = tf.neg(tf.sum(tf.mul(tf.oneHot(y, f.numClasses), tf.logSoftmax(a)), 1));
          const ceB = tf.neg(tf.sum(tf.mul(tf.oneHot(y, f.numClasses), tf.logSoftmax(b)), 1));
          const adv = tf.div(tf.neg(tf.add(tf.sum(tf.mul(ceA, notF)), tf.sum(tf.mul(ceB, not0)))), 2 * n);
          const share = tf.div(tf.sum(tf.mul(jsDivergence(tf.softmax(a) as tf.Tensor2D, tf.softmax(b) as tf.Tensor2D), notShared)), n);
          return tf.add(tf.mul(adv, p.beta1), tf.mul(share, p.beta2)) as tf.Scalar;
        });
        return projectLinf(x, tf.sub(xAdv, tf.mul(tf.sign(g), p.stepSize)) as tf.Tensor4D, p.eps);
      });
      xAdv = next;
    }
    const refAdv = tf.argMax(f0.forward(xAdv, { training: false }), 1);
    const poison = tf.logicalAnd(tf.notEqual(refAdv, y), tf.notEqual(refAdv, cleanF0));
    return tf.concat([tf.reshape(xAdv, [n, -1]), tf.reshape(tf.cast(refAdv, 'float32'), [n, 1]), tf.reshape(tf.cast(poison, 'float32'), [n, 1])], 1);
  });
}
