/**
 * `backdoor-audit doctor` on fake machines (every probe faked): a GPU machine with tfjs-node-gpu, one where it
 * fails to load, a WebGPU adapter or none, no ONNX Runtime, missing wasm binaries, not Linux; and this machine
 * as it is (no NVIDIA driver, the webgpu package without an adapter, tfjs-node-gpu not installed, ONNX Runtime on
 * the CPU). The one line `device: gpu` fails with comes from the same place.
 */
import { strict as assert } from 'node:assert';
import { execFileSync, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { formatDoctor, gpuUnavailable, runDoctor, type DoctorProbes } from '../../src/engine/backend/doctor';
import type { AdapterLike, DawnModule } from '../../src/engine/backend/webgpu';
import { doctorSummary, runDoctorProcess } from '../../src/vscode/check_environment';

function missing(id: string): Error {
  return Object.assign(new Error(`Cannot find module '${id}'\nRequire stack:\n- x`), { code: 'MODULE_NOT_FOUND' });
}

/** A machine: the packages that load (by id: a module, or an Error to throw), and the rest of its answers. */
function machine(o: {
  modules: Record<string, unknown>;
  smi?: { stdout: string } | { error: string };
  libs?: Record<string, string> | null;
  /** The webgpu package: absent (undefined), failing to load (Error) or Dawn with this adapter (null: none). */
  dawn?: AdapterLike | null | Error;
  wasmBinaries?: boolean;
}): DoctorProbes {
  return {
    nvidiaSmi: () => o.smi ?? { error: 'nvidia-smi not found' },
    findLibrary: (name) => (o.libs === null ? null : o.libs?.[name]),
    load: (id) => {
      if (!(id in o.modules)) throw missing(id);
      const m = o.modules[id];
      if (m instanceof Error) throw m;
      return m;
    },
    wasmBinaries: () => o.wasmBinaries ?? true,
    loadDawn: () => {
      if (o.dawn === undefined) throw missing('webgpu');
      return fakeDawn(o.dawn);
    },
  };
}

/** Dawn whose requestAdapter answers `adapter` (or throws it). */
function fakeDawn(adapter: AdapterLike | null | Error): DawnModule {
  return {
    create: () => ({
      requestAdapter: async () => {
        if (adapter instanceof Error) throw adapter;
        return adapter;
      },
    }),
    globals: {},
  };
}

const vulkan = { 'libvulkan.so.1': '/usr/lib/x86_64-linux-gnu/libvulkan.so.1' };
const h200 = { info: { vendor: 'nvidia', architecture: 'hopper', device: '', description: 'NVIDIA H200' } };

const portable = { '@tensorflow/tfjs-backend-wasm': {}, '@tensorflow/tfjs-backend-cpu': {} };
const ort = { env: { versions: { node: '1.30.0' } }, listSupportedBackends: () => [{ name: 'cpu', bundled: true }, { name: 'cuda', bundled: false }] };

describe('doctor', () => {
  it('a CUDA machine: driver, libraries, tfjs-node-gpu loaded, gpu and auto train on it', async () => {
    const r = await runDoctor(
      machine({
        modules: { ...portable, '@tensorflow/tfjs-node-gpu': {}, '@tensorflow/tfjs-backend-webgpu': {}, 'onnxruntime-node': ort },
        smi: { stdout: 'NVIDIA H200, 570.86.15\nNVIDIA H200, 570.86.15\n' },
        libs: { 'libcuda.so.1': '/usr/lib/x86_64-linux-gnu/libcuda.so.1', 'libcudart.so.11.0': '/usr/local/cuda/lib64/libcudart.so.11.0', ...vulkan },
        dawn: h200,
      }),
    );
    assert.deepEqual(r.nvidia, { driver: '570.86.15', gpus: ['NVIDIA H200', 'NVIDIA H200'] });
    assert.deepEqual(r.cudaLibraries, [
      { name: 'libcuda.so.1', path: '/usr/lib/x86_64-linux-gnu/libcuda.so.1' },
      { name: 'libcudart.so.11.0', path: '/usr/local/cuda/lib64/libcudart.so.11.0' },
      { name: 'libcublas.so.11', path: null },
      { name: 'libcudnn.so.8', path: null },
    ]);
    assert.deepEqual(r.webgpu, { status: 'adapter', adapter: 'NVIDIA H200 (nvidia hopper)', vendor: 'nvidia', architecture: 'hopper', description: 'NVIDIA H200' });
    assert.deepEqual(r.backends['tensorflow-gpu'], { status: 'loaded' });
    assert.deepEqual(r.backends.webgpu, { status: 'loaded' });
    // This fake build lists no WebGPU provider.
    assert.deepEqual(r.onnxRuntime, { status: 'loaded', version: '1.30.0', providers: ['cpu', 'cuda (not bundled)'], webgpu: { status: 'not bundled' } });
    // A GPU backend evaluates where it trains; the CPU device keeps ONNX Runtime for evaluation.
    assert.deepEqual(r.plan, {
      auto: { training: 'tensorflow-gpu', evaluation: 'tensorflow-gpu' },
      gpu: { training: 'tensorflow-gpu', evaluation: 'tensorflow-gpu' },
      cpu: { training: 'wasm', evaluation: 'onnxruntime (CPU)' },
    });
    assert.match(formatDoctor(r), /^NVIDIA driver\s+570\.86\.15: NVIDIA H200, NVIDIA H200$/m);
    assert.match(formatDoctor(r), /^WebGPU\s+adapter: NVIDIA H200 \(nvidia hopper\)$/m);
  });

  it('WebGPU with an adapter and no CUDA backend: gpu and auto train and evaluate on webgpu, cpu stays on the CPU', async () => {
    const r = await runDoctor(
      machine({
        modules: { ...portable, '@tensorflow/tfjs-backend-webgpu': {}, 'onnxruntime-node': ort },
        smi: { stdout: 'NVIDIA L4, 550.54\n' },
        libs: vulkan,
        dawn: { info: { vendor: 'nvidia', architecture: 'lovelace', description: 'NVIDIA L4' } },
      }),
    );
    assert.deepEqual(r.webgpu, { status: 'adapter', adapter: 'NVIDIA L4 (nvidia lovelace)', vendor: 'nvidia', architecture: 'lovelace', description: 'NVIDIA L4' });
    assert.deepEqual(r.backends['tensorflow-gpu'], { status: 'not installed' });
    assert.deepEqual(r.plan, {
      auto: { training: 'webgpu', evaluation: 'webgpu' },
      gpu: { training: 'webgpu', evaluation: 'webgpu' },
      cpu: { training: 'wasm', evaluation: 'onnxruntime (CPU)' },
    });
    assert.match(formatDoctor(r), /^device gpu\s+training on webgpu, evaluation on webgpu$/m);
  });

  it('WebGPU installed, no adapter, nothing else: gpu fails with one line naming each cause, auto on the CPU', async () => {
    const r = await runDoctor(machine({ modules: portable, libs: vulkan, dawn: null }));
    assert.deepEqual(r.webgpu, { status: 'no adapter', reason: 'Dawn found no GPU adapter (no GPU driver with Vulkan, Metal or Direct3D 12 support)' });
    assert.deepEqual(r.backends.webgpu, { status: 'unavailable', reason: 'no WebGPU adapter' });
    assert.deepEqual(r.plan.auto, { training: 'wasm', evaluation: 'wasm' });
    assert.deepEqual(r.plan.gpu, {
      error:
        'no GPU backend loads here: WebGPU: no adapter (Dawn found no GPU adapter (no GPU driver with Vulkan, Metal or Direct3D 12 support)); @tensorflow/tfjs-node-gpu: not installed (npm install @tensorflow/tfjs-node-gpu, with CUDA 11.2 and cuDNN 8.1); NVIDIA driver: none (nvidia-smi not found); see backdoor-audit doctor',
    });
    assert.match(formatDoctor(r), /^WebGPU\s+no adapter: Dawn found no GPU adapter/m);
  });

  it('WebGPU not installed: said so, and the gpu error names it first', async () => {
    const r = await runDoctor(machine({ modules: portable }));
    assert.deepEqual(r.webgpu, { status: 'not installed' });
    assert.deepEqual(r.backends.webgpu, { status: 'not installed' });
    assert.match((r.plan.gpu as { error: string }).error, /^no GPU backend loads here: WebGPU: not installed \(npm package webgpu\); @tensorflow\/tfjs-node-gpu: not installed/);
  });

  it('tfjs-node-gpu that fails to load (CUDA mismatch): gpu fails with its error, auto falls back to tfjs-node', async () => {
    const r = await runDoctor(
      machine({
        modules: { ...portable, '@tensorflow/tfjs-node-gpu': new Error('libcudart.so.11.0: cannot open shared object file: No such file or directory\n at x'), '@tensorflow/tfjs-node': {} },
        smi: { stdout: 'NVIDIA L4, 550.54\n' },
        // No Vulkan loader: Dawn is not even asked (it would only print a warning and find nothing).
        dawn: new Error('Dawn must not be asked without a Vulkan loader'),
      }),
    );
    assert.deepEqual(r.backends['tensorflow-gpu'], { status: 'failed', error: 'libcudart.so.11.0: cannot open shared object file: No such file or directory' });
    assert.deepEqual(r.webgpu, {
      status: 'no adapter',
      reason: "no Vulkan loader, libvulkan.so.1 not found: Dawn reaches the GPU through Vulkan on Linux (install libvulkan1 and the GPU driver's Vulkan support)",
    });
    assert.deepEqual(r.onnxRuntime, { status: 'not installed' });
    assert.deepEqual(r.plan.gpu, {
      error:
        "no GPU backend loads here: WebGPU: no adapter (no Vulkan loader, libvulkan.so.1 not found: Dawn reaches the GPU through Vulkan on Linux (install libvulkan1 and the GPU driver's Vulkan support)); @tensorflow/tfjs-node-gpu: failed to load (libcudart.so.11.0: cannot open shared object file: No such file or directory); NVIDIA driver: 550.54; see backdoor-audit doctor",
    });
    assert.deepEqual(r.plan.auto, { training: 'tensorflow', evaluation: 'tensorflow' });
    // Without ONNX Runtime the CPU device evaluates on its training backend.
    assert.deepEqual(r.plan.cpu, { training: 'wasm', evaluation: 'wasm' });
  });

  it('a WebGPU package that fails, missing wasm binaries, nvidia-smi failing, not Linux', async () => {
    const r = await runDoctor(
      machine({
        modules: portable,
        smi: { error: 'nvidia-smi failed: NVIDIA-SMI has failed because it could not communicate with the NVIDIA driver' },
        libs: null,
        dawn: new Error('Vulkan: no suitable device\nstack'),
        wasmBinaries: false,
      }),
    );
    assert.deepEqual(r.nvidia, { driver: null, reason: 'nvidia-smi failed: NVIDIA-SMI has failed because it could not communicate with the NVIDIA driver' });
    assert.equal(r.cudaLibraries, null);
    assert.deepEqual(r.webgpu, { status: 'failed', error: 'Vulkan: no suitable device' });
    assert.deepEqual(r.backends.wasm, { status: 'failed', error: 'the .wasm binaries are missing next to the bundle' });
    assert.deepEqual(r.plan.cpu, { training: 'cpu', evaluation: 'cpu' });
    assert.match(formatDoctor(r), /^CUDA\/cuDNN\s+not checked \(not Linux\)$/m);
    assert.equal(
      gpuUnavailable(r.backends['tensorflow-gpu'], r.nvidia, r.webgpu),
      'no GPU backend loads here: WebGPU: failed (Vulkan: no suitable device); @tensorflow/tfjs-node-gpu: not installed (npm install @tensorflow/tfjs-node-gpu, with CUDA 11.2 and cuDNN 8.1); NVIDIA driver: none (nvidia-smi failed: NVIDIA-SMI has failed because it could not communicate with the NVIDIA driver); see backdoor-audit doctor',
    );
  });

  it('this machine, through the CLI: no driver, WebGPU without an adapter, tfjs-node-gpu not installed, ONNX Runtime on the CPU', function () {
    this.timeout(60_000);
    const out = execFileSync(process.execPath, [path.join(__dirname, '..', '..', 'dist', 'cli.js'), 'doctor', '--json'], { encoding: 'utf8' });
    const r = JSON.parse(out);
    assert.equal(r.schema, 'backdoor-audit/doctor@1');
    assert.equal(r.nvidia.driver, null);
    assert.equal(r.webgpu.status, 'no adapter');
    assert.equal(typeof r.webgpu.reason, 'string');
    assert.deepEqual(r.backends.webgpu, { status: 'unavailable', reason: 'no WebGPU adapter' });
    assert.deepEqual(r.backends['tensorflow-gpu'], { status: 'not installed' });
    assert.deepEqual(r.backends.wasm, { status: 'loaded' });
    assert.equal(r.onnxRuntime.status, 'loaded');
    assert.ok(r.onnxRuntime.providers.includes('cpu'));
    // onnxruntime-node 1.30 for linux-x64 bundles its WebGPU provider; without a Vulkan loader it has no adapter.
    assert.deepEqual(r.onnxRuntime.webgpu, { status: 'no adapter', reason: 'libvulkan.so.1 not found' });
    assert.deepEqual(r.plan.auto, { training: 'wasm', evaluation: 'onnxruntime (CPU)' });
    assert.match(r.plan.gpu.error, /^no GPU backend loads here: ONNX Runtime WebGPU: no adapter \(libvulkan\.so\.1 not found\); WebGPU: no adapter \(.+\); @tensorflow\/tfjs-node-gpu: not installed \(.+\); NVIDIA driver: none \(nvidia-smi not found\); see backdoor-audit doctor$/);
  });

  it('a job that asks for the GPU where none loads fails with one line, exit 1, and writes nothing', function () {
    this.timeout(60_000);
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ba-gpu-'));
    try {
      fs.copyFileSync(path.join(__dirname, '..', 'fixtures', 'tiny.safetensors'), path.join(dir, 'tiny.safetensors'));
      fs.writeFileSync(path.join(dir, 'audit.json'), JSON.stringify({ model: 'tiny.safetensors', data: { test: { format: 'mnist-embedded' } }, device: 'gpu' }));
      const p = spawnSync(process.execPath, [path.join(__dirname, '..', '..', 'dist', 'cli.js'), 'run', path.join(dir, 'audit.json'), '--out', path.join(dir, 'out')], { encoding: 'utf8' });
      assert.equal(p.status, 1);
      // One line, naming each path tried (ONNX Runtime's WebGPU, WebGPU, CUDA) and the driver; no warning of Dawn's on stderr.
      assert.match(p.stderr, /^error: no GPU backend loads here: ONNX Runtime WebGPU: no adapter \(libvulkan\.so\.1 not found\); WebGPU: no adapter \(.+\); @tensorflow\/tfjs-node-gpu: not installed \(.+\); NVIDIA driver: none \(nvidia-smi not found\); see backdoor-audit doctor \(device\)\n$/);
      assert.deepEqual(fs.readdirSync(dir).sort(), ['audit.json', 'tiny.safetensors']);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  it('Check Environment: the CLI\'s report from a separate process, summed up for the notification', async function () {
    this.timeout(60_000);
    const r = await runDoctorProcess(path.join(__dirname, '..', '..', 'dist', 'cli.js'));
    assert.equal(doctorSummary(r, 'auto'), 'Backdoor Audit: jobs train on wasm and evaluate on onnxruntime (CPU) (device "auto"); no GPU backend. Details in the log.');
    assert.match(doctorSummary(r, 'gpu'), /^Backdoor Audit: device "gpu" cannot run: no GPU backend loads here: .*; no GPU backend\. Details in the log\.$/);
    await assert.rejects(runDoctorProcess(path.join(__dirname, 'no-such-cli.js')), /^Error: backdoor-audit doctor failed: /);
  });
});
