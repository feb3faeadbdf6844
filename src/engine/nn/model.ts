/**
 * A classifier `f = head(phi(x))` over the module graph, with what the rest of the engine needs to know about
 * it: input shape, classes, normalization (applied inside forward, so callers pass [0,1] pixels), where the
 * penultimate feature and the stage outputs are (NAD, FP, NPD, GIC and embeddings tap them), and how to build
 * a fresh copy (defenses work on clones; the victim is never changed).
 */
import * as tf from '@tensorflow/tfjs-core';
import { BatchNorm2d, Linear } from './layers';
import { ForwardContext, Module, PtStateDict, assignFromPt, ptShape, toPt } from './module';
import { InputError } from '../errors';

export interface Normalization {
  mean: number[];
  std: number[];
}

/** Everything needed to rebuild the architecture (not the weights). */
export interface ArchSpec {
  arch: string;
  inputShape: [number, number, number];
  numClasses: number;
  /** Architecture-specific options (width, layer lists, an imported graph...). */
  options?: Record<string, unknown>;
}

export interface ArchLayout {
  /** Module whose output is the penultimate feature phi(x) ([N, D]). */
  feature: string;
  /** The classification head (a Linear module). */
  head: string;
  /** Outputs of the later stages, shallow to deep (NAD's attention taps). */
  stages: string[];
  /** The first convolution of the last block (where NPD inserts its polarizer). */
  lastBlockConv: string;
}

export class Model {
  constructor(
    readonly spec: ArchSpec,
    readonly root: Module,
    readonly layout: ArchLayout,
    readonly normalize: Normalization | undefined,
    private readonly rebuild: () => Model,
  ) {}

  get inputShape(): [number, number, number] {
    return this.spec.inputShape;
  }
  get numClasses(): number {
    return this.spec.numClasses;
  }

  /** Logits of [0,1] pixels x ([N,H,W,C]). Tapped features land in ctx.features. */
  forward(x: tf.Tensor4D, ctx: ForwardContext = { training: false }): tf.Tensor2D {
    let input: tf.Tensor = x;
    if (this.normalize) {
      const { mean, std } = this.normalize;
      input = tf.div(tf.sub(x, tf.tensor1d(mean)), tf.tensor1d(std));
    }
    return this.root.forward(input, ctx) as tf.Tensor2D;
  }

  /** Logits and penultimate features together. */
  forwardWithFeatures(x: tf.Tensor4D, training = false): { logits: tf.Tensor2D; features: tf.Tensor2D } {
    const features = new Map<string, tf.Tensor>();
    const logits = this.forward(x, { training, taps: new Set([this.layout.feature]), features });
    return { logits, features: features.get(this.layout.feature) as tf.Tensor2D };
  }

  batchNorms(): BatchNorm2d[] {
    return [...this.root.modules()].filter((m): m is BatchNorm2d => m instanceof BatchNorm2d);
  }

  head(): Linear {
    const m = this.root.find(this.layout.head);
    if (!(m instanceof Linear)) throw new Error(`head ${this.layout.head} is not a Linear layer`);
    return m;
  }

  paramCount(): number {
    return this.root
      .namedParams()
      .filter(([, p]) => p.trainable)
      .reduce((s, [, p]) => s + p.variable.size, 0);
  }

  trainableVariables(): tf.Variable[] {
    return this.root.trainableVariables();
  }

  /** The state_dict in PyTorch layout (including BatchNorm's num_batches_tracked). */
  async stateDict(): Promise<PtStateDict> {
    const sd: PtStateDict = new Map();
    // Every read is started before the first is awaited: on a GPU they then share one round trip.
    const params = this.root.namedParams();
    const tensors = await Promise.all(params.map(([, p]) => toPt(p)));
    params.forEach(([key], i) => sd.set(key, tensors[i]));
    for (const bn of this.batchNorms()) {
      sd.set(`${bn.path}.num_batches_tracked`, { shape: [], dtype: 'int64', data: BigInt64Array.from([BigInt(bn.numBatchesTracked)]) });
    }
    // Keep PyTorch's order: parameters and buffers per module in definition order.
    return sd;
  }

  /** Copy a PyTorch-layout state_dict in; every key must match by name and shape. */
  loadStateDict(sd: PtStateDict, where?: string): void {
    const params = new Map(this.root.namedParams());
    const bnByPath = new Map(this.batchNorms().map((b) => [`${b.path}.num_batches_tracked`, b]));
    const missing = [...params.keys()].filter((k) => !sd.has(k));
    if (missing.length) {
      throw new InputError(`state_dict lacks ${missing.length} key(s) of ${this.spec.arch}: ${missing.slice(0, 4).join(', ')}`, where);
    }
    for (const [key, t] of sd) {
      const p = params.get(key);
      if (!p) {
        if (bnByPath.has(key)) {
          bnByPath.get(key)!.numBatchesTracked = Number(t.data[0] ?? 0);
          continue;
        }
        throw new InputError(`unexpected key ${key} for ${this.spec.arch}`, where);
      }
      const want = ptShape(p);
      if (want.join(',') !== t.shape.join(',')) {
        throw new InputError(`shape of ${key} is [${t.shape}] but ${this.spec.arch} needs [${want}]`, where);
      }
      assignFromPt(p, t);
    }
  }

  /** Modules inserted into the graph after building (path of the module they precede, and a factory). */
  readonly insertions: Array<{ path: string; build: () => Module }> = [];

  /** Insert a module in front of the module at `path`; clones repeat the insertion. */
  insertBefore(path: string, build: () => Module): Module {
    const target = this.root.find(path);
    if (!target) throw new Error(`no module ${path} to insert before`);
    const m = build();
    target.insertBefore(m);
    this.insertions.push({ path, build });
    return m;
  }

  /** A fresh model with the same architecture and a copy of the weights and masks. */
  clone(): Model {
    const m = this.rebuild();
    for (const ins of this.insertions) m.insertBefore(ins.path, ins.build);
    const src = this.root.namedParams();
    const dst = new Map(m.root.namedParams());
    tf.tidy(() => {
      for (const [k, p] of src) dst.get(k)!.variable.assign(p.variable);
    });
    const srcBns = this.batchNorms();
    m.batchNorms().forEach((bn, i) => {
      bn.numBatchesTracked = srcBns[i].numBatchesTracked;
      if (srcBns[i].mask) bn.setMask(srcBns[i].mask!); // copied on the device, no read
    });
    return m;
  }

  dispose(): void {
    // The root disposes every parameter below it; BatchNorm masks are tensors of their own.
    for (const bn of this.batchNorms()) bn.setMask(undefined);
    this.root.dispose();
  }
}
