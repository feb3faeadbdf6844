/**
 * `ft`: fine-tune every parameter on the auxiliary set with cross-entropy (BackdoorBench defense/ft.py):
 * SGD lr 0.01, momentum 0.9, weight decay 5e-4, cosine schedule, batch 256; 100 epochs in the `paper` profile
 * (config/defense/ft/config.yaml). The `fast` profile is the fine-tuning family's FAST_FINE_TUNE (see
 * common.ts for the measurements behind its two departures).
 */
import { SGD } from '../nn/optim';
import { FAST_FINE_TUNE, FAST_FINE_TUNE_DEPARTURES, trainEpochs } from './common';
import type { Defense, DefenseContext, DefenseOutcome, Profile } from './defense';

export const ft: Defense = {
  id: 'ft',
  title: 'Fine-tuning',
  cost: 1,
  defaults(profile: Profile) {
    return profile === 'paper'
      ? { epochs: 100, lr: 0.01, momentum: 0.9, weightDecay: 5e-4, batchSize: 256 }
      : { ...FAST_FINE_TUNE, momentum: 0.9, weightDecay: 5e-4 };
  },
  departures(profile: Profile) {
    return profile === 'fast' ? FAST_FINE_TUNE_DEPARTURES : undefined;
  },
  async run(ctx: DefenseContext): Promise<DefenseOutcome> {
    const p = ctx.params as Record<string, number>;
    const model = ctx.victim.clone();
    const opt = new SGD(p.lr, p.momentum, p.weightDecay);
    try {
      await trainEpochs(ctx, model, opt, { epochs: p.epochs, lr: p.lr, batchSize: p.batchSize });
    } catch (e) {
      model.dispose();
      throw e;
    } finally {
      opt.dispose();
    }
    return { model, details: { epochs: p.epochs, lr: p.lr } };
  },
};
