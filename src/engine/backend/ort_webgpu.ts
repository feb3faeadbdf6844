/**
 * ONNX Runtime's WebGPU execution provider as the engine's GPU path. Every defense's training step, GIC's step,
 * the features of the embeddings and the evaluation are ONNX Runtime sessions (nn/ort_graph.ts, nn/ort_train.ts,
 * metrics/ort_eval.ts); onnxruntime-node 1.30 bundles a WebGPU provider (Dawn: Vulkan, Metal or Direct3D 12,
 * no CUDA toolkit to match) on Linux x64, Windows and macOS, so with it the whole job's arithmetic can move to
 * the GPU while the tensor backend keeps the small glue on the CPU.
 *
 * Before the engine relies on it, the provider must show it works here: a session on it must start (it asks Dawn
 * for an adapter) and a small network of the operators the training graphs use most (convolution, ReLU, pooling,
 * a matrix product) must give the CPU provider's numbers. A provider that is missing, finds no adapter or
 * computes something else is reported with its reason and not used.
 */
import { onnx } from 'onnx-proto';
import { firstLine } from './system';
import { VULKAN_LOADER } from './webgpu';

/** The part of onnxruntime-node this module touches (tests give fakes). */
export interface OrtLike {
  listSupportedBackends?(): Array<{ name: string; bundled?: boolean }>;
  InferenceSession: {
    create(bytes: Uint8Array, options: { executionProviders: string[]; intraOpNumThreads?: number }): Promise<{
      run(feeds: Record<string, unknown>): Promise<Record<string, { data: unknown; dispose?(): void }>>;
      release(): Promise<void>;
    }>;
  };
  Tensor: new (type: 'float32', data: Float32Array, dims: number[]) => { dispose?(): void };
}

export type OrtWebGpuStatus =
  | { status: 'ready' }
  | { status: 'not bundled' }
  | { status: 'no adapter'; reason: string }
  | { status: 'failed'; error: string };

/** The check network: conv 3x3 (8 -> 8 channels) + bias, ReLU, global average pool, flatten, a 8 -> 4 product. */
function checkGraph(): Uint8Array {
  const F = onnx.TensorProto.DataType.FLOAT;
  const tensor = (name: string, dims: number[], f: (i: number) => number) => {
    const data = Float32Array.from({ length: dims.reduce((a, b) => a * b, 1) }, (_, i) => f(i));
    return onnx.TensorProto.create({ name, dims, dataType: F, rawData: new Uint8Array(data.buffer) });
  };
  const info = (name: string, dims: number[]) => onnx.ValueInfoProto.create({ name, type: { tensorType: { elemType: F, shape: { dim: dims.map((d) => ({ dimValue: d })) } } } });
  const ints = (name: string, v: number[]) => onnx.AttributeProto.create({ name, type: onnx.AttributeProto.AttributeType.INTS, ints: v });
  const node = (opType: string, input: string[], output: string, attribute: onnx.IAttributeProto[] = []) => onnx.NodeProto.create({ opType, input, output: [output], attribute });
  const graph = onnx.GraphProto.create({
    name: 'webgpu-check',
    node: [
      node('Conv', ['x', 'w', 'b'], 'c', [ints('kernel_shape', [3, 3]), ints('pads', [1, 1, 1, 1])]),
      node('Relu', ['c'], 'r'),
      node('GlobalAveragePool', ['r'], 'p'),
      node('Flatten', ['p'], 'f'),
      node('Gemm', ['f', 'm'], 'y'),
    ],
    initializer: [
      tensor('w', [8, 8, 3, 3], (i) => Math.sin(i * 0.7) * 0.3),
      tensor('b', [8], (i) => 0.05 * (i - 4)),
      tensor('m', [8, 4], (i) => Math.cos(i * 1.3)),
    ],
    input: [info('x', [2, 8, 10, 10])],
    output: [info('y', [2, 4])],
  });
  return onnx.ModelProto.encode(onnx.ModelProto.create({ irVersion: 8, opsetImport: [{ domain: '', version: 17 }], graph })).finish();
}

async function runCheck(ort: OrtLike, providers: string[]): Promise<Float32Array> {
  const session = await ort.InferenceSession.create(checkGraph(), { executionProviders: providers, intraOpNumThreads: 1 });
  try {
    const x = new ort.Tensor('float32', Float32Array.from({ length: 2 * 8 * 10 * 10 }, (_, i) => ((i * 37) % 101) / 101), [2, 8, 10, 10]);
    try {
      const out = await session.run({ x });
      const y = Float32Array.from(out.y.data as ArrayLike<number>);
      for (const t of Object.values(out)) t.dispose?.();
      return y;
    } finally {
      x.dispose?.();
    }
  } finally {
    await session.release();
  }
}

/**
 * Whether ONNX Runtime's WebGPU provider is bundled here, finds an adapter and computes the CPU's numbers.
 * `findLibrary` (Linux: system.ts's libraryFinder; null elsewhere) lets a machine without a Vulkan loader answer
 * without starting Dawn, which would only print its own warning and find nothing.
 */
export async function probeOrtWebGpu(ort: OrtLike, findLibrary: (name: string) => string | undefined | null = () => null): Promise<OrtWebGpuStatus> {
  let listed: Array<{ name: string; bundled?: boolean }> = [];
  try {
    listed = ort.listSupportedBackends?.() ?? [];
  } catch {
    listed = [];
  }
  if (!listed.some((b) => b.name === 'webgpu' && b.bundled !== false)) return { status: 'not bundled' };
  if (findLibrary(VULKAN_LOADER) === undefined) return { status: 'no adapter', reason: `${VULKAN_LOADER} not found` };
  let gpu: Float32Array;
  try {
    gpu = await runCheck(ort, ['webgpu']);
  } catch (e) {
    const line = firstLine(e);
    // ONNX Runtime's message ends with Dawn's answer, e.g. "Failed to get a WebGPU adapter: No supported adapters".
    const adapter = /WebGPU adapter:?\s*(.*)$/i.exec(line);
    return adapter ? { status: 'no adapter', reason: adapter[1] || line } : { status: 'failed', error: line };
  }
  try {
    const cpu = await runCheck(ort, ['cpu']);
    let worst = 0;
    for (let i = 0; i < cpu.length; i++) worst = Math.max(worst, Math.abs(gpu[i] - cpu[i]) / Math.max(1, Math.abs(cpu[i])));
    if (!(gpu.length === cpu.length && worst < 1e-3)) return { status: 'failed', error: `its check network differs from the CPU's by ${worst.toPrecision(2)}` };
  } catch (e) {
    return { status: 'failed', error: firstLine(e) };
  }
  return { status: 'ready' };
}

/** The status in a clause of a one-line error or a doctor row. */
export function ortWebGpuClause(s: OrtWebGpuStatus): string {
  if (s.status === 'ready') return 'ONNX Runtime WebGPU: ready';
  if (s.status === 'not bundled') return 'ONNX Runtime WebGPU: not in this platform\'s onnxruntime-node';
  if (s.status === 'no adapter') return `ONNX Runtime WebGPU: no adapter (${s.reason})`;
  return `ONNX Runtime WebGPU: failed (${s.error})`;
}
