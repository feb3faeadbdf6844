/** Worker-thread entry of the fuzz test: runs runFuzz and reports each step to the watchdog in the test. */
import { parentPort, workerData } from 'node:worker_threads';
import * as tf from '@tensorflow/tfjs-core';
import '@tensorflow/tfjs-backend-cpu';
import { runFuzz, type FuzzOptions } from './run';
import { prepareFuzzCases } from './cases';

const port = parentPort!;
const o = workerData as Omit<FuzzOptions, 'onStart'>;
// The model readers build their graphs as tensors: the pure-JS backend, so that memory is measured as
// ArrayBuffers and nothing native is loaded into the worker.
void tf.setBackend('cpu').then(async () => {
  await prepareFuzzCases();
  const result = runFuzz({ ...o, onStart: (label) => port.postMessage({ type: 'start', label }) });
  port.postMessage({ type: 'done', ...result });
});
