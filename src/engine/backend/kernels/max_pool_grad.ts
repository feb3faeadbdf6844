/**
 * MaxPoolGrad for the wasm backend. The package's kernel walks the input channel by channel, striding through
 * NHWC memory, and cost as much as the forward and backward convolutions of a small CNN together; this one
 * walks each pooling window once with the channels innermost (contiguous), keeps the running maximum per
 * channel, and routes each output gradient to its window's maximum. Ties (common on digits: flat regions give
 * equal activations) go to the last maximum in window order, as the package's kernel did, so that training
 * follows the same path as before (PyTorch and tfjs's cpu kernel take the first; the choice moves training
 * runs, not their quality). Unlike the package's kernel, a window whose values are all negative routes to its
 * maximum, not to its first position. It reads and writes the wasm heap directly: views are taken after the output is allocated, since
 * an allocation may grow (and move) the heap.
 */
import * as tf from '@tensorflow/tfjs-core';
import type { KernelConfig, TensorInfo } from '@tensorflow/tfjs-core';

interface WasmHeap {
  makeOutput(shape: number[], dtype: tf.DataType): TensorInfo;
  typedArrayFromHeap(t: TensorInfo): Float32Array;
}

export function maxPoolGrad(dy: TensorInfo, input: TensorInfo, attrs: tf.MaxPoolGradAttrs, backend: WasmHeap): TensorInfo {
  const info = tf.backend_util.computePool2DInfo(input.shape as [number, number, number, number], attrs.filterSize, attrs.strides, 1, attrs.pad, attrs.dimRoundingMode);
  const { batchSize: n, inHeight: h, inWidth: w, inChannels: c, outHeight: oh, outWidth: ow, strideHeight: sh, strideWidth: sw } = info;
  const { effectiveFilterHeight: kh, effectiveFilterWidth: kw, dilationHeight: dh, dilationWidth: dw } = info;
  const top = info.padInfo.top;
  const left = info.padInfo.left;
  const out = backend.makeOutput(input.shape, 'float32');
  const dx = backend.typedArrayFromHeap(out);
  const x = backend.typedArrayFromHeap(input);
  const g = backend.typedArrayFromHeap(dy);
  dx.fill(0);
  const best = new Float32Array(c);
  const where = new Int32Array(c);
  for (let b = 0; b < n; b++) {
    const xb = b * h * w * c;
    for (let oy = 0; oy < oh; oy++) {
      for (let ox = 0; ox < ow; ox++) {
        let first = true;
        for (let ky = 0; ky < kh; ky += dh) {
          const iy = oy * sh - top + ky;
          if (iy < 0 || iy >= h) continue;
          for (let kx = 0; kx < kw; kx += dw) {
            const ix = ox * sw - left + kx;
            if (ix < 0 || ix >= w) continue;
            const p = xb + (iy * w + ix) * c;
            if (first) {
              for (let ch = 0; ch < c; ch++) {
                best[ch] = x[p + ch];
                where[ch] = p + ch;
              }
              first = false;
            } else {
              // Greater or equal: ties move to the later position.
              for (let ch = 0; ch < c; ch++) {
                const v = x[p + ch];
                if (v >= best[ch]) {
                  best[ch] = v;
                  where[ch] = p + ch;
                }
              }
            }
          }
        }
        if (first) continue; // a window entirely in the padding routes nothing
        const q = ((b * oh + oy) * ow + ox) * c;
        for (let ch = 0; ch < c; ch++) dx[where[ch]] += g[q + ch];
      }
    }
  }
  return out;
}

export const maxPoolGradConfig: KernelConfig = {
  kernelName: 'MaxPoolGrad',
  backendName: 'wasm',
  kernelFunc: ({ inputs, attrs, backend }) => maxPoolGrad(inputs.dy as TensorInfo, inputs.input as TensorInfo, attrs as unknown as tf.MaxPoolGradAttrs, backend as unknown as WasmHeap),
};
