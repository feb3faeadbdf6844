/**
 * Sum on wasm, for the one reduction training does most: over every axis but the channels of an NHWC tensor
 * (the bias gradient of every convolution, BatchNorm's beta). The package's kernel first transposes the
 * reduced axes innermost (a full copy) and then sums; this walks the tensor once with the channels innermost,
 * in double precision. Every other reduction goes to the package's kernel.
 */
import * as tf from '@tensorflow/tfjs-core';
import type { KernelConfig, KernelFunc, TensorInfo, DataType } from '@tensorflow/tfjs-core';

interface WasmHeap {
  makeOutput(shape: number[], dtype: DataType): TensorInfo;
  typedArrayFromHeap(t: TensorInfo): Float32Array;
}

/** Whether `axes` are exactly 0..rank-2 (all but the last). */
function leadingAxes(axes: number[], rank: number): boolean {
  if (rank < 2 || axes.length !== rank - 1) return false;
  const sorted = [...axes].sort((a, b) => a - b);
  return sorted.every((a, i) => a === i);
}

export function sumLeading(x: TensorInfo, keepDims: boolean, backend: WasmHeap): TensorInfo {
  const c = x.shape[x.shape.length - 1];
  const m = x.shape.reduce((a, b) => a * b, 1) / c;
  const shape = keepDims ? [...x.shape.slice(0, -1).map(() => 1), c] : [c];
  const out = backend.makeOutput(shape, 'float32');
  const o = backend.typedArrayFromHeap(out);
  const xs = backend.typedArrayFromHeap(x);
  const acc = new Float64Array(c);
  for (let i = 0, p = 0; i < m; i++) for (let ch = 0; ch < c; ch++, p++) acc[ch] += xs[p];
  for (let ch = 0; ch < c; ch++) o[ch] = acc[ch];
  return out;
}

export function sumConfig(original: KernelConfig): KernelConfig {
  return {
    kernelName: 'Sum',
    backendName: 'wasm',
    setupFunc: original.setupFunc,
    kernelFunc: (args) => {
      const x = args.inputs.x as TensorInfo;
      const { axis, keepDims } = args.attrs as unknown as tf.SumAttrs;
      const axes = tf.util.parseAxisParam(axis, x.shape);
      if (x.dtype === 'float32' && leadingAxes(axes, x.shape.length) && x.shape.every((d) => d > 0)) {
        return sumLeading(x, keepDims, args.backend as unknown as WasmHeap);
      }
      return (original.kernelFunc as KernelFunc)(args);
    },
  };
}
