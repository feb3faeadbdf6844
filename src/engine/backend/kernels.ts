/** Training kernels the wasm backend lacks or runs slowly; registered once, before the backend is set. */
import * as tf from '@tensorflow/tfjs-core';
import { conv2dBackpropFilterConfig } from './kernels/conv2d_backprop_filter';
import { conv2dBackpropInputConfig } from './kernels/conv2d_backprop_input';
import { maxPoolGradConfig } from './kernels/max_pool_grad';
import { batchNormTrainConfig, batchNormTrainGradConfig } from './kernels/batch_norm_train';
import { sumConfig } from './kernels/sum_leading';

let registered = false;
/** The wasm package's own Conv2DBackpropInput, kept for the NCHW fallback and for benchmarks. */
let originalInput: tf.KernelConfig | undefined;

export function registerWasmTrainingKernels(): void {
  if (registered) return;
  const configs: tf.KernelConfig[] = [conv2dBackpropFilterConfig, maxPoolGradConfig, batchNormTrainConfig, batchNormTrainGradConfig];
  originalInput = tf.getKernel('Conv2DBackpropInput', 'wasm');
  if (originalInput) configs.push(conv2dBackpropInputConfig(originalInput));
  const originalSum = tf.getKernel('Sum', 'wasm');
  if (originalSum) configs.push(sumConfig(originalSum));
  for (const config of configs) {
    // registerKernel refuses a name that is taken: the input gradient, MaxPoolGrad and Sum replace the
    // package's kernels, and a filter gradient from a future package version is replaced too (ours is the one
    // tested here).
    if (tf.getKernel(config.kernelName, 'wasm')) tf.unregisterKernel(config.kernelName, 'wasm');
    tf.registerKernel(config);
  }
  registered = true;
}

/** The kernel the wasm package shipped for Conv2DBackpropInput (undefined before registration). */
export function originalConv2DBackpropInput(): tf.KernelConfig | undefined {
  return originalInput;
}
