/**
 * Evaluation through ONNX Runtime. ACC and ASR of every cell are inference over the whole test set, and ONNX
 * Runtime's CPU kernels run a small CNN several times faster than the training backend's (wasm) forward pass.
 * The model is exported to ONNX in memory (normalization baked in, NCHW input) and predictions are the argmax
 * of the same logits. `onnxruntime-node` is optional: when it is missing, cannot load, the model has a module the
 * exporter cannot write, or this is not the main thread, evaluation stays on the training backend.
 */
import type { ImageSet } from '../data/dataset';
import type { Model } from '../nn/model';
import { exportOnnx } from '../model_files/onnx_export';
import { throwIfAborted } from '../errors';
import { loadOrt, ortSessionOptions, ortWanted } from '../backend/onnx_runtime';

type Ort = NonNullable<ReturnType<typeof loadOrt>>;

export class OrtPredictor {
  private constructor(
    private readonly ort: Ort,
    private readonly session: import('onnxruntime-node').InferenceSession,
    private readonly shape: [number, number, number],
    private readonly classes: number,
  ) {}

  /** A session for `model`, or undefined where ONNX Runtime or the export is not available for it. */
  static async create(model: Model, threads: number): Promise<OrtPredictor | undefined> {
    if (!ortWanted()) return undefined;
    let bytes: Uint8Array;
    try {
      bytes = await exportOnnx(model, { includeNormalization: true });
    } catch {
      return undefined;
    }
    try {
      return await OrtPredictor.fromOnnx(bytes, model.inputShape, model.numClasses, threads);
    } catch {
      return undefined;
    }
  }

  /**
   * A session for a model already exported by exportOnnx with its normalization; throws when ONNX Runtime is not available here or refuses the bytes.
   */
  static async fromOnnx(bytes: Uint8Array, inputShape: [number, number, number], classes: number, threads: number): Promise<OrtPredictor> {
    const ort = ortWanted() ? loadOrt() : null;
    if (!ort) throw new Error('ONNX Runtime is not available in this thread');
    const session = await ort.InferenceSession.create(bytes, ortSessionOptions(threads));
    return new OrtPredictor(ort, session, inputShape, classes);
  }

  /** Argmax labels of a whole set (images NHWC in [0, 1], as the module graph takes them). */
  async labels(set: ImageSet, batchSize = 256, signal?: AbortSignal): Promise<Int32Array> {
    const k = this.classes;
    const out = new Int32Array(set.n);
    await this.forEachBatch(set, batchSize, signal, (s, b, l) => {
      for (let i = 0; i < b; i++) {
        let best = 0;
        for (let j = 1; j < k; j++) if (l[i * k + j] > l[i * k + best]) best = j;
        out[s + i] = best;
      }
    });
    return out;
  }

  /** Logits of a whole set, [n, classes]. */
  async logits(set: ImageSet, batchSize = 256, signal?: AbortSignal): Promise<Float32Array> {
    const out = new Float32Array(set.n * this.classes);
    await this.forEachBatch(set, batchSize, signal, (s, _b, l) => out.set(l, s * this.classes));
    return out;
  }

  private async forEachBatch(set: ImageSet, batchSize: number, signal: AbortSignal | undefined, use: (start: number, count: number, logits: Float32Array) => void): Promise<void> {
    const [h, w, c] = this.shape;
    const size = h * w * c;
    // No fresh memory per batch: one channel is NCHW as it lies, so the set's own pixels are fed (a view), and
    // more channels are reordered into one buffer that every batch reuses. A new 400 KB array per batch of 128
    // (28x28) was often a fresh mapping from the C library, page-faulted in: 1,900-3,100 page faults a pass over
    // 4,096 images once warm, none now, and the pass 4-5% faster (width-16 PreAct-ResNet18, one thread).
    const reordered = c === 1 ? undefined : new Float32Array(Math.min(batchSize, set.n) * size);
    for (let s = 0; s < set.n; s += batchSize) {
      throwIfAborted(signal);
      const b = Math.min(batchSize, set.n - s);
      const src = set.x.subarray(s * size, (s + b) * size);
      const nchw = reordered ? reordered.subarray(0, b * size) : src;
      if (reordered) for (let i = 0; i < b; i++) for (let p = 0; p < h * w; p++) for (let ch = 0; ch < c; ch++) nchw[i * size + ch * h * w + p] = src[i * size + p * c + ch];
      const input = new this.ort.Tensor('float32', nchw, [b, c, h, w]);
      const result = await this.session.run({ [this.session.inputNames[0]]: input });
      const logits = result[this.session.outputNames[0]];
      use(s, b, logits.data as Float32Array);
      input.dispose();
      logits.dispose();
    }
  }

  async dispose(): Promise<void> {
    await this.session.release();
  }
}
