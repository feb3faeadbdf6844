/**
 * Backend choice. Order of preference: tensorflow-gpu (CUDA through @tensorflow/tfjs-node-gpu) >
 * tensorflow (@tensorflow/tfjs-node) > wasm (XNNPACK, the portable CPU path) > cpu (pure JS, last resort).
 * The two native packages are optional dependencies: they download libtensorflow at install time, which
 * fails without internet, so they are loaded only when present.
 */
import * as tf from '@tensorflow/tfjs-core';
import '@tensorflow/tfjs-backend-cpu';
// Gradients are registered separately from ops in tfjs-core; training needs them all.
import '@tensorflow/tfjs-core/dist/register_all_gradients';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { registerWasmTrainingKernels } from './kernels';
import { JobError } from '../errors';
import { gpuUnavailable, type LoadStatus } from './doctor';

export type Device = 'auto' | 'gpu' | 'cpu';
import type { BackendName } from '../../shared/results';
export type { BackendName };

export interface BackendInfo {
  name: BackendName;
  threads: number;
}

let active: BackendInfo | undefined;

/** Why the last optional native package did not load (for the one-line `device: gpu` error). */
let lastGpuLoad: LoadStatus = { status: 'not installed' };

function tryRequire(id: string): boolean {
  try {
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    require(id);
    if (id === '@tensorflow/tfjs-node-gpu') lastGpuLoad = { status: 'loaded' };
    return true;
  } catch (e) {
    if (id === '@tensorflow/tfjs-node-gpu') {
      const err = e as NodeJS.ErrnoException;
      lastGpuLoad = err?.code === 'MODULE_NOT_FOUND' && String(err.message).includes(`'${id}'`) ? { status: 'not installed' } : { status: 'failed', error: String(err?.message ?? e).split('\n')[0] };
    }
    return false;
  }
}

/** Where the wasm binaries are: next to the bundle (dist/) when bundled, else in node_modules. */
function wasmDir(): string | undefined {
  const candidates = [
    path.join(__dirname, 'tfjs-backend-wasm-simd.wasm'),
    path.join(__dirname, '..', 'tfjs-backend-wasm-simd.wasm'),
  ];
  for (const c of candidates) if (fs.existsSync(c)) return path.dirname(c) + path.sep;
  return undefined;
}

async function useWasm(): Promise<boolean> {
  try {
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    const wasm = require('@tensorflow/tfjs-backend-wasm') as typeof import('@tensorflow/tfjs-backend-wasm');
    const dir = wasmDir();
    if (dir) {
      wasm.setWasmPaths({
        'tfjs-backend-wasm.wasm': dir + 'tfjs-backend-wasm.wasm',
        'tfjs-backend-wasm-simd.wasm': dir + 'tfjs-backend-wasm-simd.wasm',
        'tfjs-backend-wasm-threaded-simd.wasm': dir + 'tfjs-backend-wasm-threaded-simd.wasm',
      });
    }
    // The threaded build cannot start its pthread workers under Node (blob: URLs); one thread per process.
    wasm.setThreadsCount(1);
    registerWasmTrainingKernels();
    return await tf.setBackend('wasm');
  } catch {
    return false;
  }
}

/**
 * Initialise the tensor backend once per process. `device: 'gpu'` insists on CUDA and fails clearly when it
 * is missing; `cpu` skips the native packages; `auto` takes the best that loads.
 */
export async function initBackend(device: Device = 'auto', prefer?: BackendName): Promise<BackendInfo> {
  if (active && !prefer) return active;
  const want: BackendName[] = prefer
    ? [prefer]
    : device === 'gpu'
      ? ['tensorflow-gpu']
      : device === 'cpu'
        ? ['wasm', 'cpu']
        : ['tensorflow-gpu', 'tensorflow', 'wasm', 'cpu'];
  for (const name of want) {
    if (name === 'tensorflow-gpu' && tryRequire('@tensorflow/tfjs-node-gpu') && (await tf.setBackend('tensorflow'))) {
      active = { name, threads: 0 };
    } else if (name === 'tensorflow' && tryRequire('@tensorflow/tfjs-node') && (await tf.setBackend('tensorflow'))) {
      active = { name, threads: 0 };
    } else if (name === 'wasm' && (await useWasm())) {
      active = { name, threads: 1 };
    } else if (name === 'cpu' && (await tf.setBackend('cpu'))) {
      active = { name, threads: 1 };
    }
    if (active?.name === name) {
      await tf.ready();
      return active;
    }
  }
  // No silent fallback: a job that asks for the GPU fails, with one line saying why.
  if (device === 'gpu') throw new JobError(gpuUnavailable(lastGpuLoad), 'device');
  throw new JobError('no tensor backend could start', 'device');
}

export function backendInfo(): BackendInfo {
  if (!active) throw new Error('backend not initialised');
  return active;
}
