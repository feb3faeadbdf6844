/**
 * `sau`: Shared Adversarial Unlearning (Wei et al., 2023). For each batch, craft a shared adversarial example
 * x' (PGD, L_inf 0.2, 5 steps of 0.2 from a random start) that drives the model being purified and a frozen
 * copy of the victim to the same wrong label: it maximizes the shared wrong-class probability
 * S(x') = sum_{k != y} p_f(k|x') p_f0(k|x'). The model is then trained on
 * CE(f(x), y) + lambda * mean(-log(1 - S(x'))), which unlearns exactly the perturbations the backdoor shares
 * with adversarial examples. Adam lr 1e-4; BatchNorm statistics frozen.
 */
import * as tf from '@tensorflow/tfjs-core';
import { Adam } from '../nn/optim';
import { crossEntropy } from '../nn/train';
import type { Model } from '../nn/model';
import { trainEpochs } from './common';
import { inputGradient, projectLinf } from './adversarial';
import type { Defense, DefenseContext, DefenseOutcome, Profile } from './defense';

/** Shared wrong-class probability per image. */
function sharedWrongProbability(f: Model, f0: Model, x: tf.Tensor4D, y: tf.Tensor1D): tf.Tensor1D {
  return tf.tidy(() => {
    const k = f.numClasses;
    const notY = tf.sub(1, tf.oneHot(y, k));
    const pf = tf.softmax(f.forward(x, { training: false }));
    const p0 = tf.softmax(f0.forward(x, { training: false }));
    return tf.sum(tf.mul(tf.mul(pf, p0), notY), 1) as tf.Tensor1D;
  });
}

export const sau: Defense = {
  id: 'sau',
  title: 'Shared Adversarial Unlearning',
  defaults(profile: Profile) {
    return profile === 'paper'
      ? { epochs: 100, lr: 1e-4, batchSize: 128, eps: 0.2, steps: 5, stepSize: 0.2, lambda: 1 }
      : { epochs: 10, lr: 1e-3, batchSize: 64, eps: 0.2, steps: 5, stepSize: 0.2, lambda: 1 };
  },
  async run(ctx: DefenseContext): Promise<DefenseOutcome> {
    const p = ctx.params as Record<string, number>;
    const frozen = ctx.victim;
    const model = ctx.victim.clone();
    const opt = new Adam(p.lr);
    try {
      await trainEpochs(ctx, model, opt, {
        epochs: p.epochs,
        lr: p.lr,
        schedule: 'constant',
        batchSize: p.batchSize,
        bnTrain: false,
        prepare: (s) => sharedAdversarial(model, frozen, s.x, s.y, p, ctx.rng.nextUint32()),
        loss: (s) => {
          const shared = sharedWrongProbability(model, frozen, s.prepared as tf.Tensor4D, s.y);
          const unlearn = tf.mean(tf.neg(tf.log(tf.add(tf.sub(1, shared), 1e-6))));
          return tf.add(crossEntropy(model.forward(s.x, s.ctx), s.y), tf.mul(unlearn, p.lambda)) as tf.Scalar;
        },
      });
    } catch (e) {
      model.dispose();
      throw e;
    } finally {
      opt.dispose();
    }
    return { model, details: { eps: p.eps, steps: p.steps } };
  },
};

/** PGD maximizing log S(x'), seeded random start in the eps-ball. */
function sharedAdversarial(f: Model, f0: Model, x: tf.Tensor4D, y: tf.Tensor1D, p: Record<string, number>, seed: number): tf.Tensor4D {
  return tf.tidy(() => {
    let xAdv = projectLinf(x, tf.add(x, tf.randomUniform(x.shape, -p.eps, p.eps, 'float32', seed)) as tf.Tensor4D, p.eps);
    for (let i = 0; i < p.steps; i++) {
      const g = inputGradient(xAdv, (xi) => tf.mean(tf.log(tf.add(sharedWrongProbability(f, f0, xi, y), 1e-12))) as tf.Scalar);
      xAdv = projectLinf(x, tf.add(xAdv, tf.mul(tf.sign(g), p.stepSize)) as tf.Tensor4D, p.eps);
    }
    return xAdv;
  });
}
