/**
 * Reading tensors back to the host, asynchronously. The webgpu backend cannot read synchronously under Node
 * (tfjs-backend-webgpu's dataSync draws into an OffscreenCanvas, which Node lacks, and Dawn's bindings have no
 * blocking map), so the engine reads every result with `await t.data()`. On the CPU backends the values are
 * the same ones dataSync returns. `tf.tidy` cannot span an await: compute inside it, return the tensors to
 * read, and hand them to `take*`, which read and then dispose them.
 */
import * as tf from '@tensorflow/tfjs-core';
import { ptFromValues, type Module, type Param, type PtTensor } from './module';

/**
 * A copy of a tensor's float values (a copy because the CPU backends hand out their own storage, which a later
 * op or a caller's writes must not share). The tensor stays alive.
 */
export async function readFloats(t: tf.Tensor): Promise<Float32Array> {
  return Float32Array.from((await t.data()) as Float32Array);
}

/** readFloats of several tensors, every read started before the first is awaited (one round trip on a GPU). */
export function readAllFloats(ts: readonly tf.Tensor[]): Promise<Float32Array[]> {
  return Promise.all(ts.map(readFloats));
}

/** The values of `t` (a copy), then `t` disposed, also when the read fails. */
export async function takeFloats(t: tf.Tensor): Promise<Float32Array> {
  try {
    return await readFloats(t);
  } finally {
    t.dispose();
  }
}

/** takeFloats of several tensors; all are disposed whatever happens. */
export async function takeAllFloats(ts: readonly tf.Tensor[]): Promise<Float32Array[]> {
  try {
    return await readAllFloats(ts);
  } finally {
    tf.dispose(ts as tf.Tensor[]);
  }
}

/** The first value of `t` as a number (a scalar's value), then `t` disposed. */
export async function takeScalar(t: tf.Tensor): Promise<number> {
  try {
    return (await t.data())[0] as number;
  } finally {
    t.dispose();
  }
}

/** takeScalar of several tensors, in order; all are disposed whatever happens. */
export async function takeScalars(ts: readonly tf.Tensor[]): Promise<number[]> {
  try {
    return (await Promise.all(ts.map((t) => t.data()))).map((d) => d[0] as number);
  } finally {
    tf.dispose(ts as tf.Tensor[]);
  }
}

/**
 * Host copies of every tensor of a module tree (each parameter and buffer, and each BatchNorm pruning mask),
 * read together before a pass that needs their values but cannot await: ONNX and TensorFlow.js emission walk the
 * tree synchronously (and an imported graph re-emits itself through the same walk).
 */
export class HostValues {
  private constructor(private readonly values: Map<tf.Tensor, Float32Array>) {}

  static async of(root: Module): Promise<HostValues> {
    const tensors: tf.Tensor[] = [];
    for (const m of root.modules()) {
      for (const p of m.params.values()) tensors.push(p.variable);
      const mask = (m as { mask?: unknown }).mask;
      if (mask instanceof tf.Tensor) tensors.push(mask);
    }
    const data = await readAllFloats(tensors);
    return new HostValues(new Map(tensors.map((t, i) => [t, data[i]])));
  }

  /** A tensor's values in its own layout (NHWC, HWIO); the caller must not write into them. */
  get(t: tf.Tensor): Float32Array {
    const v = this.values.get(t);
    if (!v) throw new Error('HostValues: a tensor that was not read (a module added after the read?)');
    return v;
  }

  /** A parameter in PyTorch layout, as toPt gives it. */
  pt(p: Param): PtTensor {
    return ptFromValues(p, this.get(p.variable));
  }
}
