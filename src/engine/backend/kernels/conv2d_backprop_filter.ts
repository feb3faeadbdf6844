/**
 * Conv2DBackpropFilter for the wasm backend, which lacks it (so tf.grad through conv2d fails for the filter).
 *
 *   dW[i, j, c, o] = sum over (n, y, x) of xPadded[n, y*sh + i, x*sw + j, c] * dy[n, y, x, o]
 *
 * Two formulations on wasm kernels; scripts/bench-kernels.ts measures both and `chooseFilterGradMethod`
 * encodes what it found (batch 128, 32x32, one thread):
 * - 'swapped-conv': one forward convolution (XNNPACK) of the input with batch and channels swapped
 *   ([Cin, Hp, Wp, N]) by dy as the filter ([oh, ow, N, Cout]), the stride becoming the dilation; its
 *   [Cin, kh, kw, Cout] output is transposed to HWIO. About 1.5-2.5x the forward convolution's time.
 * - 'im2col': the kh*kw windows of the channels-first padded input stacked into a [kh*kw*Cin, rows] matrix and
 *   one matmul with dy ([rows, Cout]). It loses on every layer but the 3-channel stem, for reasons in the
 *   wasm kernels themselves: Slice copies its whole input to the JS heap on every call (readSync), so the
 *   windows cost kh*kw full copies, and any chunking of the reduction multiplies that; a batched BatchMatMul
 *   takes a scalar loop instead of XNNPACK; and XNNPACK's fully-connected op with a reduction of N*oh*ow
 *   (131072 on a 32x32 layer) streams its packed right factor from memory for every output tile.
 */
import * as tf from '@tensorflow/tfjs-core';
import type { KernelConfig, TensorInfo } from '@tensorflow/tfjs-core';
import { callKernel, release } from './call';

export type FilterGradMethod = 'im2col' | 'swapped-conv';

interface Geometry {
  n: number;
  cin: number;
  cout: number;
  kh: number;
  kw: number;
  oh: number;
  ow: number;
  sh: number;
  sw: number;
}

/** [kh*kw*Cin, Cout] as one [K, rows] x [rows, Cout] product over the stacked windows. */
function im2col(xp: TensorInfo, dy: TensorInfo, g: Geometry, backend: unknown): TensorInfo {
  const k = g.kh * g.kw * g.cin;
  const rows = g.n * g.oh * g.ow;
  const temps: TensorInfo[] = [];
  try {
    // Channels first once: a tap's window [Cin, n, oh, ow] is then already the [Cin, rows] block of the im2col
    // matrix (XNNPACK's matmul has no fast transposed-left-factor path in tfjs: it takes a scalar loop).
    const xt = callKernel('Transpose', { x: xp }, backend, { perm: [3, 0, 1, 2] });
    temps.push(xt);
    const windows: TensorInfo[] = [];
    for (let i = 0; i < g.kh; i++) {
      for (let j = 0; j < g.kw; j++) {
        const w =
          g.sh === 1 && g.sw === 1
            ? callKernel('Slice', { x: xt }, backend, { begin: [0, 0, i, j], size: [g.cin, g.n, g.oh, g.ow] })
            : callKernel('StridedSlice', { x: xt }, backend, {
                begin: [0, 0, i, j],
                end: [g.cin, g.n, i + (g.oh - 1) * g.sh + 1, j + (g.ow - 1) * g.sw + 1],
                strides: [1, 1, g.sh, g.sw],
                beginMask: 0,
                endMask: 0,
                ellipsisMask: 0,
                newAxisMask: 0,
                shrinkAxisMask: 0,
              });
        windows.push(w);
        temps.push(w);
      }
    }
    // Stacked tap-major, channel-minor: the rows of the product come out in HWIO order. (The wasm Concat
    // kernel takes its inputs as an array; along axis 0 it is one contiguous copy per window.)
    let cols = windows[0];
    if (windows.length > 1) {
      cols = callKernel('Concat', windows, backend, { axis: 0 });
      temps.push(cols);
    }
    const a = callKernel('Reshape', { x: cols }, backend, { shape: [1, k, rows] });
    temps.push(a);
    const b = callKernel('Reshape', { x: dy }, backend, { shape: [1, rows, g.cout] });
    temps.push(b);
    // Unbatched ([1, ...] on both sides) so that the wasm BatchMatMul takes its XNNPACK path.
    return callKernel('BatchMatMul', { a, b }, backend, { transposeA: false, transposeB: false });
  } finally {
    release(backend, ...temps);
  }
}

/** [kh*kw*Cin, Cout] by one forward convolution with batch and channels swapped. */
function swappedConv(xp: TensorInfo, dy: TensorInfo, g: Geometry, backend: unknown): TensorInfo {
  const temps: TensorInfo[] = [];
  try {
    const xs = callKernel('Transpose', { x: xp }, backend, { perm: [3, 1, 2, 0] }); // [Cin, Hp, Wp, N]
    temps.push(xs);
    const f = callKernel('Transpose', { x: dy }, backend, { perm: [1, 2, 0, 3] }); // [oh, ow, N, Cout]
    temps.push(f);
    // Output size (Hp - (oh-1)*sh) is at least kh; rows beyond kh come from padding a strided conv never read.
    const full = callKernel('Conv2D', { x: xs, filter: f }, backend, { strides: [1, 1], pad: 'valid', dataFormat: 'NHWC', dilations: [g.sh, g.sw], dimRoundingMode: undefined });
    temps.push(full);
    let cw = full;
    if (full.shape[1] !== g.kh || full.shape[2] !== g.kw) {
      cw = callKernel('Slice', { x: full }, backend, { begin: [0, 0, 0, 0], size: [g.cin, g.kh, g.kw, g.cout] });
      temps.push(cw);
    }
    return callKernel('Transpose', { x: cw }, backend, { perm: [1, 2, 0, 3] });
  } finally {
    release(backend, ...temps);
  }
}

/** im2col only where the input has very few channels (the image stem), where its one product is cheaper. */
export function chooseFilterGradMethod(g: { cin: number; kh: number; kw: number }): FilterGradMethod {
  return g.cin <= 4 ? 'im2col' : 'swapped-conv';
}

export function conv2dBackpropFilter(x: TensorInfo, dy: TensorInfo, attrs: tf.Conv2DBackpropFilterAttrs, backend: unknown, method?: FilterGradMethod): TensorInfo {
  const { strides, pad, dataFormat, dimRoundingMode, filterShape } = attrs;
  if (dataFormat === 'NCHW') throw new Error('Conv2DBackpropFilter: NCHW is not supported on wasm (tfjs conv2d on wasm is NHWC)');
  const info = tf.backend_util.computeConv2DInfo(x.shape as [number, number, number, number], filterShape, strides, 1, pad, dimRoundingMode, false, 'channelsLast');
  const g: Geometry = {
    n: x.shape[0],
    cin: x.shape[3],
    cout: info.outChannels,
    kh: info.filterHeight,
    kw: info.filterWidth,
    oh: info.outHeight,
    ow: info.outWidth,
    sh: info.strideHeight,
    sw: info.strideWidth,
  };
  const { top, bottom, left, right } = info.padInfo;
  const temps: TensorInfo[] = [];
  try {
    let xp = x;
    if (top || bottom || left || right) {
      xp = callKernel('PadV2', { x }, backend, { paddings: [[0, 0], [top, bottom], [left, right], [0, 0]], constantValue: 0 });
      temps.push(xp);
    }
    if ((method ?? chooseFilterGradMethod(g)) === 'swapped-conv') return swappedConv(xp, dy, g, backend);
    const flat = im2col(xp, dy, g, backend);
    temps.push(flat);
    return callKernel('Reshape', { x: flat }, backend, { shape: [g.kh, g.kw, g.cin, g.cout] });
  } finally {
    release(backend, ...temps);
  }
}

export const conv2dBackpropFilterConfig: KernelConfig = {
  kernelName: 'Conv2DBackpropFilter',
  backendName: 'wasm',
  kernelFunc: ({ inputs, backend, attrs }) => {
    const { x, dy } = inputs as { x: TensorInfo; dy: TensorInfo };
    return conv2dBackpropFilter(x, dy, attrs as unknown as tf.Conv2DBackpropFilterAttrs, backend);
  },
};
