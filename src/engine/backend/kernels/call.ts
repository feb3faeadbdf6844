/**
 * Helpers for kernels composed of other wasm kernels. They work on TensorInfos and free temporaries through the
 * backend: wrapping inputs as Tensors inside tf.tidy would free the caller's data when the tidy ends, and a
 * later read then fails with "Maximum call stack size exceeded" in readSync/moveData (DESIGN.md).
 */
import * as tf from '@tensorflow/tfjs-core';
import type { NamedAttrMap, TensorInfo } from '@tensorflow/tfjs-core';

interface DataReleaser {
  disposeData(dataId: object): void;
}

/** Run the wasm kernel `name` on TensorInfos; the result is owned by the caller. */
export function callKernel(name: string, inputs: Record<string, TensorInfo> | TensorInfo[], backend: unknown, attrs: object = {}): TensorInfo {
  const k = tf.getKernel(name, 'wasm');
  if (!k) throw new Error(`wasm kernel ${name} missing`);
  return k.kernelFunc({ inputs: inputs as never, backend: backend as never, attrs: attrs as NamedAttrMap }) as TensorInfo;
}

/** Drop one reference to each temporary (Reshape shares data by reference count, so this is always safe). */
export function release(backend: unknown, ...infos: TensorInfo[]): void {
  for (const i of infos) (backend as DataReleaser).disposeData(i.dataId);
}

/** Pad with zeros where an amount is positive and crop where it is negative ([before, after] per axis). */
export function padOrCrop(x: TensorInfo, amounts: Array<[number, number]>, backend: unknown, temps: TensorInfo[]): TensorInfo {
  let out = x;
  if (amounts.some(([a, b]) => a > 0 || b > 0)) {
    out = callKernel('PadV2', { x: out }, backend, { paddings: amounts.map(([a, b]) => [Math.max(0, a), Math.max(0, b)]), constantValue: 0 });
    temps.push(out);
  }
  if (amounts.some(([a, b]) => a < 0 || b < 0)) {
    const begin = amounts.map(([a]) => Math.max(0, -a));
    const size = out.shape.map((d, i) => d - begin[i] - Math.max(0, -amounts[i][1]));
    out = callKernel('Slice', { x: out }, backend, { begin, size });
    temps.push(out);
  }
  return out;
}
