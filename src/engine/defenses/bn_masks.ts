/**
 * Learnable per-channel BatchNorm masks (and ANP's multiplicative noise), attached to a model through the
 * forward hook `bnAffineHook`, so that ANP and RNP work on any architecture of the module graph that has
 * BatchNorm layers. Pruning sets gamma to zero for the chosen channels.
 */
import * as tf from '@tensorflow/tfjs-core';
import type { Model } from '../nn/model';
import type { BatchNorm2d } from '../nn/layers';
import type { ForwardContext } from '../nn/module';
import { readAllFloats } from '../nn/read';
import { JobError } from '../errors';
import type { Rng } from '../util/rng';

export interface BnMaskSet {
  layers: BatchNorm2d[];
  masks: tf.Variable[];
  noise: tf.Variable[];
  noiseBias: tf.Variable[];
  dispose(): void;
}

export function requireBatchNorm(model: Model, defense: string): BatchNorm2d[] {
  const bns = model.batchNorms();
  if (bns.length === 0) {
    throw new JobError(`${defense} needs BatchNorm layers, and this model has none (an ONNX export in eval mode folds them into the convolutions)`);
  }
  return bns;
}

export function createBnMasks(model: Model, defense: string, withNoise: boolean): BnMaskSet {
  const layers = requireBatchNorm(model, defense);
  const masks = tf.tidy(() => layers.map((bn) => tf.variable(tf.ones([bn.numFeatures]), true)));
  const noise = withNoise ? tf.tidy(() => layers.map((bn) => tf.variable(tf.zeros([bn.numFeatures]), true))) : [];
  const noiseBias = withNoise ? tf.tidy(() => layers.map((bn) => tf.variable(tf.zeros([bn.numFeatures]), true))) : [];
  return {
    layers,
    masks,
    noise,
    noiseBias,
    dispose() {
      tf.dispose([...masks, ...noise, ...noiseBias]);
    },
  };
}

/**
 * A forward hook applying the masks: gamma * (m + noise) and beta * (1 + noiseBias) when `perturb`
 * (ANP), otherwise gamma * m and, if `maskBeta`, beta * m (RNP's masked BatchNorm).
 */
export function maskHook(set: BnMaskSet, perturb: boolean, maskBeta: boolean): NonNullable<ForwardContext['bnAffineHook']> {
  const index = new Map(set.layers.map((l, i) => [l as unknown, i]));
  return (bn, gamma, beta) => {
    const i = index.get(bn)!;
    const m = set.masks[i] as tf.Tensor1D;
    if (perturb) return [tf.mul(gamma, tf.add(m, set.noise[i])), tf.mul(beta, tf.add(1, set.noiseBias[i]))];
    return [tf.mul(gamma, m), maskBeta ? tf.mul(beta, m) : beta];
  };
}

/** Fill the noise variables with uniform values in [-eps, eps]. */
export function resetNoise(set: BnMaskSet, eps: number, rng: Rng): void {
  tf.tidy(() => {
    for (const v of [...set.noise, ...set.noiseBias]) {
      v.assign(tf.tensor1d(Float32Array.from({ length: v.size }, () => rng.uniform(-eps, eps))));
    }
  });
}

export function clipVariables(vars: tf.Variable[], lo: number, hi: number): void {
  tf.tidy(() => vars.forEach((v) => v.assign(tf.clipByValue(v, lo, hi))));
}

/** Mask values per layer as plain arrays. */
export function readMasks(set: BnMaskSet): Promise<Float32Array[]> {
  return readAllFloats(set.masks);
}

/** Zero gamma of every channel whose mask value is <= threshold; returns how many were pruned. */
export function pruneByThreshold(model: Model, masks: Float32Array[], threshold: number): number {
  const bns = model.batchNorms();
  let pruned = 0;
  tf.tidy(() => {
    bns.forEach((bn, i) => {
      const keep = Float32Array.from(masks[i], (v) => (v <= threshold ? 0 : 1));
      pruned += keep.reduce((a, k) => a + (k === 0 ? 1 : 0), 0);
      bn.weight.assign(tf.mul(bn.weight, tf.tensor1d(keep)));
    });
  });
  return pruned;
}
