/**
 * Backend choice. Order of preference: tensorflow-gpu (CUDA through @tensorflow/tfjs-node-gpu) > webgpu
 * (Dawn through the `webgpu` package: Vulkan, Metal or Direct3D 12, no CUDA toolkit) > tensorflow
 * (@tensorflow/tfjs-node) > wasm (XNNPACK, the portable CPU path) > cpu (pure JS, last resort). The native
 * packages are optional: tfjs-node downloads libtensorflow at install time, which fails without internet, and
 * webgpu may be omitted; each is loaded only when present. The job process, the CLI and the workers all come
 * through here.
 */
import * as tf from '@tensorflow/tfjs-core';
import '@tensorflow/tfjs-backend-cpu';
// Gradients are registered separately from ops in tfjs-core; training needs them all.
import '@tensorflow/tfjs-core/dist/register_all_gradients';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { registerWasmTrainingKernels } from './kernels';
import { JobError } from '../errors';
import { AUTO_ORDER, GPU_ORDER, gpuUnavailable, type LoadStatus } from './doctor';
import { nvidiaSmi, parseNvidiaSmi } from './system';
import { defaultWebGpuEnv, installNavigatorGpu, probeWebGpu, type WebGpuEnv, type WebGpuStatus } from './webgpu';
import { loadOrt, setOrtProvider } from './onnx_runtime';
import { probeOrtWebGpu, type OrtLike, type OrtWebGpuStatus } from './ort_webgpu';

export type Device = 'auto' | 'gpu' | 'cpu';
import type { BackendName } from '../../shared/results';
export type { BackendName };

export interface BackendInfo {
  name: BackendName;
  threads: number;
  /** The GPU the webgpu backend runs on (its adapter's name). */
  adapter?: string;
  /**
   * 'webgpu' where ONNX Runtime's sessions (every training step, GIC, evaluation) compute on its WebGPU
   * provider (`device: gpu`, ort_webgpu.ts); the tensor backend (`name`) then only holds the glue.
   */
  ort?: 'webgpu';
}

/** What loading touches, replaceable by tests (fake packages, fake GPUs, fake nvidia-smi). */
export interface BackendDeps {
  /** require() of the optional native packages. */
  load(id: string): unknown;
  webgpu: WebGpuEnv;
  nvidiaSmi(): { stdout: string } | { error: string };
  /** onnxruntime-node, or null where it does not load (absent: not looked for). */
  ort?(): OrtLike | null;
}

function defaultDeps(): BackendDeps {
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  return { load: (id) => require(id), webgpu: defaultWebGpuEnv(), nvidiaSmi, ort: () => loadOrt() as unknown as OrtLike | null };
}

let active: BackendInfo | undefined;

/** Why the last optional native package did not load (for the one-line `device: gpu` error). */
let lastGpuLoad: LoadStatus = { status: 'not installed' };
let lastWebGpu: WebGpuStatus = { status: 'not installed' };
let lastOrtWebGpu: OrtWebGpuStatus | undefined;

/** ONNX Runtime's WebGPU provider, checked (ort_webgpu.ts); true when the engine's sessions may use it. */
async function useOrtWebGpu(deps: BackendDeps): Promise<boolean> {
  const ort = deps.ort?.() ?? null;
  lastOrtWebGpu = ort ? await probeOrtWebGpu(ort, (n) => deps.webgpu.findLibrary(n)) : undefined;
  return lastOrtWebGpu?.status === 'ready';
}

function tryRequire(id: string, deps: BackendDeps): boolean {
  try {
    deps.load(id);
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

/**
 * The webgpu backend: a real adapter first (the tfjs backend's own start-up assumes one and fails obscurely
 * without), then navigator.gpu, then the backend package, which registers `webgpu` only if navigator.gpu exists
 * when it is first required.
 */
async function useWebGpu(deps: BackendDeps): Promise<string | undefined> {
  const probe = await probeWebGpu(deps.webgpu);
  lastWebGpu = probe.status;
  if (probe.status.status !== 'adapter' || !probe.gpu) return undefined;
  installNavigatorGpu(probe.gpu, probe.globals ?? {});
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  require('@tensorflow/tfjs-backend-webgpu');
  // tfjs makes a backend the engine's choice before it starts it: if the start fails, the engine is left on
  // 'webgpu' with no instance, and the factory stays registered above the CPU backends. Both are undone below.
  const previous = tf.engine().backendName as string | null;
  try {
    // false when the backend's start-up (requestDevice) fails; tfjs logs why on the console.
    if (await tf.setBackend('webgpu')) return probe.status.adapter;
  } catch (e) {
    lastWebGpu = { status: 'failed', error: String((e as Error)?.message ?? e).split('\n')[0] };
  }
  if (tf.findBackendFactory('webgpu')) tf.removeBackend('webgpu');
  if (previous && previous !== 'webgpu') await tf.setBackend(previous);
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
 * Initialise the tensor backend once per process. `device: 'gpu'` insists on a GPU (CUDA through tfjs-node-gpu,
 * then ONNX Runtime's WebGPU provider under the wasm backend, then the WebGPU tensor backend) and fails with one
 * line naming what each gave when none starts; `cpu` skips the native packages; `auto` takes the best that loads
 * and keeps ONNX Runtime on the CPU (its WebGPU provider is taken only when asked for, until it is measured
 * against the CPU on real GPUs). A backend already started is kept when it is one the device allows.
 */
export async function initBackend(device: Device = 'auto', prefer?: BackendName, deps: BackendDeps = defaultDeps()): Promise<BackendInfo> {
  const want: BackendName[] = prefer ? [prefer] : device === 'gpu' ? GPU_ORDER : device === 'cpu' ? ['wasm', 'cpu'] : AUTO_ORDER;
  const onOrtWebGpu = active?.ort === 'webgpu';
  if (active && !prefer && (device === 'gpu' ? onOrtWebGpu || want.includes(active.name) : !onOrtWebGpu && want.includes(active.name))) return active;
  // The choice made before stays in force when nothing here starts (a refused `gpu` changes nothing).
  const previous = active;
  active = undefined;
  for (const name of want) {
    let adapter: string | undefined;
    if (name === 'tensorflow-gpu' && tryRequire('@tensorflow/tfjs-node-gpu', deps) && (await tf.setBackend('tensorflow'))) {
      active = { name, threads: 0 };
    } else if (name === 'webgpu' && device === 'gpu' && !prefer && (await useOrtWebGpu(deps)) && (await useWasm())) {
      active = { name: 'wasm', threads: 1, ort: 'webgpu' };
    } else if (name === 'webgpu' && (adapter = await useWebGpu(deps))) {
      active = { name, threads: 0, adapter };
    } else if (name === 'tensorflow' && tryRequire('@tensorflow/tfjs-node', deps) && (await tf.setBackend('tensorflow'))) {
      active = { name, threads: 0 };
    } else if (name === 'wasm' && (await useWasm())) {
      active = { name, threads: 1 };
    } else if (name === 'cpu' && (await tf.setBackend('cpu'))) {
      active = { name, threads: 1 };
    }
    if (active) {
      setOrtProvider(active.ort ?? 'cpu');
      await tf.ready();
      return active;
    }
  }
  active = previous;
  // No silent fallback: a job that asks for the GPU fails, with one line saying what each path gave.
  if (device === 'gpu') throw new JobError(gpuUnavailable(lastGpuLoad, parseNvidiaSmi(deps.nvidiaSmi()), lastWebGpu, lastOrtWebGpu), 'device');
  throw new JobError('no tensor backend could start', 'device');
}

export function backendInfo(): BackendInfo {
  if (!active) throw new Error('backend not initialised');
  return active;
}
