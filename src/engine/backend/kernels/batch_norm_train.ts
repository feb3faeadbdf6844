/**
 * BatchNorm in training mode for the wasm backend as two kernels over the heap (forward with the batch
 * statistics, and its closed-form gradient). Composed of wasm ops, a BatchNorm layer in training costs about
 * twenty kernels per step, several of them transposes (the wasm reductions move the reduced NHWC axes
 * innermost first) and broadcasting binary ops (a slow generic path in the package); these are two passes over
 * the activations each way, channels innermost, with per-channel sums in double precision.
 *
 *   forward:  mean, biased variance over N*H*W; invStd = 1/sqrt(var + eps); y = gamma * (x - mean) * invStd + beta
 *   backward: dbeta = sum(dy); dgamma = sum(dy * xhat);
 *             dx = gamma * invStd / M * (M * dy - dbeta - xhat * dgamma), xhat = (x - mean) * invStd
 *
 * Views of the heap are taken after every output is allocated: an allocation may grow (and move) the heap.
 */
import type { KernelConfig, TensorInfo, DataType } from '@tensorflow/tfjs-core';

interface WasmHeap {
  makeOutput(shape: number[], dtype: DataType): TensorInfo;
  typedArrayFromHeap(t: TensorInfo): Float32Array;
}

export const BN_TRAIN = 'BackdoorAuditBatchNormTrain';
export const BN_TRAIN_GRAD = 'BackdoorAuditBatchNormTrainGrad';

function forward(x: TensorInfo, gamma: TensorInfo, beta: TensorInfo, eps: number, backend: WasmHeap): TensorInfo[] {
  const c = x.shape[x.shape.length - 1];
  const m = x.shape.reduce((a, b) => a * b, 1) / c;
  const outs = [backend.makeOutput(x.shape, 'float32'), backend.makeOutput([c], 'float32'), backend.makeOutput([c], 'float32'), backend.makeOutput([c], 'float32')];
  const [y, meanOut, varOut, invOut] = outs.map((t) => backend.typedArrayFromHeap(t));
  const xs = backend.typedArrayFromHeap(x);
  const g = backend.typedArrayFromHeap(gamma);
  const b = backend.typedArrayFromHeap(beta);
  const sum = new Float64Array(c);
  const sumSq = new Float64Array(c);
  for (let i = 0, p = 0; i < m; i++) {
    for (let ch = 0; ch < c; ch++, p++) {
      const v = xs[p];
      sum[ch] += v;
      sumSq[ch] += v * v;
    }
  }
  const scale = new Float32Array(c);
  const shift = new Float32Array(c);
  for (let ch = 0; ch < c; ch++) {
    const mean = sum[ch] / m;
    const variance = Math.max(0, sumSq[ch] / m - mean * mean);
    const inv = 1 / Math.sqrt(variance + eps);
    meanOut[ch] = mean;
    varOut[ch] = variance;
    invOut[ch] = inv;
    scale[ch] = g[ch] * inv;
    shift[ch] = b[ch] - mean * g[ch] * inv;
  }
  for (let i = 0, p = 0; i < m; i++) for (let ch = 0; ch < c; ch++, p++) y[p] = xs[p] * scale[ch] + shift[ch];
  return outs;
}

function backward(dy: TensorInfo, x: TensorInfo, mean: TensorInfo, invStd: TensorInfo, gamma: TensorInfo, backend: WasmHeap): TensorInfo[] {
  const c = x.shape[x.shape.length - 1];
  const m = x.shape.reduce((a, b) => a * b, 1) / c;
  const outs = [backend.makeOutput(x.shape, 'float32'), backend.makeOutput([c], 'float32'), backend.makeOutput([c], 'float32')];
  const [dx, dgammaOut, dbetaOut] = outs.map((t) => backend.typedArrayFromHeap(t));
  const g = backend.typedArrayFromHeap(dy);
  const xs = backend.typedArrayFromHeap(x);
  const mu = backend.typedArrayFromHeap(mean);
  const inv = backend.typedArrayFromHeap(invStd);
  const gm = backend.typedArrayFromHeap(gamma);
  const sumDy = new Float64Array(c);
  const sumDyX = new Float64Array(c);
  for (let i = 0, p = 0; i < m; i++) {
    for (let ch = 0; ch < c; ch++, p++) {
      const d = g[p];
      sumDy[ch] += d;
      sumDyX[ch] += d * xs[p];
    }
  }
  const a = new Float32Array(c);
  const bx = new Float32Array(c);
  const k = new Float32Array(c);
  for (let ch = 0; ch < c; ch++) {
    const dbeta = sumDy[ch];
    // sum(dy * xhat) = invStd * (sum(dy * x) - mean * sum(dy))
    const dgamma = inv[ch] * (sumDyX[ch] - mu[ch] * dbeta);
    dbetaOut[ch] = dbeta;
    dgammaOut[ch] = dgamma;
    const s = gm[ch] * inv[ch];
    // dx = s * dy - s * inv * dgamma / M * (x - mean) - s * dbeta / M
    a[ch] = s;
    bx[ch] = (-s * inv[ch] * dgamma) / m;
    k[ch] = -bx[ch] * mu[ch] - (s * dbeta) / m;
  }
  for (let i = 0, p = 0; i < m; i++) for (let ch = 0; ch < c; ch++, p++) dx[p] = a[ch] * g[p] + bx[ch] * xs[p] + k[ch];
  return outs;
}

export const batchNormTrainConfig: KernelConfig = {
  kernelName: BN_TRAIN,
  backendName: 'wasm',
  kernelFunc: ({ inputs, attrs, backend }) => forward(inputs.x as TensorInfo, inputs.gamma as TensorInfo, inputs.beta as TensorInfo, (attrs as unknown as { eps: number }).eps, backend as unknown as WasmHeap),
};

export const batchNormTrainGradConfig: KernelConfig = {
  kernelName: BN_TRAIN_GRAD,
  backendName: 'wasm',
  kernelFunc: ({ inputs, backend }) =>
    backward(inputs.dy as TensorInfo, inputs.x as TensorInfo, inputs.mean as TensorInfo, inputs.invStd as TensorInfo, inputs.gamma as TensorInfo, backend as unknown as WasmHeap),
};
