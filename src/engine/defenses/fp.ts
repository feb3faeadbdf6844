/**
 * `fp`: Fine-Pruning (Liu et al., 2018). Rank the penultimate feature channels by their mean activation on
 * the auxiliary data, prune (mask) the least active ones 1% of the channels per step while the accuracy on a
 * held-out validation split of the auxiliary set stays above `accRatio` of its unpruned value, then fine-tune
 * as `ft` with the mask kept. BackdoorBench picks the stopping point on the test set; we never look at it.
 * The `fast` profile fine-tunes on the fine-tuning family's FAST_FINE_TUNE schedule (common.ts).
 *
 * The mask acts on the pooled feature that feeds the linear head, which for a global-average-pooled network
 * is the same as masking the last convolution's output channels; it is stored in the weights (zeroed rows of
 * the head), so the pruned model saves in any format.
 */
import * as tf from '@tensorflow/tfjs-core';
import { SGD } from '../nn/optim';
import type { ImageSet } from '../data/dataset';
import type { Model } from '../nn/model';
import { AuxPredictor } from './aux_predictor';
import { FAST_FINE_TUNE, FAST_FINE_TUNE_DEPARTURES, Pacer, splitAux, trainEpochs } from './common';
import type { Defense, DefenseContext, DefenseOutcome, Profile } from './defense';


function applyHeadMask(model: Model, mask: Float32Array): void {
  const head = model.head();
  tf.tidy(() => head.weight.assign(tf.mul(head.weight, tf.tensor2d(mask, [mask.length, 1]))));
}

export const fp: Defense = {
  id: 'fp',
  title: 'Fine-Pruning',
  cost: 0.85,
  defaults(profile: Profile) {
    return profile === 'paper'
      ? { epochs: 100, lr: 0.01, momentum: 0.9, weightDecay: 5e-4, batchSize: 256, accRatio: 0.9, valFraction: 0.1, step: 0.01 }
      : { ...FAST_FINE_TUNE, momentum: 0.9, weightDecay: 5e-4, accRatio: 0.9, valFraction: 0.1, step: 0.01 };
  },
  departures(profile: Profile) {
    return profile === 'fast' ? FAST_FINE_TUNE_DEPARTURES : undefined;
  },
  async run(ctx: DefenseContext): Promise<DefenseOutcome> {
    const p = ctx.params as Record<string, number>;
    const { train, val } = splitAux(ctx.aux, p.valFraction, ctx.rng);
    const model = ctx.victim.clone();
    try {
      const predictor = await AuxPredictor.open(ctx, model, { features: true });
      const { mask, prunedCount, dim, base } = await pruneHead(ctx, predictor, model, train, val, p).finally(() => predictor.close());
      applyHeadMask(model, mask);
      const opt = new SGD(p.lr, p.momentum, p.weightDecay);
      try {
        await trainEpochs(ctx, model, opt, { epochs: p.epochs, lr: p.lr, batchSize: p.batchSize, data: train, afterStep: () => applyHeadMask(model, mask) });
      } finally {
        opt.dispose();
      }
      return { model, details: { prunedChannels: prunedCount, channels: dim, selectedOn: 'aux validation split', auxValAccBefore: base } };
    } catch (e) {
      model.dispose();
      throw e;
    }
  },
};

/**
 * Fine-Pruning's pruning: rank the head's input channels by their mean activation on the aux training split,
 * then mask ceil(step) more of the least active at a time while the validation accuracy stays at least accRatio
 * times the unpruned one. Leaves the model's head as it was; returns the last mask that passed.
 */
async function pruneHead(ctx: DefenseContext, predictor: AuxPredictor, model: Model, train: ImageSet, val: ImageSet, p: Record<string, number>): Promise<{ mask: Float32Array; prunedCount: number; dim: number; base: number }> {
  const feats = await predictor.features(train);
  const mean = new Float64Array(feats.dim);
  for (let i = 0; i < train.n; i++) for (let j = 0; j < feats.dim; j++) mean[j] += feats.data[i * feats.dim + j];
  const order = Array.from(mean.keys()).sort((a, b) => mean[a] - mean[b]);
  const base = await predictor.accuracy(val);
  const head0 = model.head().weight.clone();
  const stepSize = Math.max(1, Math.ceil(p.step * feats.dim));
  let mask = new Float32Array(feats.dim).fill(1);
  let prunedCount = 0;
  const pacer = new Pacer(ctx);
  try {
    for (let k = stepSize; k < feats.dim; k += stepSize) {
      await pacer.tick(k - stepSize, feats.dim, `pruning ${k}/${feats.dim} channels`);
      const trial = new Float32Array(feats.dim).fill(1);
      for (const c of order.slice(0, k)) trial[c] = 0;
      model.head().weight.assign(head0);
      applyHeadMask(model, trial);
      const acc = await predictor.accuracy(val);
      if (acc < p.accRatio * base) break;
      mask = trial;
      prunedCount = k;
    }
  } finally {
    model.head().weight.assign(head0);
    head0.dispose();
  }
  return { mask, prunedCount, dim: feats.dim, base };
}
