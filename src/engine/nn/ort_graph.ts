/**
 * A model's forward pass, a vector-Jacobian product through it, or its cross-entropy gradients, as an ONNX
 * Runtime session (ort_grad_graph.ts with `loss: 'none'`, `'seed'` or `'ce'`, optionally with BatchNorm scales):
 * the pieces a defense with a loss of its own is built from. The caller computes its loss's gradient with respect to the logits on the backend (a few numbers per
 * image), and ONNX Runtime carries it back through the network to the input pixels (adversarial examples,
 * trigger reversal) and/or to the trainable parameters (an optimizer step). The weights stay TensorFlow.js
 * variables, read at every run, so a model that is being trained is always seen as it is now (a model that does
 * not change while the graph lives may have them baked in instead: `constantWeights`).
 *
 * Only where ONNX Runtime loads (see onnx_runtime.ts); `create` resolves to undefined where it does not, or for
 * a model the graph builder does not cover, and the defense computes on the backend.
 */
import { onnx } from 'onnx-proto';
import { loadOrt, nchwcBlockSize } from '../backend/onnx_runtime';
import { applyBatchStats, ortTrainWanted, type BatchStats } from './ort_train';
import { buildGradGraph } from './ort_grad_graph';
import { OrtGradUnsupported, type GradGraph, type GradGraphOptions, type GraphNet } from './ort_grad_contract';
import { GrowingSession } from './ort_threads';

type OrtTensor = import('onnxruntime-node').Tensor;

/** What a run is fed besides the images. */
export interface GraphFeeds {
  /** d loss / d logits [n, classes]: required by a `seed` graph. */
  dlogits?: Float32Array;
  /** Integer labels: required by a `ce` graph (its loss is their mean cross-entropy). */
  labels?: Int32Array;
  /** Per BatchNorm path, the scales of gamma (`g`) and beta (`b`): required by a `bnScales` graph. */
  scales?: Map<string, { g: Float32Array; b: Float32Array }>;
  /**
   * SAU's unlearning step (a `ce` graph with `unlearning`, run on x then x', 2n images): the n labels of x, and per
   * x' the label f0 gives it and whether it is poisoned (1) or not (0). Takes the place of `labels`.
   */
  unlearning?: { labels: Int32Array; ref: Int32Array; poison: Float32Array };
  /** Per tapped module, the teacher's attention map [n, H*W] (a `ce` graph with `attention`: NAD's student). */
  teacherAttention?: Map<string, Float32Array>;
  /** Per tapped module, d loss / d its output (a `seed` graph with `taps`; zeros where absent). */
  dtaps?: Map<string, Float32Array>;
  /** Per BatchNorm, d loss / d its input's batch mean and variance (a `seed` graph with `inputStats`). */
  dInputStats?: Map<string, { mean: Float32Array; variance: Float32Array }>;
}

export interface GraphRun {
  /** [N, classes] (forward and `seed` graphs). */
  logits?: Float32Array;
  /** The mean cross-entropy (`ce` graphs). */
  loss?: number;
  /** d loss / d scale per BatchNorm path (`bnScales` graphs). */
  scaleGrads?: Map<string, { g: Float32Array; b: Float32Array }>;
  /** The tapped modules' outputs with their shapes (NCHW for feature maps), by path (`taps` graphs). */
  taps?: Map<string, { data: Float32Array; shape: number[] }>;
  /** Each BatchNorm's batch statistics (graphs in training mode); applyBatchStats folds them in. */
  stats?: BatchStats;
  /** Each frozen BatchNorm's input batch mean and biased variance (`inputStats` graphs). */
  inputStats?: BatchStats;
  /** d loss / d pixels, NHWC like the input (with `inputGrad`). */
  dx?: Float32Array;
  /** d loss / d parameter, by trainable parameter key (with `paramGrads`). */
  grads?: Map<string, Float32Array>;
}

/** A split graph's forward run, waiting for its seeds: what the backward part reads, and the run's outputs. */
export interface PendingBackward extends GraphRun {
  /** @internal the forward run's feeds (images, weights, scales) and outputs, as ONNX Runtime tensors. */
  readonly feeds: Record<string, OrtTensor>;
  readonly outputs: Record<string, OrtTensor>;
  readonly n: number;
}

export class OrtModelGraph {
  private closed = false;

  /** The parameters fed at every run: none where they are baked into the session (`constantWeights`). */
  private readonly fedParams: GradGraph['paramInputs'];

  private constructor(
    readonly model: GraphNet,
    private readonly ort: typeof import('onnxruntime-node'),
    /** Grows to the threads granted to this process (ort_threads.ts), as the backward part does. */
    private readonly session: GrowingSession,
    private readonly graph: GradGraph,
    private readonly options: GradGraphOptions,
    /** The backward part of a `split` graph. */
    private readonly backwardSession?: GrowingSession,
  ) {
    this.fedParams = options.constantWeights ? [] : graph.paramInputs;
  }

  /**
   * Undefined where ONNX Runtime is not available here, the model is not covered, or ONNX Runtime refuses it.
   * `build` makes the graph from the options (with this CPU's NCHWc block filled in) when it is not `model`'s own
   * (GIC's whole step, ort_calibration_graph.ts).
   */
  static async create(
    model: GraphNet,
    options: GradGraphOptions,
    threads = 1,
    build: (o: GradGraphOptions) => GradGraph = (o) => buildGradGraph(model, o),
  ): Promise<OrtModelGraph | undefined> {
    const ort = ortTrainWanted() ? loadOrt() : null;
    if (!ort) return undefined;
    let graph: GradGraph;
    try {
      graph = build({ ...options, nchwcBlock: options.nchwcBlock ?? (await nchwcBlockSize(ort)) });
    } catch (e) {
      if (e instanceof OrtGradUnsupported) return undefined;
      throw e;
    }
    const made: GrowingSession[] = [];
    try {
      const weights = options.constantWeights ? await currentWeights(model, graph.paramInputs) : undefined;
      const bytesOf = (b: Uint8Array) => (weights ? bakeWeights(b, weights) : b);
      // On `threads`, or on the grant's where that is more; a grant that comes later is taken at a later run.
      made.push(await GrowingSession.create(ort, bytesOf(graph.bytes), threads));
      if (graph.backward) made.push(await GrowingSession.create(ort, bytesOf(graph.backward.bytes), threads));
      return new OrtModelGraph(model, ort, made[0], graph, options, made[1]);
    } catch (e) {
      if (process.env.DEBUG_ORT) console.error(e);
      await Promise.all(made.map((m) => m.release()));
      return undefined;
    }
  }

  /** The ONNX Runtime threads of the session that runs next (ort_threads.ts). */
  get threads(): number {
    return this.session.threads;
  }

  /** The keys of the trainable parameters the gradients come out for. */
  get gradKeys(): string[] {
    return this.graph.gradKeys;
  }

  /** The forward pass's logits of `n` images `x` (flat NHWC pixels in [0,1]). */
  async logits(x: Float32Array, n: number): Promise<Float32Array> {
    if (this.backwardSession) throw new Error('a split graph runs as forward() then backward()');
    return (await this.run(x, n)).logits!;
  }

  /**
   * Run on `n` images `x` (flat NHWC pixels in [0,1]) with what the graph's form needs (GraphFeeds): the
   * loss's gradient with respect to the logits (`seed`), the labels (`ce`), the BatchNorm scales (`bnScales`).
   */
  async run(x: Float32Array, n: number, f: GraphFeeds = {}, source: GraphNet = this.model): Promise<GraphRun> {
    if (this.backwardSession) throw new Error('a split graph runs as forward() then backward()');
    const feeds = await this.inputFeeds(x, n, f, source);
    if ((this.options.loss ?? 'ce') === 'seed') Object.assign(feeds, this.seedFeeds(n, f));
    try {
      return this.read(await this.session.run(feeds));
    } finally {
      for (const t of Object.values(feeds)) t.dispose();
    }
  }

  /**
   * A `split` graph's forward pass: its outputs now (logits, taps, input statistics), and what `backward` needs
   * to carry the seeds computed from them back through the same pass. Every pending run must reach `backward`
   * or `discard`.
   */
  async forward(x: Float32Array, n: number, f: Pick<GraphFeeds, 'scales'> = {}): Promise<PendingBackward> {
    if (!this.backwardSession) throw new Error('forward() and backward() need a graph made with split');
    const feeds = await this.inputFeeds(x, n, f);
    try {
      const outputs = await this.session.run(feeds);
      return { ...this.read(outputs), feeds, outputs, n };
    } catch (e) {
      for (const t of Object.values(feeds)) t.dispose();
      throw e;
    }
  }

  /** The gradients of a pending forward pass for the seeds `f` (dlogits, dtaps, dInputStats); releases it. */
  async backward(pending: PendingBackward, f: GraphFeeds): Promise<GraphRun> {
    if (!this.backwardSession) throw new Error('forward() and backward() need a graph made with split');
    const seeds = this.seedFeeds(pending.n, f);
    try {
      const feeds: Record<string, OrtTensor> = {};
      for (const name of this.backwardSession.inputNames) {
        const t = seeds[name] ?? pending.feeds[name] ?? pending.outputs[name];
        if (!t) throw new Error(`the backward graph needs ${name}`);
        feeds[name] = t;
      }
      return this.read(await this.backwardSession.run(feeds));
    } finally {
      for (const t of Object.values(seeds)) t.dispose();
      this.discard(pending);
    }
  }

  /** Release a pending forward pass without running its backward part. */
  discard(pending: PendingBackward): void {
    for (const t of [...Object.values(pending.feeds), ...Object.values(pending.outputs)]) t.dispose();
  }

  /**
   * The images, labels, scales and weights a run is fed (the seeds apart). The weights are `source`'s: the
   * graph's own model, or another of the same structure (a pruned copy of it), read as they are now.
   */
  private async inputFeeds(x: Float32Array, n: number, f: GraphFeeds, source: GraphNet = this.model): Promise<Record<string, OrtTensor>> {
    if (this.closed) throw new Error('ONNX Runtime graph is closed');
    const [h, w, c] = this.model.inputShape;
    const k = this.model.numClasses;
    const feeds: Record<string, OrtTensor> = { x: new this.ort.Tensor('float32', x, [n, h, w, c]) };
    if ((this.options.loss ?? 'ce') === 'ce' && this.options.unlearning) {
      const u = f.unlearning;
      const half = n / 2;
      if (!u || !Number.isInteger(half) || u.labels.length !== half || u.ref.length !== half || u.poison.length !== half) throw new Error(`the unlearning step runs on x then x' and needs ${half} labels, references and poison flags`);
      const target = new Float32Array(n * k);
      const ref = new Float32Array(n * k);
      for (let i = 0; i < half; i++) {
        target[i * k + u.labels[i]] = 1;
        if (u.poison[i]) ref[(half + i) * k + u.ref[i]] = 1;
      }
      feeds.target = new this.ort.Tensor('float32', target, [n, k]);
      feeds.sar_ref = new this.ort.Tensor('float32', ref, [n, k]);
      feeds.inv_batch = new this.ort.Tensor('float32', Float32Array.of(1 / half), [1]);
    } else if ((this.options.loss ?? 'ce') === 'ce') {
      if (!f.labels || f.labels.length !== n) throw new Error(`labels must hold ${n} values`);
      const target = new Float32Array(n * k);
      for (let i = 0; i < n; i++) target[i * k + f.labels[i]] = 1;
      feeds.target = new this.ort.Tensor('float32', target, [n, k]);
      feeds.inv_batch = new this.ort.Tensor('float32', Float32Array.of(1 / n), [1]);
      if (this.options.attention) {
        for (const { path, shape } of this.graph.taps) {
          const hw = shape.length === 4 ? shape[2] * shape[3] : 1;
          const a = f.teacherAttention?.get(path);
          if (!a || a.length !== n * hw) throw new Error(`the teacher's attention map of ${path} must hold ${n} x ${hw} values`);
          feeds[`tattn/${path}`] = new this.ort.Tensor('float32', a, [n, hw]);
        }
      }
    }
    for (const { path, channels } of this.graph.bnScales) {
      const s = f.scales?.get(path);
      if (!s || s.g.length !== channels || s.b.length !== channels) throw new Error(`scales of ${path} must hold ${channels} values each`);
      feeds[`gscale/${path}`] = new this.ort.Tensor('float32', s.g, [channels]);
      feeds[`bscale/${path}`] = new this.ort.Tensor('float32', s.b, [channels]);
    }
    if (source !== this.model && this.options.constantWeights) throw new Error('a graph with constant weights computes its own model only');
    const params = new Map(source.namedParams?.() ?? source.root.namedParams());
    for (const { key, shape } of this.fedParams) {
      const p = params.get(key);
      if (!p || p.variable.size !== shape.reduce((a, b) => a * b, 1)) throw new Error(`the model fed to this graph has no parameter ${key} of shape ${shape.join('x')}`);
    }
    // Read asynchronously: a GPU backend has no synchronous read under Node.
    const values = await Promise.all(this.fedParams.map(({ key }) => params.get(key)!.variable.data() as Promise<Float32Array>));
    this.fedParams.forEach(({ key, shape }, i) => (feeds[key] = new this.ort.Tensor('float32', values[i], shape)));
    return feeds;
  }

  /** The seeds of a `seed` graph: d loss / d logits, and (zeros where not given) d loss / d taps and input statistics. */
  private seedFeeds(n: number, f: GraphFeeds): Record<string, OrtTensor> {
    const feeds: Record<string, OrtTensor> = {};
    const dims = [n, ...this.graph.outputShape.slice(1)];
    const size = dims.reduce((a, b) => a * b, 1);
    if (!f.dlogits || f.dlogits.length !== size) throw new Error(`dlogits must hold ${dims.join(' x ')} values`);
    feeds.dlogits = new this.ort.Tensor('float32', f.dlogits, dims);
    for (const { path, shape } of this.graph.taps) {
      const tapDims = [n, ...shape.slice(1)];
      const tapSize = tapDims.reduce((a, b) => a * b, 1);
      const d = f.dtaps?.get(path) ?? new Float32Array(tapSize);
      if (d.length !== tapSize) throw new Error(`dtaps of ${path} must hold ${tapSize} values`);
      feeds[`dtap/${path}`] = new this.ort.Tensor('float32', d, tapDims);
    }
    for (const { path, channels } of this.graph.inputStats) {
      const d = f.dInputStats?.get(path);
      feeds[`dimean/${path}`] = new this.ort.Tensor('float32', d?.mean ?? new Float32Array(channels), [channels]);
      feeds[`divar/${path}`] = new this.ort.Tensor('float32', d?.variance ?? new Float32Array(channels), [channels]);
    }
    return feeds;
  }

  /** A run's outputs as GraphRun (whichever of them this graph, or this part of it, has). */
  private read(out: Record<string, OrtTensor>): GraphRun {
    const result: GraphRun = {};
    if (out.logits) result.logits = out.logits.data as Float32Array;
    if (out.loss) result.loss = (out.loss.data as Float32Array)[0];
    if (this.graph.taps.length && out[`tap/${this.graph.taps[0].path}`]) {
      result.taps = new Map();
      for (const { path } of this.graph.taps) result.taps.set(path, { data: out[`tap/${path}`].data as Float32Array, shape: [...out[`tap/${path}`].dims] });
    }
    if (this.graph.inputStats.length && out[`imean/${this.graph.inputStats[0].path}`]) {
      result.inputStats = new Map();
      for (const { path } of this.graph.inputStats) result.inputStats.set(path, { mean: out[`imean/${path}`].data as Float32Array, variance: out[`ivar/${path}`].data as Float32Array });
    }
    if (this.graph.bnPaths.length && out[`mean/${this.graph.bnPaths[0]}`]) {
      result.stats = new Map();
      for (const p of this.graph.bnPaths) result.stats.set(p, { mean: out[`mean/${p}`].data as Float32Array, variance: out[`var/${p}`].data as Float32Array });
    }
    if (this.graph.bnScales.length && out[`grad/gscale/${this.graph.bnScales[0].path}`]) {
      result.scaleGrads = new Map();
      for (const { path } of this.graph.bnScales) result.scaleGrads.set(path, { g: out[`grad/gscale/${path}`].data as Float32Array, b: out[`grad/bscale/${path}`].data as Float32Array });
    }
    if (out['grad/x']) result.dx = out['grad/x'].data as Float32Array;
    if (this.graph.gradKeys.length && out[`grad/${this.graph.gradKeys[0]}`]) {
      result.grads = new Map();
      for (const key of this.graph.gradKeys) result.grads.set(key, out[`grad/${key}`].data as Float32Array);
    }
    return result;
  }

  /** Fold a training-mode run's batch statistics of `n` images into the model's BatchNorm running statistics. */
  applyBatchStats(stats: BatchStats, n: number): void {
    applyBatchStats(this.model, this.graph, stats, n);
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.session.release();
    await this.backwardSession?.release();
  }
}

/** The model's parameters that the graph takes as inputs, read now, with their shapes. */
async function currentWeights(model: GraphNet, inputs: GradGraph['paramInputs']): Promise<Map<string, { data: Float32Array; shape: number[] }>> {
  const params = new Map(model.namedParams?.() ?? model.root.namedParams());
  const out = new Map<string, { data: Float32Array; shape: number[] }>();
  for (const { key, shape } of inputs) out.set(key, { data: Float32Array.from((await params.get(key)!.variable.data()) as Float32Array), shape });
  return out;
}

/** An encoded graph with the inputs named in `weights` turned into initializers holding those values. */
export function bakeWeights(bytes: Uint8Array, weights: Map<string, { data: Float32Array; shape: number[] }>): Uint8Array {
  const model = onnx.ModelProto.decode(bytes);
  const graph = model.graph!;
  const inputs = graph.input ?? [];
  graph.input = inputs.filter((i) => !weights.has(i.name!));
  graph.initializer = graph.initializer ?? [];
  for (const i of inputs) {
    const w = weights.get(i.name!);
    if (!w) continue;
    graph.initializer.push(onnx.TensorProto.create({ name: i.name, dims: w.shape, dataType: onnx.TensorProto.DataType.FLOAT, rawData: new Uint8Array(w.data.buffer, w.data.byteOffset, w.data.byteLength) }));
  }
  return onnx.ModelProto.encode(model).finish();
}
