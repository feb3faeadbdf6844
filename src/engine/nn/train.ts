/**
 * Training and inference loops over ImageSets: batching, augmentation (random crop with padding,
 * horizontal flip), the optimizer step with BatchNorm running-statistic updates, cancellation between
 * batches, and batched prediction. Every step runs inside tf.tidy; nothing outlives a batch but the weights
 * and the optimizer state.
 */
import * as tf from '@tensorflow/tfjs-core';
import type { ImageSet } from '../data/dataset';
import { imageSize } from '../data/dataset';
import { throwIfAborted, JobError } from '../errors';
import type { Rng } from '../util/rng';
import type { ForwardContext } from './module';
import type { Model } from './model';
import { cosineLr, type Optimizer } from './optim';

export interface Augment {
  /** Zero padding of the random crop (BackdoorBench: 4). 0 = no crop. */
  cropPadding: number;
  /** Random horizontal flip (natural images only, not digits). */
  flip: boolean;
}

/** Copy images at `idx` into a batch tensor, augmenting on the fly. */
export function makeBatch(set: ImageSet, idx: ArrayLike<number>, augment: Augment | undefined, rng: Rng | undefined): tf.Tensor4D {
  const [h, w, c] = set.shape;
  return tf.tensor4d(makeBatchArray(set, idx, augment, rng), [idx.length, h, w, c]);
}

/** The batch of makeBatch as a flat NHWC array. */
export function makeBatchArray(set: ImageSet, idx: ArrayLike<number>, augment: Augment | undefined, rng: Rng | undefined): Float32Array {
  const [h, w, c] = set.shape;
  const size = imageSize(set);
  const out = new Float32Array(idx.length * size);
  for (let b = 0; b < idx.length; b++) {
    const src = idx[b] * size;
    const dst = b * size;
    if (!augment || !rng || (augment.cropPadding === 0 && !augment.flip)) {
      out.set(set.x.subarray(src, src + size), dst);
      continue;
    }
    const p = augment.cropPadding;
    const dy = p ? rng.int(2 * p + 1) - p : 0;
    const dx = p ? rng.int(2 * p + 1) - p : 0;
    const flip = augment.flip && rng.next() < 0.5;
    for (let i = 0; i < h; i++) {
      const si = i + dy;
      if (si < 0 || si >= h) continue; // padded rows stay zero
      for (let j = 0; j < w; j++) {
        const jj = flip ? w - 1 - j : j;
        const sj = jj + dx;
        if (sj < 0 || sj >= w) continue;
        const s = src + (si * w + sj) * c;
        const d = dst + (i * w + j) * c;
        for (let k = 0; k < c; k++) out[d + k] = set.x[s + k];
      }
    }
  }
  return out;
}

/**
 * Mean cross-entropy of logits against integer labels, with optional label smoothing as the SAM authors'
 * smooth_crossentropy (FT-SAM's loss in BackdoorBench): 1 - s on the label and s / (K - 1) on each other class
 * (PyTorch's own label_smoothing puts s / K everywhere). Their loss is the KL divergence to that target, which
 * differs from this cross-entropy by the target's entropy, a constant: the same gradient.
 */
export function crossEntropy(logits: tf.Tensor2D, labels: tf.Tensor1D, smoothing = 0): tf.Scalar {
  return tf.tidy(() => {
    const k = logits.shape[1];
    let target: tf.Tensor = tf.cast(tf.oneHot(labels, k), 'float32');
    if (smoothing > 0) target = tf.add(tf.mul(target, 1 - smoothing - smoothing / (k - 1)), smoothing / (k - 1));
    return tf.neg(tf.mean(tf.sum(tf.mul(target, tf.logSoftmax(logits)), 1))) as tf.Scalar;
  });
}

export interface StepContext {
  x: tf.Tensor4D;
  y: tf.Tensor1D;
  /** Labels as plain numbers, for host-side logic. */
  labels: Int32Array;
  /** Forward context for this step (training mode unless the loop freezes BN). */
  ctx: ForwardContext;
  /** What `prepare` computed for this batch outside the gradient tape (adversarial examples, etc.). */
  prepared?: tf.Tensor;
}

export interface FitOptions {
  epochs: number;
  batchSize: number;
  optimizer: Optimizer;
  /** Base learning rate; the schedule sets optimizer.lr per epoch. */
  lr: number;
  schedule?: 'cosine' | 'constant';
  augment?: Augment;
  rng: Rng;
  signal?: AbortSignal;
  /** Variables to train (default: all trainable variables of the model). */
  vars?: tf.Variable[];
  /** BatchNorm in train mode (default) or frozen (eval-mode statistics, as SAU and i-BAU need). */
  bnTrain?: boolean;
  /** The loss of a batch (default: cross-entropy of the model's logits). Runs inside the gradient tape. */
  loss?: (s: StepContext) => tf.Scalar;
  /**
   * Computed per batch before the gradient tape opens, so that inner optimizations (adversarial examples)
   * are constants for the step. Disposed after the step. May resolve later (it may read tensors, which is
   * asynchronous).
   */
  prepare?: (s: Omit<StepContext, 'ctx' | 'prepared'>) => tf.Tensor | Promise<tf.Tensor>;
  /** Called after each optimizer step (projections, rescaling); awaited when it returns a promise. */
  afterStep?: () => void | Promise<void>;
  /**
   * Progress: called after each batch. It must not read the model: a stepper may hold the weights from step to
   * step until the fit ends (OrtTrainer's resident steps); `afterStep` sees them written.
   */
  onBatch?: (epoch: number, batch: number, batches: number, loss: number) => void;
  /** Stop after this many optimizer steps in total (iteration-budgeted defenses). */
  maxSteps?: number;
  /** Drop a final partial batch (BatchNorm dislikes batches of one). */
  dropLast?: boolean;
}

/**
 * One optimizer step on `loss`; resolves to the loss value. The gradient tape sees only `vars`; BatchNorm
 * running-statistic updates recorded during the forward are applied after the step. The loss is read
 * asynchronously, after the update is queued: the webgpu backend cannot read synchronously under Node, and on
 * a GPU the read then overlaps nothing the step still has to submit.
 */
export async function trainStep(vars: tf.Variable[], optimizer: Optimizer, lossFn: (ctx: ForwardContext) => tf.Scalar, training: boolean): Promise<number> {
  const ctx: ForwardContext = { training, bnUpdates: [] };
  const { value, grads } = tf.variableGrads(() => lossFn(ctx), vars);
  const ordered = vars.map((v) => grads[v.name]);
  let loss: number;
  try {
    optimizer.step(vars, ordered);
    tf.dispose(ordered);
    for (const apply of ctx.bnUpdates!) apply();
    loss = (await value.data())[0];
  } finally {
    tf.dispose(ordered); // a no-op after a successful step; frees the gradients when the step threw
    value.dispose();
  }
  if (!Number.isFinite(loss)) throw new JobError('training diverged (loss is not finite)');
  return loss;
}

/** Batches per epoch (a final partial batch is dropped with `dropLast`). */
export function batchCount(data: ImageSet, o: Pick<FitOptions, 'batchSize' | 'dropLast'>): number {
  return o.dropLast && data.n > o.batchSize ? Math.floor(data.n / o.batchSize) : Math.ceil(data.n / o.batchSize);
}

/** One batch of a fit: where it is in the schedule, the images it takes and their labels. */
export interface FitBatch {
  epoch: number;
  /** Index of the batch within its epoch, of `batches`. */
  b: number;
  batches: number;
  idx: Uint32Array | Int32Array;
  labels: Int32Array;
}

/**
 * The schedule and bookkeeping fit() and fitStepped() share: at each epoch's start the scheduled rate goes to
 * the optimizer and a fresh permutation is drawn; cancellation is checked before every batch; `record` takes
 * each batch's loss (running afterStep and onBatch) and ends the iteration at maxSteps; `loss` is what the fit
 * returns (the last epoch's mean, or the mean so far when maxSteps stopped it).
 */
class FitLoop {
  private steps = 0;
  private sum = 0;
  private stopped = false;
  loss = NaN;

  constructor(
    private readonly data: ImageSet,
    private readonly o: Omit<FitOptions, 'loss' | 'prepare' | 'vars'>,
  ) {}

  *batches(): Generator<FitBatch> {
    const { data, o } = this;
    const batches = batchCount(data, o);
    for (let epoch = 0; epoch < o.epochs; epoch++) {
      o.optimizer.lr = o.schedule === 'constant' ? o.lr : cosineLr(o.lr, epoch, o.epochs);
      const order = o.rng.permutation(data.n);
      this.sum = 0;
      for (let b = 0; b < batches; b++) {
        throwIfAborted(o.signal);
        const idx = order.subarray(b * o.batchSize, Math.min(data.n, (b + 1) * o.batchSize));
        yield { epoch, b, batches, idx, labels: Int32Array.from(idx, (i) => data.y[i]) };
        if (this.stopped) return;
      }
      this.loss = this.sum / batches;
    }
  }

  async record(batch: FitBatch, l: number): Promise<void> {
    this.sum += l;
    await this.o.afterStep?.();
    this.o.onBatch?.(batch.epoch, batch.b, batch.batches, l);
    if (this.o.maxSteps && ++this.steps >= this.o.maxSteps) {
      this.stopped = true;
      this.loss = this.sum / (batch.b + 1);
    }
  }
}

/** Train `model` in place. Resolves to the mean loss of the last epoch. */
export async function fit(model: Model, data: ImageSet, o: FitOptions): Promise<number> {
  const vars = o.vars ?? model.trainableVariables();
  const bnTrain = o.bnTrain ?? true;
  const loss = o.loss ?? ((s: StepContext) => crossEntropy(model.forward(s.x, s.ctx), s.y));
  const loop = new FitLoop(data, o);
  for (const batch of loop.batches()) {
    const { idx, labels } = batch;
    const x = makeBatch(data, idx, o.augment, o.rng);
    const y = tf.tensor1d(labels, 'int32');
    let prepared: tf.Tensor | undefined;
    try {
      prepared = await o.prepare?.({ x, y, labels });
      await loop.record(batch, await trainStep(vars, o.optimizer, (ctx) => loss({ x, y, labels, ctx, prepared }), bnTrain));
    } finally {
      x.dispose();
      y.dispose();
      prepared?.dispose();
    }
  }
  return loop.loss;
}

/**
 * What fitStepped needs of a trainer that computes steps away from this thread's backend (data-parallel
 * replicas, ONNX Runtime): one optimizer step of the mean cross-entropy over all trainable variables, on a
 * batch of flat NHWC pixels, resolving to its loss.
 */
export interface BatchStepper {
  readonly model: Model;
  /** `resident`: nothing reads the model until the next step, `flush` or `close` (see OrtTrainer.step). */
  step(optimizer: Optimizer, x: Float32Array, shape: [number, number, number], labels: Int32Array, bnTrain: boolean, o?: { resident?: boolean }): Promise<number>;
  /** Write back weights held by resident steps (a stepper that holds none has nothing to do). */
  flush?(): void;
  close(): Promise<void>;
}

/**
 * fit() with every step computed by `stepper` (which holds `model`): the same batches, augmentation and
 * schedule, on the default loss (cross-entropy) and all trainable variables. Custom losses, `prepare` and
 * variable subsets are closures over this thread's state and stay with fit().
 */
export async function fitStepped(model: Model, data: ImageSet, o: Omit<FitOptions, 'loss' | 'prepare' | 'vars'>, stepper: BatchStepper): Promise<number> {
  if (stepper.model !== model) throw new Error('fitStepped: the trainer holds another model');
  const bnTrain = o.bnTrain ?? true;
  const loop = new FitLoop(data, o);
  try {
    for (const batch of loop.batches()) {
      // Without afterStep nothing reads the model between steps (onBatch must not): the stepper may hold the
      // weights until the fit ends.
      await loop.record(batch, await stepper.step(o.optimizer, makeBatchArray(data, batch.idx, o.augment, o.rng), data.shape, batch.labels, bnTrain, { resident: !o.afterStep }));
    }
  } finally {
    stepper.flush?.();
  }
  return loop.loss;
}

/** Logits of a whole set, batched, as a Float32Array [n, classes]. */
export async function predictLogits(model: Model, set: ImageSet, batchSize = 256, signal?: AbortSignal): Promise<Float32Array> {
  const k = model.numClasses;
  const out = new Float32Array(set.n * k);
  for (let s = 0; s < set.n; s += batchSize) {
    throwIfAborted(signal);
    const idx = Array.from({ length: Math.min(batchSize, set.n - s) }, (_, i) => s + i);
    const logits = tf.tidy(() => model.forward(makeBatch(set, idx, undefined, undefined)));
    try {
      out.set((await logits.data()) as Float32Array, s * k);
    } finally {
      logits.dispose();
    }
  }
  return out;
}

/** Top-1 labels of a whole set. */
export async function predictLabels(model: Model, set: ImageSet, batchSize = 256, signal?: AbortSignal): Promise<Int32Array> {
  return argmaxRows(await predictLogits(model, set, batchSize, signal), model.numClasses);
}

/** The index of each row's largest value in flat [n, k] logits (the first on ties). */
export function argmaxRows(logits: Float32Array, k: number): Int32Array {
  const pred = new Int32Array(logits.length / k);
  for (let i = 0; i < pred.length; i++) {
    let best = 0;
    for (let j = 1; j < k; j++) if (logits[i * k + j] > logits[i * k + best]) best = j;
    pred[i] = best;
  }
  return pred;
}

/** Penultimate features of a whole set, [n, D]. */
export async function predictFeatures(model: Model, set: ImageSet, batchSize = 256): Promise<{ data: Float32Array; dim: number }> {
  let dim = 0;
  const chunks: Float32Array[] = [];
  for (let s = 0; s < set.n; s += batchSize) {
    const idx = Array.from({ length: Math.min(batchSize, set.n - s) }, (_, i) => s + i);
    const f = tf.tidy(() => {
      const { features } = model.forwardWithFeatures(makeBatch(set, idx, undefined, undefined));
      return features;
    });
    dim = f.shape[1];
    try {
      chunks.push(Float32Array.from((await f.data()) as Float32Array));
    } finally {
      f.dispose();
    }
  }
  const data = new Float32Array(set.n * dim);
  let o = 0;
  for (const c of chunks) {
    data.set(c, o);
    o += c.length;
  }
  return { data, dim };
}
