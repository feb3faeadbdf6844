/**
 * ONNX Runtime's WebGPU provider as the GPU path (src/engine/backend/ort_webgpu.ts and its place in initBackend):
 * on this machine's real onnxruntime-node (its linux-x64 build bundles the provider; Dawn finds no adapter here),
 * and on fakes around it that stand in for a GPU: one whose provider computes the CPU's numbers (taken, every
 * session then asks for it, blocked CPU kernels off, cells not spread over processes) and one whose numbers differ
 * (refused, with its reason).
 */
import { strict as assert } from 'node:assert';
import { backendInfo, initBackend, type BackendDeps } from '../../src/engine/backend';
import { loadOrt, nchwcBlockSize, ortProvider, ortSessionOptions } from '../../src/engine/backend/onnx_runtime';
import { probeOrtWebGpu, type OrtLike } from '../../src/engine/backend/ort_webgpu';
import { defaultWebGpuEnv } from '../../src/engine/backend/webgpu';
import { poolSize } from '../../src/engine/jobs/cell_pool';
import { JobError } from '../../src/engine/errors';

type RealOrt = NonNullable<ReturnType<typeof loadOrt>>;

/**
 * The real onnxruntime-node with a WebGPU provider listed as bundled, whose sessions run on the CPU provider:
 * `scale` multiplies what the "GPU" sessions return (1: a provider that works). Records each session's providers.
 */
function gpuStandIn(real: RealOrt, scale: number, asked: string[][] = []): OrtLike {
  return {
    listSupportedBackends: () => [
      { name: 'cpu', bundled: true },
      { name: 'webgpu', bundled: true },
    ],
    InferenceSession: {
      create: async (bytes, o) => {
        asked.push(o.executionProviders);
        const session = await real.InferenceSession.create(bytes, { ...o, executionProviders: ['cpu'] });
        if (!o.executionProviders.includes('webgpu') || scale === 1) return session;
        return {
          run: async (feeds: Record<string, unknown>) => {
            const out = await session.run(feeds as Parameters<typeof session.run>[0]);
            return Object.fromEntries(Object.entries(out).map(([k, t]) => [k, { data: Float32Array.from(t.data as Float32Array, (v) => v * scale) }]));
          },
          release: () => session.release(),
        };
      },
    } as OrtLike['InferenceSession'],
    Tensor: real.Tensor as unknown as OrtLike['Tensor'],
  };
}

const noCuda = (id: string) => {
  throw Object.assign(new Error(`Cannot find module '${id}'`), { code: 'MODULE_NOT_FOUND' });
};
/** A Vulkan loader, and no Dawn of the webgpu package: only ONNX Runtime's provider can give the GPU. */
const noDawn = { ...defaultWebGpuEnv(), findLibrary: () => '/usr/lib/x86_64-linux-gnu/libvulkan.so.1', loadDawn: () => noCuda('webgpu') as never };

describe("ONNX Runtime's WebGPU provider", function () {
  this.timeout(60_000);
  const real = loadOrt();
  before(function () {
    if (!real) this.skip();
  });
  after(async () => {
    await initBackend('cpu');
  });

  it('this machine: bundled, and without a Vulkan loader or an adapter it is refused with the reason', async function () {
    const listed = real!.listSupportedBackends().map((b) => b.name);
    if (!listed.includes('webgpu')) {
      assert.deepEqual(await probeOrtWebGpu(real as unknown as OrtLike), { status: 'not bundled' });
      return;
    }
    assert.deepEqual(await probeOrtWebGpu(real as unknown as OrtLike, () => undefined), { status: 'no adapter', reason: 'libvulkan.so.1 not found' });
    // With the loader check passed, Dawn itself is asked: this machine has no GPU, so its answer is the reason.
    const dawn = await probeOrtWebGpu(real as unknown as OrtLike, () => '/usr/lib/libvulkan.so.1');
    if (dawn.status === 'ready') this.skip(); // a machine with a GPU
    assert.equal(dawn.status, 'no adapter', JSON.stringify(dawn));
  });

  it('a provider that computes the check network as the CPU does is ready; one that does not is refused', async () => {
    assert.deepEqual(await probeOrtWebGpu(gpuStandIn(real!, 1)), { status: 'ready' });
    const wrong = await probeOrtWebGpu(gpuStandIn(real!, 1.1));
    assert.equal(wrong.status, 'failed');
    assert.match((wrong as { error: string }).error, /^its check network differs from the CPU's by 0\.\d+/);
    assert.deepEqual(await probeOrtWebGpu({ ...gpuStandIn(real!, 1), listSupportedBackends: () => [{ name: 'cpu', bundled: true }] }), { status: 'not bundled' });
  });

  it('device gpu takes it: sessions ask for WebGPU, blocked CPU kernels off, cells stay in the job process; cpu and auto go back to the CPU', async () => {
    const asked: string[][] = [];
    const deps: BackendDeps = { load: noCuda, webgpu: noDawn, nvidiaSmi: () => ({ stdout: 'Fake GPU, 1.0\n' }), ort: () => gpuStandIn(real!, 1, asked) };
    const info = await initBackend('gpu', undefined, deps);
    assert.deepEqual(info, { name: 'wasm', threads: 1, ort: 'webgpu' });
    assert.ok(asked.some((p) => p.includes('webgpu')), 'the check ran on the provider');
    assert.equal(ortProvider(), 'webgpu');
    assert.deepEqual(ortSessionOptions(2).executionProviders, ['webgpu', 'cpu']);
    assert.equal(await nchwcBlockSize(real!), 0);
    assert.equal(poolSize({ backend: info, workers: 4 }, 12), 0);
    // Asked again for the GPU, the same choice; asked for the CPU, ONNX Runtime goes back to its CPU kernels.
    assert.equal(await initBackend('gpu', undefined, deps), info);
    const cpu = await initBackend('cpu', undefined, deps);
    assert.equal(cpu.ort, undefined);
    assert.equal(ortProvider(), 'cpu');
    assert.deepEqual(ortSessionOptions(2).executionProviders, ['cpu']);
    assert.ok(poolSize({ backend: cpu, workers: 4 }, 12) > 0);
    await initBackend('gpu', undefined, deps);
    assert.equal((await initBackend('auto', undefined, deps)).ort, undefined, 'auto keeps ONNX Runtime on the CPU');
    assert.equal(ortProvider(), 'cpu');
  });

  it('device gpu where the provider computes wrongly: one line with its reason, nothing changed', async () => {
    const deps: BackendDeps = { load: noCuda, webgpu: noDawn, nvidiaSmi: () => ({ error: 'nvidia-smi not found' }), ort: () => gpuStandIn(real!, 1.1) };
    const before = await initBackend('cpu');
    await assert.rejects(initBackend('gpu', undefined, deps), (e: Error) => {
      assert.ok(e instanceof JobError);
      assert.match(e.message, /^no GPU backend loads here: ONNX Runtime WebGPU: failed \(its check network differs from the CPU's by 0\.\d+\); WebGPU: /);
      assert.ok(!e.message.includes('\n'));
      return true;
    });
    assert.equal(ortProvider(), 'cpu');
    assert.equal(backendInfo(), before, 'the backend chosen before stays');
  });
});
