/**
 * Loading ONNX Runtime, the second compute engine beside the tensor backend: evaluation (metrics/ort_eval.ts)
 * and training steps (nn/ort_train.ts) both run through it where it loads. It lives with the backend choice
 * because it is one: an optional native package, tried once, never required.
 */
import { isMainThread } from 'node:worker_threads';

type Ort = typeof import('onnxruntime-node');

let ortModule: Ort | null | undefined;

/**
 * onnxruntime-node if it loads here (native binary for this platform), else null; loaded once. Only on the main
 * thread: its native binding is not safe to load in several worker threads of one process (V8 locking errors and
 * aborts when a worker ends are known upstream), which is why the cell pool and the extension run jobs in
 * processes of their own.
 */
export function loadOrt(): Ort | null {
  if (!isMainThread) return null;
  if (ortModule === undefined) {
    try {
      // eslint-disable-next-line @typescript-eslint/no-require-imports
      ortModule = require('onnxruntime-node') as Ort;
    } catch {
      ortModule = null;
    }
  }
  return ortModule;
}

/** Whether evaluation may use ONNX Runtime: BACKDOOR_AUDIT_ORT=0 turns it off (to compare the two paths). */
export function ortWanted(): boolean {
  return process.env.BACKDOOR_AUDIT_ORT !== '0' && loadOrt() !== null;
}
