/**
 * `clp`: Channel Lipschitzness-based Pruning (data-free). For every BatchNorm following a convolution, the
 * upper bound of each output channel's Lipschitz constant is UCLC_k = sigma_max(W_k) * |gamma_k / std_k|,
 * with W_k the channel's kernel as an [in, kh*kw] matrix. Channels whose UCLC exceeds mean + u * std within the
 * layer are pruned by zeroing gamma and beta. Conv/BN pairs are taken in module definition order, as
 * BackdoorBench's implementation does.
 *
 * u = 3 (the paper's value, `paper` profile) is tuned for wide networks: with 8 to 32 channels per layer
 * a backdoor channel raises the layer's std so much that nothing exceeds mean + 3 std. With u = "auto"
 * (`fast` profile) u is chosen on the auxiliary set instead of the test set: from `uMax` down by `uStep` to
 * `uMin`, the smallest u whose pruned model keeps the auxiliary accuracy within `accRatio` (0.9: the 10%
 * relative drop BackdoorBench's selections and FP allow) of the victim's,
 * stopping at the first u that does not
 * (CLP trains nothing, so the whole auxiliary set serves as validation). Without auxiliary data, "auto" falls
 * back to u = 3.
 */
import * as tf from '@tensorflow/tfjs-core';
import { BatchNorm2d, Conv2d } from '../nn/layers';
import { JobError, throwIfAborted } from '../errors';
import type { Model } from '../nn/model';
import { readAllFloats } from '../nn/read';
import { AuxPredictor } from './aux_predictor';
import { yieldToLoop } from './defense';
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
export async function channelLipschitz(conv: Conv2d, bn: BatchNorm2d): Promise<number[]> {
  // Weight is HWIO; gather channel k as an [in, kh*kw] matrix like PyTorch's weight[k].reshape(in, -1).
  const [kh, kw, cin, cout] = conv.weight.shape;
  const [w, gamma, rv] = await readAllFloats([conv.weight, bn.weight, bn.runningVar]);
  const out: number[] = [];
  for (let k = 0; k < cout; k++) {
    const m = new Float32Array(cin * kh * kw);
    for (let i = 0; i < cin; i++) for (let y = 0; y < kh; y++) for (let x = 0; x < kw; x++) m[i * kh * kw + y * kw + x] = w[((y * kw + x) * cin + i) * cout + k];
    const scale = Math.abs(gamma[k] / Math.sqrt(rv[k]));
    out.push(largestSingularValue(m, cin, kh * kw) * scale);
  }
  return out;
}

interface LayerBounds {
  bn: BatchNorm2d;
  lips: number[];
  mean: number;
  std: number;
}

/** UCLC statistics of every conv/BN pair, in module definition order. */
async function layerBounds(model: Model): Promise<LayerBounds[]> {
  const out: LayerBounds[] = [];
  let conv: Conv2d | undefined;
  for (const m of model.root.modules()) {
    if (m instanceof Conv2d) conv = m;
    else if (m instanceof BatchNorm2d && conv && conv.outChannels === m.numFeatures) {
      const lips = await channelLipschitz(conv, m);
      const mean = lips.reduce((a, b) => a + b, 0) / lips.length;
      // torch.std is the unbiased estimate.
      const std = Math.sqrt(lips.reduce((a, b) => a + (b - mean) ** 2, 0) / Math.max(1, lips.length - 1));
      out.push({ bn: m, lips, mean, std });
    }
  }
  return out;
}

/** Channels over mean + u * std per BatchNorm path. */
function selectChannels(bounds: LayerBounds[], u: number): Map<string, number[]> {
  const out = new Map<string, number[]>();
  for (const b of bounds) {
    const idx = b.lips.map((l, i) => (l > b.mean + u * b.std ? i : -1)).filter((i) => i >= 0);
    if (idx.length) out.set(b.bn.path, idx);
  }
  return out;
}

/** Zero gamma and beta of the selected channels of `model` (BatchNorms found by path). */
function pruneChannels(model: Model, chosen: Map<string, number[]>): void {
  tf.tidy(() => {
    for (const [path, idx] of chosen) {
      const bn = model.root.find(path) as BatchNorm2d;
      const keep = new Float32Array(bn.numFeatures).fill(1);
      for (const i of idx) keep[i] = 0;
      const k = tf.tensor1d(keep);
      bn.weight.assign(tf.mul(bn.weight, k));
      bn.bias.assign(tf.mul(bn.bias, k));
    }
  });
}

const count = (chosen: Map<string, number[]>) => [...chosen.values()].reduce((a, v) => a + v.length, 0);

export const clp: Defense = {
  id: 'clp',
  title: 'Channel Lipschitzness Pruning',
  cost: 0.25,
  ownLoop: 'it trains nothing: channel Lipschitz bounds are read from the weights',
  choices: { u: ['auto'] },
  defaults(profile: Profile) {
    return profile === 'paper' ? { u: 3, uMax: 3, uMin: 0, uStep: 0.25, accRatio: 0.9 } : { u: 'auto', uMax: 3, uMin: 0, uStep: 0.25, accRatio: 0.9 };
  },
  async run(ctx: DefenseContext): Promise<DefenseOutcome> {
    const p = ctx.params as Record<string, number>;
    const auto = ctx.params.u === 'auto';
    if (!auto && !Number.isFinite(Number(ctx.params.u))) throw new JobError(`clp: u must be a number or "auto" (got ${JSON.stringify(ctx.params.u)})`);
    if (!ctx.victim.batchNorms().length) {
      throw new JobError('clp needs BatchNorm layers, and this model has none (an ONNX export in eval mode folds them into the convolutions)');
    }
    const bounds = await layerBounds(ctx.victim);
    let u = auto ? 3 : Number(ctx.params.u);
    const details: Record<string, unknown> = {};
    if (auto && ctx.aux && ctx.aux.n > 0) {
      const predictor = await AuxPredictor.open(ctx, ctx.victim);
      try {
        const base = await predictor.accuracy(ctx.aux);
        const steps = Math.round((p.uMax - p.uMin) / p.uStep);
        u = p.uMax;
        let accAtU = base;
        let last = -1;
        for (let k = 0; k <= steps; k++) {
          throwIfAborted(ctx.signal);
          const cand = Math.round((p.uMax - k * p.uStep) * 1000) / 1000;
          const chosen = selectChannels(bounds, cand);
          const n = count(chosen);
          // A smaller u that selects the same channels changes nothing: report the largest u of the final set.
          if (n !== last) {
            const trial = ctx.victim.clone();
            pruneChannels(trial, chosen);
            const acc = await predictor.accuracy(ctx.aux, trial).finally(() => trial.dispose());
            if (acc < p.accRatio * base) break;
            accAtU = acc;
            last = n;
            u = cand;
          }
          ctx.progress(k + 1, steps + 1, `u ${cand}: ${n} channels`);
          await yieldToLoop();
        }
        Object.assign(details, { selectedOn: 'auxiliary set', auxAcc: accAtU, auxAccBefore: base });
      } finally {
        await predictor.close();
      }
    } else if (auto) {
      details.selectedOn = 'none (no auxiliary data): u = 3';
    }
    const chosen = selectChannels(bounds, u);
    const model = ctx.victim.clone();
    pruneChannels(model, chosen);
    ctx.progress(1, 1);
    return { model, details: { u, prunedChannels: count(chosen), pruned: Object.fromEntries(chosen), ...details } };
  },
};
