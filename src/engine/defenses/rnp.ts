/**
 * `rnp`: Reconstructive Neuron Pruning (Li et al., 2023). First unlearn: gradient ascent on CE over the
 * auxiliary set until its accuracy falls to `unlearnFloor` (backdoor neurons survive unlearning, clean ones do
 * not). Then, on the unlearned model, learn masks on BatchNorm channels (gamma and beta) that recover clean
 * accuracy; channels the recovery barely needs (low mask) are the backdoor's, and are pruned (gamma = 0) on
 * the original model. The pruning threshold is chosen as ANP's: the largest one (up to `maxThreshold`) that
 * keeps the pruned model's accuracy on a held-out validation split of the auxiliary set within `accRatio` (0.9,
 * BackdoorBench's acc_ratio of 10% relative) of the unpruned model's; a fixed 0.7 prunes most of a narrow
 * network. Unlearning and mask learning use the rest of the auxiliary set; as in BackdoorBench, the masks
 * learn in train mode (batch statistics) on alpha * CE (alpha 0.2).
 */
import * as tf from '@tensorflow/tfjs-core';
import { SGD } from '../nn/optim';
import { crossEntropy } from '../nn/train';
import type { Defense, DefenseContext, DefenseOutcome, Profile } from './defense';
import { clipVariables, createBnMasks, maskHook, pruneByThreshold, readMasks, requireBatchNorm } from './bn_masks';
import { accuracyOn, splitAux, trainEpochs } from './common';
import { chooseThreshold } from './anp';

export const rnp: Defense = {
  id: 'rnp',
  title: 'Reconstructive Neuron Pruning',
  defaults(profile: Profile) {
    return {
      unlearnLr: 0.01,
      unlearnMaxEpochs: 20,
      unlearnFloor: 0.2,
      maskLr: 0.2,
      maskEpochs: profile === 'paper' ? 20 : 10,
      maxThreshold: 0.9,
      thresholdStep: 0.05,
      accRatio: 0.9,
      alpha: 0.2,
      valFraction: 0.2,
      batchSize: 64,
    };
  },
  async run(ctx: DefenseContext): Promise<DefenseOutcome> {
    const p = ctx.params as Record<string, number>;
    requireBatchNorm(ctx.victim, 'rnp');
    const { train, val } = splitAux(ctx.aux, p.valFraction, ctx.rng);
    const unlearned = ctx.victim.clone();
    let unlearnEpochs = 0;
    try {
      // 1. Unlearning by gradient ascent (the negated CE), stopped once the aux accuracy is low enough.
      const up = new SGD(p.unlearnLr, 0.9, 5e-4);
      try {
        while (unlearnEpochs < p.unlearnMaxEpochs && accuracyOn(unlearned, train) > p.unlearnFloor) {
          await trainEpochs(ctx, unlearned, up, {
            epochs: 1,
            lr: p.unlearnLr,
            schedule: 'constant',
            batchSize: p.batchSize,
            data: train,
            progressBase: unlearnEpochs,
            progressTotal: p.unlearnMaxEpochs + p.maskEpochs,
            label: 'unlearning epoch',
            loss: (s) => tf.neg(crossEntropy(unlearned.forward(s.x, s.ctx), s.y)) as tf.Scalar,
          });
          unlearnEpochs++;
        }
      } finally {
        up.dispose();
      }
      // 2. Recovery: learn BN masks on the unlearned model (weights frozen) to restore clean accuracy.
      const set = createBnMasks(unlearned, 'rnp', false);
      const maskOpt = new SGD(p.maskLr, 0.9);
      try {
        const hook = maskHook(set, false, true);
        await trainEpochs(ctx, unlearned, maskOpt, {
          epochs: p.maskEpochs,
          lr: p.maskLr,
          schedule: 'constant',
          batchSize: p.batchSize,
          data: train,
          vars: set.masks,
          bnTrain: true,
          progressBase: p.unlearnMaxEpochs,
          progressTotal: p.unlearnMaxEpochs + p.maskEpochs,
          label: 'mask epoch',
          loss: (s) => tf.mul(crossEntropy(unlearned.forward(s.x, { ...s.ctx, bnAffineHook: hook }), s.y), p.alpha) as tf.Scalar,
          afterStep: () => clipVariables(set.masks, 0, 1),
        });
        const masks = readMasks(set);
        const choice = chooseThreshold(ctx.victim, masks, val, p.maxThreshold, p.thresholdStep, p.accRatio);
        const model = ctx.victim.clone();
        if (choice.threshold !== null) pruneByThreshold(model, masks, choice.threshold);
        return {
          model,
          details: { unlearnEpochs, threshold: choice.threshold, prunedChannels: choice.pruned, auxValAcc: choice.valAcc, auxValAccBefore: choice.baseAcc, selectedOn: 'aux validation split' },
        };
      } finally {
        maskOpt.dispose();
        set.dispose();
      }
    } finally {
      unlearned.dispose();
    }
  },
};
