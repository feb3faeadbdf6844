/**
 * A TensorFlow.js (Keras) layers model imported into the module graph. Keras is NHWC with HWIO kernels and
 * [in, out] dense kernels, our internal layouts, so weights copy straight in; Flatten keeps NHWC order (unlike
 * PyTorch's). A fused activation (`activation: "relu"` on Conv2D/Dense) becomes its own module after the
 * layer, so taps see post-activation features. Writing back keeps the source topology and weight names with
 * current values; modules inserted after import (NPD's polarizer) become layers in front of their target.
 */
import * as tf from '@tensorflow/tfjs-core';
import { importOrRelease } from './import_guard';
import { AvgPool2d, BatchNorm2d, Conv2d, Dropout, GlobalAvgPool, Identity, Linear, MaxPool2d, ReLU, Sequential } from '../nn/layers';
import { Module } from '../nn/module';
import type { HostValues } from '../nn/read';
import type { ArchLayout } from '../nn/model';
import { InputError } from '../errors';
import { Rng } from '../util/rng';
import { OnnxOp as GraphOp, stageEnds } from './onnx_graph';
import type { TfjsLayer, TfjsPlan } from '../formats/tfjs';

export const SUPPORTED_KERAS_LAYERS = [
  'InputLayer', 'Conv2D', 'Dense', 'BatchNormalization', 'Activation', 'ReLU', 'Softmax', 'MaxPooling2D', 'AveragePooling2D',
  'GlobalAveragePooling2D', 'GlobalMaxPooling2D', 'Flatten', 'Dropout', 'Add', 'Concatenate', 'ZeroPadding2D', 'Reshape', 'Permute',
  'UpSampling2D',
];

/** Conv2D with TensorFlow's 'same' padding (asymmetric when the stride does not divide evenly). */
export class SameConv2d extends Conv2d {
  readonly samePadding = true;
  protected override forwardImpl(x: tf.Tensor4D): tf.Tensor {
    const y = tf.conv2d(x, this.weight as tf.Tensor4D, this.stride, 'same');
    return this.bias ? tf.add(y, this.bias) : y;
  }
}

/** Pooling with 'same' padding (TensorFlow semantics: average excludes the padding). */
class SamePool extends Module {
  constructor(
    readonly kind: 'MaxPoolSame' | 'AvgPoolSame',
    readonly kernel: [number, number],
    readonly strides: [number, number],
  ) {
    super();
  }
  protected forwardImpl(x: tf.Tensor4D): tf.Tensor {
    return this.kind === 'MaxPoolSame' ? tf.maxPool(x, this.kernel, this.strides, 'same') : tf.avgPool(x, this.kernel, this.strides, 'same');
  }
}

interface Step {
  module: Module;
  layer: TfjsLayer;
  inputs: string[];
  output: string;
  /** An activation split off its layer (not a layer of its own when writing back). */
  fused: boolean;
}

/** Where each manifest weight's value comes from now. */
interface WeightRef {
  module: Module;
  param: string;
}

export class TfjsGraph extends Module {
  readonly kind = 'TfjsGraph';
  readonly steps: Step[] = [];
  readonly weightRefs = new Map<string, WeightRef>();
  constructor(readonly plan: TfjsPlan) {
    super();
  }

  protected forwardImpl(x: tf.Tensor, ctx: import('../nn/module').ForwardContext): tf.Tensor {
    const env = new Map<string, tf.Tensor>([[this.plan.inputName, x]]);
    for (const s of this.steps) {
      const xs = s.inputs.map((n) => env.get(n)!);
      const y = s.module instanceof GraphOp && xs.length !== 1 ? s.module.forwardMany(xs, ctx) : s.module.forward(xs[0], ctx);
      env.set(s.output, y);
    }
    return env.get(this.plan.outputName)!;
  }
}

const pair = (v: unknown, d: number): [number, number] => (Array.isArray(v) ? [Number(v[0]), Number(v[1] ?? v[0])] : typeof v === 'number' ? [v, v] : [d, d]);

function activation(name: unknown, at: string): Module | undefined {
  const a = typeof name === 'string' ? name : 'linear';
  if (a === 'linear') return undefined;
  if (a === 'relu') return new ReLU();
  if (a === 'softmax') return new GraphOp('Softmax', ([x]) => tf.softmax(x));
  if (a === 'sigmoid') return new GraphOp('Sigmoid', ([x]) => tf.sigmoid(x));
  if (a === 'tanh') return new GraphOp('Tanh', ([x]) => tf.tanh(x));
  throw new InputError(`activation "${a}" is not supported`, at);
}

/** Build the module graph of a TensorFlow.js layers model. */
export function buildTfjsGraph(plan: TfjsPlan, inputShape: [number, number, number], where = 'model.json'): { root: Module; layout: ArchLayout; numClasses: number } {
  const graph = new TfjsGraph(plan);
  return importOrRelease(graph, () => importLayers(graph, plan, inputShape, where));
}

function importLayers(graph: TfjsGraph, plan: TfjsPlan, inputShape: [number, number, number], where: string): { root: Module; layout: ArchLayout; numClasses: number } {
  const rng = new Rng(0);
  // Static shapes (without the batch): [H, W, C] for images, [F] for features.
  const shapes = new Map<string, number[]>([[plan.inputName, inputShape.slice()]]);
  const producer = new Map<string, Step>();
  const used = new Set<string>();

  for (const layer of plan.layers) {
    if (layer.className === 'InputLayer') continue;
    const at = `${where}: layer "${layer.name}" (${layer.className})`;
    const fail = (msg: string): never => {
      throw new InputError(msg, at);
    };
    if (!SUPPORTED_KERAS_LAYERS.includes(layer.className)) {
      throw new InputError(`unsupported TensorFlow.js layer ${layer.className} (layer "${layer.name}"); supported: ${SUPPORTED_KERAS_LAYERS.join(', ')}`, where);
    }
    const c = layer.config;
    const ins = layer.inbound.map((n) => {
      const s = shapes.get(n);
      if (!s) fail(`input ${n} is not an earlier layer`);
      return s!;
    });
    const x0 = ins[0];
    if (!x0) fail('the layer has no input');
    const image = () => {
      if (x0.length !== 3) fail(`expects an image tensor, got [${x0}]`);
    };
    if (c.data_format && c.data_format !== 'channels_last') fail(`data_format ${String(c.data_format)} is not supported`);
    const w = (suffix: string, required = true) => {
      const hit = [...plan.weights.values()].find((v) => {
        const n = v.name.replace(/:0$/, '');
        return n === `${layer.name}/${suffix}` || n.endsWith(`/${layer.name}/${suffix}`);
      });
      if (!hit && required) fail(`weight ${layer.name}/${suffix} is missing from the manifest`);
      return hit;
    };
    const bind = (m: Module, param: string, weight: ReturnType<typeof w>, shape: number[]) => {
      if (!weight) return;
      if (weight.shape.join() !== shape.join()) fail(`${weight.name} has shape [${weight.shape}] but the layer needs [${shape}]`);
      const p = m.params.get(param)!;
      tf.tidy(() => p.variable.assign(tf.tensor(weight.data, p.variable.shape)));
      graph.weightRefs.set(weight.name, { module: m, param });
    };
    let module: Module;
    let out: number[];
    switch (layer.className) {
      case 'Conv2D': {
        image();
        const [kh, kw] = pair(c.kernel_size, 1);
        const [sh, sw] = pair(c.strides, 1);
        const [dh, dw] = pair(c.dilation_rate, 1);
        const filters = Number(c.filters);
        if (kh !== kw || sh !== sw || dh !== 1 || dw !== 1) fail('only square kernels and strides without dilation are supported');
        if (Number(c.groups ?? 1) !== 1) fail('grouped convolution is not supported');
        const same = c.padding === 'same';
        if (!same && c.padding !== 'valid') fail(`padding ${String(c.padding)} is not supported`);
        const bias = c.use_bias !== false;
        const conv = same && sh === 1 && kh % 2 === 1 ? new Conv2d(x0[2], filters, kh, { padding: (kh - 1) / 2, bias }, rng) : same ? new SameConv2d(x0[2], filters, kh, { stride: sh, bias }, rng) : new Conv2d(x0[2], filters, kh, { stride: sh, bias }, rng);
        bind(conv, 'weight', w('kernel'), [kh, kw, x0[2], filters]);
        if (bias) bind(conv, 'bias', w('bias'), [filters]);
        module = conv;
        const size = (n: number) => (same ? Math.ceil(n / sh) : Math.floor((n - kh) / sh) + 1);
        out = [size(x0[0]), size(x0[1]), filters];
        break;
      }
      case 'Dense': {
        if (x0.length !== 1) fail(`Dense on a [${x0}] tensor is not supported (flatten first)`);
        const units = Number(c.units);
        const bias = c.use_bias !== false;
        const lin = new Linear(x0[0], units, rng, bias);
        bind(lin, 'weight', w('kernel'), [x0[0], units]);
        if (bias) bind(lin, 'bias', w('bias'), [units]);
        module = lin;
        out = [units];
        break;
      }
      case 'BatchNormalization': {
        const axis = Array.isArray(c.axis) ? c.axis : [c.axis ?? -1];
        if (axis.length !== 1 || !(axis[0] === -1 || axis[0] === x0.length)) fail(`BatchNormalization over axis ${JSON.stringify(c.axis)} is not supported (only the channel axis)`);
        if (x0.length !== 3) fail('BatchNormalization of a feature vector is not supported');
        const ch = x0[2];
        const bn = new BatchNorm2d(ch, Number(c.epsilon ?? 1e-3), 1 - Number(c.momentum ?? 0.99));
        if (c.scale !== false) bind(bn, 'weight', w('gamma'), [ch]);
        if (c.center !== false) bind(bn, 'bias', w('beta'), [ch]);
        bind(bn, 'running_mean', w('moving_mean'), [ch]);
        bind(bn, 'running_var', w('moving_variance'), [ch]);
        module = bn;
        out = x0;
        break;
      }
      case 'Activation':
        module = activation(c.activation, at) ?? new Identity();
        out = x0;
        break;
      case 'ReLU':
        if ((c.max_value ?? null) !== null || Number(c.negative_slope ?? 0) !== 0 || Number(c.threshold ?? 0) !== 0) fail('ReLU with max_value, negative_slope or threshold is not supported');
        module = new ReLU();
        out = x0;
        break;
      case 'Softmax':
        if ((c.axis ?? -1) !== -1 && c.axis !== x0.length) fail('Softmax over an axis other than the last is not supported');
        module = new GraphOp('Softmax', ([x]) => tf.softmax(x));
        out = x0;
        break;
      case 'MaxPooling2D':
      case 'AveragePooling2D': {
        image();
        const [kh, kw] = pair(c.pool_size, 2);
        const [sh, sw] = c.strides === null || c.strides === undefined ? [kh, kw] : pair(c.strides, kh);
        const same = c.padding === 'same';
        const max = layer.className === 'MaxPooling2D';
        if (!same && kh === kw && sh === sw) module = max ? new MaxPool2d(kh, sh) : new AvgPool2d(kh, sh);
        else if (same) module = new SamePool(max ? 'MaxPoolSame' : 'AvgPoolSame', [kh, kw], [sh, sw]);
        else fail('rectangular valid pooling is not supported');
        const size = (n: number, k: number, s: number) => (same ? Math.ceil(n / s) : Math.floor((n - k) / s) + 1);
        out = [size(x0[0], kh, sh), size(x0[1], kw, sw), x0[2]];
        module = module!;
        break;
      }
      case 'GlobalAveragePooling2D':
      case 'GlobalMaxPooling2D': {
        image();
        const keep = c.keepdims === true;
        const avg = layer.className === 'GlobalAveragePooling2D';
        module = avg && !keep ? new GlobalAvgPool() : new GraphOp(avg ? 'GlobalAvgPoolKeep' : 'GlobalMaxPool', ([x]) => (avg ? tf.mean(x, [1, 2], keep) : tf.max(x, [1, 2], keep)));
        out = keep ? [1, 1, x0[2]] : [x0[2]];
        break;
      }
      case 'Flatten':
        // Keras flattens in NHWC order, which is how tensors are held here: a plain reshape.
        module = new GraphOp('FlattenNHWC', ([x]) => tf.reshape(x, [x.shape[0], -1]));
        out = [x0.reduce((a, b) => a * b, 1)];
        break;
      case 'Reshape': {
        const target = (c.target_shape as number[]) ?? fail('Reshape needs target_shape');
        const n = x0.reduce((a, b) => a * b, 1);
        const known = target.filter((v) => v !== -1).reduce((a, b) => a * b, 1);
        const resolved = target.map((v) => (v === -1 ? n / known : v));
        if (resolved.reduce((a, b) => a * b, 1) !== n) fail(`cannot reshape [${x0}] to [${target}]`);
        module = new GraphOp('Reshape', ([x]) => tf.reshape(x, [x.shape[0], ...resolved]));
        out = resolved;
        break;
      }
      case 'Permute': {
        const dims = c.dims as number[];
        if (!Array.isArray(dims) || dims.length !== x0.length || [...dims].sort().join() !== x0.map((_, i) => i + 1).join()) fail(`bad Permute dims ${JSON.stringify(c.dims)}`);
        module = new GraphOp('Permute', ([x]) => tf.transpose(x, [0, ...dims]));
        out = dims.map((d) => x0[d - 1]);
        break;
      }
      case 'UpSampling2D': {
        image();
        const [a, bb] = pair(c.size, 2);
        if ((c.interpolation ?? 'nearest') !== 'nearest') fail(`UpSampling2D interpolation ${String(c.interpolation)} is not supported`);
        module = new GraphOp('UpSampling2D', ([x]) => tf.image.resizeNearestNeighbor(x as tf.Tensor4D, [x0[0] * a, x0[1] * bb]));
        out = [x0[0] * a, x0[1] * bb, x0[2]];
        break;
      }
      case 'Dropout':
        module = new Dropout(Number(c.rate ?? 0.5));
        out = x0;
        break;
      case 'Add':
        if (ins.some((s) => s.join() !== x0.join())) fail('Add of different shapes is not supported');
        module = new GraphOp('Add', (xs) => tf.addN(xs));
        out = x0;
        break;
      case 'Concatenate': {
        let axis = Number(c.axis ?? -1);
        if (axis < 0) axis += x0.length + 1;
        if (axis === 0) fail('concatenation along the batch is not supported');
        module = new GraphOp('Concatenate', (xs) => tf.concat(xs, axis));
        out = x0.map((d, i) => (i === axis - 1 ? ins.reduce((s, v) => s + v[i], 0) : d));
        break;
      }
      case 'ZeroPadding2D': {
        image();
        const p = c.padding;
        const [[t, b], [l, r]] = Array.isArray(p) && Array.isArray(p[0]) ? (p as number[][]).map((q) => [q[0], q[1]]) : (() => {
          const [a, bb] = pair(p, 1);
          return [[a, a], [bb, bb]];
        })();
        module = new GraphOp('ZeroPadding2D', ([x]) => tf.pad(x, [[0, 0], [t, b], [l, r], [0, 0]]));
        out = [x0[0] + t + b, x0[1] + l + r, x0[2]];
        break;
      }
      default:
        throw new InputError(`unsupported TensorFlow.js layer ${layer.className} (layer "${layer.name}")`, where);
    }
    const fusedAct = layer.className === 'Conv2D' || layer.className === 'Dense' ? activation(c.activation, at) : undefined;
    let name = layer.name.replace(/[^A-Za-z0-9_]/g, '_');
    for (let i = 1; used.has(name); i++) name = `${layer.name}_${i}`;
    used.add(name);
    graph.addChild(name, module);
    const pre = fusedAct ? `${layer.name}#pre` : layer.name;
    const step: Step = { module, layer, inputs: layer.inbound, output: pre, fused: false };
    graph.steps.push(step);
    producer.set(pre, step);
    shapes.set(pre, out);
    if (fusedAct) {
      graph.addChild(`${name}_activation`, fusedAct);
      const a: Step = { module: fusedAct, layer, inputs: [pre], output: layer.name, fused: true };
      graph.steps.push(a);
      producer.set(layer.name, a);
      shapes.set(layer.name, out);
    }
  }
  const outShape = shapes.get(plan.outputName);
  if (!outShape || outShape.length !== 1) throw new InputError(`the model output has shape [${outShape ?? '?'}]; a classifier gives [N, classes]`, where);
  graph.finalize();
  const dense = graph.steps.filter((s) => s.module instanceof Linear);
  const head = dense[dense.length - 1];
  if (!head) throw new InputError('the model has no Dense classification head', where);
  const feat = producer.get(head.inputs[0]);
  const feature = feat ? feat.module.path : head.module.path;
  // NAD's attention taps: residual sums where there are any (an all-zero ReLU output has no attention gradient).
  const adds = graph.steps.filter((s) => shapes.get(s.output)?.length === 3 && s.layer.className === 'Add');
  const spatial = adds.length >= 2 ? adds : graph.steps.filter((s) => shapes.get(s.output)?.length === 3 && (s.module instanceof ReLU || s.layer.className === 'Add'));
  const convs = graph.steps.filter((s) => s.module instanceof Conv2d);
  return {
    root: graph,
    layout: { feature, head: head.module.path, stages: [...stageEnds(spatial.map((s) => ({ path: s.module.path, shape: shapes.get(s.output)!.slice(0, 2) }))), feature], lastBlockConv: convs.length ? convs[convs.length - 1].module.path : '' },
    numClasses: outShape[0],
  };
}

// ---- writing back ---------------------------------------------------------------------------------------

/** Keras layer configs (and weights) for a module inserted in front of a layer. */
function insertedLayers(m: Module, base: string, hv: HostValues, out: Array<{ className: string; config: Record<string, unknown>; weights: Array<[string, number[], Float32Array]> }>): void {
  const name = `${base}_${out.length}`;
  if (m instanceof Sequential) {
    for (const c of m.children.values()) insertedLayers(c, base, hv, out);
  } else if (m instanceof Conv2d && !(m instanceof SameConv2d)) {
    if (m.padding > 0) out.push({ className: 'ZeroPadding2D', config: { name: `${base}_${out.length}`, trainable: true, dtype: 'float32', padding: [[m.padding, m.padding], [m.padding, m.padding]], data_format: 'channels_last' }, weights: [] });
    const nm = `${base}_${out.length}`;
    const weights: Array<[string, number[], Float32Array]> = [[`${nm}/kernel`, m.weight.shape, hv.get(m.weight)]];
    if (m.bias) weights.push([`${nm}/bias`, m.bias.shape, hv.get(m.bias)]);
    out.push({
      className: 'Conv2D',
      config: { name: nm, trainable: true, dtype: 'float32', filters: m.outChannels, kernel_size: [m.kernelSize, m.kernelSize], strides: [m.stride, m.stride], padding: 'valid', data_format: 'channels_last', dilation_rate: [1, 1], activation: 'linear', use_bias: !!m.bias },
      weights,
    });
  } else if (m instanceof BatchNorm2d) {
    const mask = m.mask ? hv.get(m.mask) : undefined;
    const g = hv.get(m.weight).map((v, i) => v * (mask ? mask[i] : 1));
    const b = hv.get(m.bias).map((v, i) => v * (mask ? mask[i] : 1));
    out.push({
      className: 'BatchNormalization',
      config: { name, trainable: true, dtype: 'float32', axis: -1, momentum: 1 - m.momentum, epsilon: m.eps, center: true, scale: true },
      weights: [
        [`${name}/gamma`, [m.numFeatures], g],
        [`${name}/beta`, [m.numFeatures], b],
        [`${name}/moving_mean`, [m.numFeatures], hv.get(m.runningMean)],
        [`${name}/moving_variance`, [m.numFeatures], hv.get(m.runningVar)],
      ],
    });
  } else if (m instanceof ReLU) {
    out.push({ className: 'Activation', config: { name, trainable: true, dtype: 'float32', activation: 'relu' }, weights: [] });
  } else {
    throw new Error(`TensorFlow.js export does not know the inserted ${m.kind} module`);
  }
}

/**
 * The source model.json with current weights (one float32 shard named `shard`) and inserted layers; `hv`: the
 * graph's values, read beforehand (HostValues.of).
 */
export function tfjsArtifacts(graph: TfjsGraph, shard: string, hv: HostValues): { json: Record<string, unknown>; bin: Uint8Array } {
  const json = JSON.parse(JSON.stringify(graph.plan.json)) as Record<string, unknown>;
  const specs: Array<{ name: string; shape: number[]; dtype: 'float32' }> = [];
  const chunks: Float32Array[] = [];
  const push = (name: string, shape: number[], data: Float32Array) => {
    specs.push({ name, shape, dtype: 'float32' });
    chunks.push(Float32Array.from(data));
  };
  // Existing weights, in manifest order, from the modules they were loaded into.
  for (const group of json.weightsManifest as Array<{ weights: Array<{ name: string; shape: number[] }> }>) {
    for (const wt of group.weights) {
      const ref = graph.weightRefs.get(wt.name);
      if (!ref) throw new Error(`no module holds weight ${wt.name}`);
      const p = ref.module.params.get(ref.param)!;
      let data = hv.get(p.variable);
      // A pruning mask scales BN's gamma and beta: write the effective values.
      if (ref.module instanceof BatchNorm2d && ref.module.mask && (ref.param === 'weight' || ref.param === 'bias')) {
        const mask = hv.get(ref.module.mask);
        data = data.map((v, i) => v * mask[i]);
      }
      push(wt.name, wt.shape, data);
    }
  }
  // Inserted modules: new layers in front of the layer they precede.
  const topo = (json.modelTopology as Record<string, unknown>).model_config ? ((json.modelTopology as Record<string, unknown>).model_config as Record<string, unknown>) : (json.modelTopology as Record<string, unknown>);
  const cfg = topo.config as Record<string, unknown> | unknown[];
  const layers = (Array.isArray(cfg) ? cfg : (cfg.layers as unknown[])) as Array<Record<string, unknown>>;
  for (const s of graph.steps) {
    if (!s.module.inserted || s.fused) continue;
    const extra: Parameters<typeof insertedLayers>[3] = [];
    insertedLayers(s.module.inserted, `${s.layer.name}_inserted`, hv, extra);
    const idx = layers.findIndex((l) => (l.config as Record<string, unknown>).name === s.layer.name);
    const target = layers[idx];
    if (graph.plan.sequential) {
      // The first layer of a Sequential model carries the input shape; it moves to the first inserted layer.
      const moved = extra.map((e) => ({ class_name: e.className, config: e.config }));
      const tc = target.config as Record<string, unknown>;
      for (const key of ['batch_input_shape', 'batch_shape', 'input_shape']) {
        if (idx === 0 && key in tc) {
          moved[0].config[key] = tc[key];
          delete tc[key];
        }
      }
      layers.splice(idx, 0, ...moved);
    } else {
      let inbound = target.inbound_nodes;
      const moved = extra.map((e) => {
        const l = { class_name: e.className, config: e.config, name: e.config.name, inbound_nodes: inbound };
        inbound = [[[e.config.name, 0, 0, {}]]];
        return l;
      });
      target.inbound_nodes = inbound;
      layers.splice(idx, 0, ...moved);
    }
    for (const e of extra) for (const [n, shape, data] of e.weights) push(n, shape, data);
  }
  const total = chunks.reduce((s, c) => s + c.length, 0);
  const all = new Float32Array(total);
  let off = 0;
  for (const c of chunks) {
    all.set(c, off);
    off += c.length;
  }
  json.weightsManifest = [{ paths: [shard], weights: specs }];
  json.generatedBy = 'backdoor-audit';
  return { json, bin: new Uint8Array(all.buffer) };
}
