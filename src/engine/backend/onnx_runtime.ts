/**
 * Loading ONNX Runtime, the second compute engine beside the tensor backend: evaluation (metrics/ort_eval.ts)
 * and training steps (nn/ort_train.ts) both run through it where it loads. It lives with the backend choice
 * because it is one: an optional native package, tried once, never required.
 */
import { isMainThread } from 'node:worker_threads';
import { onnx } from 'onnx-proto';

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

/** Where ONNX Runtime's sessions compute: its CPU kernels, or its WebGPU execution provider (backend/ort_webgpu.ts). */
export type OrtProvider = 'cpu' | 'webgpu';

let provider: OrtProvider = 'cpu';

/** Set by the backend choice (index.ts) for every session this process makes from then on. */
export function setOrtProvider(p: OrtProvider): void {
  provider = p;
}

export function ortProvider(): OrtProvider {
  return provider;
}

/**
 * The options of every session the engine makes: `threads` intra-op threads (the CPU kernels'), graph
 * optimizations on, and the execution provider of the backend choice. With WebGPU, the nodes it has no kernel for
 * run on the CPU provider, which ONNX Runtime places after it. No memory pattern: with one, ONNX Runtime
 * allocates a run's tensors one by one at the first run of a shape, plans one block for them from it and
 * allocates that at the second, so both first runs page in fresh memory (a training step of the zoo's width-16
 * PreAct-ResNet18, 128 images, one thread: 1.0 s and 1.0 s, then 300 ms; without the pattern 790 ms, then 284).
 * Later runs take the same time either way: the arena keeps what they free.
 */
export function ortSessionOptions(threads: number): { intraOpNumThreads: number; interOpNumThreads: number; graphOptimizationLevel: 'all'; enableMemPattern: boolean; executionProviders: string[] } {
  return { intraOpNumThreads: Math.max(1, threads), interOpNumThreads: 1, graphOptimizationLevel: 'all', enableMemPattern: false, executionProviders: provider === 'webgpu' ? ['webgpu', 'cpu'] : ['cpu'] };
}

/** ONNX Runtime's domain of blocked-layout CPU kernels (MLAS's NCHWc convolutions). */
export const NCHWC_DOMAIN = 'com.microsoft.nchwc';

let nchwcBlock: Promise<number> | undefined;

/**
 * The channel block of ONNX Runtime's NCHWc convolutions on this CPU (8 with AVX2, 16 with AVX-512), or 0 where
 * this build or CPU has none. ONNX Runtime turns a Conv into its blocked form only when the weights are constant;
 * the training graphs feed them fresh at every step, so they use the blocked kernels themselves and need the
 * block, which MLAS picks from the CPU at run time. It is read off the kernel: reordering 4 channels pads them
 * to one block. BACKDOOR_AUDIT_NCHWC=0 turns the blocked kernels off (to compare the two paths); they are off
 * on the WebGPU provider.
 */
export function nchwcBlockSize(ort: Ort): Promise<number> {
  // Blocked kernels are the CPU provider's: on WebGPU they would pull every convolution back to the CPU.
  if (process.env.BACKDOOR_AUDIT_NCHWC === '0' || provider !== 'cpu') return Promise.resolve(0);
  nchwcBlock ??= (async () => {
    const info = (name: string, dims?: number[]) =>
      onnx.ValueInfoProto.create({ name, type: { tensorType: { elemType: onnx.TensorProto.DataType.FLOAT, shape: dims && { dim: dims.map((d) => ({ dimValue: d })) } } } });
    const graph = onnx.GraphProto.create({
      name: 'nchwc-probe',
      node: [onnx.NodeProto.create({ opType: 'ReorderInput', domain: NCHWC_DOMAIN, input: ['x'], output: ['y'] })],
      input: [info('x', [1, 4, 1, 1])],
      output: [info('y')],
    });
    const bytes = onnx.ModelProto.encode(onnx.ModelProto.create({ irVersion: 8, opsetImport: [{ domain: '', version: 17 }, { domain: NCHWC_DOMAIN, version: 1 }], graph })).finish();
    try {
      const session = await ort.InferenceSession.create(bytes, { intraOpNumThreads: 1, interOpNumThreads: 1 });
      try {
        const x = new ort.Tensor('float32', new Float32Array(4), [1, 4, 1, 1]);
        const out = await session.run({ x });
        x.dispose();
        const block = Number(out.y.dims[1]);
        out.y.dispose();
        // A block of 4 (no padding) means MLAS has no blocked kernels here.
        return block > 4 && block % 4 === 0 ? block : 0;
      } finally {
        await session.release();
      }
    } catch {
      return 0;
    }
  })();
  return nchwcBlock;
}
