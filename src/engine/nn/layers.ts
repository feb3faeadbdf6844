/**
 * Layers with PyTorch semantics and state_dict names, computed with TensorFlow.js ops in NHWC.
 */
import * as tf from '@tensorflow/tfjs-core';
import { ForwardContext, Module } from './module';
import type { Rng } from '../util/rng';
import { batchNormTrain } from './batchnorm_train';

/** Kaiming-uniform init as PyTorch's default for Conv/Linear (a = sqrt(5)): bound = 1/sqrt(fanIn). */
function uniformInit(shape: number[], fanIn: number, rng: Rng): tf.Tensor {
  const bound = 1 / Math.sqrt(fanIn);
  const n = shape.reduce((a, b) => a * b, 1);
  const data = new Float32Array(n);
  for (let i = 0; i < n; i++) data[i] = rng.uniform(-bound, bound);
  return tf.tensor(data, shape);
}

export interface Conv2dOptions {
  stride?: number;
  padding?: number;
  bias?: boolean;
}

export class Conv2d extends Module {
  readonly kind = 'Conv2d';
  readonly stride: number;
  readonly padding: number;
  readonly weight: tf.Variable;
  readonly bias?: tf.Variable;

  constructor(
    readonly inChannels: number,
    readonly outChannels: number,
    readonly kernelSize: number,
    opts: Conv2dOptions,
    rng: Rng,
  ) {
    super();
    this.stride = opts.stride ?? 1;
    this.padding = opts.padding ?? 0;
    const fanIn = inChannels * kernelSize * kernelSize;
    this.weight = this.addParam('weight', uniformInit([kernelSize, kernelSize, inChannels, outChannels], fanIn, rng), 'conv');
    if (opts.bias ?? true) this.bias = this.addParam('bias', uniformInit([outChannels], fanIn, rng), 'plain');
  }

  protected forwardImpl(x: tf.Tensor4D): tf.Tensor {
    // PyTorch pads symmetrically by `padding`; tfjs takes the same as a number.
    const y = tf.conv2d(x, this.weight as tf.Tensor4D, this.stride, this.padding === 0 ? 'valid' : this.padding);
    return this.bias ? tf.add(y, this.bias) : y;
  }
}

export class Linear extends Module {
  readonly kind = 'Linear';
  readonly weight: tf.Variable;
  readonly bias?: tf.Variable;

  constructor(
    readonly inFeatures: number,
    readonly outFeatures: number,
    rng: Rng,
    bias = true,
  ) {
    super();
    this.weight = this.addParam('weight', uniformInit([inFeatures, outFeatures], inFeatures, rng), 'linear');
    if (bias) this.bias = this.addParam('bias', uniformInit([outFeatures], inFeatures, rng), 'plain');
  }

  protected forwardImpl(x: tf.Tensor): tf.Tensor {
    const y = tf.matMul(x as tf.Tensor2D, this.weight as tf.Tensor2D);
    return this.bias ? tf.add(y, this.bias) : y;
  }
}

/**
 * BatchNorm2d over the channel (last) axis. Training mode normalizes with the biased batch variance and
 * records the running-statistic update (unbiased variance, momentum 0.1) for the trainer to apply after the
 * step. `mask` multiplies gamma and beta per channel (pruning, RNP); `ctx.bnAffineHook` lets ANP perturb them.
 */
export class BatchNorm2d extends Module {
  readonly kind = 'BatchNorm2d';
  readonly weight: tf.Variable;
  readonly bias: tf.Variable;
  readonly runningMean: tf.Variable;
  readonly runningVar: tf.Variable;
  numBatchesTracked = 0;
  /** Per-channel multiplier on gamma and beta; undefined = all ones. Owned by this layer. */
  mask?: tf.Tensor1D;

  constructor(
    readonly numFeatures: number,
    readonly eps = 1e-5,
    /** Weight of a batch's statistics in the running ones; a defense may change it for a phase (NAD's student). */
    public momentum = 0.1,
  ) {
    super();
    this.weight = this.addParam('weight', tf.ones([numFeatures]), 'plain');
    this.bias = this.addParam('bias', tf.zeros([numFeatures]), 'plain');
    this.runningMean = this.addParam('running_mean', tf.zeros([numFeatures]), 'plain', false);
    this.runningVar = this.addParam('running_var', tf.ones([numFeatures]), 'plain', false);
  }

  /** A tensor mask is copied (the caller keeps its own). */
  setMask(mask: Float32Array | tf.Tensor1D | undefined): void {
    const next = mask === undefined ? undefined : tf.keep(mask instanceof tf.Tensor ? mask.clone() : tf.tensor1d(mask));
    this.mask?.dispose();
    this.mask = next;
  }

  protected forwardImpl(x: tf.Tensor4D, ctx: ForwardContext): tf.Tensor {
    let gamma = this.weight as tf.Tensor1D;
    let beta = this.bias as tf.Tensor1D;
    if (this.mask) {
      gamma = tf.mul(gamma, this.mask);
      beta = tf.mul(beta, this.mask);
    }
    if (ctx.bnAffineHook) [gamma, beta] = ctx.bnAffineHook(this, gamma, beta);

    if (ctx.training && !ctx.bnInputStats) {
      // The fast path: one op with a closed-form gradient (see batchnorm_train.ts).
      const { y, mean, variance } = batchNormTrain(x, gamma, beta, this.eps);
      if (ctx.bnUpdates) {
        const n = x.shape[0] * x.shape[1] * x.shape[2];
        const m = this.momentum;
        const unbiased = n > 1 ? n / (n - 1) : 1;
        // Applied by the trainer after the step, outside the gradient tape.
        ctx.bnUpdates.push(() => {
          tf.tidy(() => {
            this.runningMean.assign(tf.add(tf.mul(this.runningMean, 1 - m), tf.mul(mean, m)));
            this.runningVar.assign(tf.add(tf.mul(this.runningVar, 1 - m), tf.mul(variance, m * unbiased)));
          });
          mean.dispose();
          variance.dispose();
          this.numBatchesTracked++;
        });
      } else {
        mean.dispose();
        variance.dispose();
      }
      return y;
    }
    if (ctx.bnInputStats || ctx.training) {
      // Batch statistics that must stay differentiable (GIC and model inversion match them to running stats).
      const { mean, variance } = tf.moments(x, [0, 1, 2]);
      ctx.bnInputStats?.set(this.path, { mean: mean as tf.Tensor1D, variance: variance as tf.Tensor1D });
      if (ctx.training) return tf.batchNorm(x, mean as tf.Tensor1D, variance as tf.Tensor1D, beta, gamma, this.eps);
    }
    if (tf.engine().isTapeOn()) {
      // Eval mode under a gradient tape (GIC, model inversion, adversarial examples, trigger reversal): the same
      // affine map as x * k + c with per-channel k and c. The gradient of tf.batchNorm tiles the scale to the
      // input's full shape, which was the largest single cost of calibration on wasm; here the input gradient
      // is one broadcasting multiply, and gradients to gamma/beta are computed only when something trains them.
      const k = tf.mul(gamma, tf.rsqrt(tf.add(this.runningVar, this.eps)));
      const c = tf.sub(beta, tf.mul(this.runningMean, k));
      return tf.add(tf.mul(x, k), c);
    }
    return tf.batchNorm(x, this.runningMean as tf.Tensor1D, this.runningVar as tf.Tensor1D, beta, gamma, this.eps);
  }

  override dispose(): void {
    super.dispose();
    this.mask?.dispose();
  }
}

export class ReLU extends Module {
  readonly kind = 'ReLU';
  protected forwardImpl(x: tf.Tensor): tf.Tensor {
    return tf.relu(x);
  }
}

export class Identity extends Module {
  readonly kind = 'Identity';
  protected forwardImpl(x: tf.Tensor): tf.Tensor {
    return x;
  }
}

export class MaxPool2d extends Module {
  readonly kind = 'MaxPool2d';
  constructor(
    readonly kernelSize: number,
    readonly stride = kernelSize,
    readonly padding = 0,
  ) {
    super();
  }
  protected forwardImpl(x: tf.Tensor4D): tf.Tensor {
    if (this.padding > 0) {
      // PyTorch pads max pooling with -inf; emulate with a large negative constant.
      const p = this.padding;
      x = tf.pad(x, [[0, 0], [p, p], [p, p], [0, 0]], -3.4e38);
    }
    return tf.maxPool(x, this.kernelSize, this.stride, 'valid');
  }
}

export class AvgPool2d extends Module {
  readonly kind = 'AvgPool2d';
  constructor(
    readonly kernelSize: number,
    readonly stride = kernelSize,
  ) {
    super();
  }
  protected forwardImpl(x: tf.Tensor4D): tf.Tensor {
    return tf.avgPool(x, this.kernelSize, this.stride, 'valid');
  }
}

/** AdaptiveAvgPool2d((1,1)) followed by flattening to [N, C] (how every classifier here uses it). */
export class GlobalAvgPool extends Module {
  readonly kind = 'GlobalAvgPool';
  protected forwardImpl(x: tf.Tensor4D): tf.Tensor {
    return tf.mean(x, [1, 2]);
  }
}

/**
 * Flatten in PyTorch's NCHW order, so that a Linear layer loaded from a PyTorch checkpoint sees its
 * inputs in the order it was trained with.
 */
export class Flatten extends Module {
  readonly kind = 'Flatten';
  protected forwardImpl(x: tf.Tensor): tf.Tensor {
    if (x.rank === 4) {
      const [n, h, w, c] = x.shape;
      return tf.reshape(tf.transpose(x, [0, 3, 1, 2]), [n, c * h * w]);
    }
    return tf.reshape(x, [x.shape[0], -1]);
  }
}

export class Sequential extends Module {
  readonly kind = 'Sequential';
  constructor(layers: Module[] = []) {
    super();
    layers.forEach((l, i) => this.addChild(String(i), l));
  }
  protected forwardImpl(x: tf.Tensor, ctx: ForwardContext): tf.Tensor {
    for (const c of this.children.values()) x = c.forward(x, ctx);
    return x;
  }
}

/**
 * AdaptiveAvgPool2d to a fixed [out, out] grid with PyTorch's bin edges (start = floor(i*H/out),
 * end = ceil((i+1)*H/out)), kept as a 4-D NHWC tensor (a Flatten follows in torchvision's VGG). A 1x1 input
 * is replicated and an evenly divisible one is a plain average pool; other sizes average each bin.
 */
export class AdaptiveAvgPool2d extends Module {
  readonly kind = 'AdaptiveAvgPool2d';
  constructor(readonly outputSize: number) {
    super();
  }
  protected forwardImpl(x: tf.Tensor4D): tf.Tensor {
    const [, h, w] = x.shape;
    const o = this.outputSize;
    if (h === o && w === o) return x;
    if (h === 1 && w === 1) return tf.tile(x, [1, o, o, 1]);
    if (h % o === 0 && w % o === 0) return tf.avgPool(x, [h / o, w / o], [h / o, w / o], 'valid');
    const bins = (n: number) => Array.from({ length: o }, (_, i) => [Math.floor((i * n) / o), Math.ceil(((i + 1) * n) / o)]);
    const rows = bins(h).map(([r0, r1]) =>
      tf.concat(
        bins(w).map(([c0, c1]) => tf.mean(tf.slice(x, [0, r0, c0, 0], [-1, r1 - r0, c1 - c0, -1]), [1, 2], true)),
        2,
      ),
    );
    return tf.concat(rows, 1);
  }
}

/** Dropout: identity in evaluation; in training, PyTorch's inverted dropout with probability p. */
export class Dropout extends Module {
  readonly kind = 'Dropout';
  constructor(readonly p = 0.5) {
    super();
  }
  protected forwardImpl(x: tf.Tensor, ctx: ForwardContext): tf.Tensor {
    return ctx.training && this.p > 0 ? tf.dropout(x, this.p) : x;
  }
}
