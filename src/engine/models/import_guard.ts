/**
 * Imported graphs (ONNX, TensorFlow.js) create their layers' weights node by node while they check the file;
 * a file refused halfway must not leave those weights allocated. Layers that failed before joining the graph
 * are not reachable from it, so everything the import registered is released: importing is synchronous, so
 * every variable registered since it began is its own.
 */
import * as tf from '@tensorflow/tfjs-core';
import type { Module } from '../nn/module';

export function importOrRelease<T>(root: Module, build: () => T): T {
  const before = new Set(Object.keys(tf.engine().registeredVariables));
  try {
    return build();
  } catch (e) {
    root.dispose();
    for (const [name, v] of Object.entries(tf.engine().registeredVariables)) if (!before.has(name)) v.dispose();
    throw e;
  }
}
