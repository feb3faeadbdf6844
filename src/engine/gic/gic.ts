/**
 * Guided Input Calibration (SPEC section 5). A learnable transformation g(x) = clip01(x + r(x)) with
 * r(x) = delta * tanh(h(x) / delta) (L_inf) or h(x) projected onto the L2 ball of radius delta (per image), where h is
 * a small residual conv net whose last layer starts at zero (so g starts as the identity), optionally plus an
 * input-independent learnable term. g is trained against the frozen victim (eval mode) to raise its confidence
 * on the true label and to align the BatchNorm input statistics with the running statistics recorded on the
 * victim's training data. The calibrated auxiliary set {(g(x), y)} is then given to the defenses unchanged.
 *
 * Where ONNX Runtime loads, each step is one ONNX Runtime run of a graph holding all of it (g, the bound and the
 * clip, the frozen victim, the loss and the backward pass to g's parameters: ort_calibration_graph.ts); only
 * Adam's update stays on the backend.
 */
import * as tf from '@tensorflow/tfjs-core';
import type { ImageSet } from '../data/dataset';
import { imageSize } from '../data/dataset';
import { Conv2d, ReLU, Sequential } from '../nn/layers';
import type { Model } from '../nn/model';
import { Adam } from '../nn/optim';
import { crossEntropy, makeBatch, makeBatchArray, trainStep } from '../nn/train';
import type { ForwardContext } from '../nn/module';
import { Rng } from '../util/rng';
import { JobError, throwIfAborted } from '../errors';
import { OrtModelGraph } from '../nn/ort_graph';
import { buildCalibrationGraph, calibrationNet, GIC_PREFIX } from '../nn/ort_calibration_graph';
import { stepByKey } from '../nn/ort_train';
import { takeFloats, takeScalars } from '../nn/read';
import type { GicEntry } from '../../shared/results';

export type GicNorm = 'inf' | '2';

export interface GicOptions {
  delta: number;
  norm: GicNorm;
  lambdaBn: number;
  epochs: number;
  lr: number;
  batchSize: number;
  /** Hidden channels of h. */
  width: number;
  /** Add the input-independent learnable term. */
  globalTerm: boolean;
  seed: number;
}

export const GIC_DEFAULTS: GicOptions = { delta: 0.1, norm: 'inf', lambdaBn: 1, epochs: 30, lr: 1e-3, batchSize: 64, width: 16, globalTerm: true, seed: 0 };

/** The calibration network g. Owns its variables. */
export class GicNet {
  readonly h: Sequential;
  readonly globalTerm?: tf.Variable;

  constructor(
    readonly shape: [number, number, number],
    readonly o: GicOptions,
    /** r = delta * tanh(h) instead of delta * tanh(h / delta): only to re-apply a network saved as gic@1. */
    readonly legacyTanh = false,
  ) {
    const rng = new Rng(o.seed).fork('gic-init');
    const c = shape[2];
    const last = new Conv2d(o.width, c, 3, { padding: 1 }, rng);
    // Zero-initialised last layer: r(x) = 0 at the start, so g is the identity before training.
    tf.tidy(() => {
      last.weight.assign(tf.zerosLike(last.weight));
      last.bias!.assign(tf.zerosLike(last.bias!));
    });
    this.h = new Sequential([new Conv2d(c, o.width, 3, { padding: 1 }, rng), new ReLU(), new Conv2d(o.width, o.width, 3, { padding: 1 }, rng), new ReLU(), last]).finalize();
    if (o.globalTerm) this.globalTerm = tf.tidy(() => tf.variable(tf.zeros(shape), true));
  }

  variables(): tf.Variable[] {
    return [...this.h.trainableVariables(), ...(this.globalTerm ? [this.globalTerm] : [])];
  }

  /**
   * The perturbation r(x), bounded by construction. L_inf: r = delta * tanh(h / delta), which is h itself near
   * zero (slope 1 at the origin) and saturates at +-delta. With Adam each step moves h by about lr, so the pixels
   * move by about lr whatever delta is, as in the L2 branch (where r = h inside the ball). The older form
   * delta * tanh(h) moved them by only about delta * lr (0.1 * lr at the default delta): g barely left the
   * identity in a few epochs. `legacyTanh` keeps that older form for networks saved with it (format gic@1).
   */
  residual(x: tf.Tensor4D): tf.Tensor4D {
    return tf.tidy(() => {
      let hx = this.h.forward(x, { training: false });
      if (this.globalTerm) hx = tf.add(hx, this.globalTerm);
      return this.bounded(hx as tf.Tensor4D);
    });
  }

  /** The bound applied to h(x) (plus the global term): the residual r of `residual`. */
  bounded(hx: tf.Tensor4D): tf.Tensor4D {
    return tf.tidy(() => {
      if (this.o.norm === 'inf') {
        const d = this.o.delta;
        return (this.legacyTanh ? tf.mul(tf.tanh(hx), d) : tf.mul(tf.tanh(tf.div(hx, d)), d)) as tf.Tensor4D;
      }
      // L2: scale each image's h(x) into the ball of radius delta.
      const norms = tf.sqrt(tf.add(tf.sum(tf.square(hx), [1, 2, 3], true), 1e-12));
      const scale = tf.minimum(1, tf.div(this.o.delta, norms));
      return tf.mul(hx, scale) as tf.Tensor4D;
    });
  }

  apply(x: tf.Tensor4D): tf.Tensor4D {
    return tf.tidy(() => tf.clipByValue(tf.add(x, this.residual(x)), 0, 1) as tf.Tensor4D);
  }

  dispose(): void {
    this.h.dispose();
    this.globalTerm?.dispose();
  }
}

/** Sum over BatchNorm layers of squared distances between input batch statistics and running statistics. */
function bnDistance(victim: Model, stats: NonNullable<ForwardContext['bnInputStats']>): tf.Scalar {
  return tf.tidy(() => {
    let total: tf.Tensor = tf.scalar(0);
    for (const bn of victim.batchNorms()) {
      const s = stats.get(bn.path);
      if (!s) continue;
      total = tf.add(total, tf.add(tf.sum(tf.squaredDifference(s.mean, bn.runningMean)), tf.sum(tf.squaredDifference(s.variance, bn.runningVar))));
    }
    return total as tf.Scalar;
  });
}

/** The calibration figures of SPEC section 5, as reported in results.json (without the aux set's name). */
export type CalibrationReport = Omit<GicEntry, 'aux'>;

/** Mean victim confidence on the true label and the mean per-batch BN distance of a set. */
export async function measureSet(victim: Model, set: ImageSet, batchSize = 256): Promise<{ confidence: number; bnDistance: number | null }> {
  const hasBn = victim.batchNorms().length > 0;
  let conf = 0;
  let dist = 0;
  let batches = 0;
  for (let s = 0; s < set.n; s += batchSize) {
    const idx = Array.from({ length: Math.min(batchSize, set.n - s) }, (_, i) => s + i);
    const [c, d] = await takeScalars(
      tf.tidy(() => {
        const x = makeBatch(set, idx, undefined, undefined);
        const y = tf.tensor1d(Int32Array.from(idx, (i) => set.y[i]), 'int32');
        const ctx: ForwardContext = { training: false, bnInputStats: hasBn ? new Map() : undefined };
        const p = tf.softmax(victim.forward(x, ctx));
        const cTrue = tf.sum(tf.mul(p, tf.oneHot(y, victim.numClasses)));
        const dd = hasBn ? bnDistance(victim, ctx.bnInputStats!) : tf.scalar(0);
        return [cTrue, dd];
      }),
    );
    conf += c;
    dist += d;
    batches++;
  }
  return { confidence: conf / Math.max(1, set.n), bnDistance: hasBn ? dist / Math.max(1, batches) : null };
}

export interface CalibrationOutput {
  set: ImageSet;
  net: GicNet;
  report: CalibrationReport;
}

/** GIC's loss on a batch, on the backend: CE on g(x) plus lambdaBn times the BN distance (where the victim has BatchNorm). */
export function calibrationLoss(victim: Model, net: GicNet, x: tf.Tensor4D, y: tf.Tensor1D, lambdaBn: number): tf.Scalar {
  return tf.tidy(() => {
    // The victim stays in eval mode: its weights are not trained and its BN uses running stats.
    const ctx: ForwardContext = { training: false, bnInputStats: victim.batchNorms().length > 0 && lambdaBn > 0 ? new Map() : undefined };
    const logits = victim.forward(net.apply(x), ctx);
    const ce = crossEntropy(logits, y);
    return ctx.bnInputStats ? (tf.add(ce, tf.mul(bnDistance(victim, ctx.bnInputStats), lambdaBn)) as tf.Scalar) : ce;
  });
}

/** One step of g on the backend alone (where ONNX Runtime does not load or does not cover the victim); takes `x` and `y`. */
async function backendStep(victim: Model, net: GicNet, vars: tf.Variable[], opt: Adam, x: tf.Tensor4D, y: tf.Tensor1D, lambdaBn: number): Promise<void> {
  try {
    await trainStep(vars, opt, () => calibrationLoss(victim, net, x, y, lambdaBn), false);
  } finally {
    x.dispose();
    y.dispose();
  }
}

/**
 * Train g on `aux` against the frozen victim and return the calibrated set. The caller owns `net` (dispose it
 * or save it). Every calibrated image satisfies ||g(x) - x||_p <= delta exactly (enforced again in float32
 * after the network, since rounding in x + r - x can exceed delta by an ulp).
 */
export async function calibrate(
  victim: Model,
  aux: ImageSet,
  opts: Partial<GicOptions>,
  signal?: AbortSignal,
  progress?: (done: number, total: number, message?: string) => void,
  /**
   * Run the victim's passes through ONNX Runtime where it loads (the job's calibrations do), on `threads`
   * threads (default 1; the figures do not depend on it).
   */
  engine: { ortTraining?: boolean; threads?: number } = {},
): Promise<CalibrationOutput> {
  const o: GicOptions = { ...GIC_DEFAULTS, ...opts };
  const t0 = Date.now();
  const hasBn = victim.batchNorms().length > 0;
  const net = new GicNet(aux.shape, o);
  const opt = new Adam(o.lr);
  const rng = new Rng(o.seed).fork('gic-batches');
  const vars = net.variables();
  const batches = Math.ceil(aux.n / o.batchSize);
  const withBn = hasBn && o.lambdaBn > 0;
  const graphs = engine.ortTraining ? await CalibrationGraphs.create(victim, net, withBn, o.lambdaBn, engine.threads ?? 1) : undefined;
  // The figures before and after through the same forward graph where it has the statistics they need.
  const measure = (set: ImageSet) => (graphs && withBn === hasBn ? graphs.measure(victim, set) : measureSet(victim, set));
  let before: Awaited<ReturnType<typeof measure>>;
  let after: Awaited<ReturnType<typeof measure>>;
  let set: ImageSet;
  try {
    before = await measure(aux);
    for (let e = 0; e < o.epochs; e++) {
      const order = rng.permutation(aux.n);
      for (let b = 0; b < batches; b++) {
        throwIfAborted(signal);
        const idx = order.subarray(b * o.batchSize, Math.min(aux.n, (b + 1) * o.batchSize));
        if (graphs) await graphs.step(opt, makeBatchArray(aux, idx, undefined, undefined), Int32Array.from(idx, (i) => aux.y[i]));
        else await backendStep(victim, net, vars, opt, makeBatch(aux, idx, undefined, undefined), tf.tensor1d(Int32Array.from(idx, (i) => aux.y[i]), 'int32'), o.lambdaBn);
        // Yield after every step: the main thread also relays the cell processes' progress and rows.
        await new Promise((r) => setImmediate(r));
      }
      progress?.(e + 1, o.epochs, `GIC epoch ${e + 1}/${o.epochs}`);
    }
    set = await applyCalibration(net, aux);
    after = await measure(set);
  } catch (e) {
    net.dispose();
    throw e;
  } finally {
    opt.dispose();
    await graphs?.close();
  }
  const pert = perturbationStats(aux, set, o.norm);
  return {
    set,
    net,
    report: {
      delta: o.delta,
      norm: o.norm,
      maxPerturbation: pert.max,
      meanPerturbation: pert.mean,
      confidenceBefore: before.confidence,
      confidenceAfter: after.confidence,
      bnDistanceBefore: before.bnDistance,
      bnDistanceAfter: after.bnDistance,
      seconds: (Date.now() - t0) / 1000,
      // Which terms of the objective ran, with their weights (the BN term only where it could and was asked to).
      objective: hasBn && o.lambdaBn > 0 ? { ce: 1, bn: { weight: o.lambdaBn, layers: victim.batchNorms().length } } : { ce: 1 },
      engine: graphs ? 'onnxruntime' : 'backend',
      note: hasBn ? (o.lambdaBn > 0 ? undefined : 'lambdaBn is 0: the BN-statistics term was off') : 'the model has no BatchNorm layers: the BN-statistics term was skipped',
    },
  };
}

/**
 * The calibration through ONNX Runtime: the whole step (g, the victim, the loss and the gradients of g's
 * parameters) as one graph (ort_calibration_graph.ts), and the victim's forward pass with its BatchNorm input
 * statistics for the figures before and after. The same loss and update as the backend path.
 */
class CalibrationGraphs {
  private constructor(
    readonly forward: OrtModelGraph,
    readonly train: OrtModelGraph,
    /** g's variables under their graph keys. */
    private readonly keyed: Array<[string, tf.Variable]>,
  ) {}

  static async create(victim: Model, net: GicNet, inputStats: boolean, lambdaBn: number, threads: number): Promise<CalibrationGraphs | undefined> {
    const front = { h: net.h, globalTerm: net.globalTerm, delta: net.o.delta, norm: net.o.norm, lambdaBn: inputStats ? lambdaBn : 0 };
    const made = await Promise.all([
      OrtModelGraph.create(victim, { bnTrain: false, loss: 'none', inputStats, constantWeights: true }, threads),
      OrtModelGraph.create(calibrationNet(victim, front), { bnTrain: false, loss: 'ce' }, threads, (o) => buildCalibrationGraph(victim, front, o.nchwcBlock)),
    ]);
    if (made.some((g) => !g)) {
      await Promise.all(made.map((g) => g?.close()));
      return undefined;
    }
    const [a, b] = made as OrtModelGraph[];
    const keyed = calibrationNet(victim, front)
      .namedParams!()
      .filter(([key]) => key.startsWith(GIC_PREFIX))
      .map(([key, p]): [string, tf.Variable] => [key, p.variable]);
    return new CalibrationGraphs(a, b, keyed);
  }

  /** One step of g on the batch `x` (flat NHWC) with labels `y`: the loss and gradients in one run, then Adam. */
  async step(opt: Adam, x: Float32Array, y: Int32Array): Promise<void> {
    const run = await this.train.run(x, y.length, { labels: y });
    if (!Number.isFinite(run.loss)) throw new JobError('calibration diverged (loss is not finite)');
    stepByKey(opt, this.keyed, run.grads!);
  }

  /** measureSet through the forward graph (which must output the input statistics when the victim has BatchNorm). */
  async measure(victim: Model, set: ImageSet, batchSize = 256): Promise<{ confidence: number; bnDistance: number | null }> {
    const hasBn = victim.batchNorms().length > 0;
    const k = victim.numClasses;
    let conf = 0;
    let dist = 0;
    let batches = 0;
    for (let s = 0; s < set.n; s += batchSize) {
      const idx = Array.from({ length: Math.min(batchSize, set.n - s) }, (_, i) => s + i);
      const run = await this.forward.run(makeBatchArray(set, idx, undefined, undefined), idx.length);
      const [c, d] = await takeScalars(
        tf.tidy(() => {
          const p = tf.softmax(tf.tensor2d(run.logits!, [idx.length, k]));
          const cTrue = tf.sum(tf.mul(p, tf.oneHot(tf.tensor1d(Int32Array.from(idx, (i) => set.y[i]), 'int32'), k)));
          const stats = new Map([...(run.inputStats ?? new Map())].map(([path, v]) => [path, { mean: tf.tensor1d(v.mean), variance: tf.tensor1d(v.variance) }]));
          const dd = hasBn ? bnDistance(victim, stats) : tf.scalar(0);
          return [cTrue, dd];
        }),
      );
      conf += c;
      dist += d;
      batches++;
    }
    return { confidence: conf / Math.max(1, set.n), bnDistance: hasBn ? dist / Math.max(1, batches) : null };
  }

  async close(): Promise<void> {
    await Promise.all([this.forward.close(), this.train.close()]);
  }
}

/** g applied to a whole set, with the bound enforced exactly in float32. */
export async function applyCalibration(net: GicNet, set: ImageSet, batchSize = 256): Promise<ImageSet> {
  const size = imageSize(set);
  const out = new Float32Array(set.x.length);
  for (let s = 0; s < set.n; s += batchSize) {
    const idx = Array.from({ length: Math.min(batchSize, set.n - s) }, (_, i) => s + i);
    out.set(await takeFloats(tf.tidy(() => net.apply(makeBatch(set, idx, undefined, undefined)))), s * size);
  }
  enforceBound(set.x, out, size, net.o.delta, net.o.norm);
  return { n: set.n, shape: [...set.shape] as [number, number, number], x: out, y: set.y.slice(), numClasses: set.numClasses };
}

/** Clamp calibrated images into the delta-ball around the originals (and [0,1]), in float32 arithmetic. */
export function enforceBound(x: Float32Array, g: Float32Array, size: number, delta: number, norm: GicNorm): void {
  const f = Math.fround;
  if (norm === 'inf') {
    for (let i = 0; i < x.length; i++) {
      let v = f(Math.min(Math.max(g[i], x[i] - delta, 0), x[i] + delta, 1));
      // Rounding to float32 can land an ulp outside the ball: step back towards x until inside.
      while (Math.abs(v - x[i]) > delta) v = f(v + (v > x[i] ? -1e-7 : 1e-7));
      g[i] = v;
    }
    return;
  }
  for (let s = 0; s < x.length; s += size) {
    let sq = 0;
    for (let i = s; i < s + size; i++) sq += (g[i] - x[i]) ** 2;
    let norm2 = Math.sqrt(sq);
    let shrink = 1;
    while (norm2 > delta) {
      shrink *= (delta / norm2) * (1 - 1e-6);
      sq = 0;
      for (let i = s; i < s + size; i++) {
        const v = f(x[i] + (g[i] - x[i]) * shrink);
        sq += (v - x[i]) ** 2;
      }
      norm2 = Math.sqrt(sq);
    }
    if (shrink !== 1) for (let i = s; i < s + size; i++) g[i] = f(x[i] + (g[i] - x[i]) * shrink);
  }
}

export function perturbationStats(a: ImageSet, b: ImageSet, norm: GicNorm): { max: number; mean: number } {
  const size = imageSize(a);
  let max = 0;
  let sum = 0;
  for (let s = 0; s < a.x.length; s += size) {
    let v = 0;
    for (let i = s; i < s + size; i++) {
      const d = Math.abs(b.x[i] - a.x[i]);
      v = norm === 'inf' ? Math.max(v, d) : v + d * d;
    }
    if (norm === '2') v = Math.sqrt(v);
    max = Math.max(max, v);
    sum += v;
  }
  return { max, mean: sum / Math.max(1, a.n) };
}
