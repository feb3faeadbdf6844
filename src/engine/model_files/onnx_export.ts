/**
 * ONNX writer: the module graph as ONNX nodes (opset 13, NCHW like PyTorch's export), weights as
 * initializers in PyTorch layout under their state_dict names. A module inserted into the graph after
 * building (NPD's polarizer) becomes ordinary nodes in front of the module it precedes. The graph takes what
 * the source model takes: normalized NCHW input named `input`, `logits` out; with `includeNormalization` it
 * takes [0,1] pixels and applies the model's normalization itself (what an evaluator that feeds raw pixels
 * needs).
 */
import { onnx } from 'onnx-proto';
import type { Model } from '../nn/model';
import { toPt, type Module, type Param } from '../nn/module';
import { AdaptiveAvgPool2d, AvgPool2d, BatchNorm2d, Conv2d, MaxPool2d, Sequential } from '../nn/layers';
import { writeFileAtomic } from '../util/atomic';
import * as tf from '@tensorflow/tfjs-core';

export const ONNX_OPSET = 13;
const AT = onnx.AttributeProto.AttributeType;

/** An attribute: number = INT, number[] = INTS, string = STRING; floats are marked. */
export type AttrValue = number | number[] | string | { float: number } | { floats: number[] };

export interface ExportOptions {
  /** Input is [0,1] pixels and the graph normalizes (default false: the graph takes normalized input). */
  includeNormalization?: boolean;
  /** Fixed batch size; default a symbolic batch dimension `N`. */
  batch?: number;
}

/** Builds one ONNX graph; tracks every tensor's NCHW shape (batch as -1) for ops that need it. */
export class OnnxBuilder {
  readonly nodes: onnx.INodeProto[] = [];
  readonly initializers: onnx.ITensorProto[] = [];
  readonly shapes = new Map<string, number[]>();
  private readonly used = new Set<string>();

  /** A tensor or node name not used yet, based on `base`. */
  fresh(base: string): string {
    let name = base;
    for (let i = 1; this.used.has(name); i++) name = `${base}_${i}`;
    this.used.add(name);
    return name;
  }

  reserve(name: string): void {
    this.used.add(name);
  }

  initializer(name: string, shape: readonly number[], data: Float32Array | BigInt64Array): string {
    const n = this.fresh(name);
    const raw = new Uint8Array(data.buffer, data.byteOffset, data.byteLength).slice();
    this.initializers.push(
      onnx.TensorProto.create({ name: n, dims: [...shape], dataType: data instanceof Float32Array ? onnx.TensorProto.DataType.FLOAT : onnx.TensorProto.DataType.INT64, rawData: raw }),
    );
    this.shapes.set(n, [...shape]);
    return n;
  }

  int64s(name: string, values: number[]): string {
    return this.initializer(name, [values.length], BigInt64Array.from(values.map((v) => BigInt(v))));
  }

  /** Add a node; returns its output names (fresh, based on the node name). */
  node(op: string, inputs: string[], attrs: Record<string, AttrValue>, name: string, outShape: number[], outputs?: string[]): string {
    const nodeName = this.fresh(name);
    const out = outputs ?? [this.fresh(`${nodeName}_output`)];
    const attribute = Object.entries(attrs).map(([k, v]) => {
      if (typeof v === 'number') return onnx.AttributeProto.create({ name: k, type: AT.INT, i: v });
      if (typeof v === 'string') return onnx.AttributeProto.create({ name: k, type: AT.STRING, s: new TextEncoder().encode(v) });
      if (Array.isArray(v)) return onnx.AttributeProto.create({ name: k, type: AT.INTS, ints: v });
      if ('floats' in v) return onnx.AttributeProto.create({ name: k, type: AT.FLOATS, floats: v.floats });
      return onnx.AttributeProto.create({ name: k, type: AT.FLOAT, f: v.float });
    });
    this.nodes.push(onnx.NodeProto.create({ name: nodeName, opType: op, input: inputs, output: out, attribute }));
    this.shapes.set(out[0], outShape);
    return out[0];
  }

  shape(t: string): number[] {
    const s = this.shapes.get(t);
    if (!s) throw new Error(`ONNX export: no shape for ${t}`);
    return s;
  }
}

function param(m: Module, name: string): Param {
  const p = m.params.get(name);
  if (!p) throw new Error(`${m.path || 'model'} has no ${name}`);
  return p;
}

export function weight(b: OnnxBuilder, m: Module, name: string, override?: Float32Array): string {
  const pt = toPt(param(m, name));
  return b.initializer(m.path ? `${m.path}.${name}` : name, pt.shape, override ?? (pt.data as Float32Array));
}

const convOut = (n: number, k: number, s: number, p: number) => Math.floor((n + 2 * p - k) / s) + 1;

function conv(b: OnnxBuilder, m: Conv2d, x: string): string {
  const [n, , h, w] = b.shape(x);
  const inputs = [x, weight(b, m, 'weight')];
  if (m.bias) inputs.push(weight(b, m, 'bias'));
  const k = m.kernelSize;
  const attrs = { dilations: [1, 1], group: 1, kernel_shape: [k, k], pads: [m.padding, m.padding, m.padding, m.padding], strides: [m.stride, m.stride] };
  return b.node('Conv', inputs, attrs, `${m.path}/Conv`, [n, m.outChannels, convOut(h, k, m.stride, m.padding), convOut(w, k, m.stride, m.padding)]);
}

function batchNorm(b: OnnxBuilder, m: BatchNorm2d, x: string): string {
  // A pruning mask multiplies gamma and beta: export the effective values.
  let gamma: Float32Array | undefined;
  let beta: Float32Array | undefined;
  if (m.mask) {
    const mask = m.mask.dataSync() as Float32Array;
    gamma = (m.weight.dataSync() as Float32Array).map((g, i) => g * mask[i]);
    beta = (m.bias.dataSync() as Float32Array).map((g, i) => g * mask[i]);
  }
  const inputs = [x, weight(b, m, 'weight', gamma), weight(b, m, 'bias', beta), weight(b, m, 'running_mean'), weight(b, m, 'running_var')];
  return b.node('BatchNormalization', inputs, { epsilon: { float: m.eps }, momentum: { float: 1 - m.momentum } }, `${m.path}/BatchNormalization`, b.shape(x));
}

function pool(b: OnnxBuilder, op: 'MaxPool' | 'AveragePool', x: string, k: number, s: number, p: number, name: string): string {
  const [n, c, h, w] = b.shape(x);
  return b.node(op, [x], { kernel_shape: [k, k], pads: [p, p, p, p], strides: [s, s] }, name, [n, c, convOut(h, k, s, p), convOut(w, k, s, p)]);
}

function adaptiveAvgPool(b: OnnxBuilder, m: AdaptiveAvgPool2d, x: string): string {
  const [n, c, h, w] = b.shape(x);
  const o = m.outputSize;
  const name = `${m.path}/AdaptiveAvgPool`;
  if (h === o && w === o) return x;
  if (h === 1 && w === 1) return b.node('Tile', [x, b.int64s(`${m.path}.repeats`, [1, 1, o, o])], {}, name, [n, c, o, o]);
  if (h % o === 0 && w % o === 0) return b.node('AveragePool', [x], { kernel_shape: [h / o, w / o], strides: [h / o, w / o] }, name, [n, c, o, o]);
  // PyTorch's bins: [floor(i*n/o), ceil((i+1)*n/o)); one Slice + ReduceMean per bin.
  const bins = (len: number) => Array.from({ length: o }, (_, i) => [Math.floor((i * len) / o), Math.ceil(((i + 1) * len) / o)]);
  const axes = b.int64s(`${m.path}.axes`, [2, 3]);
  const rows = bins(h).map(([r0, r1]) => {
    const cells = bins(w).map(([c0, c1]) => {
      const s = b.node('Slice', [x, b.int64s(`${m.path}.starts`, [r0, c0]), b.int64s(`${m.path}.ends`, [r1, c1]), axes], {}, `${name}/Slice`, [n, c, r1 - r0, c1 - c0]);
      return b.node('ReduceMean', [s], { axes: [2, 3], keepdims: 1 }, `${name}/ReduceMean`, [n, c, 1, 1]);
    });
    return b.node('Concat', cells, { axis: 3 }, `${name}/Concat`, [n, c, 1, o]);
  });
  return b.node('Concat', rows, { axis: 2 }, `${name}/Concat`, [n, c, o, o]);
}

/** Emit `m` applied to tensor `x`; returns the output tensor name. */
export function emitModule(b: OnnxBuilder, m: Module, x: string): string {
  if (m.inserted) x = emitModule(b, m.inserted, x);
  const shape = b.shape(x);
  const custom = (m as unknown as { emitOnnx?: (b: OnnxBuilder, x: string) => string }).emitOnnx;
  if (custom) return custom.call(m, b, x);
  switch (m.kind) {
    case 'Conv2d':
      return conv(b, m as Conv2d, x);
    case 'BatchNorm2d':
      return batchNorm(b, m as BatchNorm2d, x);
    case 'Linear': {
      const inputs = [x, weight(b, m, 'weight')];
      if (m.params.has('bias')) inputs.push(weight(b, m, 'bias'));
      const out = (m.params.get('weight')!.variable.shape as number[])[1];
      return b.node('Gemm', inputs, { alpha: { float: 1 }, beta: { float: 1 }, transB: 1 }, `${m.path}/Gemm`, [shape[0], out]);
    }
    case 'ReLU':
      return b.node('Relu', [x], {}, `${m.path}/Relu`, shape);
    case 'Identity':
    case 'Dropout':
      return x;
    case 'MaxPool2d': {
      const p = m as MaxPool2d;
      return pool(b, 'MaxPool', x, p.kernelSize, p.stride, p.padding, `${m.path}/MaxPool`);
    }
    case 'AvgPool2d': {
      const p = m as AvgPool2d;
      return pool(b, 'AveragePool', x, p.kernelSize, p.stride, 0, `${m.path}/AveragePool`);
    }
    case 'AdaptiveAvgPool2d':
      return adaptiveAvgPool(b, m as AdaptiveAvgPool2d, x);
    case 'GlobalAvgPool': {
      const g = b.node('GlobalAveragePool', [x], {}, `${m.path}/GlobalAveragePool`, [shape[0], shape[1], 1, 1]);
      return b.node('Flatten', [g], { axis: 1 }, `${m.path}/Flatten`, [shape[0], shape[1]]);
    }
    case 'Flatten':
      return shape.length === 2 ? x : b.node('Flatten', [x], { axis: 1 }, `${m.path}/Flatten`, [shape[0], shape.slice(1).reduce((a, c) => a * c, 1)]);
    case 'Sequential':
    case 'PreActResNet18':
    case 'ResNet':
      for (const c of (m as Sequential).children.values()) if (c !== m.inserted) x = emitModule(b, c, x);
      return x;
    case 'PreActBlock': {
      const out = b.node('Relu', [emitModule(b, m.child('bn1'), x)], {}, `${m.path}/Relu`, shape);
      const shortcut = m.children.has('shortcut') ? emitModule(b, m.child('shortcut'), out) : x;
      const h = emitModule(b, m.child('conv1'), out);
      const r = b.node('Relu', [emitModule(b, m.child('bn2'), h)], {}, `${m.path}/Relu`, b.shape(h));
      const y = emitModule(b, m.child('conv2'), r);
      return b.node('Add', [y, shortcut], {}, `${m.path}/Add`, b.shape(y));
    }
    case 'BasicBlock': {
      const h = emitModule(b, m.child('bn1'), emitModule(b, m.child('conv1'), x));
      const r = b.node('Relu', [h], {}, `${m.path}/Relu`, b.shape(h));
      const y = emitModule(b, m.child('bn2'), emitModule(b, m.child('conv2'), r));
      const proj = m.children.has('downsample') ? m.child('downsample') : m.children.get('shortcut');
      const identity = proj ? emitModule(b, proj, x) : x;
      const s = b.node('Add', [y, identity], {}, `${m.path}/Add`, b.shape(y));
      return b.node('Relu', [s], {}, `${m.path}/Relu`, b.shape(y));
    }
    default:
      throw new Error(`ONNX export does not know the ${m.kind} module at ${m.path || 'the root'}`);
  }
}

function valueInfo(name: string, shape: number[]): onnx.IValueInfoProto {
  return onnx.ValueInfoProto.create({
    name,
    type: {
      tensorType: {
        elemType: onnx.TensorProto.DataType.FLOAT,
        shape: { dim: shape.map((d) => (d < 0 ? { dimParam: 'N' } : { dimValue: d })) },
      },
    },
  });
}

/** The model as an ONNX file's bytes. */
export function exportOnnx(model: Model, opts: ExportOptions = {}): Uint8Array {
  const b = new OnnxBuilder();
  const [h, w, c] = model.inputShape;
  const n = opts.batch ?? -1;
  // An imported graph keeps its own input and output names.
  const io = (model.root as unknown as { onnxIo?: { input: string; output: string } }).onnxIo ?? { input: 'input', output: 'logits' };
  b.reserve(io.input);
  b.reserve(io.output);
  b.shapes.set(io.input, [n, c, h, w]);
  let x = io.input;
  if (opts.includeNormalization && model.normalize) {
    const { mean, std } = model.normalize;
    const per = (v: number[]) => Float32Array.from({ length: c }, (_, i) => v[v.length === 1 ? 0 : i]);
    x = b.node('Sub', [x, b.initializer('normalize.mean', [1, c, 1, 1], per(mean))], {}, 'normalize/Sub', [n, c, h, w]);
    x = b.node('Div', [x, b.initializer('normalize.std', [1, c, 1, 1], per(std))], {}, 'normalize/Div', [n, c, h, w]);
  }
  const y = tf.tidy(() => emitModule(b, model.root, x));
  const outShape = b.shape(y);
  if (outShape.length !== 2 || outShape[1] !== model.numClasses) throw new Error(`ONNX export: output shape [${outShape}] is not [N, ${model.numClasses}]`);
  // Name the graph's output: rename the producing node's output (or add an Identity).
  const producer = b.nodes.find((nd) => nd.output?.[0] === y);
  if (producer) {
    producer.output = [io.output, ...producer.output!.slice(1)];
    for (const nd of b.nodes) nd.input = nd.input!.map((i) => (i === y ? io.output : i));
  } else b.node('Identity', [y], {}, `${io.output}/Identity`, outShape, [io.output]);
  const graph = onnx.GraphProto.create({
    name: model.spec.arch,
    node: b.nodes,
    initializer: b.initializers,
    input: [valueInfo(io.input, [n, c, h, w])],
    output: [valueInfo(io.output, [n, model.numClasses])],
  });
  const proto = onnx.ModelProto.create({
    irVersion: 7,
    opsetImport: [{ domain: '', version: ONNX_OPSET }],
    producerName: 'backdoor-audit',
    graph,
    metadataProps: [
      { key: 'backdoor-audit.arch', value: model.spec.arch },
      { key: 'backdoor-audit.inputShape', value: JSON.stringify(model.spec.inputShape) },
      { key: 'backdoor-audit.normalize', value: JSON.stringify(opts.includeNormalization ? null : (model.normalize ?? null)) },
    ],
  });
  return onnx.ModelProto.encode(proto).finish();
}

export function writeOnnx(model: Model, file: string, opts: ExportOptions = {}): void {
  writeFileAtomic(file, exportOnnx(model, opts));
}
