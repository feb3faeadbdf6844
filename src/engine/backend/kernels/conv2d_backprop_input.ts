/**
 * Conv2DBackpropInput for the wasm backend, whose own version is a naive loop (several times slower than the
 * forward convolution). The input gradient of a convolution is itself a convolution: the output gradient,
 * zero-dilated by the stride and padded by (kernel - 1 - pad) on each side, convolved ('valid', stride 1) with
 * the spatially flipped filter whose in/out channel axes are swapped. That runs on XNNPACK's fast Conv2D.
 *
 * A pad larger than kernel - 1 (explicit pads, e.g. a 1x1 kernel with padding 1) makes the amount negative:
 * the dilated gradient is then cropped instead of padded, so every NHWC case takes the fast path. NCHW (which
 * tfjs conv2d on wasm does not produce) falls back to the original kernel.
 */
import * as tf from '@tensorflow/tfjs-core';
import type { KernelConfig, TensorInfo } from '@tensorflow/tfjs-core';
import { callKernel, padOrCrop, release } from './call';

/** Zero-dilate [n, oh, ow, c] by the strides: [n, (oh-1)*sh+1, (ow-1)*sw+1, c] with dy at every sh-th/sw-th place. */
function dilate(dy: TensorInfo, sh: number, sw: number, backend: unknown, temps: TensorInfo[]): TensorInfo {
  if (sh === 1 && sw === 1) return dy;
  const [n, oh, ow, c] = dy.shape;
  // [n, oh, 1, ow, 1, c] padded to [n, oh, sh, ow, sw, c] interleaves sh-1 (sw-1) zero rows (columns) after
  // each one; the trailing zeros past the last row/column are then cropped.
  const d6 = callKernel('Reshape', { x: dy }, backend, { shape: [n, oh, 1, ow, 1, c] });
  temps.push(d6);
  const padded = callKernel('PadV2', { x: d6 }, backend, { paddings: [[0, 0], [0, 0], [0, sh - 1], [0, 0], [0, sw - 1], [0, 0]], constantValue: 0 });
  temps.push(padded);
  const flat = callKernel('Reshape', { x: padded }, backend, { shape: [n, oh * sh, ow * sw, c] });
  temps.push(flat);
  const out = callKernel('Slice', { x: flat }, backend, { begin: [0, 0, 0, 0], size: [n, (oh - 1) * sh + 1, (ow - 1) * sw + 1, c] });
  temps.push(out);
  return out;
}

export function conv2dBackpropInput(dy: TensorInfo, filter: TensorInfo, attrs: tf.Conv2DBackpropInputAttrs, backend: unknown): TensorInfo {
  const { strides, pad, dimRoundingMode, inputShape } = attrs;
  const info = tf.backend_util.computeConv2DInfo(inputShape, filter.shape as [number, number, number, number], strides, 1, pad, dimRoundingMode, false, 'channelsLast');
  const [, h, w] = inputShape;
  const { filterHeight: kh, filterWidth: kw, strideHeight: sh, strideWidth: sw } = info;
  const temps: TensorInfo[] = [];
  try {
    // Flip the kernel spatially and swap its channel axes: [kh, kw, cin, cout] -> [kh, kw, cout, cin].
    const flipped = callKernel('Reverse', { x: filter }, backend, { dims: [0, 1] });
    temps.push(flipped);
    const wT = callKernel('Transpose', { x: flipped }, backend, { perm: [0, 1, 3, 2] });
    temps.push(wT);
    const conv = (x: TensorInfo) => callKernel('Conv2D', { x, filter: wT }, backend, { strides: [1, 1], pad: 'valid', dataFormat: 'NHWC', dilations: [1, 1], dimRoundingMode: undefined });
    // A 'valid' kh x kw convolution must map the padded gradient to exactly h x w: rows needed = h + kh - 1.
    // Leading amount is kernel - 1 - pad; the trailing one takes what remains (negative: crop). The trailing
    // crop also drops input rows a strided convolution never read (their gradient is zero from the padding).
    const amounts = (d: TensorInfo): Array<[number, number]> => {
      const pt = kh - 1 - info.padInfo.top;
      const pl = kw - 1 - info.padInfo.left;
      return [[0, 0], [pt, h + kh - 1 - d.shape[1] - pt], [pl, w + kw - 1 - d.shape[2] - pl], [0, 0]];
    };
    if (kh === 1 && kw === 1) {
      // A 1x1 kernel commutes with the zero-dilation: convolving the undilated gradient first does sh*sw times
      // less work (the strided 1x1 shortcut of a ResNet), then its result is dilated and placed.
      const small = conv(dy);
      temps.push(small);
      const d = dilate(small, sh, sw, backend, temps);
      const placed = padOrCrop(d, amounts(d), backend, temps);
      // The result is the last temporary made (or `small` itself): hand it out instead of releasing it.
      temps.splice(temps.lastIndexOf(placed), 1);
      return placed;
    }
    const d = dilate(dy, sh, sw, backend, temps);
    return conv(padOrCrop(d, amounts(d), backend, temps));
  } finally {
    release(backend, ...temps);
  }
}

/**
 * The replacement config. `original` is the kernel it replaces: its setup (binding the wasm function) must still
 * run when the backend starts, since it is unregistered before that and serves the NCHW fallback.
 */
export function conv2dBackpropInputConfig(original: KernelConfig): KernelConfig {
  return {
    kernelName: 'Conv2DBackpropInput',
    backendName: 'wasm',
    setupFunc: original.setupFunc,
    kernelFunc: (args) => {
      const { inputs, backend, attrs } = args;
      const a = attrs as unknown as tf.Conv2DBackpropInputAttrs;
      if (a.dataFormat === 'NCHW') return original.kernelFunc(args);
      const { dy, filter } = inputs as { dy: TensorInfo; filter: TensorInfo };
      return conv2dBackpropInput(dy, filter, a, backend);
    },
  };
}
