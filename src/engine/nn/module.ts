/**
 * The module graph: a tree of named modules whose parameter and buffer names are PyTorch state_dict keys.
 * Tensors inside are NHWC and kernels HWIO (TensorFlow.js layouts); `stateDict()`/`loadStateDict()` convert
 * to and from PyTorch layouts (OIHW, [out, in]) so that loading a checkpoint is a rename-free copy.
 */
import * as tf from '@tensorflow/tfjs-core';

/** A state_dict entry in PyTorch layout. */
export interface PtTensor {
  shape: number[];
  dtype: string;
  data: Float32Array | Float64Array | Int32Array | BigInt64Array | Uint8Array;
}
export type PtStateDict = Map<string, PtTensor>;

/** Per-forward settings and outputs. One context per forward pass. */
export interface ForwardContext {
  /** Training mode: BatchNorm uses batch statistics and records running-statistic updates. */
  training: boolean;
  /** Full module names whose outputs to keep in `features` (NAD, FP, GIC, embeddings). */
  taps?: ReadonlySet<string>;
  features?: Map<string, tf.Tensor>;
  /** When set, every BatchNorm stores the batch mean/variance of its input here (GIC's BN objective). */
  bnInputStats?: Map<string, { mean: tf.Tensor1D; variance: tf.Tensor1D }>;
  /** Running-statistic updates computed in training mode, applied by the trainer after the step. */
  bnUpdates?: Array<() => void>;
  /**
   * Hook that may replace a BatchNorm's affine parameters for this pass (ANP's multiplicative noise and
   * masks). Receives the layer and its effective gamma/beta; returns replacements.
   */
  bnAffineHook?: (bn: ModuleLike, gamma: tf.Tensor1D, beta: tf.Tensor1D) => [tf.Tensor1D, tf.Tensor1D];
}

export interface ModuleLike {
  path: string;
}

export type ParamLayout = 'plain' | 'conv' | 'linear';

export interface Param {
  variable: tf.Variable;
  /** How the variable's layout maps to PyTorch's (conv: HWIO <-> OIHW, linear: [in,out] <-> [out,in]). */
  layout: ParamLayout;
  trainable: boolean;
}

export abstract class Module implements ModuleLike {
  /** Full dotted name from the root ('' for the root); set by `finalize`. */
  path = '';
  readonly children = new Map<string, Module>();
  readonly params = new Map<string, Param>();
  abstract readonly kind: string;

  protected abstract forwardImpl(x: tf.Tensor, ctx: ForwardContext): tf.Tensor;

  /**
   * A module inserted in front of this one (NPD's polarizer). It is a child named `inserted`, so its
   * parameters appear in the state_dict as `<this module>.inserted.*`.
   */
  inserted?: Module;

  /** Forward, then keep the output if this module is tapped. */
  forward(x: tf.Tensor, ctx: ForwardContext): tf.Tensor {
    if (this.inserted) x = this.inserted.forward(x, ctx);
    const y = this.forwardImpl(x, ctx);
    if (ctx.taps?.has(this.path)) ctx.features?.set(this.path, y);
    return y;
  }

  /** Insert `m` in front of this module (see `inserted`). */
  insertBefore(m: Module): void {
    this.inserted = m;
    this.children.set('inserted', m);
    m.finalize(this.path ? `${this.path}.inserted` : 'inserted');
  }

  addChild<M extends Module>(name: string, m: M): M {
    this.children.set(name, m);
    return m;
  }

  protected addParam(name: string, value: tf.Tensor, layout: ParamLayout, trainable = true): tf.Variable {
    const v = tf.variable(value, trainable);
    value.dispose();
    this.params.set(name, { variable: v, layout, trainable });
    return v;
  }

  /** Assign full dotted paths to every module below. Call once after building. */
  finalize(prefix = ''): this {
    this.path = prefix;
    for (const [name, child] of this.children) child.finalize(prefix ? `${prefix}.${name}` : name);
    return this;
  }

  /** Every module in the tree, depth first, this one first. */
  *modules(): Generator<Module> {
    yield this;
    for (const c of this.children.values()) yield* c.modules();
  }

  /** [state_dict key, Param] for every parameter and buffer in the tree. */
  namedParams(): Array<[string, Param]> {
    const out: Array<[string, Param]> = [];
    for (const m of this.modules()) {
      for (const [name, p] of m.params) out.push([m.path ? `${m.path}.${name}` : name, p]);
    }
    return out;
  }

  /** Trainable variables (what optimizers update). */
  trainableVariables(): tf.Variable[] {
    return this.namedParams()
      .filter(([, p]) => p.trainable)
      .map(([, p]) => p.variable);
  }

  /** The direct child `name`; a module graph without it is a programming error. */
  child(name: string): Module {
    const c = this.children.get(name);
    if (!c) throw new Error(`${this.kind} ${this.path} has no ${name}`);
    return c;
  }

  find(path: string): Module | undefined {
    for (const m of this.modules()) if (m.path === path) return m;
    return undefined;
  }

  dispose(): void {
    for (const [, p] of this.namedParams()) p.variable.dispose();
  }
}

/** Tensor -> PyTorch-layout array (read asynchronously: the webgpu backend has no synchronous read in Node). */
export async function toPt(p: Param): Promise<PtTensor> {
  const v = p.variable;
  const t = tf.tidy(() => {
    if (p.layout === 'conv') return tf.transpose(v, [3, 2, 0, 1]); // HWIO -> OIHW
    if (p.layout === 'linear') return tf.transpose(v, [1, 0]); // [in,out] -> [out,in]
    return v.clone();
  });
  try {
    const data = (await t.data()) as Float32Array;
    return { shape: t.shape.slice(), dtype: 'float32', data: Float32Array.from(data) };
  } finally {
    t.dispose();
  }
}

/**
 * toPt from the parameter's values already on the host, in the variable's own layout (HWIO, [in, out]): the same
 * values in PyTorch's order, transposed here. For passes that cannot await (ONNX and TensorFlow.js emission read
 * every weight through HostValues first).
 */
export function ptFromValues(p: Param, v: ArrayLike<number>): PtTensor {
  const s = p.variable.shape as number[];
  if (p.layout === 'conv') {
    const [kh, kw, ci, co] = s;
    const out = new Float32Array(v.length);
    for (let y = 0; y < kh; y++) for (let x = 0; x < kw; x++) for (let i = 0; i < ci; i++) for (let o = 0; o < co; o++) out[((o * ci + i) * kh + y) * kw + x] = v[((y * kw + x) * ci + i) * co + o];
    return { shape: [co, ci, kh, kw], dtype: 'float32', data: out };
  }
  if (p.layout === 'linear') {
    const [fin, fout] = s;
    const out = new Float32Array(v.length);
    for (let i = 0; i < fin; i++) for (let o = 0; o < fout; o++) out[o * fin + i] = v[i * fout + o];
    return { shape: [fout, fin], dtype: 'float32', data: out };
  }
  return { shape: s.slice(), dtype: 'float32', data: Float32Array.from(v) };
}

/** PyTorch-layout shape of a parameter. */
export function ptShape(p: Param): number[] {
  const s = p.variable.shape as number[];
  if (p.layout === 'conv') return [s[3], s[2], s[0], s[1]];
  if (p.layout === 'linear') return [s[1], s[0]];
  return s.slice();
}

/** Assign a PyTorch-layout array into a parameter (shape checked by the caller). */
export function assignFromPt(p: Param, t: PtTensor): void {
  const data = toFloat32Array(t.data);
  tf.tidy(() => {
    let x = tf.tensor(data, t.shape.length ? t.shape : [], 'float32');
    if (p.layout === 'conv') x = tf.transpose(x, [2, 3, 1, 0]); // OIHW -> HWIO
    else if (p.layout === 'linear') x = tf.transpose(x, [1, 0]);
    p.variable.assign(tf.reshape(x, p.variable.shape));
  });
}

export function toFloat32Array(d: PtTensor['data']): Float32Array {
  if (d instanceof Float32Array) return d;
  const out = new Float32Array(d.length);
  for (let i = 0; i < d.length; i++) out[i] = Number(d[i]);
  return out;
}
