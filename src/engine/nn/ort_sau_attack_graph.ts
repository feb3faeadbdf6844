/**
 * One PGD step of SAU's shared adversarial examples (defenses/sau.ts) as one ONNX graph: the model being purified f
 * (weights fed at every run) and the frozen victim f0 (weights baked in) on the same x', the masks decided from
 * their predictions at x', the objective's gradient with respect to both models' logits, and the backward pass of
 * both to the pixels, summed. It replaces two split graphs per step (each model's forward part, the objective's
 * gradient on the backend, each model's backward part), whose saved activations crossed through JavaScript at
 * every step.
 *
 * The objective is sau.ts's sharedObjective, averaged over the whole batch of n images (x' may hold only the rows
 * not yet shared): beta1 * L_adv + beta2 * L_share, with
 *   L_adv = -(sum of CE(f(x'), y) over the rows f still gives its clean label + the same for f0) / (2n),
 *   L_share = sum of JS(softmax f(x'), softmax f0(x')) over the rows not yet shared / n,
 * where a row is shared once f and f0 both leave their clean labels for the same label. The masks are decided
 * outside the gradient, as on the backend. The closed forms mirror TensorFlow.js's gradients of the same
 * operations: d CE / d logits = softmax - onehot(y); d JS / d p = (log p - log m) / 2 for each clipped
 * probability p (m their mean; clipByValue passes the gradient where 1e-8 <= p <= 1); through the softmax
 * d z = s (g - sum(s g)).
 *
 * Inputs: `x` (NHWC pixels), `target` (one-hot y, [m, classes]), `clean_f` and `clean_0` (int64 [m], each model's
 * label for the clean image), `inv_batch` (1/n), f's parameters under their own keys. Outputs: `grad/x` (NHWC)
 * and `not_shared` ([m], 1 for the rows not yet shared).
 */
import { onnx } from 'onnx-proto';
import type { Model } from './model';
import type { Param } from './module';
import { GradBuilder } from './ort_grad_graph';
import { OrtGradUnsupported, type GraphNet } from './ort_grad_contract';
import { bakeWeights } from './ort_graph';
import { loadOrt, nchwcBlockSize } from '../backend/onnx_runtime';
import { GrowingSession } from './ort_threads';
import { ortTrainWanted } from './ort_train';

const T = onnx.TensorProto.DataType;

/** The key prefix of the victim's parameters, baked into the graph as constants. */
const VICTIM_PREFIX = 'f0/';

/** Both models as the builder sees them: f's parameters under their own keys, f0's under `f0/`. */
function sharedNet(f: Model, f0: Model): GraphNet {
  return {
    root: f.root,
    inputShape: f.inputShape,
    numClasses: f.numClasses,
    normalize: f.normalize,
    spec: { arch: `sau-attack-${f.spec.arch}` },
    namedParams: () => [...f.root.namedParams(), ...f0.root.namedParams().map(([k, p]): [string, Param] => [VICTIM_PREFIX + k, p])],
  };
}

class SauAttackBuilder extends GradBuilder {
  constructor(
    private readonly f: Model,
    private readonly f0: Model,
    private readonly beta1: number,
    private readonly beta2: number,
    nchwcBlock: number,
  ) {
    super(sharedNet(f, f0), { bnTrain: false, loss: 'seed', inputGrad: true, paramGrads: false, nchwcBlock });
  }

  /** (softmax - target) * mask * coef: the gradient of mask * coef * CE per row. */
  private ceGradient(probs: string, mask: string, coef: string, k: number): string {
    const rows = this.op('Unsqueeze', [mask, this.i64([1])], {}, [-1, 1]);
    return this.op('Mul', [this.op('Mul', [this.op('Sub', [probs, 'target'], {}, [-1, k]), rows], {}, [-1, k]), coef], {}, [-1, k]);
  }

  /** Back through softmax: s * (g - sum(s * g)) per row. */
  private softmaxBackward(s: string, g: string, k: number): string {
    const dot = this.op('ReduceSum', [this.op('Mul', [s, g], {}, [-1, k]), this.i64([1])], { keepdims: 1 }, [-1, 1]);
    return this.op('Mul', [s, this.op('Sub', [g, dot], {}, [-1, k])], {}, [-1, k]);
  }

  buildAttack(): { bytes: Uint8Array; fed: Array<{ key: string; shape: number[] }>; baked: string[] } {
    const [h, w, c] = this.f.inputShape;
    const k = this.f.numClasses;
    const norm = this.f.normalize;
    const norm0 = this.f0.normalize;
    if (JSON.stringify(norm ?? null) !== JSON.stringify(norm0 ?? null)) throw new OrtGradUnsupported('two models with different normalizations');
    for (const name of ['x', 'target', 'clean_f', 'clean_0', 'inv_batch', 'grad/x', 'not_shared']) this.b.reserve(name);
    this.b.shapes.set('x', [-1, h, w, c]);
    this.b.shapes.set('target', [-1, k]);
    this.b.shapes.set('inv_batch', [1]);
    let x = this.op('Transpose', ['x'], { perm: [0, 3, 1, 2] }, [-1, c, h, w]);
    const per = (v: number[]) => Float32Array.from({ length: c }, (_, i) => v[v.length === 1 ? 0 : i]);
    if (norm) {
      x = this.op('Sub', [x, this.b.initializer('normalize.mean', [1, c, 1, 1], per(norm.mean))], {}, [-1, c, h, w]);
      x = this.op('Div', [x, this.b.initializer('normalize.std', [1, c, 1, 1], per(norm.std))], {}, [-1, c, h, w]);
    }
    const input = x;
    this.live.add(input);
    const lf = this.module(this.f.root, input);
    this.paramPrefix = VICTIM_PREFIX;
    const l0 = this.module(this.f0.root, input);
    this.paramPrefix = '';
    for (const l of [lf, l0]) {
      const s = this.b.shape(l);
      if (s.length !== 2 || s[1] !== k) throw new OrtGradUnsupported(`an output of shape [${s}]`);
    }

    // The masks, from the predictions at x'.
    const rowShape = [-1];
    const predF = this.op('ArgMax', [lf], { axis: 1, keepdims: 0 }, rowShape);
    const pred0 = this.op('ArgMax', [l0], { axis: 1, keepdims: 0 }, rowShape);
    const keepsF = this.op('Equal', [predF, 'clean_f'], {}, rowShape);
    const keeps0 = this.op('Equal', [pred0, 'clean_0'], {}, rowShape);
    const agree = this.op('Equal', [predF, pred0], {}, rowShape);
    const shared = this.op('And', [this.op('And', [this.op('Not', [keepsF], {}, rowShape), this.op('Not', [keeps0], {}, rowShape)], {}, rowShape), agree], {}, rowShape);
    const asFloat = (b: string) => this.op('Cast', [b], { to: T.FLOAT }, rowShape);
    const notShared = asFloat(this.op('Not', [shared], {}, rowShape));
    this.op('Identity', [notShared], {}, rowShape, ['not_shared']);

    // d objective / d logits of each model.
    const sF = this.op('Softmax', [lf], { axis: 1 }, [-1, k]);
    const s0 = this.op('Softmax', [l0], { axis: 1 }, [-1, k]);
    const advCoef = this.op('Mul', ['inv_batch', this.scalar(-this.beta1 / 2)], {}, [1]);
    const shareCoef = this.op('Mul', ['inv_batch', this.scalar(this.beta2)], {}, [1]);
    const pa = this.op('Clip', [sF, this.scalar(1e-8), this.scalar(1)], {}, [-1, k]);
    const pb = this.op('Clip', [s0, this.scalar(1e-8), this.scalar(1)], {}, [-1, k]);
    const logMean = this.op('Log', [this.op('Mul', [this.op('Add', [pa, pb], {}, [-1, k]), this.scalar(0.5)], {}, [-1, k])], {}, [-1, k]);
    const sharedRows = this.op('Unsqueeze', [notShared, this.i64([1])], {}, [-1, 1]);
    const jsGradient = (s: string, p: string) => {
      const within = this.op('Cast', [this.op('And', [this.op('GreaterOrEqual', [s, this.scalar(1e-8)], {}, [-1, k]), this.op('LessOrEqual', [s, this.scalar(1)], {}, [-1, k])], {}, [-1, k])], { to: T.FLOAT }, [-1, k]);
      const dp = this.op('Mul', [this.op('Sub', [this.op('Log', [p], {}, [-1, k]), logMean], {}, [-1, k]), this.scalar(0.5)], {}, [-1, k]);
      const scaled = this.op('Mul', [this.op('Mul', [this.op('Mul', [dp, within], {}, [-1, k]), sharedRows], {}, [-1, k]), shareCoef], {}, [-1, k]);
      return this.softmaxBackward(s, scaled, k);
    };
    this.grads.set(lf, this.op('Add', [this.ceGradient(sF, asFloat(keepsF), advCoef, k), jsGradient(sF, pa)], {}, [-1, k]));
    this.grads.set(l0, this.op('Add', [this.ceGradient(s0, asFloat(keeps0), advCoef, k), jsGradient(s0, pb)], {}, [-1, k]));
    for (let i = this.tape.length - 1; i >= 0; i--) this.tape[i]();

    // Back through the normalization and the transpose; both models' gradients have been added at `input`.
    let g = this.grads.get(input) ?? this.op('Mul', [input, this.scalar(0)], {}, [-1, c, h, w]);
    if (norm) g = this.op('Div', [g, this.b.initializer('normalize.std.grad', [1, c, 1, 1], per(norm.std))], {}, [-1, c, h, w]);
    this.op('Transpose', [g], { perm: [0, 2, 3, 1] }, [-1, h, w, c], ['grad/x']);

    const info = (name: string, shape: number[], elemType: number = T.FLOAT) =>
      onnx.ValueInfoProto.create({ name, type: { tensorType: { elemType, shape: { dim: shape.map((d) => (d < 0 ? { dimParam: 'N' } : { dimValue: d })) } } } });
    const graph = onnx.GraphProto.create({
      name: `sau-attack-${this.f.spec.arch}`,
      node: this.b.nodes,
      initializer: this.b.initializers,
      input: [info('x', [-1, h, w, c]), info('target', [-1, k]), info('clean_f', [-1], T.INT64), info('clean_0', [-1], T.INT64), info('inv_batch', [1]), ...this.paramInputs.map((p) => info(p.key, p.shape))],
      output: [info('grad/x', [-1, h, w, c]), info('not_shared', [-1])],
    });
    const bytes = onnx.ModelProto.encode(onnx.ModelProto.create({ irVersion: 8, opsetImport: this.opsetImport(), producerName: 'backdoor-audit', graph })).finish();
    return {
      bytes,
      fed: this.paramInputs.filter((p) => !p.key.startsWith(VICTIM_PREFIX)),
      baked: this.paramInputs.filter((p) => p.key.startsWith(VICTIM_PREFIX)).map((p) => p.key),
    };
  }
}

/** The session of SAU's PGD step (see above); f's weights are read at every run, f0's are baked in. */
export class SauAttackGraph {
  private closed = false;

  private constructor(
    private readonly ort: typeof import('onnxruntime-node'),
    /** Grows to the threads granted to this process (ort_threads.ts). */
    private readonly session: GrowingSession,
    private readonly f: Model,
    private readonly fed: Array<{ key: string; shape: number[] }>,
  ) {}

  /** Undefined where ONNX Runtime is not available here or the builder does not cover the model. */
  static async create(f: Model, f0: Model, beta1: number, beta2: number, threads: number): Promise<SauAttackGraph | undefined> {
    const ort = ortTrainWanted() ? loadOrt() : null;
    if (!ort) return undefined;
    let built: ReturnType<SauAttackBuilder['buildAttack']>;
    try {
      built = new SauAttackBuilder(f, f0, beta1, beta2, await nchwcBlockSize(ort)).buildAttack();
    } catch (e) {
      if (e instanceof OrtGradUnsupported) return undefined;
      throw e;
    }
    const victimParams = new Map(f0.root.namedParams());
    const weights = new Map<string, { data: Float32Array; shape: number[] }>();
    for (const key of built.baked) {
      const p = victimParams.get(key.slice(VICTIM_PREFIX.length))!;
      weights.set(key, { data: Float32Array.from((await p.variable.data()) as Float32Array), shape: [...p.variable.shape] });
    }
    try {
      const session = await GrowingSession.create(ort, bakeWeights(built.bytes, weights), threads);
      return new SauAttackGraph(ort, session, f, built.fed);
    } catch (e) {
      if (process.env.DEBUG_ORT) console.error(e);
      return undefined;
    }
  }

  /** f's weights as they are now, in the order `step` takes them: read once per batch, its PGD steps share them. */
  async readWeights(): Promise<Float32Array[]> {
    const params = new Map(this.f.root.namedParams());
    return Promise.all(this.fed.map(({ key }) => params.get(key)!.variable.data() as Promise<Float32Array>));
  }

  /**
   * The objective's gradient with respect to the m images `x` (NHWC, flat) of a batch of `n`, given their labels
   * and each model's label for the clean images, with f's `weights` (readWeights); and which rows are not yet
   * shared.
   */
  async step(x: Float32Array, m: number, labels: Int32Array, cleanF: Int32Array, clean0: Int32Array, n: number, weights: Float32Array[]): Promise<{ dx: Float32Array; notShared: Float32Array }> {
    if (this.closed) throw new Error('ONNX Runtime graph is closed');
    const [h, w, c] = this.f.inputShape;
    const k = this.f.numClasses;
    const target = new Float32Array(m * k);
    for (let i = 0; i < m; i++) target[i * k + labels[i]] = 1;
    const feeds: Record<string, import('onnxruntime-node').Tensor> = {
      x: new this.ort.Tensor('float32', x, [m, h, w, c]),
      target: new this.ort.Tensor('float32', target, [m, k]),
      clean_f: new this.ort.Tensor('int64', BigInt64Array.from(cleanF, (v) => BigInt(v)), [m]),
      clean_0: new this.ort.Tensor('int64', BigInt64Array.from(clean0, (v) => BigInt(v)), [m]),
      inv_batch: new this.ort.Tensor('float32', Float32Array.of(1 / n), [1]),
    };
    if (weights.length !== this.fed.length) throw new Error(`f's weights: ${this.fed.length} tensors expected`);
    this.fed.forEach(({ key, shape }, i) => (feeds[key] = new this.ort.Tensor('float32', weights[i], shape)));
    try {
      const out = await this.session.run(feeds);
      return { dx: out['grad/x'].data as Float32Array, notShared: out['not_shared'].data as Float32Array };
    } finally {
      for (const t of Object.values(feeds)) t.dispose();
    }
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.session.release();
  }
}
