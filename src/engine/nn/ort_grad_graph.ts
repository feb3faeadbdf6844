/**
 * A training step as one ONNX graph: the forward pass of the module graph in training mode, the cross-entropy
 * loss and the backward pass written out as ordinary ONNX operators, so that ONNX Runtime's CPU kernels (MLAS:
 * AVX2/FMA GEMMs and convolutions on every core) compute the gradients instead of the single-threaded wasm
 * backend. ONNX Runtime's npm build has no training API; the backward pass is built here, one rule per layer:
 *
 *   - Conv2d: input gradient = for stride 1, a Conv of the output gradient with the kernel turned by 180
 *     degrees and its channel axes swapped; for larger strides, ConvTranspose with the same weights (and an
 *     output_padding that restores the input size). Weight gradient = the input's k*k shifted views gathered
 *     as a matrix [in*k*k, N*ho*wo] times the output gradient's [N*ho*wo, out] (one GEMM over the whole batch;
 *     transposed where out > in*k*k, so that the result does not depend on the thread count, see
 *     convWeightGradient). Bias gradient = the sum of the output gradient over batch and space. The forward convolutions
 *     and the stride-1 input gradients run on MLAS's blocked NCHWc kernels where the CPU has them (both
 *     convolution rules are in ort_conv_ops.ts).
 *   - BatchNorm2d (batch statistics): the closed form dx = k (dy - mean(dy) - xc invstd^2 mean(dy xc)), with
 *     k = gamma invstd and xc = x - mean; gamma's gradient is sum(dy xc) invstd, beta's sum(dy). With frozen
 *     statistics it is the affine map x k + c and its gradients.
 *   - ReLU: the output gradient where the output is positive.
 *   - MaxPool2d: the output gradient scattered (added) to the arg-max positions MaxPool reports.
 *   - Average pools: the output gradient spread evenly over each window (the pooling rules and Flatten's are in
 *     ort_pool_ops.ts).
 *   - Linear: the usual three products; Flatten: a reshape back.
 *   - Residual additions: a tensor used twice receives the sum of both gradients.
 *
 * The graph's inputs are the batch (NHWC pixels in [0,1], as the module graph takes them; normalization and
 * the NCHW transpose happen inside), the target distribution [N, classes] (one-hot or smoothed), 1/N, and every
 * parameter in the module graph's own layout (HWIO convolutions, [in, out] linear layers), fed fresh at every
 * step. Its outputs are the mean loss, every trainable parameter's gradient in the same layout, and each
 * BatchNorm's batch mean and biased variance (the caller updates the running statistics, as layers.ts does).
 *
 * Imported ONNX graphs are emitted node by node where every node has a rule here, and a module inserted in front
 * of a layer (BatchNorm put back into a folded graph, NPD's polarizer) is emitted before it. Modules without a
 * rule (BN masks, imported nodes such as reshapes or constant operands, dropout) make the builder throw
 * OrtGradUnsupported; the caller then trains on the TensorFlow.js backend.
 */
import { onnx } from 'onnx-proto';
import { NCHWC_DOMAIN } from '../backend/onnx_runtime';
import { OnnxBuilder } from '../formats/onnx_builder';
import type { Module, Param } from './module';
import { GRAD_OPSET, OrtGradUnsupported, type GradGraph, type GradGraphOptions, type GraphNet } from './ort_grad_contract';
import { splitForwardBackward } from './ort_graph_split';
import { convolution, convWeightGradient, type NodeEmitter } from './ort_conv_ops';
import { attentionDistance } from './ort_attention_ops';
import { avgPool, flatten, globalAvgPool, maxPool, type RuleHost } from './ort_pool_ops';
import { unlearningLoss } from './ort_unlearning_ops';
import { batchNormInputGradient, channelSum, inverseStd, meanGradient, moments, varianceGradient } from './ort_batchnorm_ops';
import { AdaptiveAvgPool2d, AvgPool2d, BatchNorm2d, Conv2d, Dropout, Linear, MaxPool2d } from './layers';

/** ONNX Runtime's contrib operators (FusedMatMul). */
const MS_DOMAIN = 'com.microsoft';

const T = onnx.TensorProto.DataType;

/** What the builder reads of an imported ONNX graph (models/onnx_graph.ts's OnnxGraph). */
interface ImportedGraph {
  steps: Array<{ module: Module; node: { op: string; name: string; outputs: string[] }; dyn: string[] }>;
  onnxIo: { input: string; output: string };
}

/** Imported nodes that are layers of the module graph, emitted by their own rules. */
const LAYER_KINDS = new Set(['Conv2d', 'BatchNorm2d', 'ReLU', 'MaxPool2d', 'AvgPool2d', 'Identity', 'Dropout', 'Linear']);

function valueInfo(name: string, shape: number[], elemType: number = T.FLOAT): onnx.IValueInfoProto {
  return onnx.ValueInfoProto.create({
    name,
    type: { tensorType: { elemType, shape: { dim: shape.map((d) => (d < 0 ? { dimParam: 'N' } : { dimValue: d })) } } },
  });
}

/** Forward emission with a tape of backward rules, run in reverse once the loss is in place. */
export class GradBuilder {
  readonly b = new OnnxBuilder();
  protected readonly tape: Array<() => void> = [];
  protected readonly grads = new Map<string, string>();
  /** Tensors that depend on a trainable parameter (only they need gradients). */
  protected readonly live = new Set<string>();
  readonly paramInputs: Array<{ key: string; shape: number[] }> = [];
  readonly gradOutputs: Array<{ key: string; name: string; shape: number[] }> = [];
  readonly statOutputs: Array<{ name: string; shape: number[] }> = [];
  readonly bnPaths: string[] = [];
  readonly bnSpatial = new Map<string, number>();
  readonly bnScales: Array<{ path: string; channels: number }> = [];
  /** The graph input holding 1/N (the batch size is symbolic). */
  protected readonly invBatch = 'inv_batch';
  private n = 0;

  readonly bnTrain: boolean;
  private readonly loss: 'ce' | 'seed' | 'none';
  /** Whether the parameters emitted next get gradients (a calibration graph turns it off for the victim). */
  protected paramGrads: boolean;
  /** Prefix of the parameter inputs emitted next (a calibration graph's `gic/` for g's network). */
  protected paramPrefix = '';
  private readonly inputGrad: boolean;
  private readonly scaled: boolean;
  private readonly tapPaths: Set<string>;
  private readonly trainableKeys?: Set<string>;
  private readonly tapTensors = new Map<string, string>();
  private readonly withInputStats: boolean;
  protected readonly inputStatTensors: Array<{ path: string; channels: number; mean: string; variance: string }> = [];

  private readonly mapOutput: boolean;
  private readonly split: boolean;
  private readonly attention: number[] | undefined;
  private readonly unlearning: { lambda: number } | undefined;
  private readonly nchwcBlock: number;
  /** ONNX Runtime's own operator domains the graph's nodes use, imported at version 1. */
  private readonly domainsUsed = new Set<string>();

  constructor(
    private readonly model: GraphNet,
    o: GradGraphOptions,
  ) {
    this.mapOutput = o.mapOutput ?? false;
    if (this.mapOutput && (o.loss ?? 'ce') === 'ce') throw new Error('a feature-map output has no cross-entropy');
    this.bnTrain = o.bnTrain;
    this.loss = o.loss ?? 'ce';
    this.paramGrads = this.loss !== 'none' && (o.paramGrads ?? true);
    this.inputGrad = this.loss !== 'none' && (o.inputGrad ?? false);
    this.scaled = o.bnScales ?? false;
    this.tapPaths = new Set(o.taps ?? []);
    this.trainableKeys = o.trainable ? new Set(o.trainable) : undefined;
    this.withInputStats = (o.inputStats ?? false) && !o.bnTrain;
    this.split = o.split ?? false;
    this.nchwcBlock = o.nchwcBlock ?? 0;
    if (this.split && this.loss !== 'seed') throw new Error('only a seed graph splits into forward and backward parts');
    this.attention = o.attention;
    if (this.attention && (this.loss !== 'ce' || this.attention.length !== this.tapPaths.size)) throw new Error('attention terms need a ce graph and one weight per tap');
    this.unlearning = o.unlearning;
    if (this.unlearning && this.loss !== 'ce') throw new Error("SAU's unlearning loss needs a ce graph");
  }

  protected op(opType: string, inputs: string[], attrs: Parameters<OnnxBuilder['node']>[2], shape: number[], outputs?: string[]): string {
    return this.b.node(opType, inputs, attrs, `${opType}_${++this.n}`, shape, outputs);
  }

  /** A node of one of ONNX Runtime's own operator domains (NCHWc kernels, contrib operators). */
  private domainOp(domain: string, opType: string, inputs: string[], attrs: Parameters<OnnxBuilder['node']>[2], shape: number[]): string {
    const out = this.op(opType, inputs, attrs, shape);
    this.b.nodes[this.b.nodes.length - 1].domain = domain;
    this.domainsUsed.add(domain);
    return out;
  }

  /** The node emission the rules of ort_conv_ops.ts and ort_batchnorm_ops.ts build with. */
  private readonly emit: NodeEmitter = {
    op: (opType, inputs, attrs, shape, outputs) => this.op(opType, inputs, attrs, shape, outputs),
    nchwcOp: (opType, inputs, attrs, shape) => this.domainOp(NCHWC_DOMAIN, opType, inputs, attrs, shape),
    msOp: (opType, inputs, attrs, shape) => this.domainOp(MS_DOMAIN, opType, inputs, attrs, shape),
    i64: (values) => this.i64(values),
    scalar: (v) => this.scalar(v),
    shape: (t) => this.b.shape(t),
  };

  /** What the pooling rules of ort_pool_ops.ts need: nodes, fresh names and the tape. */
  private readonly rules: RuleHost = {
    ...this.emit,
    fresh: (base) => this.b.fresh(base),
    back: (y, inputs, rule) => this.back(y, inputs, rule),
    addGrad: (t, g) => this.addGrad(t, g),
  };

  /** The operator sets the graph's nodes come from. */
  protected opsetImport(): Array<{ domain: string; version: number }> {
    return [{ domain: '', version: GRAD_OPSET }, ...[...this.domainsUsed].map((domain) => ({ domain, version: 1 }))];
  }

  protected i64(values: number[]): string {
    return this.b.int64s('const', values);
  }

  protected scalar(v: number): string {
    return this.b.initializer('const', [], Float32Array.of(v));
  }

  /** 1/(N*H*W) for an [N, C, H, W] tensor (N is the batch, fed as 1/N). */
  protected invCount(shape: number[]): string {
    return this.op('Mul', [this.invBatch, this.scalar(1 / (shape[2] * shape[3]))], {}, [1]);
  }

  /** A parameter as a graph input, in the module graph's layout. */
  param(m: Module, name: string): string {
    const key = this.paramPrefix + (m.path ? `${m.path}.${name}` : name);
    const p = m.params.get(name);
    if (!p) throw new Error(`${m.path} has no ${name}`);
    const shape = [...p.variable.shape];
    this.b.reserve(key);
    this.b.shapes.set(key, shape);
    this.paramInputs.push({ key, shape });
    if (this.trains(key, p)) this.live.add(key);
    return key;
  }

  /** Whether the parameter `key` gets a gradient in this graph. */
  private trains(key: string, p: Param): boolean {
    return p.trainable && this.paramGrads && (!this.trainableKeys || this.trainableKeys.has(key));
  }

  protected addGrad(t: string, g: string): void {
    if (!this.live.has(t)) return;
    const prev = this.grads.get(t);
    this.grads.set(t, prev ? this.op('Add', [prev, g], {}, this.b.shape(t)) : g);
  }

  /** Record a backward rule for output `y`; it runs only when `y` received a gradient. */
  protected back(y: string, inputs: string[], rule: (dy: string) => void): void {
    if (inputs.some((i) => this.live.has(i))) this.live.add(y);
    this.tape.push(() => {
      const dy = this.grads.get(y);
      if (dy) rule(dy);
    });
  }

  conv(m: Conv2d, x: string): string {
    const [n, cin, h, w] = this.b.shape(x);
    const k = m.kernelSize;
    const s = m.stride;
    const p = m.padding;
    const ho = Math.floor((h + 2 * p - k) / s) + 1;
    const wo = Math.floor((w + 2 * p - k) / s) + 1;
    const wHwio = this.param(m, 'weight');
    const bias = m.bias ? this.param(m, 'bias') : undefined;
    const attrs = { dilations: [1, 1], group: 1, kernel_shape: [k, k], pads: [p, p, p, p], strides: [s, s] };
    const y = convolution(this.emit, this.nchwcBlock, x, { hwio: wHwio, flipped: false }, bias, attrs, [n, m.outChannels, ho, wo]);
    this.back(y, [x, wHwio, ...(bias ? [bias] : [])], (dy) => {
      if (this.live.has(x)) {
        let dx: string;
        if (s === 1) {
          // Stride 1: the input gradient is an ordinary convolution of dy with the kernel turned by 180 degrees
          // and its channel axes swapped, padded by k - 1 - p (ONNX Runtime's Conv is faster than ConvTranspose).
          const q = k - 1 - p;
          dx = convolution(this.emit, this.nchwcBlock, dy, { hwio: wHwio, flipped: true }, undefined, { dilations: [1, 1], group: 1, kernel_shape: [k, k], pads: [q, q, q, q], strides: [1, 1] }, [n, cin, h, w]);
        } else {
          // ConvTranspose maps [n, out, ho, wo] back to [n, in, h, w]; output_padding restores rows the strided
          // conv dropped.
          const outPad = [h - ((ho - 1) * s - 2 * p + k), w - ((wo - 1) * s - 2 * p + k)];
          const wOihw = this.op('Transpose', [wHwio], { perm: [3, 2, 0, 1] }, [m.outChannels, cin, k, k]);
          dx = this.op('ConvTranspose', [dy, wOihw], { kernel_shape: [k, k], pads: [p, p, p, p], strides: [s, s], output_padding: outPad }, [n, cin, h, w]);
        }
        this.addGrad(x, dx);
      }
      if (this.live.has(wHwio)) {
        this.addGrad(wHwio, convWeightGradient(this.emit, x, dy, m, [h, w], [ho, wo]));
      }
      if (bias) this.addGrad(bias, this.op('Reshape', [channelSum(this.emit, dy), this.i64([-1])], {}, [m.outChannels]));
    });
    return y;
  }

  batchNorm(m: BatchNorm2d, x: string): string {
    if (m.mask) throw new OrtGradUnsupported('BatchNorm masks');
    const shape = this.b.shape(x);
    const c = shape[1];
    const toNchw = this.i64([1, -1, 1, 1]);
    const gammaKey = this.param(m, 'weight');
    const betaKey = this.param(m, 'bias');
    let gamma = this.op('Reshape', [gammaKey, toNchw], {}, [1, c, 1, 1]);
    let beta = this.op('Reshape', [betaKey, toNchw], {}, [1, c, 1, 1]);
    const cShape = [1, c, 1, 1];
    if (this.withInputStats) this.inputStatistics(m, x);
    // ANP's scales: gamma * gscale and beta * bscale; the rule below gives the gradient of the effective gamma
    // and beta, from which the scales' (times gamma, beta) and the parameters' (times the scales) follow.
    let scales: { g: string; b: string; gamma: string; beta: string } | undefined;
    if (this.scaled) {
      const g = `gscale/${m.path}`;
      const b = `bscale/${m.path}`;
      for (const name of [g, b]) {
        this.b.reserve(name);
        this.b.shapes.set(name, [c]);
        if (this.loss !== 'none') this.live.add(name);
      }
      this.bnScales.push({ path: m.path, channels: c });
      scales = { g, b, gamma, beta };
      gamma = this.op('Mul', [gamma, this.op('Reshape', [g, toNchw], {}, cShape)], {}, cShape);
      beta = this.op('Mul', [beta, this.op('Reshape', [b, toNchw], {}, cShape)], {}, cShape);
    }
    let mean: string;
    let invstd: string;
    let centered: string | undefined;
    let running: [string, string] | undefined;
    let y: string;
    if (this.bnTrain) {
      const stats = moments(this.emit, x, this.invCount(shape));
      mean = stats.mean;
      centered = stats.centered;
      const variance = stats.variance;
      invstd = inverseStd(this.emit, variance, m.eps);
      const meanOut = `mean/${m.path}`;
      const varOut = `var/${m.path}`;
      this.op('Reshape', [mean, this.i64([-1])], {}, [c], [meanOut]);
      this.op('Reshape', [variance, this.i64([-1])], {}, [c], [varOut]);
      this.statOutputs.push({ name: meanOut, shape: [c] }, { name: varOut, shape: [c] });
      this.bnPaths.push(m.path);
      this.bnSpatial.set(m.path, shape[2] * shape[3]);
    } else {
      const rm = this.param(m, 'running_mean');
      const rv = this.param(m, 'running_var');
      running = [rm, rv];
      mean = this.op('Reshape', [rm, toNchw], {}, cShape);
      invstd = inverseStd(this.emit, this.op('Reshape', [rv, toNchw], {}, cShape), m.eps);
    }
    const k = this.op('Mul', [gamma, invstd], {}, cShape);
    if (running && !scales) {
      // Frozen statistics: ONNX Runtime's BatchNormalization (inference form) is one pass over x, where
      // (x - mean) * k + beta is three (a frozen forward pass of the zoo's PreAct-ResNet18 spent a fifth of its
      // time in them). x - mean is then made only where the backward rule needs it.
      y = this.op('BatchNormalization', [x, gammaKey, betaKey, ...running], { epsilon: { float: m.eps } }, shape);
    } else {
      centered ??= this.op('Sub', [x, mean], {}, shape);
      y = this.op('Add', [this.op('Mul', [centered, k], {}, shape), beta], {}, shape);
    }
    const xcOf = () => (centered ??= this.op('Sub', [x, mean], {}, shape));
    this.back(y, [x, gammaKey, betaKey, ...(scales ? [scales.g, scales.b] : [])], (dy) => {
      const kDy = () => this.op('Mul', [dy, k], {}, shape);
      // With frozen statistics and frozen parameters (an input gradient through a fixed model) only k*dy is needed.
      if (!this.bnTrain && !this.live.has(gammaKey) && !this.live.has(betaKey) && !scales) {
        if (this.live.has(x)) this.addGrad(x, kDy());
        return;
      }
      const sumDy = channelSum(this.emit, dy);
      const sumDyXc = channelSum(this.emit, this.op('Mul', [dy, xcOf()], {}, shape));
      // d loss / d effective gamma and beta.
      const dGamma = this.op('Mul', [sumDyXc, invstd], {}, cShape);
      const flat = (t: string) => this.op('Reshape', [t, this.i64([-1])], {}, [c]);
      if (scales) {
        this.addGrad(scales.g, flat(this.op('Mul', [dGamma, scales.gamma], {}, cShape)));
        this.addGrad(scales.b, flat(this.op('Mul', [sumDy, scales.beta], {}, cShape)));
        if (this.live.has(gammaKey)) this.addGrad(gammaKey, flat(this.op('Mul', [dGamma, this.op('Reshape', [scales.g, toNchw], {}, cShape)], {}, cShape)));
        if (this.live.has(betaKey)) this.addGrad(betaKey, flat(this.op('Mul', [sumDy, this.op('Reshape', [scales.b, toNchw], {}, cShape)], {}, cShape)));
      } else {
        this.addGrad(betaKey, flat(sumDy));
        this.addGrad(gammaKey, flat(dGamma));
      }
      if (!this.live.has(x)) return;
      if (!this.bnTrain) {
        this.addGrad(x, kDy());
        return;
      }
      this.addGrad(x, batchNormInputGradient(this.emit, dy, xcOf(), k, invstd, sumDy, sumDyXc, this.invCount(shape)));
    });
    return y;
  }

  /**
   * The input's batch mean and biased variance over N, H, W (tf.moments'), as side outputs of a frozen
   * BatchNorm; their backward rules: d mean spreads as 1/M over the positions, d var as 2 (x - mean) / M.
   */
  private inputStatistics(m: BatchNorm2d, x: string): void {
    const shape = this.b.shape(x);
    const { mean, centered, variance } = moments(this.emit, x, this.invCount(shape));
    this.inputStatTensors.push({ path: m.path, channels: shape[1], mean, variance });
    this.back(mean, [x], (dm) => this.addGrad(x, meanGradient(this.emit, x, dm, this.invCount(shape))));
    this.back(variance, [x], (dv) => this.addGrad(x, varianceGradient(this.emit, centered, dv, this.invCount(shape))));
  }

  relu(x: string): string {
    const shape = this.b.shape(x);
    const y = this.op('Relu', [x], {}, shape);
    this.back(y, [x], (dy) => {
      // The 0/1 mask of positive outputs times dy (Where and Sign are several times slower in ONNX Runtime).
      const positive = this.op('Cast', [this.op('Greater', [y, this.scalar(0)], {}, shape)], { to: T.FLOAT }, shape);
      this.addGrad(x, this.op('Mul', [dy, positive], {}, shape));
    });
    return y;
  }

  add(a: string, c: string): string {
    const y = this.op('Add', [a, c], {}, this.b.shape(a));
    this.back(y, [a, c], (dy) => {
      this.addGrad(a, dy);
      this.addGrad(c, dy);
    });
    return y;
  }

  /**
   * a times b over an inner dimension of `k` whose row count is the batch (so not known here): summed in
   * blocks of at most 128 in a fixed order. MLAS cuts a longer inner dimension into blocks whose size depends
   * on the columns each thread gets, and the columns it splits depend on the batch; within one block each
   * output is a single dot product in a fixed order. `aAxis` and `bAxis` are the inner axes of a and b.
   */
  private productOverInner(a: string, aAxis: number, b: string, bAxis: number, k: number, product: (a: string, b: string) => string, shape: number[]): string {
    if (k <= 128) return product(a, b);
    let sum = '';
    for (let s = 0; s < k; s += 128) {
      const e = Math.min(k, s + 128);
      const slice = (t: string, axis: number) => this.op('Slice', [t, this.i64([s]), this.i64([e]), this.i64([axis])], {}, this.b.shape(t).map((d, i) => (i === axis ? e - s : d)));
      const part = product(slice(a, aAxis), slice(b, bAxis));
      sum = sum ? this.op('Add', [sum, part], {}, shape) : part;
    }
    return sum;
  }

  linear(m: Linear, x: string): string {
    const [n, fin] = this.b.shape(x);
    const wKey = this.param(m, 'weight');
    const fout = this.b.shape(wKey)[1];
    let y = this.productOverInner(x, 1, wKey, 0, fin, (a, b) => this.op('MatMul', [a, b], {}, [n, fout]), [n, fout]);
    const bias = m.bias ? this.param(m, 'bias') : undefined;
    if (bias) y = this.op('Add', [y, bias], {}, [n, fout]);
    this.back(y, [x, wKey, ...(bias ? [bias] : [])], (dy) => {
      if (this.live.has(x)) this.addGrad(x, this.productOverInner(dy, 1, wKey, 1, fout, (a, b) => this.op('Gemm', [a, b], { transB: 1 }, [n, fin]), [n, fin]));
      // Taken transposed where fout > fin, so that MLAS splits the rows (see convWeightGradient).
      this.addGrad(wKey, fout > fin ? this.op('Transpose', [this.op('Gemm', [dy, x], { transA: 1 }, [fout, fin])], { perm: [1, 0] }, [fin, fout]) : this.op('Gemm', [x, dy], { transA: 1 }, [fin, fout]));
      if (bias) this.addGrad(bias, this.op('ReduceSum', [dy, this.i64([0])], { keepdims: 0 }, [fout]));
    });
    return y;
  }

  /**
   * An imported ONNX graph, node by node, where each node is a layer with a rule here (convolutions, BatchNorm,
   * ReLU, pools, linear layers), a residual addition of two values, a global average pool or a flatten; any
   * other node (a constant operand, a reshape, a grouped convolution...) leaves the graph to the backend.
   */
  private onnxGraph(g: ImportedGraph, x: string): string {
    const env = new Map<string, string>([[g.onnxIo.input, x]]);
    for (const s of g.steps) {
      const m = s.module;
      const ins = s.dyn.map((d) => env.get(d)!);
      let y: string;
      if (LAYER_KINDS.has(m.kind) && ins.length === 1) {
        y = this.module(m, ins[0]);
      } else {
        if (m.inserted) throw new OrtGradUnsupported(`a module inserted before the ONNX ${s.node.op} node`);
        if (m.kind === 'Add' && ins.length === 2) y = this.add(ins[0], ins[1]);
        else if (m.kind === 'GlobalAveragePool' && ins.length === 1) y = this.keepSpatial(globalAvgPool(this.rules, ins[0]));
        else if (m.kind === 'Flatten' && ins.length === 1) y = flatten(this.rules, ins[0]);
        else throw new OrtGradUnsupported(`the ONNX ${s.node.op} node ${s.node.name}`);
        if (this.tapPaths.has(m.path)) this.tapTensors.set(m.path, y);
      }
      env.set(s.node.outputs[0], y);
    }
    return env.get(g.onnxIo.output)!;
  }

  /** [N, C] as [N, C, 1, 1] (ONNX's GlobalAveragePool keeps the spatial axes). */
  private keepSpatial(x: string): string {
    const [n, c] = this.b.shape(x);
    const y = this.op('Reshape', [x, this.i64([0, 0, 1, 1])], {}, [n, c, 1, 1]);
    this.back(y, [x], (dy) => this.addGrad(x, this.op('Reshape', [dy, this.i64([0, 0])], {}, [n, c])));
    return y;
  }

  /** Emit module `m` on `x`. */
  module(m: Module, x: string): string {
    const y = this.moduleBody(m, x);
    if (this.tapPaths.has(m.path)) this.tapTensors.set(m.path, y);
    return y;
  }

  private moduleBody(m: Module, x: string): string {
    // A module inserted in front of this one (BatchNorm put back into a folded graph, NPD's polarizer) runs first.
    if (m.inserted) x = this.module(m.inserted, x);
    if (m.kind === 'OnnxGraph') return this.onnxGraph(m as unknown as ImportedGraph, x);
    if ((m as unknown as { emitOnnx?: unknown }).emitOnnx) throw new OrtGradUnsupported(`the ${m.kind} module`);
    switch (m.kind) {
      case 'Conv2d':
        return this.conv(m as Conv2d, x);
      case 'BatchNorm2d':
        return this.batchNorm(m as BatchNorm2d, x);
      case 'Linear':
        return this.linear(m as Linear, x);
      case 'ReLU':
        return this.relu(x);
      case 'Identity':
        return x;
      case 'Dropout':
        // Dropout draws its mask from the backend's generator; only a no-op dropout is the same here.
        if ((m as Dropout).p > 0) throw new OrtGradUnsupported('dropout');
        return x;
      case 'MaxPool2d':
        return maxPool(this.rules, m as MaxPool2d, x);
      case 'AvgPool2d': {
        const p = m as AvgPool2d;
        if (p.stride !== p.kernelSize) throw new OrtGradUnsupported('overlapping average pools');
        return avgPool(this.rules, x, p.kernelSize);
      }
      case 'AdaptiveAvgPool2d': {
        // The identity, or an even pool (torchvision's VGG at its own input size); PyTorch's uneven bins are not here.
        const [, , h, w] = this.b.shape(x);
        const o = (m as AdaptiveAvgPool2d).outputSize;
        if (h === o && w === o) return x;
        if (h % o || w % o || h / o !== w / o) throw new OrtGradUnsupported('uneven adaptive average pools');
        return avgPool(this.rules, x, h / o);
      }
      case 'GlobalAvgPool':
        return globalAvgPool(this.rules, x);
      case 'Flatten':
        return flatten(this.rules, x);
      case 'Sequential':
      case 'PreActResNet18':
      case 'ResNet':
        for (const c of m.children.values()) x = this.module(c, x);
        return x;
      case 'PreActBlock': {
        const out = this.relu(this.module(m.child('bn1'), x));
        const shortcut = m.children.has('shortcut') ? this.module(m.child('shortcut'), out) : x;
        const h = this.module(m.child('conv1'), out);
        const y = this.module(m.child('conv2'), this.relu(this.module(m.child('bn2'), h)));
        return this.add(y, shortcut);
      }
      case 'BasicBlock': {
        const r = this.relu(this.module(m.child('bn1'), this.module(m.child('conv1'), x)));
        const y = this.module(m.child('bn2'), this.module(m.child('conv2'), r));
        const proj = m.children.has('downsample') ? m.child('downsample') : m.children.get('shortcut');
        const identity = proj ? this.module(proj, x) : x;
        return this.relu(this.add(y, identity));
      }
      default:
        throw new OrtGradUnsupported(`the ${m.kind} module`);
    }
  }

  /** NAD's attention term for tap `t` against the teacher's map fed as `tattn/<path>` (ort_attention_ops.ts). */
  private attentionTerm(t: string, path: string, beta: number, inputs: onnx.IValueInfoProto[], lossTerms: string[]): void {
    const shape = this.b.shape(t);
    const teacher = `tattn/${path}`;
    const teacherShape = [-1, shape.length === 4 ? shape[2] * shape[3] : 1];
    this.b.reserve(teacher);
    this.b.shapes.set(teacher, teacherShape);
    inputs.push(valueInfo(teacher, teacherShape));
    const { term, gradient } = attentionDistance(this.emit, t, teacher, beta, this.invBatch);
    lossTerms.push(term);
    if (!this.live.has(t)) return;
    const dt = gradient();
    this.grads.set(t, this.grads.has(t) ? this.op('Add', [this.grads.get(t)!, dt], {}, shape) : dt);
  }

  build(): GradGraph {
    const [h, w, c] = this.model.inputShape;
    const k = this.model.numClasses;
    for (const name of ['x', 'target', 'inv_batch', 'loss', 'dlogits', 'logits', 'grad/x']) this.b.reserve(name);
    this.b.shapes.set('x', [-1, h, w, c]);
    this.b.shapes.set('target', [-1, k]);
    this.b.shapes.set('inv_batch', [1]);
    this.b.shapes.set('dlogits', [-1, k]);
    if (this.loss !== 'ce') {
      // 1/N from the batch itself (the training step is fed it; these graphs have no other use for N).
      const n = this.op('Cast', [this.op('Slice', [this.op('Shape', ['x'], {}, [4]), this.i64([0]), this.i64([1])], {}, [1])], { to: T.FLOAT }, [1]);
      this.op('Reciprocal', [n], {}, [1], [this.invBatch]);
    }
    let x = this.op('Transpose', ['x'], { perm: [0, 3, 1, 2] }, [-1, c, h, w]);
    const per = (v: number[]) => Float32Array.from({ length: c }, (_, i) => v[v.length === 1 ? 0 : i]);
    if (this.model.normalize) {
      const { mean, std } = this.model.normalize;
      x = this.op('Sub', [x, this.b.initializer('normalize.mean', [1, c, 1, 1], per(mean))], {}, [-1, c, h, w]);
      x = this.op('Div', [x, this.b.initializer('normalize.std', [1, c, 1, 1], per(std))], {}, [-1, c, h, w]);
    }
    // The normalized NCHW input: where an input gradient starts (the two maps before it are undone by hand below).
    const input = x;
    if (this.inputGrad) this.live.add(input);
    const logits = this.module(this.model.root, x);
    const outShape = this.b.shape(logits);
    if (!this.mapOutput && (outShape.length !== 2 || outShape[1] !== k)) throw new OrtGradUnsupported(`an output of shape [${outShape}]`);
    const inputs = [valueInfo('x', [-1, h, w, c])];
    const outputs: onnx.IValueInfoProto[] = [];
    // The scalar terms whose sum is the `ce` graph's loss: the cross-entropy, then NAD's attention terms.
    const lossTerms: string[] = [];
    if (this.loss === 'ce') {
      // Mean cross-entropy against the target distribution; its gradient is (softmax - target) / N.
      const logProbs = this.op('LogSoftmax', [logits], { axis: 1 }, [-1, k]);
      const perImage = this.op('ReduceSum', [this.op('Mul', ['target', logProbs], {}, [-1, k]), this.i64([1])], { keepdims: 0 }, [-1]);
      if (this.unlearning) {
        this.b.reserve('sar_ref');
        this.b.shapes.set('sar_ref', [-1, k]);
        const u = unlearningLoss(this.emit, logProbs, perImage, 'target', 'sar_ref', this.invBatch, this.unlearning.lambda);
        lossTerms.push(u.loss);
        this.grads.set(logits, u.dLogits);
        inputs.push(valueInfo('target', [-1, k]), valueInfo('sar_ref', [-1, k]), valueInfo('inv_batch', [1]));
      } else {
        lossTerms.push(this.op('Neg', [this.op('ReduceMean', [perImage], { axes: [0], keepdims: 0 }, [])], {}, []));
        const dLogits = this.op('Mul', [this.op('Sub', [this.op('Exp', [logProbs], {}, [-1, k]), 'target'], {}, [-1, k]), 'inv_batch'], {}, [-1, k]);
        this.grads.set(logits, dLogits);
        inputs.push(valueInfo('target', [-1, k]), valueInfo('inv_batch', [1]));
      }
      this.op('Identity', [logits], {}, [-1, k], ['logits']);
      outputs.push(valueInfo('loss', []), valueInfo('logits', [-1, k]));
    } else {
      this.op('Identity', [logits], {}, outShape, ['logits']);
      outputs.push(valueInfo('logits', outShape));
      if (this.loss === 'seed') {
        this.b.shapes.set('dlogits', outShape);
        this.grads.set(logits, 'dlogits');
        inputs.push(valueInfo('dlogits', outShape));
      }
    }
    const taps: Array<{ path: string; shape: number[] }> = [];
    for (const path of this.tapPaths) {
      const t = this.tapTensors.get(path);
      if (!t) throw new OrtGradUnsupported(`no module ${path} to tap`);
      const shape = this.b.shape(t);
      taps.push({ path, shape });
      this.op('Identity', [t], {}, shape, [`tap/${path}`]);
      outputs.push(valueInfo(`tap/${path}`, shape));
      if (this.attention) this.attentionTerm(t, path, this.attention[taps.length - 1], inputs, lossTerms);
      if (this.loss === 'seed') {
        const seed = `dtap/${path}`;
        this.b.reserve(seed);
        this.b.shapes.set(seed, shape);
        inputs.push(valueInfo(seed, shape));
        // Downstream rules add theirs to it (the tape runs backwards, so they come before t's own rule).
        if (this.live.has(t)) this.grads.set(t, this.grads.has(t) ? this.op('Add', [this.grads.get(t)!, seed], {}, shape) : seed);
      }
    }
    if (this.loss === 'ce') this.op('Identity', [lossTerms.reduce((a, b) => this.op('Add', [a, b], {}, []))], {}, [], ['loss']);
    const inputStats: Array<{ path: string; channels: number }> = [];
    for (const s of this.inputStatTensors) {
      inputStats.push({ path: s.path, channels: s.channels });
      for (const [kind, t] of [['imean', s.mean], ['ivar', s.variance]] as const) {
        this.op('Reshape', [t, this.i64([-1])], {}, [s.channels], [`${kind}/${s.path}`]);
        outputs.push(valueInfo(`${kind}/${s.path}`, [s.channels]));
        if (this.loss !== 'seed') continue;
        const seed = `d${kind}/${s.path}`;
        this.b.reserve(seed);
        this.b.shapes.set(seed, [s.channels]);
        inputs.push(valueInfo(seed, [s.channels]));
        if (this.live.has(t)) this.grads.set(t, this.op('Reshape', [seed, this.i64([1, -1, 1, 1])], {}, [1, s.channels, 1, 1]));
      }
    }
    if (this.loss !== 'none') for (let i = this.tape.length - 1; i >= 0; i--) this.tape[i]();
    if (this.paramGrads) {
      const params = new Map(this.model.root.namedParams());
      for (const { key, shape } of this.paramInputs) {
        if (!this.trains(key, params.get(key)!)) continue;
        const g = this.grads.get(key);
        const out = `grad/${key}`;
        // A parameter the loss does not reach still gets a (zero) gradient output.
        if (g) this.op('Identity', [g], {}, shape, [out]);
        else this.op('Mul', [key, this.scalar(0)], {}, shape, [out]);
        this.gradOutputs.push({ key, name: out, shape });
      }
    }
    for (const { path, channels } of this.bnScales) {
      inputs.push(valueInfo(`gscale/${path}`, [channels]), valueInfo(`bscale/${path}`, [channels]));
      if (this.loss === 'none') continue;
      for (const kind of ['gscale', 'bscale']) {
        const name = `${kind}/${path}`;
        const g = this.grads.get(name) ?? this.op('Mul', [name, this.scalar(0)], {}, [channels]);
        this.op('Identity', [g], {}, [channels], [`grad/${name}`]);
        outputs.push(valueInfo(`grad/${name}`, [channels]));
      }
    }
    if (this.inputGrad) {
      // Back through the normalization (a division by std) and the NHWC -> NCHW transpose.
      let g = this.grads.get(input) ?? this.op('Mul', [input, this.scalar(0)], {}, [-1, c, h, w]);
      if (this.model.normalize) g = this.op('Div', [g, this.b.initializer('normalize.std.grad', [1, c, 1, 1], per(this.model.normalize.std))], {}, [-1, c, h, w]);
      this.op('Transpose', [g], { perm: [0, 2, 3, 1] }, [-1, h, w, c], ['grad/x']);
      outputs.push(valueInfo('grad/x', [-1, h, w, c]));
    }
    const graph = onnx.GraphProto.create({
      name: `${this.model.spec.arch}-${this.loss === 'ce' ? 'train-step' : this.loss === 'seed' ? 'vjp' : 'forward'}`,
      node: this.b.nodes,
      initializer: this.b.initializers,
      input: [...inputs, ...this.paramInputs.map((p) => valueInfo(p.key, p.shape))],
      output: [...outputs, ...this.gradOutputs.map((g) => valueInfo(g.name, g.shape)), ...this.statOutputs.map((s) => valueInfo(s.name, s.shape))],
    });
    const encode = (g: onnx.IGraphProto) => onnx.ModelProto.encode(onnx.ModelProto.create({ irVersion: 8, opsetImport: this.opsetImport(), producerName: 'backdoor-audit', graph: g })).finish();
    const parts = this.split ? splitForwardBackward(graph) : undefined;
    return {
      bytes: encode(parts ? parts.forward : graph),
      backward: parts && { bytes: encode(parts.backward), saved: parts.saved },
      paramInputs: this.paramInputs,
      gradKeys: this.gradOutputs.map((g) => g.key),
      bnPaths: this.bnPaths,
      bnSpatial: this.bnSpatial,
      bnScales: this.bnScales,
      taps,
      inputStats,
      outputShape: outShape,
    };
  }
}

/**
 * The training-step graph of `model` (throws OrtGradUnsupported for modules without a backward rule here);
 * `bnTrain` alone gives the cross-entropy step over every trainable parameter, options the other forms.
 */
export function buildGradGraph(model: GraphNet, o: boolean | GradGraphOptions): GradGraph {
  return new GradBuilder(model, typeof o === 'boolean' ? { bnTrain: o } : o).build();
}
