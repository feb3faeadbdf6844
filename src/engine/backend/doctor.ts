/**
 * `backdoor-audit doctor`: what this machine offers a job and what each part of a job would run on, so that a
 * user who asks for `device: gpu` learns why it cannot have it before a job fails. It looks for the NVIDIA
 * driver (nvidia-smi), the CUDA and cuDNN libraries @tensorflow/tfjs-node-gpu links against, a WebGPU adapter
 * (the `webgpu` package, Dawn, probed as the backend loader does), each tensor backend (loaded / not installed /
 * unavailable / failed with its error) and ONNX Runtime with its execution providers. Every probe goes through
 * DoctorProbes, so tests give fake machines.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { BackendName } from './index';
import { firstLine, libraryFinder, nvidiaSmi, parseNvidiaSmi, type NvidiaInfo } from './system';
import { loadDawn, probeWebGpu, webgpuClause, type DawnModule, type WebGpuStatus } from './webgpu';
import { ortWebGpuClause, probeOrtWebGpu, type OrtLike, type OrtWebGpuStatus } from './ort_webgpu';

export type LoadStatus =
  | { status: 'loaded'; version?: string }
  | { status: 'not installed' }
  /** Installed and loading, but what it runs on is not there (WebGPU without an adapter). */
  | { status: 'unavailable'; reason: string }
  | { status: 'failed'; error: string };

export interface DoctorReport {
  schema: 'backdoor-audit/doctor@1';
  platform: string;
  node: string;
  nvidia: NvidiaInfo;
  /** The libraries @tensorflow/tfjs-node-gpu 4.x needs (CUDA 11.2, cuDNN 8.1): path or null; null list off Linux. */
  cudaLibraries: Array<{ name: string; path: string | null }> | null;
  webgpu: WebGpuStatus;
  backends: Record<BackendName, LoadStatus>;
  onnxRuntime: LoadStatus & { providers?: string[]; webgpu?: OrtWebGpuStatus };
  /** What each part of a job would run on, per `device` value; `error` where that device cannot be had. */
  plan: Record<'auto' | 'gpu' | 'cpu', PlanEntry | { error: string }>;
}

/**
 * What a job would run on: the tensor backend (`training`), where ACC/ASR are computed, and, where they differ
 * from the backend, where the defenses' and GIC's steps run (ONNX Runtime's graphs).
 */
export interface PlanEntry {
  training: BackendName;
  evaluation: string;
  steps?: string;
}

export interface DoctorProbes {
  /** nvidia-smi's CSV answer (`name, driver_version` per GPU), or why it could not run. */
  nvidiaSmi(): { stdout: string } | { error: string };
  /** Where the dynamic loader finds a library (Linux), undefined when it does not; null: not a Linux machine. */
  findLibrary(name: string): string | undefined | null;
  /** require(id); throws as require does. */
  load(id: string): unknown;
  /** Whether the wasm binaries of the tensor backend are where the engine looks for them. */
  wasmBinaries(): boolean;
  /** dawn.node of the webgpu package; throws as require does (see webgpu.ts). */
  loadDawn(): DawnModule;
}

export const CUDA_LIBRARIES = ['libcuda.so.1', 'libcudart.so.11.0', 'libcublas.so.11', 'libcudnn.so.8'];

/** Whether a require() error means the package itself is absent (not a dependency of it, not a broken binary). */
function notInstalled(e: unknown, id: string): boolean {
  const err = e as NodeJS.ErrnoException;
  return err?.code === 'MODULE_NOT_FOUND' && typeof err.message === 'string' && err.message.includes(`'${id}'`);
}

function loadStatus(probes: DoctorProbes, id: string): { status: LoadStatus; module?: unknown } {
  try {
    return { status: { status: 'loaded' }, module: probes.load(id) };
  } catch (e) {
    return { status: notInstalled(e, id) ? { status: 'not installed' } : { status: 'failed', error: firstLine(e) } };
  }
}

export async function runDoctor(probes: DoctorProbes = defaultProbes()): Promise<DoctorReport> {
  const nvidia = parseNvidiaSmi(probes.nvidiaSmi());

  const libs = CUDA_LIBRARIES.map((name) => ({ name, found: probes.findLibrary(name) }));
  const cudaLibraries = libs.some((l) => l.found === null) ? null : libs.map((l) => ({ name: l.name, path: l.found ?? null }));

  // The same probe the backend loader runs (without installing the GPU: the doctor trains nothing).
  const webgpu = (await probeWebGpu({ loadDawn: () => probes.loadDawn(), findLibrary: (n) => probes.findLibrary(n) })).status;
  let webgpuBackend: LoadStatus;
  if (webgpu.status === 'adapter') webgpuBackend = loadStatus(probes, '@tensorflow/tfjs-backend-webgpu').status;
  else if (webgpu.status === 'not installed') webgpuBackend = { status: 'not installed' };
  else if (webgpu.status === 'failed') webgpuBackend = { status: 'failed', error: webgpu.error };
  else webgpuBackend = { status: 'unavailable', reason: 'no WebGPU adapter' };

  const wasm = loadStatus(probes, '@tensorflow/tfjs-backend-wasm').status;
  const backends: Record<BackendName, LoadStatus> = {
    'tensorflow-gpu': loadStatus(probes, '@tensorflow/tfjs-node-gpu').status,
    webgpu: webgpuBackend,
    tensorflow: loadStatus(probes, '@tensorflow/tfjs-node').status,
    wasm: wasm.status === 'loaded' && !probes.wasmBinaries() ? { status: 'failed', error: 'the .wasm binaries are missing next to the bundle' } : wasm,
    cpu: loadStatus(probes, '@tensorflow/tfjs-backend-cpu').status,
  };

  const ortLoad = loadStatus(probes, 'onnxruntime-node');
  let onnxRuntime: DoctorReport['onnxRuntime'] = ortLoad.status;
  if (ortLoad.status.status === 'loaded') {
    const ort = ortLoad.module as { env?: { versions?: { node?: string } }; listSupportedBackends?: () => Array<{ name: string; bundled?: boolean }> };
    let providers: string[] | undefined;
    try {
      providers = ort.listSupportedBackends?.().map((b) => (b.bundled === false ? `${b.name} (not bundled)` : b.name));
    } catch {
      providers = undefined;
    }
    // Its WebGPU provider, checked as `device: gpu` checks it (a session and a small network against the CPU's).
    const webgpuProvider = await probeOrtWebGpu(ortLoad.module as OrtLike, (n) => probes.findLibrary(n));
    onnxRuntime = { status: 'loaded', version: ort.env?.versions?.node, ...(providers ? { providers } : {}), webgpu: webgpuProvider };
  }
  const ortWebGpu = onnxRuntime.status === 'loaded' ? onnxRuntime.webgpu : undefined;

  const loaded = (b: BackendName) => backends[b].status === 'loaded';
  const evaluationOn = (training: BackendName) =>
    training === 'wasm' || training === 'cpu' ? (onnxRuntime.status === 'loaded' ? 'onnxruntime (CPU)' : training) : training;
  const pick = (order: BackendName[], device: string): PlanEntry | { error: string } => {
    // As initBackend: with `gpu`, ONNX Runtime's WebGPU provider comes after CUDA and before the WebGPU backend,
    // and trains (every defense's and GIC's step) as well as evaluates, under the wasm backend's glue.
    const ortGpu = device === 'gpu' && !loaded('tensorflow-gpu') && ortWebGpu?.status === 'ready' && loaded('wasm');
    if (ortGpu) return { training: 'wasm', evaluation: 'onnxruntime (WebGPU)', steps: 'onnxruntime (WebGPU)' };
    const b = order.find(loaded);
    return b ? { training: b, evaluation: evaluationOn(b) } : { error: device === 'gpu' ? gpuUnavailable(backends['tensorflow-gpu'], nvidia, webgpu, ortWebGpu) : 'no tensor backend loads' };
  };
  return {
    schema: 'backdoor-audit/doctor@1',
    platform: `${process.platform}-${process.arch}`,
    node: process.version,
    nvidia,
    cudaLibraries,
    webgpu,
    backends,
    onnxRuntime,
    plan: {
      auto: pick(AUTO_ORDER, 'auto'),
      gpu: pick(GPU_ORDER, 'gpu'),
      cpu: pick(['wasm', 'cpu'], 'cpu'),
    },
  };
}

/** The GPU backends in the order the engine tries them: CUDA first (cuDNN's kernels), then WebGPU. */
export const GPU_ORDER: BackendName[] = ['tensorflow-gpu', 'webgpu'];
/** `device: auto`: the GPU backends, then the native CPU one, then the portable CPU ones. */
export const AUTO_ORDER: BackendName[] = [...GPU_ORDER, 'tensorflow', 'wasm', 'cpu'];

/** One line: why `device: gpu` cannot be had here, naming what was tried and the NVIDIA driver's state. */
export function gpuUnavailable(tfGpu: LoadStatus, nvidia: NvidiaInfo | undefined, webgpu: WebGpuStatus, ortWebGpu?: OrtWebGpuStatus): string {
  const cuda =
    tfGpu.status === 'not installed'
      ? '@tensorflow/tfjs-node-gpu: not installed (npm install @tensorflow/tfjs-node-gpu, with CUDA 11.2 and cuDNN 8.1)'
      : tfGpu.status === 'failed'
        ? `@tensorflow/tfjs-node-gpu: failed to load (${tfGpu.error})`
        : '@tensorflow/tfjs-node-gpu: did not start';
  const driver = !nvidia ? '' : nvidia.driver === null ? `; NVIDIA driver: none (${nvidia.reason})` : `; NVIDIA driver: ${nvidia.driver}`;
  // ONNX Runtime's provider is named when onnxruntime-node loads (its own row says why it does not).
  const ort = ortWebGpu ? `${ortWebGpuClause(ortWebGpu)}; ` : '';
  return `no GPU backend loads here: ${ort}${webgpuClause(webgpu)}; ${cuda}${driver}; see backdoor-audit doctor`;
}

/** The report as the terminal shows it. */
export function formatDoctor(r: DoctorReport): string {
  const st = (s: LoadStatus) =>
    s.status === 'failed' ? `failed: ${s.error}` : s.status === 'unavailable' ? `unavailable: ${s.reason}` : s.status === 'loaded' && s.version ? `loaded ${s.version}` : s.status;
  const w = r.webgpu;
  const plan = (p: DoctorReport['plan']['auto']) =>
    'error' in p ? `fails: ${p.error}` : `training on ${p.training}${p.steps ? ` (its steps on ${p.steps})` : ''}, evaluation on ${p.evaluation}`;
  const row = (label: string, value: string) => `${label.padEnd(24)}${value}`;
  const lines = [
    row('platform', `${r.platform}, Node ${r.node}`),
    row('NVIDIA driver', r.nvidia.driver === null ? `none (${r.nvidia.reason})` : `${r.nvidia.driver}: ${r.nvidia.gpus.join(', ')}`),
    row('CUDA/cuDNN', r.cudaLibraries === null ? 'not checked (not Linux)' : r.cudaLibraries.map((l) => `${l.name} ${l.path ? 'found' : 'missing'}`).join(', ')),
    row('WebGPU', w.status === 'adapter' ? `adapter: ${w.adapter}` : w.status === 'failed' ? `failed: ${w.error}` : w.status === 'not installed' ? 'not installed (npm package webgpu)' : `no adapter: ${w.reason}`),
    ...Object.entries(r.backends).map(([k, v]) => row(`backend ${k}`, st(v))),
    row('ONNX Runtime', `${st(r.onnxRuntime)}${r.onnxRuntime.providers ? ` (execution providers: ${r.onnxRuntime.providers.join(', ')})` : ''}`),
    ...(r.onnxRuntime.status === 'loaded' && r.onnxRuntime.webgpu ? [row('ONNX Runtime WebGPU', ortWebGpuClause(r.onnxRuntime.webgpu).replace(/^ONNX Runtime WebGPU: /, ''))] : []),
    row('device auto', plan(r.plan.auto)),
    row('device gpu', plan(r.plan.gpu)),
    row('device cpu', plan(r.plan.cpu)),
  ];
  return lines.join('\n');
}

/** The probes of this machine. */
export function defaultProbes(): DoctorProbes {
  return {
    nvidiaSmi,
    findLibrary: libraryFinder(),
    load: (id) => {
      // The portable backends are bundled with the engine: required by name so that the bundler includes them.
      /* eslint-disable @typescript-eslint/no-require-imports */
      if (id === '@tensorflow/tfjs-backend-wasm') return require('@tensorflow/tfjs-backend-wasm');
      if (id === '@tensorflow/tfjs-backend-cpu') return require('@tensorflow/tfjs-backend-cpu');
      // Bundled too; required only with an adapter (it registers its backend only where navigator.gpu exists).
      if (id === '@tensorflow/tfjs-backend-webgpu') return require('@tensorflow/tfjs-backend-webgpu');
      // The optional native ones are looked up at run time, where the engine would load them.
      return require(id);
      /* eslint-enable @typescript-eslint/no-require-imports */
    },
    wasmBinaries: () => [__dirname, path.join(__dirname, '..')].some((d) => fs.existsSync(path.join(d, 'tfjs-backend-wasm-simd.wasm'))) || wasmInPackage(),
    loadDawn,
  };
}

/** From the source tree (tests), the binaries are the package's own. */
function wasmInPackage(): boolean {
  try {
    return fs.existsSync(path.join(path.dirname(require.resolve('@tensorflow/tfjs-backend-wasm')), 'tfjs-backend-wasm-simd.wasm'));
  } catch {
    return false;
  }
}
