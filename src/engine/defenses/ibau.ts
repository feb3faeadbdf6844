/**
 * `ibau`: implicit Backdoor Adversarial Unlearning (Zeng et al., 2022), structured as BackdoorBench's
 * defense/i-bau.py. Rounds of a min-max game:
 *   - inner maximization: one universal perturbation delta (starting at zero each round), one SGD ascent step
 *     (lr 10) per auxiliary batch on CE(f(x + delta), f's own prediction on x) - 0.001 ||delta||^2, delta
 *     kept within an L2 ball of radius `maxNorm` (10); as in BackdoorBench, x + delta is not clipped to the
 *     pixel range. BackdoorBench works on normalized inputs, our models take pixels: with the model's
 *     normalization std s, a pixel-space delta is s times the normalized one and its gradient 1/s times, so
 *     the step becomes innerLr * s^2, the radius maxNorm * s and the penalty weight penalty / s^2 (its
 *     ||delta||^2 is 1/s^2 times larger in normalized space; for MNIST: about 0.95, 3.1 and 0.0105);
 *   - outer minimization: per batch, a random `portion` of the images carries delta and the model is trained
 *     to classify the batch correctly (Adam, BatchNorm statistics frozen).
 *
 * The original computes the outer update with the implicit hypergradient through K fixed-point iterations,
 * which needs second-order gradients. TensorFlow.js cannot differentiate through its own gradient kernels,
 * so this implementation uses the first-order approximation (the hypergradient's direct term: the gradient
 * of the unlearning loss at the inner optimum), and every results row says so in `details.hypergradient`.
 * With only the direct term, the perturbed images are the whole unlearning signal, so half of each batch
 * carries delta (BackdoorBench perturbs 1% and leaves the rest to the implicit term); the other half keeps
 * the clean accuracy.
 */
import * as tf from '@tensorflow/tfjs-core';
import { Adam } from '../nn/optim';
import { crossEntropy, makeBatch } from '../nn/train';
import { Pacer, trainEpochs } from './common';
import { inputGradient } from './adversarial';
import type { Defense, DefenseContext, DefenseOutcome, Profile } from './defense';

export const ibau: Defense = {
  id: 'ibau',
  title: 'Implicit backdoor adversarial unlearning',
  defaults(profile: Profile) {
    return {
      rounds: 5,
      innerLr: 10,
      penalty: 0.001,
      maxNorm: 10,
      portion: 0.5,
      lr: profile === 'paper' ? 1e-4 : 1e-3,
      epochsPerRound: 1,
      batchSize: profile === 'paper' ? 128 : 32,
    };
  },
  async run(ctx: DefenseContext): Promise<DefenseOutcome> {
    const p = ctx.params as Record<string, number>;
    const model = ctx.victim.clone();
    const opt = new Adam(p.lr);
    const [h, w, c] = ctx.aux.shape;
    // Pixel-space equivalents of the normalized-space step and radius (see above).
    const std = ctx.victim.normalize?.std ?? [1];
    const s = std.reduce((a, b) => a + b, 0) / std.length;
    const innerLr = p.innerLr * s * s;
    const maxNorm = p.maxNorm * s;
    // ||delta_normalized||^2 = ||delta_pixel||^2 / s^2, so the same penalty in pixel space weighs 1/s^2 more.
    const penalty = p.penalty / (s * s);
    const delta = tf.tidy(() => tf.variable(tf.zeros([1, h, w, c]), false));
    const norms: number[] = [];
    const pacer = new Pacer(ctx);
    try {
      for (let r = 0; r < p.rounds; r++) {
        // Inner maximization: a universal perturbation, one ascent step per batch of the auxiliary set.
        tf.tidy(() => delta.assign(tf.zeros([1, h, w, c])));
        const order = ctx.rng.permutation(ctx.aux.n);
        const batches = Math.ceil(ctx.aux.n / p.batchSize);
        for (let b = 0; b < batches; b++) {
          await pacer.tick(r, p.rounds, `round ${r + 1}/${p.rounds}: perturbation, batch ${b + 1}/${batches}`);
          const idx = order.subarray(b * p.batchSize, Math.min(ctx.aux.n, (b + 1) * p.batchSize));
          const x = makeBatch(ctx.aux, idx, undefined, undefined);
          tf.tidy(() => {
            // The model's own labels, as BackdoorBench: the perturbation moves images off what f predicts.
            const own = tf.argMax(model.forward(x, { training: false }), 1) as tf.Tensor1D;
            const g = inputGradient(delta as unknown as tf.Tensor4D, (d) => {
              // No clipping to [0,1] (as BackdoorBench): a clip passes no gradient at 0, which would freeze
              // delta on every black background pixel, where patch triggers live.
              const xp = tf.add(x, d) as tf.Tensor4D;
              return tf.sub(crossEntropy(model.forward(xp, { training: false }), own), tf.mul(tf.sum(tf.square(d)), penalty)) as tf.Scalar;
            });
            let next = tf.add(delta, tf.mul(g, innerLr));
            const norm = tf.norm(next).dataSync()[0];
            if (norm > maxNorm) next = tf.mul(next, maxNorm / norm);
            delta.assign(next);
          });
          x.dispose();
        }
        norms.push(Math.round(tf.tidy(() => tf.norm(delta).dataSync()[0]) * 1000) / 1000);
        // Outer minimization: classify the batch, a portion of it carrying delta, correctly.
        await trainEpochs(ctx, model, opt, {
          epochs: p.epochsPerRound,
          lr: p.lr,
          schedule: 'constant',
          batchSize: p.batchSize,
          bnTrain: false,
          progressBase: r,
          progressTotal: p.rounds,
          label: 'round',
          prepare: (s) => {
            const n = s.x.shape[0];
            const k = Math.max(1, Math.round(n * p.portion));
            const picked = new Float32Array(n);
            for (const i of ctx.rng.permutation(n).subarray(0, k)) picked[i] = 1;
            return tf.tensor4d(picked, [n, 1, 1, 1]);
          },
          loss: (s) => {
            const xp = tf.add(s.x, tf.mul(s.prepared!, delta)) as tf.Tensor4D;
            return crossEntropy(model.forward(xp, s.ctx), s.y);
          },
        });
      }
    } catch (e) {
      model.dispose();
      throw e;
    } finally {
      opt.dispose();
      delta.dispose();
    }
    return {
      model,
      details: { rounds: p.rounds, portion: p.portion, perturbationL2: norms, hypergradient: 'first-order approximation (no second-order gradients on this backend)' },
    };
  },
};
