/**
 * Predictions on auxiliary splits for the decisions defenses make between training steps: Fine-Pruning's
 * channel ranking and stopping rule, CLP's choice of u, ANP's threshold, RNP's unlearning stop and greedy
 * pruning. These are hundreds of forward passes of a few hundred images each (RNP tries every candidate
 * channel), on a model whose weights change between passes.
 *
 * Where the defense trains through ONNX Runtime, they run through one forward graph of the model (weights fed
 * at every run, so the graph serves the model as it is now and any copy of it with the same parameters, such
 * as a pruned clone); elsewhere, and for a model the graph does not cover, on the backend. On the backend a
 * pass over 500 images of the zoo's width-16 PreAct-ResNet18 took 1.2-3 s of one thread; through the graph,
 * 0.5 s, and the graph is built once per defense run (0.1 s).
 */
import type { ImageSet } from '../data/dataset';
import type { Model } from '../nn/model';
import { OrtModelGraph } from '../nn/ort_graph';
import { argmaxRows, predictFeatures, predictLabels } from '../nn/train';
import type { DefenseContext } from './defense';

const BATCH = 256;

export class AuxPredictor {
  private constructor(
    private readonly model: Model,
    private readonly graph: OrtModelGraph | undefined,
    private readonly withFeatures: boolean,
  ) {}

  /**
   * A predictor for `model` and models of its structure. `features` adds the penultimate features (the head's
   * input) to the graph. Close it when the defense is done.
   */
  static async open(ctx: Pick<DefenseContext, 'ortTraining' | 'ortThreads'>, model: Model, options: { features?: boolean } = {}): Promise<AuxPredictor> {
    const features = options.features ?? false;
    const graph = ctx.ortTraining ? await OrtModelGraph.create(model, { bnTrain: false, loss: 'none', taps: features ? [model.layout.feature] : [] }, ctx.ortThreads ?? 1) : undefined;
    return new AuxPredictor(model, graph, features);
  }

  /** Where the predictions are computed. */
  get engine(): 'onnxruntime' | 'backend' {
    return this.graph ? 'onnxruntime' : 'backend';
  }

  /** Top-1 accuracy of `model` (this predictor's model or one of its structure) on `set`. */
  async accuracy(set: ImageSet, model: Model = this.model): Promise<number> {
    const pred = await this.labels(set, model);
    let ok = 0;
    for (let i = 0; i < set.n; i++) if (pred[i] === set.y[i]) ok++;
    return ok / Math.max(1, set.n);
  }

  /** Argmax labels of `model` on `set`. */
  async labels(set: ImageSet, model: Model = this.model): Promise<Int32Array> {
    if (!this.graph) return predictLabels(model, set);
    const out = new Int32Array(set.n);
    await this.batches(set, model, (s, _n, run) => out.set(argmaxRows(run.logits!, model.numClasses), s));
    return out;
  }

  /** Penultimate features of `model` on `set`, [n, dim] (needs `features` at open). */
  async features(set: ImageSet, model: Model = this.model): Promise<{ data: Float32Array; dim: number }> {
    if (!this.graph) return predictFeatures(model, set);
    if (!this.withFeatures) throw new Error('this predictor was opened without features');
    const tap = model.layout.feature;
    let data = new Float32Array(0);
    let dim = 0;
    await this.batches(set, model, (s, _n, run) => {
      const t = run.taps!.get(tap)!;
      if (!dim) {
        dim = t.shape.slice(1).reduce((a, b) => a * b, 1);
        data = new Float32Array(set.n * dim);
      }
      data.set(t.data, s * dim);
    });
    return { data, dim };
  }

  async close(): Promise<void> {
    await this.graph?.close();
  }

  private async batches(set: ImageSet, model: Model, use: (start: number, n: number, run: Awaited<ReturnType<OrtModelGraph['run']>>) => void): Promise<void> {
    const size = set.shape[0] * set.shape[1] * set.shape[2];
    for (let s = 0; s < set.n; s += BATCH) {
      const n = Math.min(BATCH, set.n - s);
      use(s, n, await this.graph!.run(set.x.slice(s * size, (s + n) * size), n, {}, model));
    }
  }
}
