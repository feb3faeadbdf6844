/**
 * A module of the graph as ONNX nodes (opset 13, NCHW like PyTorch's export), weights as initializers in
 * PyTorch layout under their state_dict names. Used by the model exporter (model_files/onnx_export.ts) and by
 * imported ONNX graphs that re-emit their own nodes (models/onnx_graph.ts).
 */
import type { Module, Param } from './module';
import type { HostValues } from './read';
import { AdaptiveAvgPool2d, AvgPool2d, BatchNorm2d, Conv2d, MaxPool2d, Sequential } from './layers';
import type { OnnxBuilder } from '../formats/onnx_builder';

function param(m: Module, name: string): Param {
  const p = m.params.get(name);
  if (!p) throw new Error(`${m.path || 'model'} has no ${name}`);
  return p;
}

export function weight(b: OnnxBuilder, hv: HostValues, m: Module, name: string, override?: Float32Array): string {
  const pt = hv.pt(param(m, name));
  return b.initializer(m.path ? `${m.path}.${name}` : name, pt.shape, override ?? (pt.data as Float32Array));
}

const convOut = (n: number, k: number, s: number, p: number) => Math.floor((n + 2 * p - k) / s) + 1;

function conv(b: OnnxBuilder, hv: HostValues, m: Conv2d, x: string): string {
  const [n, , h, w] = b.shape(x);
  const inputs = [x, weight(b, hv, m, 'weight')];
  if (m.bias) inputs.push(weight(b, hv, m, 'bias'));
  const k = m.kernelSize;
  const attrs = { dilations: [1, 1], group: 1, kernel_shape: [k, k], pads: [m.padding, m.padding, m.padding, m.padding], strides: [m.stride, m.stride] };
  return b.node('Conv', inputs, attrs, `${m.path}/Conv`, [n, m.outChannels, convOut(h, k, m.stride, m.padding), convOut(w, k, m.stride, m.padding)]);
}

function batchNorm(b: OnnxBuilder, hv: HostValues, m: BatchNorm2d, x: string): string {
  // A pruning mask multiplies gamma and beta: export the effective values.
  let gamma: Float32Array | undefined;
  let beta: Float32Array | undefined;
  if (m.mask) {
    const mask = hv.get(m.mask);
    gamma = hv.get(m.weight).map((g, i) => g * mask[i]);
    beta = hv.get(m.bias).map((g, i) => g * mask[i]);
  }
  const inputs = [x, weight(b, hv, m, 'weight', gamma), weight(b, hv, m, 'bias', beta), weight(b, hv, m, 'running_mean'), weight(b, hv, m, 'running_var')];
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

/** Emit `m` applied to tensor `x`; returns the output tensor name. `hv`: the tree's values, read beforehand. */
export function emitModule(b: OnnxBuilder, hv: HostValues, m: Module, x: string): string {
  if (m.inserted) x = emitModule(b, hv, m.inserted, x);
  const shape = b.shape(x);
  const custom = (m as unknown as { emitOnnx?: (b: OnnxBuilder, hv: HostValues, x: string) => string }).emitOnnx;
  if (custom) return custom.call(m, b, hv, x);
  switch (m.kind) {
    case 'Conv2d':
      return conv(b, hv, m as Conv2d, x);
    case 'BatchNorm2d':
      return batchNorm(b, hv, m as BatchNorm2d, x);
    case 'Linear': {
      const inputs = [x, weight(b, hv, m, 'weight')];
      if (m.params.has('bias')) inputs.push(weight(b, hv, m, 'bias'));
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
      for (const c of (m as Sequential).children.values()) if (c !== m.inserted) x = emitModule(b, hv, c, x);
      return x;
    case 'PreActBlock': {
      const out = b.node('Relu', [emitModule(b, hv, m.child('bn1'), x)], {}, `${m.path}/Relu`, shape);
      const shortcut = m.children.has('shortcut') ? emitModule(b, hv, m.child('shortcut'), out) : x;
      const h = emitModule(b, hv, m.child('conv1'), out);
      const r = b.node('Relu', [emitModule(b, hv, m.child('bn2'), h)], {}, `${m.path}/Relu`, b.shape(h));
      const y = emitModule(b, hv, m.child('conv2'), r);
      return b.node('Add', [y, shortcut], {}, `${m.path}/Add`, b.shape(y));
    }
    case 'BasicBlock': {
      const h = emitModule(b, hv, m.child('bn1'), emitModule(b, hv, m.child('conv1'), x));
      const r = b.node('Relu', [h], {}, `${m.path}/Relu`, b.shape(h));
      const y = emitModule(b, hv, m.child('bn2'), emitModule(b, hv, m.child('conv2'), r));
      const proj = m.children.has('downsample') ? m.child('downsample') : m.children.get('shortcut');
      const identity = proj ? emitModule(b, hv, proj, x) : x;
      const s = b.node('Add', [y, identity], {}, `${m.path}/Add`, b.shape(y));
      return b.node('Relu', [s], {}, `${m.path}/Relu`, b.shape(y));
    }
    default:
      throw new Error(`ONNX export does not know the ${m.kind} module at ${m.path || 'the root'}`);
  }
}
