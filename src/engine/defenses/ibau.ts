/**
 * `ibau`: implicit Backdoor Adversarial Unlearning (Zeng et al., 2022). Rounds of a min-max game: find a
 * universal perturbation delta that maximizes CE over the auxiliary set (gradient ascent with lr 10 and an
 * L2 penalty 0.001 ||delta||^2, delta kept within an L2 ball), then update the model to classify the perturbed
 * auxiliary data correctly (Adam lr 1e-4, BatchNorm statistics frozen).
 *
 * The original computes the outer update with the implicit hypergradient through K fixed-point iterations,
 * which needs second-order gradients. TensorFlow.js cannot differentiate through its own gradient kernels,
 * so this implementation uses the first-order approximation (the hypergradient's direct term: the gradient
 * of the unlearning loss at the inner optimum), and every results row says so in `details.hypergradient`.
 */
import * as tf from '@tensorflow/tfjs-core';
import { Adam } from '../nn/optim';
import { crossEntropy, makeBatch } from '../nn/train';
import { throwIfAborted } from '../errors';
import { trainEpochs } from './common';
import { inputGradient } from './adversarial';
import type { Defense, DefenseContext, DefenseOutcome, Profile } from './defense';
import { yieldToLoop } from './defense';

export const ibau: Defense = {
  id: 'ibau',
  title: 'Implicit backdoor adversarial unlearning',
  defaults(profile: Profile) {
    return {
      rounds: 5,
      innerSteps: profile === 'paper' ? 5 : 5,
      innerLr: 10,
      penalty: 0.001,
      maxNorm: 10,
      lr: profile === 'paper' ? 1e-4 : 1e-3,
      epochsPerRound: 1,
      batchSize: 64,
    };
  },
  async run(ctx: DefenseContext): Promise<DefenseOutcome> {
    const p = ctx.params as Record<string, number>;
    const model = ctx.victim.clone();
    const opt = new Adam(p.lr);
    const [h, w, c] = ctx.aux.shape;
    const delta = tf.tidy(() => tf.variable(tf.zeros([1, h, w, c]), false));
    try {
      for (let r = 0; r < p.rounds; r++) {
        // Inner maximization: a universal perturbation over batches of the auxiliary set.
        tf.tidy(() => delta.assign(tf.zeros([1, h, w, c])));
        const order = ctx.rng.permutation(ctx.aux.n);
        const batches = Math.ceil(ctx.aux.n / p.batchSize);
        for (let b = 0; b < batches; b++) {
          throwIfAborted(ctx.signal);
          const idx = order.subarray(b * p.batchSize, Math.min(ctx.aux.n, (b + 1) * p.batchSize));
          const x = makeBatch(ctx.aux, idx, undefined, undefined);
          const y = tf.tensor1d(Int32Array.from(idx, (i) => ctx.aux.y[i]), 'int32');
          for (let s = 0; s < p.innerSteps; s++) {
            tf.tidy(() => {
              const g = inputGradient(delta as unknown as tf.Tensor4D, (d) => {
                const xp = tf.clipByValue(tf.add(x, d), 0, 1) as tf.Tensor4D;
                return tf.sub(crossEntropy(model.forward(xp, { training: false }), y), tf.mul(tf.sum(tf.square(d)), p.penalty)) as tf.Scalar;
              });
              let next = tf.add(delta, tf.mul(g, p.innerLr));
              const norm = tf.norm(next).dataSync()[0];
              if (norm > p.maxNorm) next = tf.mul(next, p.maxNorm / norm);
              delta.assign(next);
            });
          }
          x.dispose();
          y.dispose();
        }
        // Outer minimization: classify the perturbed auxiliary data correctly.
        await trainEpochs(ctx, model, opt, {
          epochs: p.epochsPerRound,
          lr: p.lr,
          schedule: 'constant',
          batchSize: p.batchSize,
          bnTrain: false,
          progressBase: r,
          progressTotal: p.rounds,
          label: 'round',
          loss: (s) => crossEntropy(model.forward(tf.clipByValue(tf.add(s.x, delta), 0, 1) as tf.Tensor4D, s.ctx), s.y),
        });
        await yieldToLoop();
      }
    } catch (e) {
      model.dispose();
      throw e;
    } finally {
      opt.dispose();
      delta.dispose();
    }
    return { model, details: { rounds: p.rounds, hypergradient: 'first-order approximation (no second-order gradients on this backend)' } };
  },
};
