/**
 * Helpers for the adversarial defenses (SAU, i-BAU, NPD): projected gradient steps in pixel space, where our
 * models take their inputs ([0,1] pixels; normalization happens inside the model).
 */
import * as tf from '@tensorflow/tfjs-core';

/** Project x + delta onto the L_inf ball of radius eps around x and onto [0,1]. */
export function projectLinf(x: tf.Tensor4D, xAdv: tf.Tensor4D, eps: number): tf.Tensor4D {
  return tf.tidy(() => tf.clipByValue(tf.add(x, tf.clipByValue(tf.sub(xAdv, x), -eps, eps)), 0, 1) as tf.Tensor4D);
}

/** Project per image onto the L2 ball of radius eps around x and onto [0,1]. */
export function projectL2(x: tf.Tensor4D, xAdv: tf.Tensor4D, eps: number): tf.Tensor4D {
  return tf.tidy(() => {
    const d = tf.sub(xAdv, x);
    const norms = tf.sqrt(tf.add(tf.sum(tf.square(d), [1, 2, 3], true), 1e-12));
    return tf.clipByValue(tf.add(x, tf.mul(d, tf.minimum(1, tf.div(eps, norms)))), 0, 1) as tf.Tensor4D;
  });
}

/** Gradient of a scalar objective with respect to the input batch. */
export function inputGradient(x: tf.Tensor4D, objective: (x: tf.Tensor4D) => tf.Scalar): tf.Tensor4D {
  return tf.tidy(() => tf.grad((xi: tf.Tensor) => objective(xi as tf.Tensor4D))(x) as tf.Tensor4D);
}
