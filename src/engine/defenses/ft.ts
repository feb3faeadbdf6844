/**
 * `ft`: fine-tune every parameter on the auxiliary set with cross-entropy (BackdoorBench defense/ft.py):
 * SGD lr 0.01, momentum 0.9, weight decay 5e-4, cosine schedule, batch 256; 100 epochs in the `paper` profile.
 * The `fast` profile keeps the algorithm and shortens the schedule to 15 epochs; to keep a useful number of
 * update steps on a small auxiliary set it uses batches of 32 and a larger initial rate (0.1, still cosine).
 */
import { SGD } from '../nn/optim';
import { trainEpochs } from './common';
import type { Defense, DefenseContext, DefenseOutcome, Profile } from './defense';

export const ft: Defense = {
  id: 'ft',
  title: 'Fine-tuning',
  defaults(profile: Profile) {
    return profile === 'paper'
      ? { epochs: 100, lr: 0.01, momentum: 0.9, weightDecay: 5e-4, batchSize: 256 }
      : { epochs: 15, lr: 0.1, momentum: 0.9, weightDecay: 5e-4, batchSize: 32 };
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
