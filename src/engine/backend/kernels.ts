/** Training kernels the wasm backend lacks or runs slowly; registered once, before the backend is set. */
import * as tf from '@tensorflow/tfjs-core';
import { conv2dBackpropFilterConfig } from './kernels/conv2d_backprop_filter';
import { conv2dBackpropInputConfig } from './kernels/conv2d_backprop_input';

let registered = false;

export function registerWasmTrainingKernels(): void {
  if (registered) return;
  registered = true;
  const naiveInput = tf.getKernel('Conv2DBackpropInput', 'wasm')?.kernelFunc;
  const configs = [conv2dBackpropFilterConfig, ...(naiveInput ? [conv2dBackpropInputConfig(naiveInput)] : [])];
  for (const config of configs) {
    if (tf.getKernel(config.kernelName, 'wasm')) tf.unregisterKernel(config.kernelName, 'wasm');
    tf.registerKernel(config);
  }
}
