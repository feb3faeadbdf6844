/**
 * Pieces several defenses share: an epoch loop that reports progress and yields within epochs (so that
 * cancellation and progress events get through), a pacer for the defenses' own loops, and the auxiliary
 * train/validation split used wherever BackdoorBench would have peeked at the test set.
 */
import * as tf from '@tensorflow/tfjs-core';
import { isMainThread } from 'node:worker_threads';
import type { ImageSet } from '../data/dataset';
import { subset } from '../data/dataset';
import type { Model } from '../nn/model';
import type { Optimizer } from '../nn/optim';
import { cosineLr } from '../nn/optim';
import { batchCount, crossEntropy, makeBatch, makeBatchArray, predictLabels, trainStep, type FitOptions, type StepContext } from '../nn/train';
import { OrtTrainer, ortTrainWanted } from '../nn/ort_train';
import { JobError, throwIfAborted } from '../errors';
import type { Rng } from '../util/rng';
import type { DefenseContext } from './defense';
import { yieldToLoop } from './defense';

export interface EpochLoopOptions extends Partial<Omit<FitOptions, 'epochs' | 'optimizer' | 'lr' | 'rng'>> {
  epochs: number;
  lr: number;
  batchSize: number;
  /** Cosine (default) or constant learning rate over the epochs. */
  schedule?: 'cosine' | 'constant';
  /** Training data (default: the auxiliary set). */
  data?: ImageSet;
  /** Progress offset and total when this loop is one phase of a longer defense. */
  progressBase?: number;
  progressTotal?: number;
  label?: string;
  /**
   * The defense's own step computed through ONNX Runtime (graphs it made with ort_graph.ts), used for every
   * batch instead of `loss`/`prepare` on the backend: the batch as flat NHWC pixels (augmented as the backend
   * path would) and its labels, and the batch's indices into the loop's data; it applies the optimizer step
   * itself and resolves to the step's loss.
   */
  ortStep?: (x: Float32Array, labels: Int32Array, indices: Int32Array) => Promise<number>;
}

/**
 * Keeps a long synchronous computation responsive: `tick` checks for cancellation on every call and, at most
 * every `intervalMs`, reports progress (the same `done` as the last completed unit, with a message that says
 * where inside it we are) and yields to the event loop, so that an abort message posted to a worker is
 * delivered within a batch or two instead of at the end of an epoch. The yield does not touch the random
 * stream: results do not depend on timing. The first tick always reports, so a defense says where it is from
 * its first batch on (and a cancel sent at that report is seen at the next tick, whatever the machine's speed).
 */
export class Pacer {
  private last = -Infinity;
  constructor(
    private readonly ctx: Pick<DefenseContext, 'progress' | 'signal'>,
    private readonly intervalMs = 200,
  ) {}

  async tick(done: number, total: number, message: string): Promise<void> {
    throwIfAborted(this.ctx.signal);
    if (Date.now() - this.last < this.intervalMs) return;
    this.ctx.progress(done, total, message);
    await yieldToLoop();
    this.last = Date.now();
    throwIfAborted(this.ctx.signal);
  }

  /** Report a completed unit and yield (always). */
  async report(done: number, total: number, message: string): Promise<void> {
    this.ctx.progress(done, total, message);
    await yieldToLoop();
    this.last = Date.now();
  }
}

/**
 * Train for `epochs` with the scheduled rate. This is fit()'s batch loop (same batching, augmentation, step and
 * random stream), with a pacer: fit() awaits only its tensor reads (microtasks on the CPU backends), so it never
 * lets the event loop deliver a cancellation, and an epoch of an adversarial defense (PGD per batch) takes
 * seconds.
 */
export async function trainEpochs(ctx: DefenseContext, model: Model, optimizer: Optimizer, o: EpochLoopOptions): Promise<void> {
  const base = o.progressBase ?? 0;
  const total = o.progressTotal ?? o.epochs;
  const label = o.label ?? 'epoch';
  const data = o.data ?? ctx.aux;
  const vars = o.vars ?? model.trainableVariables();
  const bnTrain = o.bnTrain ?? true;
  const augment = o.augment ?? ctx.augment;
  // PyTorch's DataLoader keeps the last partial batch (drop_last=False), and so does BackdoorBench: on 500
  // auxiliary images with batches of 128 that is 4 steps per epoch, not 3.
  const dropLast = o.dropLast ?? false;
  const loss = o.loss ?? ((s: StepContext) => crossEntropy(model.forward(s.x, s.ctx), s.y));
  const batches = batchCount(data, { batchSize: o.batchSize, dropLast });
  const stepper = o.ortStep ? undefined : await ortStepperFor(ctx, model, o, bnTrain, label);
  const record = (engine: 'onnxruntime' | 'backend') => {
    if (!ctx.training) return;
    if (engine === 'onnxruntime') ctx.training.onnxruntimeSteps++;
    else ctx.training.backendSteps++;
  };
  const pacer = new Pacer(ctx);
  try {
    for (let e = 0; e < o.epochs; e++) {
      optimizer.lr = o.schedule === 'constant' ? o.lr : cosineLr(o.lr, e, o.epochs);
      const order = ctx.rng.permutation(data.n);
      for (let b = 0; b < batches; b++) {
        await pacer.tick(base + e, total, `${label} ${e + 1}/${o.epochs}, batch ${b + 1}/${batches}`);
        const idx = order.subarray(b * o.batchSize, Math.min(data.n, (b + 1) * o.batchSize));
        const labels = Int32Array.from(idx, (i) => data.y[i]);
        if (o.ortStep) {
          const l = await o.ortStep(makeBatchArray(data, idx, augment, ctx.rng), labels, idx);
          if (!Number.isFinite(l)) throw new JobError('training diverged (loss is not finite)');
          record('onnxruntime');
          await o.afterStep?.();
          o.onBatch?.(e, b, batches, l);
          continue;
        }
        if (stepper) {
          // The same batch, augmentation draws and update rule; only the gradient is computed elsewhere.
          // Weights held by the trainer between steps where nothing reads the model in between (ort_train.ts;
          // onBatch must not read it).
          const l = await stepper.step(optimizer, makeBatchArray(data, idx, augment, ctx.rng), data.shape, labels, bnTrain, { resident: !o.afterStep });
          record('onnxruntime');
          await o.afterStep?.();
          o.onBatch?.(e, b, batches, l);
          continue;
        }
        const x = makeBatch(data, idx, augment, ctx.rng);
        const y = tf.tensor1d(labels, 'int32');
        let prepared: tf.Tensor | undefined;
        try {
          prepared = await o.prepare?.({ x, y, labels });
          const l = await trainStep(vars, optimizer, (fctx) => loss({ x, y, labels, ctx: fctx, prepared }), bnTrain);
          record('backend');
          await o.afterStep?.();
          o.onBatch?.(e, b, batches, l);
        } finally {
          x.dispose();
          y.dispose();
          prepared?.dispose();
        }
      }
      await pacer.report(base + e + 1, total, `${label} ${e + 1}/${o.epochs}`);
    }
  } finally {
    await stepper?.close();
  }
}

/**
 * An ONNX Runtime trainer for this loop when its steps are what the ONNX training graph computes: the mean
 * cross-entropy over every trainable variable, nothing prepared per batch. Undefined otherwise, with the reason
 * kept in the context's training record (and the loop trains on the backend).
 */
async function ortStepperFor(ctx: DefenseContext, model: Model, o: EpochLoopOptions, bnTrain: boolean, label: string): Promise<OrtTrainer | undefined> {
  const why = (reason: string) => {
    ctx.training?.backendWhy.add(`${label}s: ${reason}`);
    return undefined;
  };
  if (!ctx.ortTraining) {
    if (!isMainThread) return why('ONNX Runtime cannot load in a worker thread');
    return why(ortTrainWanted() ? 'the job computes on its own backend (a native or GPU backend)' : 'ONNX Runtime is not available here or is turned off (BACKDOOR_AUDIT_ORT_TRAIN=0)');
  }
  if (o.loss || o.prepare) return why("the defense's own loss, which the ONNX training graph does not express yet");
  if (o.vars) return why('only some variables train, which the ONNX training graph does not express yet');
  // As many threads as the cell was given: the graph's sums do not depend on the thread count, so neither does
  // the row (how many cells run side by side, shards, the machine's cores).
  const trainer = await OrtTrainer.create(model, { bnTrain, threads: ctx.ortThreads ?? 1 });
  return trainer ?? why('the ONNX training graph does not cover this model or ONNX Runtime refused it');
}

/**
 * The `fast` schedule of the fine-tuning family (ft, fp's fine-tuning, nad, ftsam, fst). BackdoorBench's recipe
 * (SGD lr 0.01, batch 256, cosine, 100 epochs) assumes 5% of CIFAR-10, 2,500 images: 10 steps an epoch. On a
 * 500-image auxiliary set it makes 2 steps an epoch, and on PyTorch-trained zoo victims even its full 100
 * epochs leave most of the backdoor (PyTorch, preact-badnets: ASR 0.969 -> 0.609, ACC 0.854 -> 0.832).
 * Measured in PyTorch on the same victim and images (scripts/zoo/README.md): the same rate with batches of 64
 * removes it in 20 epochs (ASR 0.082, ACC 0.835; 40 epochs give the same), while a larger rate costs accuracy
 * (lr 0.05, batch 128: ACC 0.773) and the former fast profile (lr 0.1, batch 32) wrecked the model (ACC 0.327
 * with the engine). So `fast` keeps every hyperparameter but the batch (64, named in every row) and the epochs.
 */
export const FAST_FINE_TUNE = { epochs: 20, lr: 0.01, batchSize: 64 } as const;
export const FAST_FINE_TUNE_DEPARTURES = 'batch 64 (BackdoorBench: 256) so that a 500-image aux set gets 8 steps an epoch; 20 epochs (100)';

/** Seeded, class-stratified split of the auxiliary set into train and validation parts. */
export function splitAux(aux: ImageSet, valFraction: number, rng: Rng): { train: ImageSet; val: ImageSet } {
  const byClass: number[][] = Array.from({ length: aux.numClasses }, () => []);
  for (let i = 0; i < aux.n; i++) byClass[aux.y[i]].push(i);
  const train: number[] = [];
  const val: number[] = [];
  for (const idx of byClass) {
    rng.shuffle(idx);
    const k = Math.round(idx.length * valFraction);
    val.push(...idx.slice(0, k));
    train.push(...idx.slice(k));
  }
  return { train: subset(aux, train), val: subset(aux, val) };
}

/** Top-1 accuracy of a model on a set (aux validation splits; never the test set). */
export async function accuracyOn(model: Model, set: ImageSet): Promise<number> {
  const pred = await predictLabels(model, set);
  let ok = 0;
  for (let i = 0; i < set.n; i++) if (pred[i] === set.y[i]) ok++;
  return ok / Math.max(1, set.n);
}
