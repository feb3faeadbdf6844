/**
 * `backdoor-audit doctor`: what this machine offers a job and what each part of a job would run on, so that a
 * user who asks for `device: gpu` learns why it cannot have it before a job fails. It looks for the NVIDIA
 * driver (nvidia-smi), the CUDA and cuDNN libraries @tensorflow/tfjs-node-gpu links against, a WebGPU adapter
 * (the `webgpu` package, Dawn), each tensor backend (loaded / not installed / failed with its error) and ONNX
 * Runtime with its execution providers. Every probe goes through DoctorProbes, so tests give fake machines.
 */
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { BackendName } from './index';

export type LoadStatus = { status: 'loaded'; version?: string } | { status: 'not installed' } | { status: 'failed'; error: string };

export interface DoctorReport {
  schema: 'backdoor-audit/doctor@1';
  platform: string;
  node: string;
  nvidia: { driver: string; gpus: string[] } | { driver: null; reason: string };
  /** The libraries @tensorflow/tfjs-node-gpu 4.x needs (CUDA 11.2, cuDNN 8.1): path or null; null list off Linux. */
  cudaLibraries: Array<{ name: string; path: string | null }> | null;
  webgpu: { status: 'adapter'; adapter: string } | { status: 'no adapter' } | { status: 'not installed' } | { status: 'failed'; error: string };
  backends: Record<BackendName, LoadStatus>;
  onnxRuntime: LoadStatus & { providers?: string[] };
  /** What each part of a job would run on, per `device` value; `error` where that device cannot be had. */
  plan: Record<'auto' | 'gpu' | 'cpu', { training: BackendName; evaluation: string } | { error: string }>;
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
  /** The first WebGPU adapter's name, undefined when the package loads but finds none. Throws when it fails. */
  webgpuAdapter(gpuModule: unknown): Promise<string | undefined>;
}

export const CUDA_LIBRARIES = ['libcuda.so.1', 'libcudart.so.11.0', 'libcublas.so.11', 'libcudnn.so.8'];

/** Whether a require() error means the package itself is absent (not a dependency of it, not a broken binary). */
function notInstalled(e: unknown, id: string): boolean {
  const err = e as NodeJS.ErrnoException;
  return err?.code === 'MODULE_NOT_FOUND' && typeof err.message === 'string' && err.message.includes(`'${id}'`);
}

function firstLine(e: unknown): string {
  return (e instanceof Error ? e.message : String(e)).split('\n')[0].trim();
}

function loadStatus(probes: DoctorProbes, id: string): { status: LoadStatus; module?: unknown } {
  try {
    return { status: { status: 'loaded' }, module: probes.load(id) };
  } catch (e) {
    return { status: notInstalled(e, id) ? { status: 'not installed' } : { status: 'failed', error: firstLine(e) } };
  }
}

export async function runDoctor(probes: DoctorProbes = defaultProbes()): Promise<DoctorReport> {
  const smi = probes.nvidiaSmi();
  let nvidia: DoctorReport['nvidia'];
  if ('stdout' in smi) {
    const rows = smi.stdout.split('\n').map((l) => l.split(',').map((c) => c.trim())).filter((r) => r.length >= 2 && r[0]);
    nvidia = rows.length ? { driver: rows[0][1], gpus: rows.map((r) => r[0]) } : { driver: null, reason: 'nvidia-smi lists no GPU' };
  } else {
    nvidia = { driver: null, reason: smi.error };
  }

  const libs = CUDA_LIBRARIES.map((name) => ({ name, found: probes.findLibrary(name) }));
  const cudaLibraries = libs.some((l) => l.found === null) ? null : libs.map((l) => ({ name: l.name, path: l.found ?? null }));

  let webgpu: DoctorReport['webgpu'];
  const gpuPkg = loadStatus(probes, 'webgpu');
  if (gpuPkg.status.status === 'not installed') webgpu = { status: 'not installed' };
  else if (gpuPkg.status.status === 'failed') webgpu = { status: 'failed', error: gpuPkg.status.error };
  else {
    try {
      const adapter = await probes.webgpuAdapter(gpuPkg.module);
      webgpu = adapter ? { status: 'adapter', adapter } : { status: 'no adapter' };
    } catch (e) {
      webgpu = { status: 'failed', error: firstLine(e) };
    }
  }

  const wasm = loadStatus(probes, '@tensorflow/tfjs-backend-wasm').status;
  const backends: Record<BackendName, LoadStatus> = {
    'tensorflow-gpu': loadStatus(probes, '@tensorflow/tfjs-node-gpu').status,
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
    onnxRuntime = { status: 'loaded', version: ort.env?.versions?.node, ...(providers ? { providers } : {}) };
  }

  const loaded = (b: BackendName) => backends[b].status === 'loaded';
  const evaluationOn = (training: BackendName) =>
    training === 'wasm' || training === 'cpu' ? (onnxRuntime.status === 'loaded' ? 'onnxruntime (CPU)' : training) : training;
  const pick = (order: BackendName[], device: string): { training: BackendName; evaluation: string } | { error: string } => {
    const b = order.find(loaded);
    return b ? { training: b, evaluation: evaluationOn(b) } : { error: device === 'gpu' ? gpuUnavailable(backends['tensorflow-gpu'], nvidia) : 'no tensor backend loads' };
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
      auto: pick(['tensorflow-gpu', 'tensorflow', 'wasm', 'cpu'], 'auto'),
      gpu: pick(['tensorflow-gpu'], 'gpu'),
      cpu: pick(['wasm', 'cpu'], 'cpu'),
    },
  };
}

/** One line: why `device: gpu` cannot be had here. */
export function gpuUnavailable(tfGpu: LoadStatus, nvidia?: DoctorReport['nvidia']): string {
  const why =
    tfGpu.status === 'not installed'
      ? '@tensorflow/tfjs-node-gpu is not installed (npm install @tensorflow/tfjs-node-gpu, with CUDA 11.2 and cuDNN 8.1)'
      : tfGpu.status === 'failed'
        ? `@tensorflow/tfjs-node-gpu failed to load: ${tfGpu.error}`
        : 'the GPU backend did not start';
  const driver = nvidia && nvidia.driver === null ? `; no NVIDIA driver (${nvidia.reason})` : '';
  return `no GPU backend loads here: ${why}${driver}; see backdoor-audit doctor`;
}

/** The report as the terminal shows it. */
export function formatDoctor(r: DoctorReport): string {
  const st = (s: LoadStatus) => (s.status === 'failed' ? `failed: ${s.error}` : s.status === 'loaded' && s.version ? `loaded ${s.version}` : s.status);
  const plan = (p: DoctorReport['plan']['auto']) => ('error' in p ? `fails: ${p.error}` : `training on ${p.training}, evaluation on ${p.evaluation}`);
  const row = (label: string, value: string) => `${label.padEnd(24)}${value}`;
  const lines = [
    row('platform', `${r.platform}, Node ${r.node}`),
    row('NVIDIA driver', r.nvidia.driver === null ? `none (${r.nvidia.reason})` : `${r.nvidia.driver}: ${r.nvidia.gpus.join(', ')}`),
    row('CUDA/cuDNN', r.cudaLibraries === null ? 'not checked (not Linux)' : r.cudaLibraries.map((l) => `${l.name} ${l.path ? 'found' : 'missing'}`).join(', ')),
    row('WebGPU', r.webgpu.status === 'adapter' ? `adapter: ${r.webgpu.adapter}` : r.webgpu.status === 'failed' ? `failed: ${r.webgpu.error}` : r.webgpu.status === 'not installed' ? 'not installed (npm package webgpu)' : 'no adapter'),
    ...Object.entries(r.backends).map(([k, v]) => row(`backend ${k}`, st(v))),
    row('ONNX Runtime', `${st(r.onnxRuntime)}${r.onnxRuntime.providers ? ` (execution providers: ${r.onnxRuntime.providers.join(', ')})` : ''}`),
    row('device auto', plan(r.plan.auto)),
    row('device gpu', plan(r.plan.gpu)),
    row('device cpu', plan(r.plan.cpu)),
  ];
  return lines.join('\n');
}

function ldconfigCache(): string | null {
  if (process.platform !== 'linux') return null;
  for (const bin of ['/sbin/ldconfig', '/usr/sbin/ldconfig', 'ldconfig']) {
    try {
      return execFileSync(bin, ['-p'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'], timeout: 10_000 });
    } catch {
      // try the next place
    }
  }
  return '';
}

/** The probes of this machine. */
export function defaultProbes(): DoctorProbes {
  let cache: string | null | undefined;
  return {
    nvidiaSmi: () => {
      try {
        return { stdout: execFileSync('nvidia-smi', ['--query-gpu=name,driver_version', '--format=csv,noheader'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], timeout: 15_000 }) };
      } catch (e) {
        const err = e as NodeJS.ErrnoException & { stderr?: string };
        return { error: err.code === 'ENOENT' ? 'nvidia-smi not found' : `nvidia-smi failed: ${firstLine(err.stderr || err.message)}` };
      }
    },
    findLibrary: (name) => {
      if (cache === undefined) cache = ldconfigCache();
      if (cache === null) return null;
      const line = cache.split('\n').find((l) => l.trim().startsWith(`${name} `));
      const m = line ? /=>\s*(\S+)/.exec(line) : null;
      const extra = (process.env.LD_LIBRARY_PATH ?? '').split(':').filter(Boolean).map((d) => path.join(d, name)).find((f) => fs.existsSync(f));
      return m?.[1] ?? extra;
    },
    load: (id) => {
      // The portable backends are bundled with the engine: required by name so that the bundler includes them.
      /* eslint-disable @typescript-eslint/no-require-imports */
      if (id === '@tensorflow/tfjs-backend-wasm') return require('@tensorflow/tfjs-backend-wasm');
      if (id === '@tensorflow/tfjs-backend-cpu') return require('@tensorflow/tfjs-backend-cpu');
      // The optional native ones are looked up at run time, where the engine would load them.
      return require(id);
      /* eslint-enable @typescript-eslint/no-require-imports */
    },
    wasmBinaries: () => [__dirname, path.join(__dirname, '..')].some((d) => fs.existsSync(path.join(d, 'tfjs-backend-wasm-simd.wasm'))) || wasmInPackage(),
    webgpuAdapter: async (mod) => {
      const { create, globals } = mod as { create: (flags: string[]) => { requestAdapter(): Promise<{ info?: { description?: string; vendor?: string; architecture?: string } } | null> }; globals?: object };
      if (globals) Object.assign(globalThis, globals);
      const adapter = await create([]).requestAdapter();
      if (!adapter) return undefined;
      const info = adapter.info ?? {};
      return [info.vendor, info.architecture, info.description].filter(Boolean).join(' ') || 'unnamed adapter';
    },
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
