/**
 * Training steps computed by ONNX Runtime. The forward and backward pass of a batch run as one ONNX graph
 * (ort_grad_graph.ts) on ONNX Runtime's CPU kernels with one thread per core; the weights stay TensorFlow.js
 * variables, fed to the graph at every step, and the gradients it returns go through the caller's optimizer,
 * so the update rule, the schedule, the BatchNorm running statistics and everything after a step are those of
 * the TensorFlow.js path. A step is the gradient of the whole batch's mean cross-entropy (BatchNorm normalizes
 * with the statistics of the whole batch, as one PyTorch process does).
 *
 * Only on the main thread (ONNX Runtime's native binding cannot live in worker threads, see ort_eval.ts), only
 * where onnxruntime-node loads, and only for models the graph builder covers: `OrtTrainer.create` resolves to
 * undefined otherwise and the caller trains on the backend.
 */
import * as tf from '@tensorflow/tfjs-core';
import { JobError } from '../errors';
import { loadOrt, nchwcBlockSize, ortWanted } from '../backend/onnx_runtime';
import type { Model } from './model';
import { SGD, sgdStepInPlace, type Optimizer } from './optim';
import type { BatchStepper } from './train';
import { gradGraphFor } from './grad_graph_cache';
import { OrtGradUnsupported, type GradGraph } from './ort_grad_contract';
import { BatchNorm2d } from './layers';
import { DataParallel } from './data_parallel';
import type { BackendName } from '../backend';
import { cpuCores } from '../util/cores';
import { GrowingSession } from './ort_threads';

type OrtTensor = import('onnxruntime-node').Tensor;

/** Whether training may use ONNX Runtime: BACKDOOR_AUDIT_ORT_TRAIN=0 (or BACKDOOR_AUDIT_ORT=0) turns it off. */
export function ortTrainWanted(): boolean {
  return process.env.BACKDOOR_AUDIT_ORT_TRAIN !== '0' && ortWanted();
}

/**
 * The trainable weights of a trainer's model and their momentum buffers held as arrays between `resident`
 * steps (see OrtTrainer.step), with the optimizer they step with, until `flush` writes them back.
 */
interface ResidentWeights {
  optimizer: SGD;
  params: Map<string, { variable: tf.Variable; values: Float32Array; momentum: Float32Array; hasMomentum: boolean }>;
}

export class OrtTrainer implements BatchStepper {
  private closed = false;
  private resident?: ResidentWeights;

  private constructor(
    readonly model: Model,
    private readonly ort: typeof import('onnxruntime-node'),
    /** Grows to the threads granted to this process (ort_threads.ts), made ahead where a grant is expected. */
    private readonly session: GrowingSession,
    private readonly graph: GradGraph,
    readonly bnTrain: boolean,
  ) {}

  /** The ONNX Runtime threads of the session that runs the next step. */
  get threads(): number {
    return this.session.threads;
  }

  /** The threads of the session being made ahead (expectOrtThreads, a grant), once it is made; 0: none. */
  aheadThreads(): Promise<number> {
    return this.session.aheadThreads();
  }

  /**
   * A trainer for `model` with BatchNorm in training mode (`bnTrain`) or frozen; undefined where ONNX Runtime
   * is not available here, the model has a module without a backward rule in the graph builder, or ONNX
   * Runtime refuses the graph.
   */
  static async create(model: Model, o: { bnTrain?: boolean; threads?: number } = {}): Promise<OrtTrainer | undefined> {
    const ort = ortTrainWanted() ? loadOrt() : null;
    if (!ort) return undefined;
    const bnTrain = o.bnTrain ?? true;
    let graph: GradGraph;
    try {
      graph = gradGraphFor(model, { bnTrain, nchwcBlock: await nchwcBlockSize(ort) });
    } catch (e) {
      if (e instanceof OrtGradUnsupported) return undefined;
      throw e;
    }
    let session: GrowingSession;
    try {
      // Made after a grant: on the granted threads from the first step.
      session = await GrowingSession.create(ort, graph.bytes, o.threads ?? cpuCores(), { ahead: true });
    } catch {
      // A graph this ONNX Runtime refuses (an older build without an operator) trains on the backend.
      return undefined;
    }
    return new OrtTrainer(model, ort, session, graph, bnTrain);
  }

  /**
   * Build ahead the graph that `create(model, { bnTrain })` and the trainers of its clones will use
   * (grad_graph_cache.ts), with ONNX Runtime loaded: a cell process does it while it waits for its first cell.
   * Resolves to false where this model or process cannot train on ONNX Runtime.
   */
  static async prepare(model: Model, o: { bnTrain?: boolean } = {}): Promise<boolean> {
    const ort = ortTrainWanted() ? loadOrt() : null;
    if (!ort) return false;
    try {
      gradGraphFor(model, { bnTrain: o.bnTrain ?? true, nchwcBlock: await nchwcBlockSize(ort) });
      return true;
    } catch (e) {
      if (e instanceof OrtGradUnsupported) return false;
      throw e;
    }
  }

  /** The step's gradients in the variables' layout, its mean loss and the BatchNorm batch statistics. */
  async gradients(x: Float32Array, shape: [number, number, number], labels: Int32Array, smoothing = 0): Promise<{ loss: number; grads: Map<string, Float32Array>; stats: Map<string, { mean: Float32Array; variance: Float32Array }> }> {
    if (this.closed) throw new Error('ONNX Runtime trainer is closed');
    const n = labels.length;
    const k = this.model.numClasses;
    // Label smoothing as crossEntropy's (train.ts): 1 - s on the label, s / (K - 1) on the others.
    const target = new Float32Array(n * k).fill(smoothing / (k - 1));
    for (let i = 0; i < n; i++) target[i * k + labels[i]] = 1 - smoothing;
    const params = new Map(this.model.root.namedParams());
    const feeds: Record<string, OrtTensor> = {
      x: new this.ort.Tensor('float32', x, [n, ...shape]),
      target: new this.ort.Tensor('float32', target, [n, k]),
      inv_batch: new this.ort.Tensor('float32', Float32Array.of(1 / n), [1]),
    };
    const held = this.resident?.params;
    const values = await Promise.all(this.graph.paramInputs.map(({ key }) => held?.get(key)?.values ?? (params.get(key)!.variable.data() as Promise<Float32Array>)));
    this.graph.paramInputs.forEach(({ key, shape: s }, i) => (feeds[key] = new this.ort.Tensor('float32', values[i], s)));
    try {
      const out = await this.session.run(feeds);
      const grads = new Map<string, Float32Array>();
      for (const key of this.graph.gradKeys) grads.set(key, out[`grad/${key}`].data as Float32Array);
      const stats = new Map<string, { mean: Float32Array; variance: Float32Array }>();
      for (const p of this.graph.bnPaths) stats.set(p, { mean: out[`mean/${p}`].data as Float32Array, variance: out[`var/${p}`].data as Float32Array });
      return { loss: (out.loss.data as Float32Array)[0], grads, stats };
    } finally {
      for (const t of Object.values(feeds)) t.dispose();
    }
  }

  /**
   * One optimizer step on the batch `x` (flat NHWC pixels) with integer `labels`, all trainable variables, the
   * mean cross-entropy; resolves to the loss. `bnTrain` must be the mode the trainer was built for.
   *
   * `resident` (with an SGD optimizer): the trainable weights and their momentum stay arrays of this trainer
   * from step to step, fed to ONNX Runtime as they are and updated in place by sgdStepInPlace (the same bits as
   * SGD.step), instead of being read out of the backend, stepped by a few backend ops per weight and written
   * back at every step: in a CPU profile of the zoo's FT job (width-16 PreAct-ResNet18, 40 steps of 128 images
   * on the wasm backend) the cell process spent about 440 ms in those updates and 360 ms collecting garbage,
   * and 174 and 98 ms this way. The model's variables are stale until `flush` (or `close`, or a step that is not
   * resident): the caller must not read the model in between.
   */
  async step(optimizer: Optimizer, x: Float32Array, shape: [number, number, number], labels: Int32Array, bnTrain: boolean, o: { resident?: boolean } = {}): Promise<number> {
    if (bnTrain !== this.bnTrain) throw new Error(`ONNX Runtime trainer was built with BatchNorm ${this.bnTrain ? 'training' : 'frozen'}`);
    const resident = o.resident && optimizer instanceof SGD ? this.holdWeights(optimizer) : undefined;
    if (!resident) this.flush();
    const { loss, grads, stats } = await this.gradients(x, shape, labels);
    if (!Number.isFinite(loss)) throw new JobError('training diverged (loss is not finite)');
    if (resident) {
      const { lr, momentum, weightDecay, nesterov } = resident.optimizer;
      for (const [key, p] of resident.params) {
        sgdStepInPlace(p.values, grads.get(key)!, p.momentum, p.hasMomentum, { lr, momentum, weightDecay, nesterov });
        p.hasMomentum = momentum !== 0;
      }
    } else applyGradients(this.model, optimizer, grads);
    this.applyBatchStats(stats, labels.length);
    return loss;
  }

  /** The weights held for resident steps with `optimizer`, read now if they are not held yet. */
  private holdWeights(optimizer: SGD): ResidentWeights {
    if (this.resident?.optimizer === optimizer) return this.resident;
    this.flush();
    const params: ResidentWeights['params'] = new Map();
    const grads = new Set(this.graph.gradKeys);
    for (const [key, p] of this.model.root.namedParams()) {
      if (!p.trainable) continue;
      // Every trainable weight has its gradient in the graph (applyGradients relies on it too).
      if (!grads.has(key)) throw new Error(`the training graph has no gradient for ${key}`);
      const held = optimizer.momentumOf(p.variable);
      // Copies: a backend may hand out its own storage (the cpu backend does), which a clone's variables share
      // with the model it was cloned from.
      params.set(key, { variable: p.variable, values: (p.variable.dataSync() as Float32Array).slice(), momentum: held ?? new Float32Array(p.variable.size), hasMomentum: held !== undefined });
    }
    return (this.resident = { optimizer, params });
  }

  /** Write the weights (and momentum buffers) held for resident steps back into the model and the optimizer. */
  flush(): void {
    const r = this.resident;
    if (!r) return;
    this.resident = undefined;
    tf.tidy(() => {
      for (const p of r.params.values()) {
        p.variable.assign(tf.tensor(p.values, p.variable.shape));
        if (p.hasMomentum) r.optimizer.setMomentum(p.variable, p.momentum);
      }
    });
  }

  /** BatchNorm's running statistics from the batch's (see applyBatchStats). */
  applyBatchStats(stats: BatchStats, batch: number): void {
    applyBatchStats(this.model, this.graph, stats, batch);
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.flush();
    this.closed = true;
    await this.session.release();
  }
}

/**
 * One optimizer step on every trainable variable of `model`, from gradients by parameter key as the graphs
 * return them; `adjust` may change a variable's gradient first (a penalty's term, a negation for ascent).
 */
export function applyGradients(model: Pick<Model, 'root'>, optimizer: Optimizer, grads: Map<string, Float32Array>, adjust?: (v: tf.Variable, g: tf.Tensor) => tf.Tensor): void {
  const params = model.root.namedParams().filter(([, p]) => p.trainable);
  stepByKey(
    optimizer,
    params.map(([key, p]) => [key, p.variable]),
    grads,
    adjust,
  );
}

/** One optimizer step on `vars` (graph key, variable), from gradients by graph key (those of some parameters only). */
export function stepByKey(optimizer: Optimizer, vars: Array<[string, tf.Variable]>, grads: Map<string, Float32Array>, adjust?: (v: tf.Variable, g: tf.Tensor) => tf.Tensor): void {
  const gradTensors = vars.map(([key, v]) => tf.tidy(() => {
    const g = tf.tensor(grads.get(key)!, v.shape);
    return adjust ? adjust(v, g) : g;
  }));
  try {
    optimizer.step(
      vars.map(([, v]) => v),
      gradTensors,
    );
  } finally {
    tf.dispose(gradTensors);
  }
}

/** Each BatchNorm's batch mean and biased variance from a graph run in training mode, by module path. */
export type BatchStats = Map<string, { mean: Float32Array; variance: Float32Array }>;

/**
 * BatchNorm's running statistics from a batch's, as layers.ts updates them: momentum, and the unbiased
 * variance over the layer's own N x H x W positions.
 */
export function applyBatchStats(model: Pick<Model, 'root'>, graph: Pick<GradGraph, 'bnSpatial'>, stats: BatchStats, batch: number): void {
  if (!stats.size) return;
  for (const m of model.root.modules()) {
    if (!(m instanceof BatchNorm2d)) continue;
    const s = stats.get(m.path);
    if (!s) continue;
    const mom = m.momentum;
    const count = batch * (graph.bnSpatial.get(m.path) ?? 1);
    const unbiased = count > 1 ? count / (count - 1) : 1;
    tf.tidy(() => {
      m.runningMean.assign(tf.add(tf.mul(m.runningMean, 1 - mom), tf.mul(tf.tensor1d(s.mean), mom)));
      m.runningVar.assign(tf.add(tf.mul(m.runningVar, 1 - mom), tf.mul(tf.tensor1d(s.variance), mom * unbiased)));
    });
    m.numBatchesTracked++;
  }
}

/**
 * The fastest way to fit `model` on plain cross-entropy here: on the CPU backends, ONNX Runtime on `threads`
 * cores where it loads and covers the model, else data-parallel replicas (one per thread); undefined on the
 * native and GPU backends, which use the hardware themselves (the caller runs fit() on this thread).
 */
export async function createCpuTrainer(model: Model, o: { backend: BackendName; threads: number; bnTrain?: boolean }): Promise<BatchStepper | undefined> {
  if (o.backend !== 'wasm' && o.backend !== 'cpu') return undefined;
  return (await OrtTrainer.create(model, { bnTrain: o.bnTrain, threads: o.threads })) ?? (await DataParallel.create(model, o.threads, o.backend));
}
