/**
 * BatchNorm in training mode as one differentiable op with a hand-written gradient. Autodiff through
 * tf.moments broadcasts its reduction gradients with Tile, which led the training profile on wasm; the closed
 * form below needs only per-channel sums and broadcasting multiplies:
 *   xhat = (x - mean) * invStd,  y = gamma * xhat + beta
 *   dbeta = sum(dy),  dgamma = sum(dy * xhat)
 *   dx = gamma * invStd / N * (N * dy - dbeta - xhat * dgamma)
 * The batch mean and (biased) variance are returned too, detached, for the running-statistic update.
 */
import * as tf from '@tensorflow/tfjs-core';
import { BN_TRAIN, BN_TRAIN_GRAD } from '../backend/kernels/batch_norm_train';

export interface BatchNormTrainOutput {
  y: tf.Tensor4D;
  /** Detached batch statistics; owned by the caller (dispose them). */
  mean: tf.Tensor1D;
  variance: tf.Tensor1D;
}

export function batchNormTrain(x: tf.Tensor4D, gamma: tf.Tensor1D, beta: tf.Tensor1D, eps: number): BatchNormTrainOutput {
  // On wasm the whole op and its gradient are one kernel each (backend/kernels/batch_norm_train.ts).
  if (tf.getBackend() === 'wasm' && tf.getKernel(BN_TRAIN, 'wasm')) return batchNormTrainFused(x, gamma, beta, eps);
  let mean!: tf.Tensor1D;
  let variance!: tf.Tensor1D;
  const op = tf.customGrad(((xi: tf.Tensor, g: tf.Tensor, b: tf.Tensor, save: tf.GradSaveFunc) => {
    const m = tf.moments(xi, [0, 1, 2]);
    mean = tf.keep(m.mean.clone()) as tf.Tensor1D;
    variance = tf.keep(m.variance.clone()) as tf.Tensor1D;
    const invStd = tf.rsqrt(tf.add(m.variance, eps));
    const xhat = tf.mul(tf.sub(xi, m.mean), invStd);
    save([xhat, invStd, g]);
    return {
      value: tf.add(tf.mul(xhat, g), b),
      gradFunc: (dy: tf.Tensor, saved: tf.Tensor[]) => {
        const [xh, inv, gm] = saved;
        const count = xh.size / xh.shape[3]!;
        const dbeta = tf.sum(dy, [0, 1, 2]);
        const dgamma = tf.sum(tf.mul(dy, xh), [0, 1, 2]);
        const scale = tf.div(tf.mul(gm, inv), count);
        const dx = tf.mul(tf.sub(tf.sub(tf.mul(dy, count), dbeta), tf.mul(xh, dgamma)), scale);
        return [dx, dgamma, dbeta];
      },
    };
  }) as unknown as Parameters<typeof tf.customGrad>[0]);
  const y = op(x, gamma, beta) as tf.Tensor4D;
  return { y, mean, variance };
}

function batchNormTrainFused(x: tf.Tensor4D, gamma: tf.Tensor1D, beta: tf.Tensor1D, eps: number): BatchNormTrainOutput {
  let mean!: tf.Tensor1D;
  let variance!: tf.Tensor1D;
  const op = tf.customGrad(((xi: tf.Tensor, g: tf.Tensor, b: tf.Tensor, save: tf.GradSaveFunc) => {
    const [y, m, v, invStd] = tf.engine().runKernel(BN_TRAIN, { x: xi, gamma: g, beta: b }, { eps } as never) as tf.Tensor[];
    mean = tf.keep(m.clone()) as tf.Tensor1D;
    variance = v as tf.Tensor1D;
    tf.keep(variance);
    save([xi, m, invStd, g]);
    return {
      value: y,
      gradFunc: (dy: tf.Tensor, saved: tf.Tensor[]) => {
        const [xs, mu, inv, gm] = saved;
        const [dx, dgamma, dbeta] = tf.engine().runKernel(BN_TRAIN_GRAD, { dy, x: xs, mean: mu, invStd: inv, gamma: gm }) as tf.Tensor[];
        return [dx, dgamma, dbeta];
      },
    };
  }) as unknown as Parameters<typeof tf.customGrad>[0]);
  const y = op(x, gamma, beta) as tf.Tensor4D;
  return { y, mean, variance };
}
