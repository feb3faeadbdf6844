/**
 * The `synthetic` auxiliary set, for users with no clean data: images synthesized from the victim itself by
 * model inversion (in the spirit of DeepInversion): start from seeded noise, optimize the pixels for the
 * victim's confidence on a chosen class while matching the BatchNorm input statistics to the running
 * statistics recorded on the victim's training data, with a small total-variation prior for smoothness.
 * Pixels are parametrized through a sigmoid so they stay in [0, 1].
 */
import * as tf from '@tensorflow/tfjs-core';
import type { ImageSet } from '../data/dataset';
import type { Model } from '../nn/model';
import type { ForwardContext } from '../nn/module';
import { Adam } from '../nn/optim';
import { crossEntropy, trainStep } from '../nn/train';
import { takeFloats } from '../nn/read';
import type { Rng } from '../util/rng';
import { throwIfAborted } from '../errors';

export interface SyntheticOptions {
  perClass: number;
  steps: number;
  lr: number;
  lambdaBn: number;
  lambdaTv: number;
  batchSize: number;
}

export const SYNTHETIC_DEFAULTS: SyntheticOptions = { perClass: 30, steps: 200, lr: 0.1, lambdaBn: 1, lambdaTv: 0.05, batchSize: 100 };

function totalVariation(x: tf.Tensor4D): tf.Scalar {
  return tf.tidy(() => {
    const [, h, w] = x.shape;
    const dy = tf.sub(tf.slice(x, [0, 1, 0, 0], [-1, h - 1, -1, -1]), tf.slice(x, [0, 0, 0, 0], [-1, h - 1, -1, -1]));
    const dx = tf.sub(tf.slice(x, [0, 0, 1, 0], [-1, -1, w - 1, -1]), tf.slice(x, [0, 0, 0, 0], [-1, -1, w - 1, -1]));
    return tf.add(tf.mean(tf.abs(dy)), tf.mean(tf.abs(dx))) as tf.Scalar;
  });
}

export async function synthesizeAuxSet(
  victim: Model,
  opts: Partial<SyntheticOptions>,
  rng: Rng,
  signal?: AbortSignal,
  progress?: (done: number, total: number, message?: string) => void,
): Promise<ImageSet> {
  const o = { ...SYNTHETIC_DEFAULTS, ...opts };
  const [h, w, c] = victim.inputShape;
  const k = victim.numClasses;
  const n = o.perClass * k;
  const size = h * w * c;
  const labels = Int32Array.from({ length: n }, (_, i) => i % k);
  const out = new Float32Array(n * size);
  const hasBn = victim.batchNorms().length > 0;
  const chunks = Math.ceil(n / o.batchSize);
  for (let ci = 0; ci < chunks; ci++) {
    const start = ci * o.batchSize;
    const m = Math.min(o.batchSize, n - start);
    const init = new Float32Array(m * size);
    for (let i = 0; i < init.length; i++) init[i] = rng.normal() * 0.5;
    const z = tf.tidy(() => tf.variable(tf.tensor4d(init, [m, h, w, c])));
    const y = tf.tensor1d(labels.subarray(start, start + m), 'int32');
    const opt = new Adam(o.lr);
    try {
      for (let s = 0; s < o.steps; s++) {
        throwIfAborted(signal);
        await trainStep(
          [z],
          opt,
          () => {
            const x = tf.sigmoid(z) as tf.Tensor4D;
            const ctx: ForwardContext = { training: false, bnInputStats: hasBn ? new Map() : undefined };
            let loss: tf.Tensor = crossEntropy(victim.forward(x, ctx), y);
            if (ctx.bnInputStats) {
              for (const bn of victim.batchNorms()) {
                const st = ctx.bnInputStats.get(bn.path);
                if (!st) continue;
                const d = tf.add(tf.sum(tf.squaredDifference(st.mean, bn.runningMean)), tf.sum(tf.squaredDifference(st.variance, bn.runningVar)));
                loss = tf.add(loss, tf.mul(d, o.lambdaBn));
              }
            }
            return tf.add(loss, tf.mul(totalVariation(x), o.lambdaTv)) as tf.Scalar;
          },
          false,
        );
        if (s % 10 === 9) {
          progress?.(ci * o.steps + s + 1, chunks * o.steps, 'synthesizing auxiliary images');
          await new Promise((r) => setImmediate(r));
        }
      }
      out.set(await takeFloats(tf.tidy(() => tf.sigmoid(z))), start * size);
    } finally {
      z.dispose();
      y.dispose();
      opt.dispose();
    }
  }
  return { n, shape: [h, w, c], x: out, y: labels, numClasses: k };
}
