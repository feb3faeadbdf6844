/**
 * `rnp`: Reconstructive Neuron Pruning (Li et al., 2023), after BackdoorBench's defense/rnp.py. First unlearn:
 * gradient ascent on CE over the auxiliary set until its accuracy falls to `unlearnFloor` (backdoor neurons
 * survive unlearning, clean ones do not: the unlearned model answers the backdoor's target for most inputs).
 * Then, on the unlearned model, learn masks on BatchNorm channels that recover clean accuracy (train mode,
 * alpha * CE with alpha 0.2, as BackdoorBench); channels whose mask falls low are the backdoor's, and are
 * pruned (gamma = 0) on the original model.
 *
 * The masks scale gamma only, as BackdoorBench's MaskBatchNorm2d (its bias coefficient is 1): that is the
 * operation pruning applies afterwards. Masking beta as well learned the effect of removing the whole channel,
 * which is not what gamma = 0 does, and ranked channels by the wrong criterion.
 *
 * Selection without the test set: channels are taken in increasing mask order up to `maxThreshold` (0.7), and each
 * is pruned only if that costs at most `channelAccDrop` accuracy on a held-out validation split of the auxiliary
 * set and the total stays within `accRatio` (0.9, BackdoorBench's acc_ratio of 10% relative) of the unpruned
 * model's; a channel that costs more is kept and the walk goes on. Unlearning damages some clean channels too,
 * and recovery masks them off on the unlearned model (on a BadNets MNIST victim, three channels the clean task
 * needs reached mask 0, below every backdoor channel, while the backdoor's channels cost nothing to remove): a
 * plain threshold had to stop before reaching any backdoor channel (BackdoorBench, which picks the threshold with
 * the test set, would also have returned the unpruned model), and without the per-channel cost the clean
 * channels used up the whole tolerance first. The results list the pruned and the skipped channels.
 */
import * as tf from '@tensorflow/tfjs-core';
import { SGD } from '../nn/optim';
import { crossEntropy } from '../nn/train';
import type { Defense, DefenseContext, DefenseOutcome, Profile } from './defense';
import { clipVariables, createBnMasks, maskHook, readMasks, requireBatchNorm, type BnMaskSet } from './bn_masks';
import { AuxPredictor } from './aux_predictor';
import { splitAux, trainEpochs } from './common';
import { readFloats } from '../nn/read';
import type { ImageSet } from '../data/dataset';
import type { Model } from '../nn/model';
import { applyGradients, OrtTrainer } from '../nn/ort_train';
import { OrtModelGraph } from '../nn/ort_graph';

export const rnp: Defense = {
  id: 'rnp',
  title: 'Reconstructive Neuron Pruning',
  cost: 1.0,
  defaults(profile: Profile) {
    return {
      unlearnLr: 0.01,
      unlearnMaxEpochs: 20,
      unlearnFloor: 0.2,
      maskLr: 0.2,
      maskEpochs: profile === 'paper' ? 20 : 10,
      // The spec's pruning threshold (0.7): channels whose recovered mask stays above it are never pruned.
      maxThreshold: 0.7,
      // Most validation accuracy one pruned channel may cost (about one image of a 60-image split).
      channelAccDrop: 0.02,
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
    // The unlearning stop and the greedy pruning: one forward graph for the unlearned model and the victim's copies.
    const predictor = await AuxPredictor.open(ctx, unlearned).catch((e) => {
      unlearned.dispose();
      throw e;
    });
    try {
      // 1. Unlearning by gradient ascent (the negated CE), stopped once the aux accuracy is low enough.
      const up = new SGD(p.unlearnLr, 0.9, 5e-4);
      // Through ONNX Runtime where it loads: the negated cross-entropy's gradients are its graph's, negated.
      const trainer = ctx.ortTraining ? await OrtTrainer.create(unlearned, { bnTrain: true, threads: ctx.ortThreads ?? 1 }) : undefined;
      if (ctx.ortTraining && !trainer) ctx.training?.backendWhy.add('RNP: the ONNX training graph does not cover this model');
      try {
        while (unlearnEpochs < p.unlearnMaxEpochs && (await predictor.accuracy(train)) > p.unlearnFloor) {
          await trainEpochs(ctx, unlearned, up, {
            epochs: 1,
            lr: p.unlearnLr,
            schedule: 'constant',
            batchSize: p.batchSize,
            data: train,
            progressBase: unlearnEpochs,
            progressTotal: p.unlearnMaxEpochs + p.maskEpochs,
            label: 'unlearning epoch',
            ortStep: trainer ? (x, labels) => ascentStepOnOrt(trainer, up, x, train.shape, labels) : undefined,
            loss: (s) => tf.neg(crossEntropy(unlearned.forward(s.x, s.ctx), s.y)) as tf.Scalar,
          });
          unlearnEpochs++;
        }
      } finally {
        up.dispose();
        await trainer?.close();
      }
      // 2. Recovery: learn BN masks on the unlearned model (weights frozen) to restore clean accuracy.
      const set = createBnMasks(unlearned, 'rnp', false);
      const maskOpt = new SGD(p.maskLr, 0.9);
      // The masks' gradients from the graph with every BatchNorm's gamma scaled by an input (ANP's graph).
      const graph = ctx.ortTraining ? await OrtModelGraph.create(unlearned, { bnTrain: true, loss: 'ce', paramGrads: false, bnScales: true, constantWeights: true }, ctx.ortThreads ?? 1) : undefined;
      if (ctx.ortTraining && !graph) ctx.training?.backendWhy.add("RNP's masks: the ONNX graph does not cover this model");
      try {
        const hook = maskHook(set, false, false);
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
          ortStep: graph ? (x, labels) => maskStepOnOrt(graph, set, maskOpt, x, labels, p.alpha) : undefined,
          loss: (s) => tf.mul(crossEntropy(unlearned.forward(s.x, { ...s.ctx, bnAffineHook: hook }), s.y), p.alpha) as tf.Scalar,
          afterStep: () => clipVariables(set.masks, 0, 1),
        });
        const masks = await readMasks(set);
        const choice = await greedyPrune(predictor, ctx.victim, masks, val, p.maxThreshold, p.accRatio, p.channelAccDrop);
        return {
          model: choice.model,
          details: {
            unlearnEpochs,
            maxThreshold: p.maxThreshold,
            prunedChannels: choice.pruned.length,
            pruned: choice.pruned,
            skipped: choice.skipped,
            auxValAcc: choice.valAcc,
            auxValAccBefore: choice.baseAcc,
            selectedOn: 'aux validation split',
          },
        };
      } finally {
        maskOpt.dispose();
        set.dispose();
        await graph?.close();
      }
    } finally {
      unlearned.dispose();
      await predictor.close();
    }
  },
};

/**
 * Prune channels of a copy of the victim in increasing mask order (masks <= maxThreshold), keeping a pruning
 * only if it costs at most `channelDrop` validation accuracy and the total stays >= accRatio * the unpruned
 * accuracy.
 */
async function greedyPrune(predictor: AuxPredictor, victim: Model, masks: Float32Array[], val: ImageSet, maxThreshold: number, accRatio: number, channelDrop: number): Promise<{ model: Model; pruned: string[]; skipped: string[]; valAcc: number; baseAcc: number }> {
  const baseAcc = await predictor.accuracy(val, victim);
  const model = victim.clone();
  const bns = model.batchNorms();
  const order: Array<{ layer: number; ch: number; m: number }> = [];
  masks.forEach((ms, layer) => ms.forEach((m, ch) => {
    if (m <= maxThreshold) order.push({ layer, ch, m });
  }));
  order.sort((a, b) => a.m - b.m || a.layer - b.layer || a.ch - b.ch);
  const pruned: string[] = [];
  const skipped: string[] = [];
  let valAcc = baseAcc;
  // The pruned copy is the caller's only on success: a cancel or a failed evaluation frees it here.
  try {
    for (const { layer, ch } of order) {
      const bn = bns[layer];
      const gamma = await readFloats(bn.weight);
      const old = gamma[ch];
      gamma[ch] = 0;
      tf.tidy(() => bn.weight.assign(tf.tensor1d(gamma)));
      const acc = await predictor.accuracy(val, model);
      const name = `${bn.path}[${ch}]`;
      if (acc >= accRatio * baseAcc && acc >= valAcc - channelDrop) {
        pruned.push(name);
        valAcc = acc;
      } else {
        gamma[ch] = old;
        tf.tidy(() => bn.weight.assign(tf.tensor1d(gamma)));
        skipped.push(name);
      }
    }
  } catch (e) {
    model.dispose();
    throw e;
  }
  return { model, pruned, skipped, valAcc, baseAcc };
}

/** One unlearning step (gradient ascent on CE) from ONNX Runtime's cross-entropy gradients, negated. */
async function ascentStepOnOrt(trainer: OrtTrainer, opt: SGD, x: Float32Array, shape: [number, number, number], labels: Int32Array): Promise<number> {
  const { loss, grads, stats } = await trainer.gradients(x, shape, labels);
  applyGradients(trainer.model, opt, grads, (_, g) => tf.neg(g));
  trainer.applyBatchStats(stats, labels.length);
  return -loss;
}

/** One mask step: alpha * d CE / d mask, with gamma scaled by the masks and beta unmasked, as maskHook does. */
async function maskStepOnOrt(graph: OrtModelGraph, set: BnMaskSet, opt: SGD, x: Float32Array, labels: Int32Array, alpha: number): Promise<number> {
  const masks = await readMasks(set);
  const scales = new Map(set.layers.map((bn, i) => [bn.path, { g: Float32Array.from(masks[i]), b: new Float32Array(masks[i].length).fill(1) }]));
  const run = await graph.run(x, labels.length, { labels, scales });
  const grads = set.layers.map((bn) => tf.tidy(() => tf.mul(tf.tensor1d(run.scaleGrads!.get(bn.path)!.g), alpha)));
  try {
    opt.step(set.masks, grads);
  } finally {
    tf.dispose(grads);
  }
  graph.applyBatchStats(run.stats!, labels.length);
  return alpha * run.loss!;
}
