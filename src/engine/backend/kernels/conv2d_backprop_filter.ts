/**
 * Conv2DBackpropFilter for the wasm backend, which lacks it (so tf.grad through conv2d fails for the filter).
 * dW[i, j, :, :] = sum over (n, y, x) of xPadded[n, y*sh + i, x*sw + j, :]^T dy[n, y, x, :]: for each kernel tap
 * a (strided) slice of the padded, channels-first input (a [Cin, N*H'*W'] matrix) times dy ([N*H'*W', Cout])
 * on XNNPACK's matmul. The taps are stacked into the HWIO filter gradient.
 *
 * Built from other wasm kernels called on TensorInfos; temporaries are released through the backend (wrapping
 * them as Tensors inside tf.tidy frees the inputs' data too early).
 */
import * as tf from '@tensorflow/tfjs-core';
import type { KernelConfig, TensorInfo, NamedAttrMap } from '@tensorflow/tfjs-core';

type Backend = { disposeData(id: object): void };

export function callKernel(name: string, inputs: Record<string, TensorInfo>, backend: unknown, attrs: NamedAttrMap = {}): TensorInfo {
  const k = tf.getKernel(name, 'wasm');
  if (!k) throw new Error(`wasm kernel ${name} missing`);
  return k.kernelFunc({ inputs, backend: backend as never, attrs }) as TensorInfo;
}

export function release(backend: unknown, ...infos: TensorInfo[]): void {
  for (const i of infos) (backend as Backend).disposeData(i.dataId);
}

export const conv2dBackpropFilterConfig: KernelConfig = {
  kernelName: 'Conv2DBackpropFilter',
  backendName: 'wasm',
  kernelFunc: ({ inputs, backend, attrs }) => {
    const { x, dy } = inputs as { x: TensorInfo; dy: TensorInfo };
    const { strides, pad, dataFormat, dimRoundingMode, filterShape } = attrs as unknown as tf.Conv2DBackpropFilterAttrs;
    if (dataFormat === 'NCHW') throw new Error('Conv2DBackpropFilter: NCHW is not supported on wasm');
    const info = tf.backend_util.computeConv2DInfo(x.shape as [number, number, number, number], filterShape, strides, 1, pad, dimRoundingMode, false, 'channelsLast');
    const [n, , , cin] = x.shape;
    const { filterHeight: kh, filterWidth: kw, outHeight: oh, outWidth: ow, strideHeight: sh, strideWidth: sw, outChannels: cout } = info;
    const { top, bottom, left, right } = info.padInfo;
    const rows = n * oh * ow;

    const needsPad = top || bottom || left || right;
    const xp = needsPad
      ? callKernel('PadV2', { x }, backend, { paddings: [[0, 0], [top, bottom], [left, right], [0, 0]], constantValue: 0 } as unknown as NamedAttrMap)
      : x;
    // Channels first once, so that every tap's slice is already the [Cin, rows] left factor of its matmul
    // (XNNPACK's matmul with transposeA is an order of magnitude slower than a plain one).
    const xt = callKernel('Transpose', { x: xp }, backend, { perm: [3, 0, 1, 2] });
    if (needsPad) release(backend, xp);
    const dy3 = callKernel('Reshape', { x: dy }, backend, { shape: [1, rows, cout] });
    const taps: TensorInfo[] = [];
    try {
      for (let i = 0; i < kh; i++) {
        for (let j = 0; j < kw; j++) {
          const patch =
            sh === 1 && sw === 1
              ? callKernel('Slice', { x: xt }, backend, { begin: [0, 0, i, j], size: [cin, n, oh, ow] })
              : callKernel('StridedSlice', { x: xt }, backend, {
                  begin: [0, 0, i, j],
                  end: [cin, n, i + (oh - 1) * sh + 1, j + (ow - 1) * sw + 1],
                  strides: [1, 1, sh, sw],
                  beginMask: 0,
                  endMask: 0,
                  ellipsisMask: 0,
                  newAxisMask: 0,
                  shrinkAxisMask: 0,
                } as unknown as NamedAttrMap);
          const patch3 = callKernel('Reshape', { x: patch }, backend, { shape: [1, cin, rows] });
          release(backend, patch);
          taps.push(callKernel('BatchMatMul', { a: patch3, b: dy3 }, backend, { transposeA: false, transposeB: false }));
          release(backend, patch3);
        }
      }
      // The wasm Concat kernel takes its inputs as an array.
      const stacked = taps.length === 1 ? taps[0] : callKernel('Concat', taps as unknown as Record<string, TensorInfo>, backend, { axis: 0 });
      const out = callKernel('Reshape', { x: stacked }, backend, { shape: [kh, kw, cin, cout] });
      if (stacked !== taps[0]) release(backend, stacked);
      return out;
    } finally {
      release(backend, dy3, xt, ...taps);
    }
  },
};
