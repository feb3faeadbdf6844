/**
 * Optimizers with PyTorch's update rules (torch.optim.SGD and Adam/AMSGrad, weight decay added to the
 * gradient), so that `paper` profiles mean the same thing as in BackdoorBench. State tensors are kept per
 * variable and disposed with the optimizer.
 */
import * as tf from '@tensorflow/tfjs-core';

export interface Optimizer {
  lr: number;
  /** Apply one update. Takes ownership of nothing: the caller disposes `grads`. */
  step(vars: tf.Variable[], grads: tf.Tensor[]): void;
  dispose(): void;
}

export class SGD implements Optimizer {
  private readonly buf = new Map<tf.Variable, tf.Variable>();
  constructor(
    public lr: number,
    readonly momentum = 0,
    readonly weightDecay = 0,
    readonly nesterov = false,
  ) {}

  step(vars: tf.Variable[], grads: tf.Tensor[]): void {
    tf.tidy(() => {
      vars.forEach((v, i) => {
        let g = grads[i];
        if (!g) return;
        if (this.weightDecay) g = tf.add(g, tf.mul(v, this.weightDecay));
        if (this.momentum) {
          let b = this.buf.get(v);
          if (!b) {
            b = tf.variable(g, false);
            this.buf.set(v, b);
          } else {
            b.assign(tf.add(tf.mul(b, this.momentum), g));
          }
          g = this.nesterov ? tf.add(g, tf.mul(b, this.momentum)) : b;
        }
        v.assign(tf.sub(v, tf.mul(g, this.lr)));
      });
    });
  }

  /** The momentum buffer of `v` (a copy), undefined before its first step. */
  momentumOf(v: tf.Variable): Float32Array | undefined {
    return (this.buf.get(v)?.dataSync() as Float32Array | undefined)?.slice();
  }

  /** Set the momentum buffer of `v` (after steps taken by sgdStepInPlace). */
  setMomentum(v: tf.Variable, data: Float32Array): void {
    const b = this.buf.get(v);
    if (b) tf.tidy(() => b.assign(tf.tensor(data, v.shape)));
    else this.buf.set(v, tf.tidy(() => tf.variable(tf.tensor(data, v.shape), false)));
  }

  dispose(): void {
    for (const b of this.buf.values()) b.dispose();
    this.buf.clear();
  }
}

/**
 * SGD.step on plain arrays, in place: `w` the weights, `g` their gradient, `buf` the momentum buffer (`hasBuf`
 * false before its first step, when it takes the decayed gradient as it is). Every product and sum is rounded to
 * float32 as the backend's float32 kernels round each op of SGD.step (a product of two float32 values is exact in
 * a double, and a sum of two is either exact or too small to move the float32 result), so the weights are the
 * same bits as SGD.step gives. `lr`, `momentum` and `weightDecay` are float32 scalars there too.
 */
export function sgdStepInPlace(w: Float32Array, g: Float32Array, buf: Float32Array, hasBuf: boolean, o: { lr: number; momentum: number; weightDecay: number; nesterov: boolean }): void {
  const f = Math.fround;
  const lr = f(o.lr);
  const mom = f(o.momentum);
  const wd = f(o.weightDecay);
  for (let i = 0; i < w.length; i++) {
    let d = g[i];
    if (wd) d = f(d + f(w[i] * wd));
    if (mom) {
      buf[i] = hasBuf ? f(f(buf[i] * mom) + d) : d;
      d = o.nesterov ? f(d + f(buf[i] * mom)) : buf[i];
    }
    w[i] = f(w[i] - f(d * lr));
  }
}

export class Adam implements Optimizer {
  private t = 0;
  private readonly m = new Map<tf.Variable, tf.Variable>();
  private readonly v = new Map<tf.Variable, tf.Variable>();
  private readonly vMax = new Map<tf.Variable, tf.Variable>();
  constructor(
    public lr: number,
    readonly beta1 = 0.9,
    readonly beta2 = 0.999,
    readonly eps = 1e-8,
    readonly weightDecay = 0,
    readonly amsgrad = false,
  ) {}

  private state(map: Map<tf.Variable, tf.Variable>, v: tf.Variable): tf.Variable {
    let s = map.get(v);
    if (!s) {
      s = tf.variable(tf.zerosLike(v), false);
      map.set(v, s);
    }
    return s;
  }

  step(vars: tf.Variable[], grads: tf.Tensor[]): void {
    this.t++;
    const bc1 = 1 - this.beta1 ** this.t;
    const bc2 = 1 - this.beta2 ** this.t;
    tf.tidy(() => {
      vars.forEach((p, i) => {
        let g = grads[i];
        if (!g) return;
        if (this.weightDecay) g = tf.add(g, tf.mul(p, this.weightDecay));
        const m = this.state(this.m, p);
        const v = this.state(this.v, p);
        m.assign(tf.add(tf.mul(m, this.beta1), tf.mul(g, 1 - this.beta1)));
        v.assign(tf.add(tf.mul(v, this.beta2), tf.mul(tf.square(g), 1 - this.beta2)));
        let vHat: tf.Tensor = v;
        if (this.amsgrad) {
          const vm = this.state(this.vMax, p);
          vm.assign(tf.maximum(vm, v));
          vHat = vm;
        }
        const denom = tf.add(tf.div(tf.sqrt(vHat), Math.sqrt(bc2)), this.eps);
        p.assign(tf.sub(p, tf.mul(tf.div(m, denom), this.lr / bc1)));
      });
    });
  }

  dispose(): void {
    for (const map of [this.m, this.v, this.vMax]) {
      for (const s of map.values()) s.dispose();
      map.clear();
    }
  }
}

/** CosineAnnealingLR(T_max = total, eta_min = 0) evaluated at step `t` (0-based). */
export function cosineLr(base: number, t: number, total: number): number {
  return (base * (1 + Math.cos((Math.PI * t) / Math.max(1, total)))) / 2;
}
