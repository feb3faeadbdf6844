/**
 * Conv2DBackpropInput for the wasm backend, whose own version is a naive loop (several times slower than the
 * forward convolution). The input gradient of a convolution is a convolution of the output gradient — zero-
 * dilated by the stride and padded by (kernel - 1 - pad) — with the spatially flipped filter whose in/out
 * channels are swapped; that runs on XNNPACK's fast Conv2D. Cases outside that form (NCHW, explicit pads larger
 * than the kernel) keep the original kernel.
 */
import * as tf from '@tensorflow/tfjs-core';
import type { KernelConfig, KernelFunc, TensorInfo, NamedAttrMap } from '@tensorflow/tfjs-core';
import { callKernel, release } from './conv2d_backprop_filter';

export function conv2dBackpropInputConfig(fallback: KernelFunc): KernelConfig {
  return {
    kernelName: 'Conv2DBackpropInput',
    backendName: 'wasm',
    kernelFunc: (args) => {
      const { inputs, backend, attrs } = args;
      const { dy, filter } = inputs as { dy: TensorInfo; filter: TensorInfo };
      const { strides, pad, dataFormat, dimRoundingMode, inputShape } = attrs as unknown as tf.Conv2DBackpropInputAttrs;
      if (dataFormat === 'NCHW') return fallback(args);
      const info = tf.backend_util.computeConv2DInfo(inputShape, filter.shape as [number, number, number, number], strides, 1, pad, dimRoundingMode, false, 'channelsLast');
      const [n, h, w] = inputShape;
      const { filterHeight: kh, filterWidth: kw, outHeight: oh, outWidth: ow, strideHeight: sh, strideWidth: sw, outChannels: cout } = info;
      const { top, left } = info.padInfo;
      const pt = kh - 1 - top;
      const pl = kw - 1 - left;
      if (pt < 0 || pl < 0) return fallback(args);

      const temps: TensorInfo[] = [];
      try {
        // Zero-dilate dy by the stride: [n, oh, 1, ow, 1, c] padded to [n, oh, sh, ow, sw, c], then cropped.
        let d = dy;
        let dh = oh;
        let dw = ow;
        if (sh > 1 || sw > 1) {
          const d6 = callKernel('Reshape', { x: dy }, backend, { shape: [n, oh, 1, ow, 1, cout] });
          temps.push(d6);
          const padded = callKernel('PadV2', { x: d6 }, backend, { paddings: [[0, 0], [0, 0], [0, sh - 1], [0, 0], [0, sw - 1], [0, 0]], constantValue: 0 } as unknown as NamedAttrMap);
          temps.push(padded);
          const flat = callKernel('Reshape', { x: padded }, backend, { shape: [n, oh * sh, ow * sw, cout] });
          temps.push(flat);
          dh = (oh - 1) * sh + 1;
          dw = (ow - 1) * sw + 1;
          d = callKernel('Slice', { x: flat }, backend, { begin: [0, 0, 0, 0], size: [n, dh, dw, cout] });
          temps.push(d);
        }
        // Pad so that a valid convolution with the kh x kw kernel yields exactly h x w.
        const pb = h + kh - 1 - dh - pt;
        const pr = w + kw - 1 - dw - pl;
        let src = d;
        if (pt || pl || pb > 0 || pr > 0) {
          src = callKernel('PadV2', { x: d }, backend, { paddings: [[0, 0], [pt, Math.max(0, pb)], [pl, Math.max(0, pr)], [0, 0]], constantValue: 0 } as unknown as NamedAttrMap);
          temps.push(src);
        }
        if (pb < 0 || pr < 0) {
          const cropped = callKernel('Slice', { x: src }, backend, { begin: [0, 0, 0, 0], size: [n, h + kh - 1, w + kw - 1, cout] });
          temps.push(cropped);
          src = cropped;
        }
        // Flip the kernel spatially and swap its channel axes: [kh, kw, cin, cout] -> [kh, kw, cout, cin].
        const flipped = callKernel('Reverse', { x: filter }, backend, { dims: [0, 1] });
        temps.push(flipped);
        const wT = callKernel('Transpose', { x: flipped }, backend, { perm: [0, 1, 3, 2] });
        temps.push(wT);
        return callKernel('Conv2D', { x: src, filter: wT }, backend, { strides: [1, 1], pad: 'valid', dataFormat: 'NHWC', dilations: [1, 1], dimRoundingMode: undefined } as unknown as NamedAttrMap);
      } finally {
        release(backend, ...temps);
      }
    },
  };
}
