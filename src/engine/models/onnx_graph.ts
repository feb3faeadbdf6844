/**
 * An ONNX graph imported op by op into the module graph. Every node becomes a module (a Conv2d, BatchNorm2d,
 * Linear... when it is one, so defenses find the layers they work on), named after its weight's initializer
 * when that ends in `.weight` (a PyTorch export then keeps PyTorch's state_dict keys) or after the node.
 *
 * Layout: ONNX is NCHW; inside, 4-D values are NHWC. Each value's logical ONNX shape (batch as -1) and
 * layout are known when importing, so axis-dependent ops (Concat, Flatten, Reshape, Softmax, Pad) and
 * constant operands are mapped once here, and Flatten/Reshape of a 4-D value go through NCHW order exactly.
 * Writing back replays the source nodes with the current weights; an inserted module becomes nodes in front
 * of the node it precedes.
 */
import * as tf from '@tensorflow/tfjs-core';
import { importOrRelease } from './import_guard';
import { AvgPool2d, BatchNorm2d, Conv2d, Dropout, Identity, Linear, MaxPool2d, ReLU } from '../nn/layers';
import { ForwardContext, Module, assignFromPt } from '../nn/module';
import type { HostValues } from '../nn/read';
import type { ArchLayout } from '../nn/model';
import { InputError } from '../errors';
import { Rng } from '../util/rng';
import type { OnnxAttr, OnnxConst, OnnxNode, OnnxPlan } from '../formats/onnx';
import { emitModule } from '../nn/onnx_emit';
import type { AttrValue, OnnxBuilder } from '../formats/onnx_builder';

export const SUPPORTED_ONNX_OPS = [
  'Conv', 'BatchNormalization', 'Relu', 'MaxPool', 'AveragePool', 'GlobalAveragePool', 'Add', 'Sub', 'Mul', 'Div', 'Flatten',
  'Reshape', 'Gemm', 'MatMul', 'Concat', 'Identity', 'Dropout', 'Softmax', 'Pad', 'Constant', 'Slice', 'ReduceMean', 'Tile',
];

type Layout = 'nhwc' | 'plain';
interface ValueInfo {
  /** Logical ONNX dims; the batch is -1. */
  dims: number[];
  layout: Layout;
}

/** NCHW axis -> NHWC axis. */
const NHWC_AXIS = [0, 3, 1, 2];

/** A parameter-free op (or one with constant operands), computed by `fn` from its dynamic inputs. */
export class OnnxOp extends Module {
  constructor(
    readonly kind: string,
    private readonly fn: (xs: tf.Tensor[], self: OnnxOp) => tf.Tensor,
  ) {
    super();
  }
  protected forwardImpl(x: tf.Tensor): tf.Tensor {
    return this.fn([x], this);
  }
  forwardMany(xs: tf.Tensor[], ctx: ForwardContext): tf.Tensor {
    const y = this.fn(xs, this);
    if (ctx.taps?.has(this.path)) ctx.features?.set(this.path, y);
    return y;
  }
  /** A constant operand held as a parameter (so it is saved, cloned and, for Add, trained). */
  addConst(c: OnnxConst, trainable: boolean): tf.Variable {
    return this.addParam('value', tf.tensor(c.data as Float32Array, c.dims.length ? c.dims : [], 'float32'), 'plain', trainable);
  }
}

/** Linear from Gemm or MatMul; remembers whether the file held B as [in, out] to write it back the same way. */
export class OnnxLinear extends Linear {
  bInOut = false;
  matmul = false;
}

/** Conv with what Conv2d does not cover: rectangular kernels, asymmetric pads, dilation. */
class GeneralConv extends Module {
  readonly kind = 'Conv';
  readonly weight: tf.Variable;
  readonly bias?: tf.Variable;
  constructor(
    w: OnnxConst,
    b: OnnxConst | undefined,
    readonly strides: [number, number],
    readonly pads: number[],
    readonly dilations: [number, number],
  ) {
    super();
    const [o, i, kh, kw] = w.dims;
    this.weight = this.addParam('weight', tf.zeros([kh, kw, i, o]), 'conv');
    assignFromPt(this.params.get('weight')!, { shape: w.dims, dtype: 'float32', data: w.data as Float32Array });
    if (b) this.bias = this.addParam('bias', tf.tensor1d(b.data as Float32Array), 'plain');
  }
  protected forwardImpl(x: tf.Tensor4D): tf.Tensor {
    const [t, l, bo, r] = this.pads;
    const xp = t || l || bo || r ? tf.pad(x, [[0, 0], [t, bo], [l, r], [0, 0]]) : x;
    const y = tf.conv2d(xp, this.weight as tf.Tensor4D, this.strides, 'valid', 'NHWC', this.dilations);
    return this.bias ? tf.add(y, this.bias) : y;
  }
}

/** Max or average pooling with asymmetric pads; average pooling excludes the pads unless count_include_pad. */
class GeneralPool extends Module {
  constructor(
    readonly kind: 'MaxPool' | 'AveragePool',
    readonly kernel: [number, number],
    readonly strides: [number, number],
    readonly pads: number[],
    readonly countIncludePad: boolean,
  ) {
    super();
  }
  protected forwardImpl(x: tf.Tensor4D): tf.Tensor {
    const [t, l, b, r] = this.pads;
    const p: Array<[number, number]> = [[0, 0], [t, b], [l, r], [0, 0]];
    if (this.kind === 'MaxPool') return tf.maxPool(tf.pad(x, p, -3.4e38), this.kernel, this.strides, 'valid');
    const sum = tf.avgPool(tf.pad(x, p), this.kernel, this.strides, 'valid');
    if (this.countIncludePad) return sum;
    const ones = tf.pad(tf.ones([1, x.shape[1], x.shape[2], 1]), p) as tf.Tensor4D;
    return tf.div(sum, tf.avgPool(ones, this.kernel, this.strides, 'valid'));
  }
}

interface Step {
  module: Module;
  node: OnnxNode;
  /** Dynamic inputs, in the node's input order. */
  dyn: string[];
  /** Output's logical dims (batch -1), for writing back. */
  outDims: number[];
}

export class OnnxGraph extends Module {
  readonly kind = 'OnnxGraph';
  readonly steps: Step[] = [];
  constructor(
    readonly plan: OnnxPlan,
    readonly onnxIo: { input: string; output: string },
  ) {
    super();
  }

  protected forwardImpl(x: tf.Tensor, ctx: ForwardContext): tf.Tensor {
    const env = new Map<string, tf.Tensor>([[this.onnxIo.input, x]]);
    for (const s of this.steps) {
      const xs = s.dyn.map((n) => env.get(n)!);
      const y = s.module instanceof OnnxOp && xs.length !== 1 ? s.module.forwardMany(xs, ctx) : s.module.forward(xs[0], ctx);
      env.set(s.node.outputs[0], y);
    }
    return env.get(this.onnxIo.output)!;
  }

  /** Write the graph back: the source nodes in order with the current weights. */
  emitOnnx(b: OnnxBuilder, hv: HostValues, x: string): string {
    const env = new Map<string, string>([[this.onnxIo.input, x]]);
    for (const s of this.steps) {
      const m = s.module;
      const ins = s.dyn.map((n) => env.get(n)!);
      let y: string;
      if (m instanceof Conv2d || m instanceof BatchNorm2d || m instanceof ReLU || m instanceof MaxPool2d || m instanceof AvgPool2d || m instanceof Identity || m instanceof Dropout || (m instanceof OnnxLinear && !m.bInOut)) {
        y = emitModule(b, hv, m, ins[0]);
      } else {
        if (m.inserted) ins[0] = emitModule(b, hv, m.inserted, ins[0]);
        y = this.emitNode(b, hv, s, ins);
      }
      env.set(s.node.outputs[0], y);
    }
    return env.get(this.onnxIo.output)!;
  }

  private emitNode(b: OnnxBuilder, hv: HostValues, s: Step, dynIns: string[]): string {
    const m = s.module;
    const node = s.node;
    const attrs: Record<string, AttrValue> = {};
    for (const [k, v] of Object.entries(node.attrs)) {
      const t = node.attrTypes[k];
      if (t === 'float') attrs[k] = { float: v as number };
      else if (t === 'floats') attrs[k] = { floats: v as number[] };
      else if (t === 'int' || t === 'ints' || t === 'string') attrs[k] = v as number | number[] | string;
    }
    const inputs: string[] = [];
    let d = 0;
    const w = (name: string, fallback: string) => {
      const p = m.params.get(name)!;
      const pt = hv.pt(p);
      return b.initializer(m.path ? `${m.path}.${name}` : fallback, pt.shape, pt.data as Float32Array);
    };
    for (const [i, name] of node.inputs.entries()) {
      if (name === '') inputs.push('');
      else if (d < s.dyn.length && s.dyn[d] === name && !this.constOf(name)) {
        inputs.push(dynIns[d++]);
      } else if (m instanceof OnnxLinear && i === 1) {
        // MatMul / Gemm(transB=0): B is [in, out], the variable's own layout.
        const v = m.weight;
        inputs.push(b.initializer(`${m.path}.weight`, v.shape, hv.get(v)));
      } else if ((m instanceof OnnxLinear || m instanceof GeneralConv) && i === 2) {
        inputs.push(w('bias', name));
      } else if (m instanceof GeneralConv && i === 1) {
        inputs.push(w('weight', name));
      } else if (m.params.has('value')) {
        inputs.push(w('value', name));
      } else {
        const c = this.constOf(name)!;
        inputs.push(c.data instanceof Float32Array ? b.initializer(name, c.dims, c.data) : b.initializer(name, c.dims, BigInt64Array.from(c.data.map((v) => BigInt(v)))));
      }
    }
    return b.node(node.op, inputs, attrs, node.name, s.outDims);
  }

  private constOf(name: string): OnnxConst | undefined {
    return this.plan.consts.get(name) ?? this.localConsts.get(name);
  }

  /** Outputs of Constant nodes. */
  readonly localConsts = new Map<string, OnnxConst>();
}

const ints = (v: OnnxAttr | undefined, d: number[]): number[] => (Array.isArray(v) ? (v as number[]) : d);
const int = (v: OnnxAttr | undefined, d: number): number => (typeof v === 'number' ? v : d);

function sanitize(name: string): string {
  const s = name.replace(/^\/+/, '').replace(/\//g, '.').replace(/[^A-Za-z0-9_.]/g, '_').replace(/^\.+|\.+$/g, '');
  return s || 'node';
}

/** Static pads for auto_pad (SAME_UPPER/SAME_LOWER/VALID) or the explicit ones, as [top, left, bottom, right]. */
function resolvePads(node: OnnxNode, hw: number[], k: number[], s: number[], dl: number[]): number[] {
  const auto = typeof node.attrs.auto_pad === 'string' ? node.attrs.auto_pad : 'NOTSET';
  if (auto === 'NOTSET' || auto === '') return ints(node.attrs.pads, [0, 0, 0, 0]);
  if (auto === 'VALID') return [0, 0, 0, 0];
  const begin: number[] = [];
  const end: number[] = [];
  for (let i = 0; i < 2; i++) {
    const total = Math.max((Math.ceil(hw[i] / s[i]) - 1) * s[i] + (k[i] - 1) * dl[i] + 1 - hw[i], 0);
    const small = Math.floor(total / 2);
    begin.push(auto === 'SAME_LOWER' ? total - small : small);
    end.push(auto === 'SAME_LOWER' ? small : total - small);
  }
  return [...begin, ...end];
}

/** Build the module graph of `plan` for inputs of `inputShape` ([H, W, C]). */
export function buildOnnxGraph(plan: OnnxPlan, inputShape: [number, number, number], where = 'ONNX graph'): { root: Module; layout: ArchLayout } {
  const graph = new OnnxGraph(plan, { input: plan.inputName, output: plan.outputName });
  return importOrRelease(graph, () => importNodes(graph, plan, inputShape, where));
}

function importNodes(graph: OnnxGraph, plan: OnnxPlan, inputShape: [number, number, number], where: string): { root: Module; layout: ArchLayout } {
  const [h, w, c] = inputShape;
  const values = new Map<string, ValueInfo>([[plan.inputName, { dims: [-1, c, h, w], layout: 'nhwc' }]]);
  const names = new Set<string>();
  const rng = new Rng(0);
  const producer = new Map<string, Step>();

  for (const source of plan.nodes) {
    // A copy: attributes are normalized below, and a clone rebuilds from the same plan.
    const node: OnnxNode = { ...source, attrs: { ...source.attrs }, attrTypes: { ...source.attrTypes } };
    const at = `${where}: node "${node.name}" (${node.op})`;
    const fail = (msg: string): never => {
      throw new InputError(msg, at);
    };
    const constOf = (name: string | undefined) => (name ? (plan.consts.get(name) ?? graph.localConsts.get(name)) : undefined);
    if (node.op === 'Constant') {
      const v = node.attrs.value;
      if (v && typeof v === 'object' && !Array.isArray(v)) graph.localConsts.set(node.outputs[0], v);
      else if (typeof node.attrs.value_float === 'number') graph.localConsts.set(node.outputs[0], { dims: [], data: Float32Array.of(node.attrs.value_float) });
      else if (Array.isArray(node.attrs.value_ints)) graph.localConsts.set(node.outputs[0], { dims: [node.attrs.value_ints.length], data: node.attrs.value_ints as number[] });
      else if (typeof node.attrs.value_int === 'number') graph.localConsts.set(node.outputs[0], { dims: [], data: [node.attrs.value_int] });
      else fail('a Constant without a value, value_float, value_int or value_ints');
      continue;
    }
    if (!SUPPORTED_ONNX_OPS.includes(node.op)) {
      throw new InputError(`unsupported ONNX op ${node.op} (node "${node.name}"); supported: ${SUPPORTED_ONNX_OPS.join(', ')}`, where);
    }
    const dyn = node.inputs.filter((i) => i !== '' && !constOf(i));
    for (const d of dyn) if (!values.has(d)) fail(`input ${d} is not produced by an earlier node`);
    const info = dyn.map((d) => values.get(d)!);
    const x0 = info[0];
    if (!x0) fail('the node has no input computed from the image');
    const f32 = (name: string | undefined, what: string): OnnxConst => {
      const k = constOf(name);
      if (!k) return fail(`${what} must be a constant`);
      if (!(k.data instanceof Float32Array)) return fail(`${what} must be floating point`);
      return k;
    };
    const nhwc4 = () => {
      if (x0.layout !== 'nhwc') fail(`expects a 4-D image tensor, got shape [${x0.dims}]`);
    };
    const weightName = node.inputs[1] && constOf(node.inputs[1]) && /\.weight$/.test(node.inputs[1]) ? node.inputs[1].replace(/\.weight$/, '') : undefined;
    let base = weightName ?? (node.op === 'BatchNormalization' && node.inputs[1]?.endsWith('.weight') ? node.inputs[1].replace(/\.weight$/, '') : sanitize(node.name));
    for (let i = 1; names.has(base); i++) base = `${weightName ?? sanitize(node.name)}_${i}`;
    names.add(base);

    let module: Module;
    let out: ValueInfo;
    const [n0, c0, h0, w0] = x0.dims;
    switch (node.op) {
      case 'Conv': {
        nhwc4();
        const W = f32(node.inputs[1], 'the weight');
        const B = node.inputs[2] ? f32(node.inputs[2], 'the bias') : undefined;
        if (W.dims.length !== 4) fail(`only 2-D convolutions are supported (weight shape [${W.dims}])`);
        const group = int(node.attrs.group, 1);
        if (group !== 1) fail(`grouped convolution (group=${group}) is not supported`);
        if (W.dims[1] !== c0) fail(`weight takes ${W.dims[1]} channels but the input has ${c0}`);
        const k = ints(node.attrs.kernel_shape, W.dims.slice(2));
        const s = ints(node.attrs.strides, [1, 1]);
        const dl = ints(node.attrs.dilations, [1, 1]);
        const pads = resolvePads(node, [h0, w0], k, s, dl);
        node.attrs = { dilations: dl, group: 1, kernel_shape: k, pads, strides: s };
        node.attrTypes = { dilations: 'ints', group: 'int', kernel_shape: 'ints', pads: 'ints', strides: 'ints' };
        const o = W.dims[0];
        const oh = Math.floor((h0 + pads[0] + pads[2] - dl[0] * (k[0] - 1) - 1) / s[0]) + 1;
        const ow = Math.floor((w0 + pads[1] + pads[3] - dl[1] * (k[1] - 1) - 1) / s[1]) + 1;
        if (k[0] === k[1] && s[0] === s[1] && pads.every((p) => p === pads[0]) && dl[0] === 1 && dl[1] === 1) {
          const conv = new Conv2d(c0, o, k[0], { stride: s[0], padding: pads[0], bias: !!B }, rng);
          assignFromPt(conv.params.get('weight')!, { shape: W.dims, dtype: 'float32', data: W.data as Float32Array });
          if (B) assignFromPt(conv.params.get('bias')!, { shape: B.dims, dtype: 'float32', data: B.data as Float32Array });
          module = conv;
        } else {
          module = new GeneralConv(W, B, [s[0], s[1]], pads, [dl[0], dl[1]]);
        }
        out = { dims: [n0, o, oh, ow], layout: 'nhwc' };
        break;
      }
      case 'BatchNormalization': {
        nhwc4();
        const [scale, bias, mean, variance] = [1, 2, 3, 4].map((i) => f32(node.inputs[i], `input ${i}`));
        if (node.outputs.length > 1 && node.outputs.slice(1).some((o) => o)) fail('training-mode BatchNormalization (with running-statistic outputs) is not supported');
        const eps = typeof node.attrs.epsilon === 'number' ? node.attrs.epsilon : 1e-5;
        const momentum = typeof node.attrs.momentum === 'number' ? node.attrs.momentum : 0.9;
        const bn = new BatchNorm2d(c0, eps, 1 - momentum);
        (['weight', 'bias', 'running_mean', 'running_var'] as const).forEach((p, i) => {
          const t = [scale, bias, mean, variance][i];
          if (t.dims.reduce((a, b) => a * b, 1) !== c0) fail(`${p} has ${t.data.length} values for ${c0} channels`);
          assignFromPt(bn.params.get(p)!, { shape: [c0], dtype: 'float32', data: t.data as Float32Array });
        });
        module = bn;
        out = x0;
        break;
      }
      case 'Relu':
        module = new ReLU();
        out = x0;
        break;
      case 'Identity':
        module = new Identity();
        out = x0;
        break;
      case 'Dropout': {
        if (node.outputs[1]) fail('a Dropout whose mask output is used is not supported');
        const ratio = constOf(node.inputs[1]);
        module = new Dropout(ratio ? Number(ratio.data[0]) : typeof node.attrs.ratio === 'number' ? node.attrs.ratio : 0.5);
        out = x0;
        break;
      }
      case 'MaxPool':
      case 'AveragePool': {
        nhwc4();
        if (node.outputs[1]) fail('MaxPool indices are not supported');
        const k = ints(node.attrs.kernel_shape, []);
        if (k.length !== 2) fail('only 2-D pooling is supported');
        const s = ints(node.attrs.strides, [1, 1]);
        const dl = ints(node.attrs.dilations, [1, 1]);
        if (dl[0] !== 1 || dl[1] !== 1) fail('dilated pooling is not supported');
        const pads = resolvePads(node, [h0, w0], k, s, dl);
        const size = (n: number, i: number, ceil: boolean) => {
          const v = (n + pads[i] + pads[i + 2] - k[i]) / s[i];
          return (ceil ? Math.ceil(v) : Math.floor(v)) + 1;
        };
        const oh = size(h0, 0, false);
        const ow = size(w0, 1, false);
        if (int(node.attrs.ceil_mode, 0) === 1 && (size(h0, 0, true) !== oh || size(w0, 1, true) !== ow)) fail('ceil_mode=1 pooling that changes the output size is not supported');
        const countIncludePad = int(node.attrs.count_include_pad, 0) === 1;
        node.attrs = { kernel_shape: k, pads, strides: s, ...(node.op === 'AveragePool' ? { count_include_pad: countIncludePad ? 1 : 0 } : {}) };
        node.attrTypes = { kernel_shape: 'ints', pads: 'ints', strides: 'ints', count_include_pad: 'int' };
        const square = k[0] === k[1] && s[0] === s[1] && pads.every((p) => p === pads[0]);
        if (square && node.op === 'MaxPool') module = new MaxPool2d(k[0], s[0], pads[0]);
        else if (square && pads[0] === 0) module = new AvgPool2d(k[0], s[0]);
        else module = new GeneralPool(node.op, [k[0], k[1]], [s[0], s[1]], pads, countIncludePad);
        out = { dims: [n0, c0, oh, ow], layout: 'nhwc' };
        break;
      }
      case 'GlobalAveragePool':
        nhwc4();
        module = new OnnxOp('GlobalAveragePool', ([x]) => tf.mean(x, [1, 2], true));
        out = { dims: [n0, c0, 1, 1], layout: 'nhwc' };
        break;
      case 'Flatten': {
        const axis = int(node.attrs.axis, 1);
        if (axis !== 1) fail(`Flatten with axis=${axis} is not supported (only axis=1)`);
        const rest = x0.dims.slice(1).reduce((a, b) => a * b, 1);
        module = new OnnxOp('Flatten', ([x]) => tf.reshape(x0.layout === 'nhwc' ? tf.transpose(x, [0, 3, 1, 2]) : x, [x.shape[0], -1]));
        out = { dims: [n0, rest], layout: 'plain' };
        break;
      }
      case 'Reshape': {
        const shapeConst = constOf(node.inputs[1]);
        if (!shapeConst) fail('the target shape must be a constant');
        const target = (shapeConst!.data as number[]).slice();
        const inDims = x0.dims;
        const perSample = inDims.slice(1).reduce((a, b) => a * b, 1);
        // Batch stays dynamic: 0 copies it, and a literal batch (the export's example batch) is replaced.
        const resolved = target.map((t, i) => (t === 0 ? inDims[i] : t));
        if (resolved[0] !== -1) {
          const rest = resolved.slice(1);
          if (rest.includes(-1) || rest.reduce((a, b) => a * b, 1) !== perSample) fail(`reshape to [${target}] mixes the batch with other dimensions`);
          resolved[0] = -1;
        } else if (resolved.slice(1).includes(-1)) {
          fail(`reshape to [${target}] has two unknown dimensions`);
        }
        const outDims = resolved.map((v, i) => (i === 0 ? -1 : v));
        if (outDims.slice(1).reduce((a, b) => a * b, 1) !== perSample) fail(`reshape to [${target}] does not keep ${perSample} values per sample`);
        const outLayout: Layout = outDims.length === 4 ? 'nhwc' : 'plain';
        module = new OnnxOp('Reshape', ([x]) => {
          const logical = x0.layout === 'nhwc' ? tf.transpose(x, [0, 3, 1, 2]) : x;
          const y = tf.reshape(logical, [x.shape[0], ...outDims.slice(1)]);
          return outLayout === 'nhwc' ? tf.transpose(y, [0, 2, 3, 1]) : y;
        });
        out = { dims: outDims, layout: outLayout };
        break;
      }
      case 'Gemm':
      case 'MatMul': {
        if (x0.layout !== 'plain' || x0.dims.length !== 2) fail(`expects a [N, features] input, got [${x0.dims}]`);
        const B = f32(node.inputs[1], 'B');
        if (B.dims.length !== 2) fail(`B must be a matrix, got [${B.dims}]`);
        const transB = node.op === 'Gemm' && int(node.attrs.transB, 0) === 1;
        if (node.op === 'Gemm' && int(node.attrs.transA, 0) !== 0) fail('Gemm with transA=1 is not supported');
        const alpha = node.op === 'Gemm' && typeof node.attrs.alpha === 'number' ? node.attrs.alpha : 1;
        const beta = node.op === 'Gemm' && typeof node.attrs.beta === 'number' ? node.attrs.beta : 1;
        const [inF, outF] = transB ? [B.dims[1], B.dims[0]] : B.dims;
        if (inF !== x0.dims[1]) fail(`B takes ${inF} features but the input has ${x0.dims[1]}`);
        const C = node.op === 'Gemm' && node.inputs[2] ? f32(node.inputs[2], 'C') : undefined;
        if (C && C.data.length !== outF && C.data.length !== 1) fail(`C has ${C.data.length} values for ${outF} outputs`);
        const lin = new OnnxLinear(inF, outF, rng, !!C);
        lin.bInOut = !transB;
        lin.matmul = node.op === 'MatMul';
        // Fold alpha and beta into the weights (written back with alpha = beta = 1).
        const wData = (B.data as Float32Array).map((v) => v * alpha);
        if (transB) assignFromPt(lin.params.get('weight')!, { shape: B.dims, dtype: 'float32', data: wData });
        else tf.tidy(() => lin.weight.assign(tf.tensor2d(wData, [inF, outF])));
        if (C) {
          const bias = Float32Array.from({ length: outF }, (_, i) => (C.data as Float32Array)[C.data.length === 1 ? 0 : i] * beta);
          assignFromPt(lin.params.get('bias')!, { shape: [outF], dtype: 'float32', data: bias });
        }
        if (node.op === 'Gemm') {
          node.attrs = { alpha: 1, beta: 1, transB: transB ? 1 : 0 };
          node.attrTypes = { alpha: 'float', beta: 'float', transB: 'int' };
        }
        module = lin;
        out = { dims: [n0, outF], layout: 'plain' };
        break;
      }
      case 'Add':
      case 'Sub':
      case 'Mul':
      case 'Div': {
        const fn = { Add: tf.add, Sub: tf.sub, Mul: tf.mul, Div: tf.div }[node.op as 'Add'];
        if (dyn.length === 2) {
          const [a, b] = info;
          if (a.layout !== b.layout || a.dims.length !== b.dims.length) fail(`operands of shapes [${a.dims}] and [${b.dims}] are not supported`);
          module = new OnnxOp(node.op, ([p, q]) => fn(p, q));
          out = { dims: a.dims.map((d, i) => Math.max(d, b.dims[i])), layout: a.layout };
        } else {
          const k = f32(node.inputs.find((i) => constOf(i)), 'the constant operand');
          const constFirst = !!constOf(node.inputs[0]);
          if (k.dims.length > x0.dims.length) fail(`constant of shape [${k.dims}] is wider than the input [${x0.dims}]`);
          const op = new OnnxOp(node.op, ([x], self) => {
            let v: tf.Tensor = self.params.get('value')!.variable;
            if (x0.layout === 'nhwc') {
              // Broadcast in NCHW terms: left-pad to rank 4, then move channels last.
              v = tf.transpose(tf.reshape(v, [...new Array(4 - k.dims.length).fill(1), ...k.dims]), [0, 2, 3, 1]);
            }
            return constFirst ? fn(v, x) : fn(x, v);
          });
          // Add's constant is a bias (MatMul + Add is a Linear layer): trained; the others scale or shift inputs.
          op.addConst(k, node.op === 'Add');
          module = op;
          const padded = [...new Array(x0.dims.length - k.dims.length).fill(1), ...k.dims];
          out = { dims: x0.dims.map((d, i) => (i === 0 ? d : Math.max(d, padded[i]))), layout: x0.layout };
        }
        break;
      }
      case 'Concat': {
        if (dyn.length !== node.inputs.filter((i) => i !== '').length) fail('constant Concat operands are not supported');
        let axis = int(node.attrs.axis, 1);
        const rank = x0.dims.length;
        if (axis < 0) axis += rank;
        if (info.some((v) => v.layout !== x0.layout || v.dims.length !== rank)) fail('operands of different ranks');
        if (axis === 0) fail('concatenation along the batch is not supported');
        const tfAxis = x0.layout === 'nhwc' ? NHWC_AXIS[axis] : axis;
        module = new OnnxOp('Concat', (xs) => tf.concat(xs, tfAxis));
        out = { dims: x0.dims.map((d, i) => (i === axis ? info.reduce((s, v) => s + v.dims[i], 0) : d)), layout: x0.layout };
        break;
      }
      case 'Softmax': {
        const rank = x0.dims.length;
        let axis = int(node.attrs.axis, plan.opset >= 13 ? -1 : 1);
        if (axis < 0) axis += rank;
        const lastInside = x0.layout === 'nhwc' ? axis === 1 : axis === rank - 1;
        if (!lastInside && !(plan.opset < 13 && rank === 2 && axis === 1)) fail(`Softmax over axis ${axis} of [${x0.dims}] is not supported`);
        module = new OnnxOp('Softmax', ([x]) => tf.softmax(x));
        out = x0;
        break;
      }
      case 'Pad': {
        const mode = typeof node.attrs.mode === 'string' ? node.attrs.mode : 'constant';
        if (mode !== 'constant') fail(`Pad mode ${mode} is not supported`);
        const padsConst = node.inputs[1] ? constOf(node.inputs[1]) : undefined;
        const pads = padsConst ? (padsConst.data as number[]) : ints(node.attrs.pads, []);
        const rank = x0.dims.length;
        if (pads.length !== 2 * rank) fail(`pads [${pads}] do not match rank ${rank}`);
        if (node.inputs[3]) fail('Pad with axes is not supported');
        const valueConst = node.inputs[2] ? constOf(node.inputs[2]) : undefined;
        const value = valueConst ? Number(valueConst.data[0]) : typeof node.attrs.value === 'number' ? node.attrs.value : 0;
        if (pads.some((p) => p < 0)) fail('negative pads (cropping) are not supported');
        if (pads[0] || pads[rank]) fail('padding the batch is not supported');
        const perAxis: Array<[number, number]> = Array.from({ length: rank }, (_, i) => [pads[i], pads[i + rank]]);
        const tfPads = x0.layout === 'nhwc' ? [perAxis[0], perAxis[2], perAxis[3], perAxis[1]] : perAxis;
        module = new OnnxOp('Pad', ([x]) => tf.pad(x, tfPads, value));
        out = { dims: x0.dims.map((d, i) => (i === 0 ? d : d + pads[i] + pads[i + rank])), layout: x0.layout };
        break;
      }
      case 'Slice': {
        const rank = x0.dims.length;
        const get = (i: number) => (node.inputs[i] ? (constOf(node.inputs[i])?.data as number[] | undefined) : undefined);
        const starts = get(1);
        const ends = get(2);
        if (!starts || !ends) fail('starts and ends must be constants');
        const axes = (get(3) ?? starts!.map((_, i) => i)).map((a) => (a < 0 ? a + rank : a));
        if ((get(4) ?? []).some((st) => st !== 1)) fail('Slice with steps other than 1 is not supported');
        if (axes.includes(0)) fail('slicing the batch is not supported');
        const begin = new Array(rank).fill(0);
        const size = x0.dims.slice();
        axes.forEach((a, i) => {
          const dim = x0.dims[a];
          const clamp = (v: number) => Math.min(Math.max(v < 0 ? v + dim : v, 0), dim);
          begin[a] = clamp(starts![i]);
          size[a] = Math.max(clamp(ends![i]) - begin[a], 0);
        });
        const perm = x0.layout === 'nhwc' ? [0, 2, 3, 1] : [...Array(rank).keys()];
        const tfBegin = perm.map((a) => begin[a]);
        const tfSize = perm.map((a, i) => (i === 0 ? -1 : size[a]));
        module = new OnnxOp('Slice', ([x]) => tf.slice(x, tfBegin, tfSize));
        out = { dims: size.map((d, i) => (i === 0 ? -1 : d)), layout: x0.layout };
        break;
      }
      case 'ReduceMean': {
        const rank = x0.dims.length;
        const fromInput = node.inputs[1] ? (constOf(node.inputs[1])?.data as number[] | undefined) : undefined;
        const axes = (fromInput ?? ints(node.attrs.axes, [...Array(rank).keys()])).map((a) => (a < 0 ? a + rank : a));
        const keep = int(node.attrs.keepdims, 1) === 1;
        if (axes.includes(0)) fail('averaging over the batch is not supported');
        if (!keep && x0.layout === 'nhwc') fail('ReduceMean of an image tensor without keepdims is not supported');
        const tfAxes = axes.map((a) => (x0.layout === 'nhwc' ? NHWC_AXIS[a] : a));
        module = new OnnxOp('ReduceMean', ([x]) => tf.mean(x, tfAxes, keep));
        out = { dims: keep ? x0.dims.map((d, i) => (axes.includes(i) ? 1 : d)) : x0.dims.filter((_, i) => !axes.includes(i)), layout: x0.layout };
        break;
      }
      case 'Tile': {
        const reps = constOf(node.inputs[1])?.data as number[] | undefined;
        if (!reps || reps.length !== x0.dims.length) fail('repeats must be a constant with one value per dimension');
        if (reps![0] !== 1) fail('tiling the batch is not supported');
        const tfReps = x0.layout === 'nhwc' ? [reps![0], reps![2], reps![3], reps![1]] : reps!;
        module = new OnnxOp('Tile', ([x]) => tf.tile(x, tfReps));
        out = { dims: x0.dims.map((d, i) => (i === 0 ? d : d * reps![i])), layout: x0.layout };
        break;
      }
      default:
        throw new InputError(`unsupported ONNX op ${node.op} (node "${node.name}")`, where);
    }
    graph.addChild(base, module);
    const step: Step = { module, node, dyn, outDims: out.dims };
    graph.steps.push(step);
    values.set(node.outputs[0], out);
    producer.set(node.outputs[0], step);
  }

  const outInfo = values.get(plan.outputName);
  if (!outInfo) throw new InputError(`the graph output ${plan.outputName} is not computed by any supported node`, where);
  if (outInfo.dims.length !== 2) throw new InputError(`the graph output has shape [${outInfo.dims}]; a classifier gives [N, classes]`, where);
  graph.finalize();

  const linears = graph.steps.filter((s) => s.module instanceof OnnxLinear);
  const head = linears[linears.length - 1];
  if (!head) throw new InputError('the graph has no Gemm or MatMul classification head', where);
  const featureStep = producer.get(head.dyn[0]);
  // NAD's attention taps: residual sums where the graph has them (a ReLU output can be all zero for an image,
  // and the attention's normalization has no gradient there), else the last ReLU/Concat/pool outputs.
  const spatialOf = (ops: string[]) => graph.steps.filter((s) => values.get(s.node.outputs[0])!.layout === 'nhwc' && ops.includes(s.node.op));
  const adds = spatialOf(['Add']);
  const spatial = adds.length >= 2 ? adds : spatialOf(['Add', 'Relu', 'Concat', 'MaxPool', 'AveragePool']);
  const convs = graph.steps.filter((s) => s.module instanceof Conv2d);
  const feature = featureStep ? featureStep.module.path : head.module.path;
  return {
    root: graph,
    layout: {
      feature,
      head: head.module.path,
      stages: [...stageEnds(spatial.map((s) => ({ path: s.module.path, shape: values.get(s.node.outputs[0])!.dims }))), feature],
      lastBlockConv: convs.length ? convs[convs.length - 1].module.path : '',
    },
  };
}

/**
 * The outputs that end the last two resolution stages (the last candidate of each of the last two spatial
 * sizes), as the built-in architectures tap `layer3` and `layer4`.
 */
export function stageEnds(cands: Array<{ path: string; shape: number[] }>): string[] {
  const lastBySize = new Map<string, string>();
  for (const c of cands) {
    const key = c.shape.slice(-2).join('x');
    lastBySize.delete(key);
    lastBySize.set(key, c.path);
  }
  return [...lastBySize.values()].slice(-2);
}

/** The class count of a plan's output, once built. */
export function onnxNumClasses(root: Module): number {
  const g = root as OnnxGraph;
  const last = g.steps.find((s) => s.node.outputs[0] === g.onnxIo.output);
  return last ? last.outDims[1] : -1;
}
