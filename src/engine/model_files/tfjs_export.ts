/**
 * TensorFlow.js writer for models that did not come from a model.json (PyTorch checkpoints, our own
 * architectures): the module graph as a Keras functional topology in tfjs-layers' serialization, weights in
 * one float32 shard. Keras is NHWC with HWIO kernels like the module graph, so weights copy as they are; a
 * PyTorch Flatten (NCHW order) becomes Permute + Flatten so the Dense layer after it sees its trained order.
 * The input is normalized pixels, as for the source model; the normalization travels in userDefinedMetadata.
 * A model.json input is written back by replaying its own topology (models/tfjs_graph.ts).
 */
import type { Model } from '../nn/model';
import type { Module } from '../nn/module';
import { HostValues } from '../nn/read';
import { AdaptiveAvgPool2d, AvgPool2d, BatchNorm2d, Conv2d, Dropout, Linear, MaxPool2d } from '../nn/layers';
import { InputError } from '../errors';
import { SameConv2d, TfjsGraph, tfjsArtifacts } from '../models/tfjs_graph';

type Json = Record<string, unknown>;

class KerasBuilder {
  /** The model's values, read before the (synchronous) walk. */
  constructor(private readonly hv: HostValues) {}

  /** A parameter's values in the variable's own layout (Keras's: HWIO kernels, [in, out] dense kernels). */
  data(m: Module, p: string): Float32Array {
    return Float32Array.from(this.hv.get(m.params.get(p)!.variable));
  }

  /** The BatchNorm pruning mask's values, if any. */
  mask(bn: BatchNorm2d): Float32Array | undefined {
    return bn.mask ? this.hv.get(bn.mask) : undefined;
  }

  readonly layers: Json[] = [];
  readonly weights: Array<{ name: string; shape: number[]; data: Float32Array }> = [];
  /** Output shape of each layer without the batch: [H, W, C] or [F]. */
  readonly shapes = new Map<string, number[]>();
  private readonly used = new Set<string>();

  name(base: string): string {
    const b = base.replace(/[^A-Za-z0-9_]/g, '_') || 'layer';
    let n = b;
    for (let i = 1; this.used.has(n); i++) n = `${b}_${i}`;
    this.used.add(n);
    return n;
  }

  add(className: string, base: string, config: Json, inbound: string[], shape: number[], weights: Array<[string, number[], Float32Array]> = []): string {
    const name = this.name(base);
    const cfg = { name, trainable: true, dtype: 'float32', ...config };
    this.layers.push({ class_name: className, config: cfg, name, inbound_nodes: inbound.length ? [inbound.map((i) => [i, 0, 0, {}])] : [] });
    this.shapes.set(name, shape);
    for (const [suffix, s, data] of weights) this.weights.push({ name: `${name}/${suffix}`, shape: s, data });
    return name;
  }

  shape(t: string): number[] {
    return this.shapes.get(t)!;
  }
}

function emit(b: KerasBuilder, m: Module, x: string): string {
  if (m.inserted) x = emit(b, m.inserted, x);
  const base = m.path || m.kind;
  const [h, w, c] = b.shape(x);
  const child = (n: string) => m.children.get(n)!;
  const chain = () => {
    for (const ch of m.children.values()) if (ch !== m.inserted) x = emit(b, ch, x);
    return x;
  };
  switch (m.kind) {
    case 'Conv2d': {
      const conv = m as Conv2d;
      const k = conv.kernelSize;
      const s = conv.stride;
      let padding = 'valid';
      let size = (n: number) => Math.floor((n + 2 * conv.padding - k) / s) + 1;
      if (conv instanceof SameConv2d) {
        padding = 'same';
        size = (n) => Math.ceil(n / s);
      } else if (conv.padding > 0 && s === 1 && conv.padding * 2 === k - 1) {
        padding = 'same';
      } else if (conv.padding > 0) {
        const p = conv.padding;
        x = b.add('ZeroPadding2D', `${base}_pad`, { padding: [[p, p], [p, p]], data_format: 'channels_last' }, [x], [h + 2 * p, w + 2 * p, c]);
      }
      const weights: Array<[string, number[], Float32Array]> = [['kernel', conv.weight.shape, b.data(conv, 'weight')]];
      if (conv.bias) weights.push(['bias', [conv.outChannels], b.data(conv, 'bias')]);
      const config = { filters: conv.outChannels, kernel_size: [k, k], strides: [s, s], padding, data_format: 'channels_last', dilation_rate: [1, 1], activation: 'linear', use_bias: !!conv.bias };
      return b.add('Conv2D', base, config, [x], [size(h), size(w), conv.outChannels], weights);
    }
    case 'BatchNorm2d': {
      const bn = m as BatchNorm2d;
      const mask = b.mask(bn);
      const g = b.data(bn, 'weight').map((v, i) => v * (mask ? mask[i] : 1));
      const be = b.data(bn, 'bias').map((v, i) => v * (mask ? mask[i] : 1));
      const n = bn.numFeatures;
      return b.add('BatchNormalization', base, { axis: -1, momentum: 1 - bn.momentum, epsilon: bn.eps, center: true, scale: true }, [x], [h, w, c], [
        ['gamma', [n], g],
        ['beta', [n], be],
        ['moving_mean', [n], b.data(bn, 'running_mean')],
        ['moving_variance', [n], b.data(bn, 'running_var')],
      ]);
    }
    case 'ReLU':
      return b.add('Activation', base, { activation: 'relu' }, [x], b.shape(x));
    case 'Identity':
      return x;
    case 'Dropout':
      return b.add('Dropout', base, { rate: (m as Dropout).p }, [x], b.shape(x));
    case 'MaxPool2d':
    case 'AvgPool2d': {
      const p = m as MaxPool2d | AvgPool2d;
      if (p instanceof MaxPool2d && p.padding > 0) {
        throw new InputError(`max pooling with padding (${base}) has no TensorFlow.js layer; write the model as .onnx, .pt or .safetensors`);
      }
      const size = (n: number) => Math.floor((n - p.kernelSize) / p.stride) + 1;
      return b.add(m.kind === 'MaxPool2d' ? 'MaxPooling2D' : 'AveragePooling2D', base, { pool_size: [p.kernelSize, p.kernelSize], strides: [p.stride, p.stride], padding: 'valid', data_format: 'channels_last' }, [x], [size(h), size(w), c]);
    }
    case 'GlobalAvgPool':
      return b.add('GlobalAveragePooling2D', base, { data_format: 'channels_last' }, [x], [c]);
    case 'AdaptiveAvgPool2d': {
      const o = (m as AdaptiveAvgPool2d).outputSize;
      if (h === o && w === o) return x;
      if (h === 1 && w === 1) return b.add('UpSampling2D', base, { size: [o, o], data_format: 'channels_last', interpolation: 'nearest' }, [x], [o, o, c]);
      if (h % o === 0 && w % o === 0) {
        return b.add('AveragePooling2D', base, { pool_size: [h / o, w / o], strides: [h / o, w / o], padding: 'valid', data_format: 'channels_last' }, [x], [o, o, c]);
      }
      throw new InputError(`adaptive pooling of ${h}x${w} to ${o}x${o} (${base}) has no TensorFlow.js layer; write the model as .onnx, .pt or .safetensors`);
    }
    case 'Flatten': {
      const s = b.shape(x);
      if (s.length === 1) return x;
      // PyTorch flattens channel-major: move channels first, then flatten.
      const perm = b.add('Permute', `${base}_nchw`, { dims: [3, 1, 2] }, [x], [c, h, w]);
      return b.add('Flatten', base, {}, [perm], [h * w * c]);
    }
    case 'Linear': {
      const lin = m as Linear;
      const weights: Array<[string, number[], Float32Array]> = [['kernel', [lin.inFeatures, lin.outFeatures], b.data(lin, 'weight')]];
      if (lin.bias) weights.push(['bias', [lin.outFeatures], b.data(lin, 'bias')]);
      return b.add('Dense', base, { units: lin.outFeatures, activation: 'linear', use_bias: !!lin.bias }, [x], [lin.outFeatures], weights);
    }
    case 'Sequential':
    case 'PreActResNet18':
    case 'ResNet':
      return chain();
    case 'PreActBlock': {
      const out = b.add('Activation', `${base}_relu1`, { activation: 'relu' }, [emit(b, child('bn1'), x)], [h, w, c]);
      const shortcut = m.children.has('shortcut') ? emit(b, child('shortcut'), out) : x;
      const h1 = emit(b, child('conv1'), out);
      const r = b.add('Activation', `${base}_relu2`, { activation: 'relu' }, [emit(b, child('bn2'), h1)], b.shape(h1));
      const y = emit(b, child('conv2'), r);
      return b.add('Add', `${base}_add`, {}, [y, shortcut], b.shape(y));
    }
    case 'BasicBlock': {
      const h1 = emit(b, child('bn1'), emit(b, child('conv1'), x));
      const r = b.add('Activation', `${base}_relu1`, { activation: 'relu' }, [h1], b.shape(h1));
      const y = emit(b, child('bn2'), emit(b, child('conv2'), r));
      const proj = m.children.get('downsample') ?? m.children.get('shortcut');
      const identity = proj ? emit(b, proj, x) : x;
      const s = b.add('Add', `${base}_add`, {}, [y, identity], b.shape(y));
      return b.add('Activation', `${base}_relu2`, { activation: 'relu' }, [s], b.shape(y));
    }
    default:
      throw new InputError(`the ${m.kind} module (${base}) has no TensorFlow.js writer; write the model as .onnx, .pt or .safetensors`);
  }
}

/** model.json content and its weight shard for `model`; `shard` is the shard's file name. */
export async function tfjsArtifactsOf(model: Model, shard: string): Promise<{ json: Record<string, unknown>; bin: Uint8Array }> {
  // Every weight is read first: the walks below are synchronous.
  const hv = await HostValues.of(model.root);
  const meta = { backdoorAudit: { arch: model.spec.arch, inputShape: model.spec.inputShape, normalize: model.normalize ?? null } };
  if (model.root instanceof TfjsGraph) {
    const out = tfjsArtifacts(model.root, shard, hv);
    out.json.userDefinedMetadata = { ...((out.json.userDefinedMetadata as Json) ?? {}), ...meta };
    return out;
  }
  if (model.root.kind === 'OnnxGraph') {
    throw new InputError('an ONNX graph cannot be written as TensorFlow.js; write it as .onnx');
  }
  const b = new KerasBuilder(hv);
  const input = b.add('InputLayer', 'input', { batch_input_shape: [null, ...model.inputShape], sparse: false }, [], model.inputShape.slice());
  const y = emit(b, model.root, input);
  if (b.shape(y).join() !== String(model.numClasses)) throw new Error(`TensorFlow.js export: output shape [${b.shape(y)}] is not [${model.numClasses}]`);
  const total = b.weights.reduce((s, w) => s + w.data.length, 0);
  const all = new Float32Array(total);
  let off = 0;
  for (const w of b.weights) {
    all.set(w.data, off);
    off += w.data.length;
  }
  const json = {
    format: 'layers-model',
    generatedBy: 'backdoor-audit',
    convertedBy: null,
    modelTopology: {
      class_name: 'Model',
      config: { name: model.spec.arch.replace(/[^A-Za-z0-9_]/g, '_'), layers: b.layers, input_layers: [[input, 0, 0]], output_layers: [[y, 0, 0]] },
      keras_version: 'tfjs-layers',
      backend: 'tensor_flow.js',
    },
    weightsManifest: [{ paths: [shard], weights: b.weights.map((w) => ({ name: w.name, shape: w.shape, dtype: 'float32' })) }],
    userDefinedMetadata: meta,
  };
  return { json, bin: new Uint8Array(all.buffer) };
}
