/**
 * Helpers for the adversarial defenses (SAU, i-BAU, NPD): projected gradient steps in pixel space, where our
 * models take their inputs ([0,1] pixels; normalization happens inside the model).
 */
import * as tf from '@tensorflow/tfjs-core';
import { takeAllFloats } from '../nn/read';
import type { GraphRun, OrtModelGraph } from '../nn/ort_graph';

/**
 * Project x + delta onto the L_inf ball of radius eps around x, and not onto [0,1]: BackdoorBench's SAU adds its
 * perturbation to the denormalized image without clipping (its Shared_PGD leaves the clip to the valid range
 * commented out, "not necessary for backdoor defense as done in i-BAU"), so a black pixel may go to -eps.
 */
export function projectLinf(x: tf.Tensor4D, xAdv: tf.Tensor4D, eps: number): tf.Tensor4D {
  return tf.tidy(() => tf.add(x, tf.clipByValue(tf.sub(xAdv, x), -eps, eps)) as tf.Tensor4D);
}

/** Gradient of a scalar objective with respect to the input batch. */
export function inputGradient(x: tf.Tensor4D, objective: (x: tf.Tensor4D) => tf.Scalar): tf.Tensor4D {
  return tf.tidy(() => tf.grad((xi: tf.Tensor) => objective(xi as tf.Tensor4D))(x) as tf.Tensor4D);
}

/** projectLinf on flat arrays: x + clip(xAdv - x, -eps, eps), not clipped to [0, 1]. */
export function projectLinfArray(x: Float32Array, xAdv: Float32Array, eps: number): Float32Array {
  const out = new Float32Array(x.length);
  for (let i = 0; i < x.length; i++) out[i] = x[i] + Math.min(eps, Math.max(-eps, xAdv[i] - x[i]));
  return out;
}

/** The gradients of `loss` with respect to each of `logits`, computed on the backend (a few numbers per image). */
export async function logitGradients(logits: Array<{ data: Float32Array; n: number; k: number }>, loss: (ls: tf.Tensor2D[]) => tf.Scalar): Promise<{ value: number; grads: Float32Array[] }> {
  const [value, ...grads] = await takeAllFloats(
    tf.tidy(() => {
      const inputs = logits.map((l) => tf.tensor2d(l.data, [l.n, l.k]));
      const { value, grads } = tf.valueAndGrads((...ls: tf.Tensor[]) => loss(ls as tf.Tensor2D[]))(inputs);
      return [value, ...grads];
    }),
  );
  return { value: value[0], grads };
}

/**
 * The gradients of a loss of the logits of a clean batch `x` and of its adversarial examples `xAdv` (n images
 * each) from a split seeded graph, run as one batch of 2n (BatchNorm is frozen, so the images do not interact):
 * the forward part, the loss and its seed here, the backward part. SAU's unlearning step and NPD's.
 */
export async function pairedBatchGradients(
  graph: OrtModelGraph,
  x: Float32Array,
  xAdv: Float32Array,
  n: number,
  k: number,
  loss: (clean: tf.Tensor2D, adv: tf.Tensor2D) => tf.Scalar,
): Promise<{ value: number; run: GraphRun }> {
  const both = new Float32Array(2 * x.length);
  both.set(x, 0);
  both.set(xAdv, x.length);
  const pass = await graph.forward(both, 2 * n);
  let value: number;
  let grads: Float32Array[];
  try {
    ({ value, grads } = await logitGradients([{ data: pass.logits!, n: 2 * n, k }], ([l]) => loss(tf.slice(l, [0, 0], [n, k]), tf.slice(l, [n, 0], [n, k]))));
  } catch (e) {
    graph.discard(pass);
    throw e;
  }
  return { value, run: await graph.backward(pass, { dlogits: grads[0] }) };
}
