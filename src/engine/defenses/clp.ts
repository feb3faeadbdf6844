/**
 * `clp`: Channel Lipschitzness-based Pruning (data-free). For every BatchNorm following a convolution, the
 * upper bound of each output channel's Lipschitz constant is UCLC_k = sigma_max(W_k) * |gamma_k / std_k|,
 * with W_k the channel's kernel as an [in, kh*kw] matrix. Channels whose UCLC exceeds mean + u * std within the
 * layer are pruned by zeroing gamma and beta. Conv/BN pairs are taken in module definition order, as
 * BackdoorBench's implementation does.
 */
import * as tf from '@tensorflow/tfjs-core';
import { BatchNorm2d, Conv2d } from '../nn/layers';
import { JobError } from '../errors';
import type { Defense, DefenseContext, DefenseOutcome, Profile } from './defense';

/** Largest singular value of a rows x cols matrix (row-major) by power iteration on A^T A. */
export function largestSingularValue(a: Float32Array | number[], rows: number, cols: number, iterations = 100): number {
  let v = new Float64Array(cols).fill(1 / Math.sqrt(cols));
  const av = new Float64Array(rows);
  let sigma = 0;
  for (let it = 0; it < iterations; it++) {
    for (let i = 0; i < rows; i++) {
      let s = 0;
      for (let j = 0; j < cols; j++) s += a[i * cols + j] * v[j];
      av[i] = s;
    }
    const next = new Float64Array(cols);
    for (let i = 0; i < rows; i++) for (let j = 0; j < cols; j++) next[j] += a[i * cols + j] * av[i];
    const norm = Math.hypot(...next);
    sigma = Math.hypot(...av);
    if (norm === 0) return 0;
    for (let j = 0; j < cols; j++) next[j] /= norm;
    v = next;
  }
  return sigma;
}

/** UCLC of every output channel of `conv` scaled by the following BatchNorm. */
export function channelLipschitz(conv: Conv2d, bn: BatchNorm2d): number[] {
  // Weight is HWIO; gather channel k as an [in, kh*kw] matrix like PyTorch's weight[k].reshape(in, -1).
  const [kh, kw, cin, cout] = conv.weight.shape;
  const w = conv.weight.dataSync() as Float32Array;
  const gamma = bn.weight.dataSync();
  const rv = bn.runningVar.dataSync();
  const out: number[] = [];
  for (let k = 0; k < cout; k++) {
    const m = new Float32Array(cin * kh * kw);
    for (let i = 0; i < cin; i++) for (let y = 0; y < kh; y++) for (let x = 0; x < kw; x++) m[i * kh * kw + y * kw + x] = w[((y * kw + x) * cin + i) * cout + k];
    const scale = Math.abs(gamma[k] / Math.sqrt(rv[k]));
    out.push(largestSingularValue(m, cin, kh * kw) * scale);
  }
  return out;
}

export const clp: Defense = {
  id: 'clp',
  title: 'Channel Lipschitzness Pruning',
  defaults(_profile: Profile) {
    return { u: 3 };
  },
  async run(ctx: DefenseContext): Promise<DefenseOutcome> {
    const u = Number(ctx.params.u);
    const model = ctx.victim.clone();
    const mods = [...model.root.modules()];
    if (!mods.some((m) => m instanceof BatchNorm2d)) {
      model.dispose();
      throw new JobError('clp needs BatchNorm layers, and this model has none (an ONNX export in eval mode folds them into the convolutions)');
    }
    let conv: Conv2d | undefined;
    const pruned: Record<string, number[]> = {};
    let total = 0;
    const pairs = mods.filter((m) => m instanceof BatchNorm2d).length;
    let done = 0;
    for (const m of mods) {
      if (m instanceof Conv2d) conv = m;
      else if (m instanceof BatchNorm2d && conv && conv.outChannels === m.numFeatures) {
        const lips = channelLipschitz(conv, m);
        const mean = lips.reduce((a, b) => a + b, 0) / lips.length;
        // torch.std is the unbiased estimate.
        const std = Math.sqrt(lips.reduce((a, b) => a + (b - mean) ** 2, 0) / Math.max(1, lips.length - 1));
        const idx = lips.map((l, i) => (l > mean + u * std ? i : -1)).filter((i) => i >= 0);
        if (idx.length) {
          const keep = new Float32Array(m.numFeatures).fill(1);
          for (const i of idx) keep[i] = 0;
          tf.tidy(() => {
            const k = tf.tensor1d(keep);
            m.weight.assign(tf.mul(m.weight, k));
            m.bias.assign(tf.mul(m.bias, k));
          });
          pruned[m.path] = idx;
          total += idx.length;
        }
        ctx.progress(++done, pairs);
      }
    }
    return { model, details: { u, prunedChannels: total, pruned } };
  },
};
