/**
 * The WebGPU path (src/engine/backend/webgpu.ts and its place in initBackend) on fake machines: the webgpu
 * package absent, present without this platform's binary, without a Vulkan loader, with Dawn finding no
 * adapter or only a software one, and with an adapter (adapter.info, or requestAdapterInfo as older Dawn has
 * it). Then the loader itself: `device: gpu` with nothing fails with one line naming each cause, and a fake
 * adapter whose device cannot be created goes through navigator.gpu and the tfjs backend's registration to a
 * clean failure (gpu) or the CPU (auto).
 */
import { strict as assert } from 'node:assert';
import { execFileSync, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import { initBackend, type BackendDeps } from '../../src/engine/backend';
import { JobError } from '../../src/engine/errors';
import { dawnPlatformDir, probeWebGpu, type AdapterLike, type DawnModule, type WebGpuEnv } from '../../src/engine/backend/webgpu';

function missing(id: string): Error {
  return Object.assign(new Error(`Cannot find module '${id}'\nRequire stack:\n- x`), { code: 'MODULE_NOT_FOUND' });
}

/** Dawn whose requestAdapter answers `adapter` (or throws it); counts the adapters asked for. */
function fakeDawn(adapter: AdapterLike | null | Error, asked = { n: 0 }): DawnModule {
  return {
    create: () => ({
      requestAdapter: async () => {
        asked.n++;
        if (adapter instanceof Error) throw adapter;
        return adapter;
      },
    }),
    globals: { GPUBufferUsage: { MAP_READ: 1, MAP_WRITE: 2, COPY_SRC: 4, COPY_DST: 8, INDEX: 16, VERTEX: 32, UNIFORM: 64, STORAGE: 128 } },
  };
}

const vulkan = (name: string) => (name === 'libvulkan.so.1' ? '/usr/lib/x86_64-linux-gnu/libvulkan.so.1' : undefined);
/** A machine's WebGPU. */
const env = (dawn: DawnModule | Error, findLibrary: WebGpuEnv['findLibrary'] = vulkan): WebGpuEnv => ({
  loadDawn: () => {
    if (dawn instanceof Error) throw dawn;
    return dawn;
  },
  findLibrary,
});

describe('WebGPU probe', () => {
  it('the webgpu package not installed', async () => {
    assert.deepEqual((await probeWebGpu(env(missing('webgpu')))).status, { status: 'not installed' });
  });

  it('a dependency of it missing, or no binary for this platform: failed, with the first line', async () => {
    assert.deepEqual((await probeWebGpu(env(missing('debug')))).status, { status: 'failed', error: "Cannot find module 'debug'" });
    assert.deepEqual((await probeWebGpu(env(new Error('the webgpu package has no dawn.node for linux-ppc64')))).status, {
      status: 'failed',
      error: 'the webgpu package has no dawn.node for linux-ppc64',
    });
  });

  it('Linux without the Vulkan loader: no adapter, and Dawn is not asked (its native warning would reach stderr)', async () => {
    const asked = { n: 0 };
    const p = await probeWebGpu(env(fakeDawn(null, asked), () => undefined));
    assert.equal(p.status.status, 'no adapter');
    assert.match((p.status as { reason: string }).reason, /^no Vulkan loader, libvulkan\.so\.1 not found/);
    assert.equal(asked.n, 0);
    // Off Linux (findLibrary answers null) Dawn is asked: Metal and Direct3D need no loader of ours.
    await probeWebGpu(env(fakeDawn(null, asked), () => null));
    assert.equal(asked.n, 1);
  });

  it('installed, Dawn finds no adapter', async () => {
    const p = await probeWebGpu(env(fakeDawn(null)));
    assert.deepEqual(p.status, { status: 'no adapter', reason: 'Dawn found no GPU adapter (no GPU driver with Vulkan, Metal or Direct3D 12 support)' });
    assert.equal(p.gpu, undefined);
  });

  it('only a software adapter (SwiftShader): no adapter, named', async () => {
    const p = await probeWebGpu(env(fakeDawn({ info: { vendor: 'google', architecture: 'swiftshader', description: 'SwiftShader Device (Subzero)', isFallbackAdapter: true } })));
    assert.deepEqual(p.status, { status: 'no adapter', reason: 'only a software adapter: SwiftShader Device (Subzero) (google swiftshader)' });
  });

  it('a CPU Vulkan driver (Mesa lavapipe) that Dawn does not flag as fallback: no adapter either, so auto never picks it', async () => {
    const p = await probeWebGpu(env(fakeDawn({ info: { vendor: 'mesa', architecture: '', device: 'llvmpipe (LLVM 15.0.6, 256 bits)', description: 'llvmpipe (LLVM 15.0.6, 256 bits)', isFallbackAdapter: false } })));
    assert.deepEqual(p.status, { status: 'no adapter', reason: 'only a software adapter: llvmpipe (LLVM 15.0.6, 256 bits) (mesa)' });
    assert.equal(p.gpu, undefined);
  });

  it('an adapter: its name, vendor and architecture from adapter.info, or from requestAdapterInfo()', async () => {
    const p = await probeWebGpu(env(fakeDawn({ info: { vendor: 'nvidia', architecture: 'hopper', device: '', description: 'NVIDIA H100 80GB HBM3' } })));
    assert.deepEqual(p.status, { status: 'adapter', adapter: 'NVIDIA H100 80GB HBM3 (nvidia hopper)', vendor: 'nvidia', architecture: 'hopper', description: 'NVIDIA H100 80GB HBM3' });
    assert.ok(p.gpu && p.globals?.GPUBufferUsage, 'the GPU and its globals come back to be installed');
    const older = await probeWebGpu(env(fakeDawn({ requestAdapterInfo: async () => ({ vendor: 'amd', architecture: 'rdna-3', device: '' }) })));
    assert.deepEqual(older.status, { status: 'adapter', adapter: 'unnamed adapter (amd rdna-3)', vendor: 'amd', architecture: 'rdna-3' });
  });

  it('Dawn throwing while asked: failed, first line', async () => {
    assert.deepEqual((await probeWebGpu(env(fakeDawn(new Error('Vulkan: vkCreateInstance failed\n at x'))))).status, { status: 'failed', error: 'Vulkan: vkCreateInstance failed' });
  });

  it('the binary folder of each platform the package ships', () => {
    assert.equal(dawnPlatformDir('linux', 'x64'), 'linux-x64');
    assert.equal(dawnPlatformDir('darwin', 'arm64'), 'darwin-universal');
    assert.equal(dawnPlatformDir('darwin', 'x64'), 'darwin-universal');
    assert.equal(dawnPlatformDir('win32', 'arm64'), 'win32-arm64');
  });
});

describe('WebGPU in the backend loader', () => {
  const noCuda = (id: string) => {
    throw missing(id);
  };

  it('device gpu with nothing: one line naming WebGPU, tfjs-node-gpu and the NVIDIA driver; no backend change', async () => {
    const before = tf.getBackend();
    const deps: BackendDeps = { load: noCuda, webgpu: env(fakeDawn(null)), nvidiaSmi: () => ({ error: 'nvidia-smi not found' }) };
    await assert.rejects(initBackend('gpu', undefined, deps), (e: Error) => {
      assert.ok(e instanceof JobError);
      assert.equal(
        e.message,
        'no GPU backend loads here: WebGPU: no adapter (Dawn found no GPU adapter (no GPU driver with Vulkan, Metal or Direct3D 12 support)); @tensorflow/tfjs-node-gpu: not installed (npm install @tensorflow/tfjs-node-gpu, with CUDA 11.2 and cuDNN 8.1); NVIDIA driver: none (nvidia-smi not found); see backdoor-audit doctor',
      );
      assert.ok(!e.message.includes('\n'));
      return true;
    });
    assert.equal(tf.getBackend(), before);
  });

  it('an adapter whose device cannot be made: navigator.gpu installed, the tfjs backend registered and failing; gpu fails, auto takes the CPU', async function () {
    this.timeout(60_000);
    const g = globalThis as { navigator?: { gpu?: unknown } };
    const hadNavigator = 'navigator' in globalThis;
    let devices = 0;
    const adapter = {
      info: { vendor: 'fake', architecture: 'test', description: 'Fake GPU' },
      features: new Set<string>(),
      limits: {},
      requestDevice: async () => {
        devices++;
        throw new Error('fake adapter: no device');
      },
    };
    const deps: BackendDeps = { load: noCuda, webgpu: env(fakeDawn(adapter as AdapterLike)), nvidiaSmi: () => ({ stdout: 'Fake GPU, 1.0\n' }) };
    const warn = console.warn;
    console.warn = () => undefined; // tfjs reports the failed start-up on the console
    try {
      await assert.rejects(
        initBackend('gpu', undefined, deps),
        /^JobError: no GPU backend loads here: WebGPU: the backend did not start on Fake GPU \(fake test\); @tensorflow\/tfjs-node-gpu: not installed \(.+\); NVIDIA driver: 1\.0; see backdoor-audit doctor$/,
      );
      assert.equal(devices, 1, 'the tfjs backend asked the fake adapter for its device');
      assert.ok(g.navigator?.gpu, 'navigator.gpu is where the tfjs backend looks');
      const info = await initBackend('auto', undefined, deps);
      assert.ok(info.name === 'wasm' || info.name === 'cpu' || info.name === 'tensorflow', `auto fell back to ${info.name}`);
      assert.equal(tf.getBackend(), info.name === 'tensorflow' ? 'tensorflow' : info.name);
    } finally {
      console.warn = warn;
      if (tf.findBackendFactory('webgpu')) tf.removeBackend('webgpu');
      if (hadNavigator) delete g.navigator!.gpu;
      else delete g.navigator;
    }
  });
});

describe('what a job records about where it ran', () => {
  it('device auto, through the CLI: results.json names the backend the doctor plans for auto, the device asked for, and the adapter only on WebGPU', function () {
    this.timeout(300_000);
    const cli = path.join(__dirname, '..', '..', 'dist', 'cli.js');
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ba-auto-'));
    try {
      fs.copyFileSync(path.join(__dirname, '..', '..', 'examples', 'mnist-badnets', 'victim.safetensors'), path.join(dir, 'victim.safetensors'));
      const job = { model: 'victim.safetensors', data: { test: { format: 'mnist-embedded' } }, attack: { type: 'badnets', target: 0 }, defenses: [], embedding: { method: 'none' }, device: 'auto' };
      fs.writeFileSync(path.join(dir, 'audit.json'), JSON.stringify(job));
      execFileSync(process.execPath, [cli, 'run', path.join(dir, 'audit.json'), '--out', path.join(dir, 'out')], { stdio: 'pipe' });
      const backend = JSON.parse(fs.readFileSync(path.join(dir, 'out', 'results.json'), 'utf8')).backend;
      const plan = JSON.parse(execFileSync(process.execPath, [cli, 'doctor', '--json'], { encoding: 'utf8' })).plan.auto;
      assert.equal(backend.device, 'auto');
      assert.equal(backend.name, plan.training);
      assert.equal('adapter' in backend, backend.name === 'webgpu');
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('bench --device', () => {
  const cli = path.join(__dirname, '..', '..', 'dist', 'cli.js');
  it('gpu where the doctor plans no GPU backend: exit 1 and the doctor\'s one line, before any measurement', function () {
    this.timeout(120_000);
    const plan = JSON.parse(execFileSync(process.execPath, [cli, 'doctor', '--json'], { encoding: 'utf8' })).plan.gpu;
    if (!('error' in plan)) this.skip(); // a GPU machine: bench --device gpu measures it (scripts/gpu-check.sh)
    const p = spawnSync(process.execPath, [cli, 'bench', '--device', 'gpu', '--no-defenses'], { encoding: 'utf8' });
    assert.equal(p.status, 1);
    assert.equal(p.stderr, `error: ${plan.error} (device)\n`);
  });
  it('an unknown device: exit 2', () => {
    const p = spawnSync(process.execPath, [cli, 'bench', '--device', 'tpu'], { encoding: 'utf8' });
    assert.equal(p.status, 2);
    assert.equal(p.stderr, 'error: unknown device "tpu" (--device)\n');
  });
});
