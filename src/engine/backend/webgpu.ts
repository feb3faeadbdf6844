/**
 * WebGPU through Dawn: the `webgpu` npm package ships Dawn's Node bindings (dawn.node, prebuilt per platform),
 * which give a `navigator.gpu` without a browser; @tensorflow/tfjs-backend-webgpu trains and evaluates on it.
 * Dawn reaches the GPU through Vulkan on Linux, Metal on macOS and Direct3D 12 on Windows, so this path needs no
 * CUDA toolkit or cuDNN, only the GPU's driver. The probe is shared by the backend loader (job process, CLI, cell
 * workers) and `backdoor-audit doctor`; every contact with the machine goes through WebGpuEnv, so tests give
 * fake ones.
 *
 * Under Node the backend can read a result only asynchronously: tfjs-backend-webgpu 4.22 implements dataSync by
 * drawing the buffer into an OffscreenCanvas, which Node does not have, and Dawn's Node bindings offer no
 * blocking map (mapAsync resolves from the event loop). The engine therefore reads every tensor with
 * `await t.data()` on every path a job takes (src/engine/nn/read.ts; test/unit/async-reads.test.ts runs those
 * paths with synchronous reads made to throw), and a real adapter is all the backend needs.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { firstLine, libraryFinder } from './system';

export interface AdapterInfoLike {
  vendor?: string;
  architecture?: string;
  device?: string;
  description?: string;
  isFallbackAdapter?: boolean;
}
export interface AdapterLike {
  info?: AdapterInfoLike;
  /** Older Dawn and browsers: the info behind a promise instead of adapter.info. */
  requestAdapterInfo?(): Promise<AdapterInfoLike>;
}
export interface GpuLike {
  requestAdapter(options?: { powerPreference?: 'high-performance' | 'low-power' }): Promise<AdapterLike | null>;
}
/** What dawn.node exports (the `webgpu` package's index.js re-exports the same two). */
export interface DawnModule {
  create(flags: string[]): GpuLike;
  /** GPUBufferUsage, GPUMapMode, GPUTextureUsage, ...: the backend reads them as globals, as in a browser. */
  globals: Record<string, unknown>;
}

export interface WebGpuEnv {
  /** dawn.node for this platform; throws as require does (code MODULE_NOT_FOUND naming 'webgpu' when absent). */
  loadDawn(): DawnModule;
  /** Where the dynamic loader finds a library (Linux), undefined when it does not; null: not a Linux machine. */
  findLibrary(name: string): string | undefined | null;
}

export type WebGpuStatus =
  | { status: 'not installed' }
  | { status: 'failed'; error: string }
  | { status: 'no adapter'; reason: string }
  | { status: 'adapter'; adapter: string; vendor?: string; architecture?: string; description?: string };

export interface WebGpuProbe {
  status: WebGpuStatus;
  /** With an adapter: the GPU object and Dawn's globals, to install where the tfjs backend looks for them. */
  gpu?: GpuLike;
  globals?: Record<string, unknown>;
}

export const VULKAN_LOADER = 'libvulkan.so.1';

/** The folder of the webgpu package that holds this platform's dawn.node (one universal build for macOS). */
export function dawnPlatformDir(platform: string = process.platform, arch: string = process.arch): string {
  return platform === 'darwin' ? 'darwin-universal' : `${platform}-${arch}`;
}

/** Whether a load error means the webgpu package itself is absent (not a broken or missing binary in it). */
export function webgpuNotInstalled(e: unknown): boolean {
  const err = e as NodeJS.ErrnoException;
  return err?.code === 'MODULE_NOT_FOUND' && typeof err.message === 'string' && err.message.includes("'webgpu'");
}

/**
 * dawn.node from the webgpu package, wherever Node resolves the package from this file: node_modules in the
 * source tree, dist/node_modules in a packaged extension (scripts/package-vsix.js stages it there with only
 * the target's binary). The binary is required directly rather than through the package's index.js: that
 * file is an ES module, which Node 20 cannot require() from the CommonJS bundles. What index.js adds (unmapping
 * a device's buffers when the device is destroyed) does not matter here: the device lives as long as the
 * process.
 */
export function loadDawn(): DawnModule {
  let pkg: string;
  try {
    pkg = require.resolve('webgpu/package.json');
  } catch (e) {
    if ((e as NodeJS.ErrnoException)?.code === 'MODULE_NOT_FOUND') throw Object.assign(new Error("Cannot find module 'webgpu'"), { code: 'MODULE_NOT_FOUND' });
    throw e;
  }
  const dir = dawnPlatformDir();
  const file = path.join(path.dirname(pkg), 'dist', dir, 'dawn.node');
  if (!fs.existsSync(file)) throw new Error(`the webgpu package has no dawn.node for ${dir}`);
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  return require(file) as DawnModule;
}

export function defaultWebGpuEnv(): WebGpuEnv {
  return { loadDawn, findLibrary: libraryFinder() };
}

function adapterName(info: AdapterInfoLike): string {
  const name = info.description || info.device || 'unnamed adapter';
  const where = [info.vendor, info.architecture].filter(Boolean).join(' ');
  return where ? `${name} (${where})` : name;
}

/**
 * Load Dawn and ask it for a high-performance adapter, as the tfjs backend will. Never throws: the answer says
 * what was found or why nothing was.
 */
export async function probeWebGpu(env: WebGpuEnv = defaultWebGpuEnv()): Promise<WebGpuProbe> {
  let dawn: DawnModule;
  try {
    dawn = env.loadDawn();
  } catch (e) {
    return { status: webgpuNotInstalled(e) ? { status: 'not installed' } : { status: 'failed', error: firstLine(e) } };
  }
  // On Linux Dawn finds GPUs only through the Vulkan loader; without it, it finds none and writes a two-line
  // warning to stderr from native code, which would break the one-line errors. Asking the dynamic loader first
  // gives the same answer with the reason, and keeps stderr clean.
  if (env.findLibrary(VULKAN_LOADER) === undefined) {
    return { status: { status: 'no adapter', reason: `no Vulkan loader, ${VULKAN_LOADER} not found: Dawn reaches the GPU through Vulkan on Linux (install libvulkan1 and the GPU driver's Vulkan support)` } };
  }
  let adapter: AdapterLike | null;
  let gpu: GpuLike;
  let info: AdapterInfoLike;
  try {
    gpu = dawn.create([]);
    adapter = await gpu.requestAdapter({ powerPreference: 'high-performance' });
    if (!adapter) return { status: { status: 'no adapter', reason: 'Dawn found no GPU adapter (no GPU driver with Vulkan, Metal or Direct3D 12 support)' } };
    info = adapter.info ?? (adapter.requestAdapterInfo ? await adapter.requestAdapterInfo() : {});
  } catch (e) {
    return { status: { status: 'failed', error: firstLine(e) } };
  }
  // A software rasteriser (SwiftShader, llvmpipe) is no GPU: training there is slower than the CPU path, so it
  // never counts as an adapter (auto would otherwise prefer it to the CPU backends). Dawn flags its fallback
  // adapter; a CPU Vulkan driver (Mesa's lavapipe) is known by its name.
  if (info.isFallbackAdapter || isSoftwareRasteriser(info)) return { status: { status: 'no adapter', reason: `only a software adapter: ${adapterName(info)}` } };
  const status: WebGpuStatus = { status: 'adapter', adapter: adapterName(info) };
  if (info.vendor) status.vendor = info.vendor;
  if (info.architecture) status.architecture = info.architecture;
  if (info.description) status.description = info.description;
  return { status, gpu, globals: dawn.globals };
}

/** Whether an adapter is a CPU implementation of Vulkan (lavapipe reports itself as llvmpipe) or SwiftShader. */
export function isSoftwareRasteriser(info: AdapterInfoLike): boolean {
  return /llvmpipe|lavapipe|swiftshader/i.test([info.description, info.device, info.architecture, info.vendor].filter(Boolean).join(' '));
}

/**
 * Make the GPU visible where @tensorflow/tfjs-backend-webgpu looks: globalThis.navigator.gpu (it registers the
 * `webgpu` backend only if that exists when it is first required) and the GPU* constants as globals. Node 21+
 * has a navigator object without `gpu`; Node 20 has none.
 */
export function installNavigatorGpu(gpu: GpuLike, globals: Record<string, unknown>): void {
  for (const [k, v] of Object.entries(globals)) {
    if (!(k in globalThis)) Object.defineProperty(globalThis, k, { value: v, configurable: true, writable: true });
  }
  const g = globalThis as { navigator?: object };
  if (g.navigator && typeof g.navigator === 'object') Object.defineProperty(g.navigator, 'gpu', { value: gpu, configurable: true });
  else Object.defineProperty(globalThis, 'navigator', { value: { gpu }, configurable: true, writable: true });
}

/** One clause of the `device: gpu` error: what WebGPU did. */
export function webgpuClause(s: WebGpuStatus): string {
  switch (s.status) {
    case 'not installed':
      return 'WebGPU: not installed (npm package webgpu)';
    case 'failed':
      return `WebGPU: failed (${s.error})`;
    case 'no adapter':
      return `WebGPU: no adapter (${s.reason})`;
    case 'adapter':
      return `WebGPU: the backend did not start on ${s.adapter}`;
  }
}
