/**
 * A whole GIC step as one ONNX graph (gic.ts): g's network h on the raw pixels, plus the input-independent term,
 * the bound (L_inf: delta * tanh(h / delta); L2: h scaled into the ball of radius delta per image), the clip to
 * [0, 1], the victim's frozen forward pass with every BatchNorm's input batch statistics, the loss
 * CE + lambdaBn * sum over BatchNorms of ||mean - running_mean||^2 + ||var - running_var||^2, and the backward
 * pass to h's weights and the term. The victim's weights are inputs without gradients.
 *
 * One ONNX Runtime call a step, where the split graphs it replaces took four (h forward, victim forward, victim
 * backward, h backward) with the bound, the clip and the loss on the backend in between, and copied every saved
 * activation out of ONNX Runtime and back in. The rules here mirror TensorFlow.js's gradients of the same
 * operations (gic.ts's backend path), so both paths train g alike: clipByValue passes the gradient where
 * 0 <= x + r <= 1, minimum(1, q) passes it to q only where q < 1.
 *
 * Inputs: `x` (NHWC pixels in [0, 1]), `target` (one-hot [N, classes]), `inv_batch`, h's parameters as
 * `gic/<key>`, the term as `gic/t` ([H, W, C]), the victim's parameters under their own keys. Outputs: `loss`,
 * `logits` and `grad/gic/...` for each of g's parameters.
 */
import { onnx } from 'onnx-proto';
import type * as tf from '@tensorflow/tfjs-core';
import type { Model } from './model';
import type { Module, Param } from './module';
import { GradBuilder } from './ort_grad_graph';
import { type GradGraph, type GraphNet } from './ort_grad_contract';

const T = onnx.TensorProto.DataType;

/** What the graph needs of g (gic.ts's GicNet). */
export interface CalibrationFront {
  /** The residual network h (NCHW in, the input's shape out). */
  h: Module;
  /** The input-independent term, [H, W, C] like the images, when g has one. */
  globalTerm?: tf.Variable;
  delta: number;
  norm: 'inf' | '2';
  /** Weight of the BatchNorm-statistics term; 0 leaves it out. */
  lambdaBn: number;
}

/** The key prefix of g's parameters among the graph's inputs. */
export const GIC_PREFIX = 'gic/';
export const GIC_TERM_KEY = 'gic/t';

/** The victim with g in front, as the graph runner sees it: its inputs name g's parameters and the victim's. */
export function calibrationNet(victim: Model, front: CalibrationFront): GraphNet {
  const term: Array<[string, Param]> = front.globalTerm ? [[GIC_TERM_KEY, { variable: front.globalTerm, layout: 'plain', trainable: true } as Param]] : [];
  return {
    root: victim.root,
    inputShape: victim.inputShape,
    numClasses: victim.numClasses,
    normalize: victim.normalize,
    spec: { arch: `gic-${victim.spec.arch}` },
    namedParams: () => [...front.h.namedParams().map(([k, p]): [string, Param] => [GIC_PREFIX + k, p]), ...term, ...victim.root.namedParams()],
  };
}

class CalibrationBuilder extends GradBuilder {
  constructor(
    private readonly victim: Model,
    private readonly front: CalibrationFront,
    nchwcBlock: number,
  ) {
    super(calibrationNet(victim, front), { bnTrain: false, loss: 'ce', paramGrads: true, inputStats: front.lambdaBn > 0, nchwcBlock });
  }

  /** h(x) + t: h's parameters and the term get gradients, under the `gic/` prefix. */
  private residualInput(x0: string): string {
    const [, c, h, w] = this.b.shape(x0);
    this.paramGrads = true;
    this.paramPrefix = GIC_PREFIX;
    const hx = this.module(this.front.h, x0);
    this.paramPrefix = '';
    this.paramGrads = false;
    if (!this.front.globalTerm) return hx;
    this.b.reserve(GIC_TERM_KEY);
    this.b.shapes.set(GIC_TERM_KEY, [h, w, c]);
    this.paramInputs.push({ key: GIC_TERM_KEY, shape: [h, w, c] });
    this.live.add(GIC_TERM_KEY);
    const t = this.op('Transpose', [this.op('Reshape', [GIC_TERM_KEY, this.i64([1, h, w, c])], {}, [1, h, w, c])], { perm: [0, 3, 1, 2] }, [1, c, h, w]);
    const y = this.op('Add', [hx, t], {}, [-1, c, h, w]);
    this.back(y, [hx, GIC_TERM_KEY], (dy) => {
      this.addGrad(hx, dy);
      // The term is broadcast over the batch: its gradient is the batch sum, back in [H, W, C].
      const summed = this.op('ReduceSum', [dy, this.i64([0])], { keepdims: 1 }, [1, c, h, w]);
      this.addGrad(GIC_TERM_KEY, this.op('Reshape', [this.op('Transpose', [summed], { perm: [0, 2, 3, 1] }, [1, h, w, c]), this.i64([h, w, c])], {}, [h, w, c]));
    });
    return y;
  }

  /** r = bound(pre): delta * tanh(pre / delta), or pre scaled into the L2 ball per image. */
  private bounded(pre: string): string {
    const shape = this.b.shape(pre);
    const d = this.front.delta;
    if (this.front.norm === 'inf') {
      const th = this.op('Tanh', [this.op('Mul', [pre, this.scalar(1 / d)], {}, shape)], {}, shape);
      const r = this.op('Mul', [th, this.scalar(d)], {}, shape);
      this.back(r, [pre], (dr) => {
        const slope = this.op('Sub', [this.scalar(1), this.op('Mul', [th, th], {}, shape)], {}, shape);
        this.addGrad(pre, this.op('Mul', [dr, slope], {}, shape));
      });
      return r;
    }
    const perImage = [shape[0], 1, 1, 1];
    const s = this.op('Sqrt', [this.op('Add', [this.op('ReduceSumSquare', [pre], { axes: [1, 2, 3], keepdims: 1 }, perImage), this.scalar(1e-12)], {}, perImage)], {}, perImage);
    const q = this.op('Div', [this.scalar(d), s], {}, perImage);
    const scale = this.op('Min', [q, this.scalar(1)], {}, perImage);
    const r = this.op('Mul', [pre, scale], {}, shape);
    this.back(r, [pre], (dr) => {
      // d pre = dr * scale + pre * (d scale / d q) * (d q / d pre), with d q / d pre = -q pre / s^2 and the
      // minimum passing the gradient to q only where q < 1.
      const dScale = this.op('ReduceSum', [this.op('Mul', [dr, pre], {}, shape), this.i64([1, 2, 3])], { keepdims: 1 }, perImage);
      const inside = this.op('Cast', [this.op('Less', [q, this.scalar(1)], {}, perImage)], { to: T.FLOAT }, perImage);
      const factor = this.op('Neg', [this.op('Div', [this.op('Mul', [this.op('Mul', [dScale, inside], {}, perImage), q], {}, perImage), this.op('Mul', [s, s], {}, perImage)], {}, perImage)], {}, perImage);
      this.addGrad(pre, this.op('Add', [this.op('Mul', [dr, scale], {}, shape), this.op('Mul', [pre, factor], {}, shape)], {}, shape));
    });
    return r;
  }

  /** clip(x + r, 0, 1), passing the gradient where the sum lies in [0, 1] (x itself has none). */
  private clipped(x0: string, r: string): string {
    const shape = this.b.shape(r);
    const v = this.op('Add', [x0, r], {}, shape);
    const g = this.op('Clip', [v, this.scalar(0), this.scalar(1)], {}, shape);
    this.back(g, [r], (dg) => {
      const within = this.op('And', [this.op('GreaterOrEqual', [v, this.scalar(0)], {}, shape), this.op('LessOrEqual', [v, this.scalar(1)], {}, shape)], {}, shape);
      this.addGrad(r, this.op('Mul', [dg, this.op('Cast', [within], { to: T.FLOAT }, shape)], {}, shape));
    });
    return g;
  }

  /** The victim's normalization, with its gradient (a division by std). */
  private normalized(g: string): string {
    const norm = this.victim.normalize;
    if (!norm) return g;
    const shape = this.b.shape(g);
    const c = shape[1];
    const per = (v: number[]) => Float32Array.from({ length: c }, (_, i) => v[v.length === 1 ? 0 : i]);
    const std = this.b.initializer('normalize.std', [1, c, 1, 1], per(norm.std));
    const y = this.op('Div', [this.op('Sub', [g, this.b.initializer('normalize.mean', [1, c, 1, 1], per(norm.mean))], {}, shape), std], {}, shape);
    this.back(y, [g], (dy) => this.addGrad(g, this.op('Div', [dy, std], {}, shape)));
    return y;
  }

  buildCalibration(): GradGraph {
    const [h, w, c] = this.victim.inputShape;
    const k = this.victim.numClasses;
    for (const name of ['x', 'target', 'inv_batch', 'loss', 'logits']) this.b.reserve(name);
    this.b.shapes.set('x', [-1, h, w, c]);
    this.b.shapes.set('target', [-1, k]);
    this.b.shapes.set('inv_batch', [1]);
    const x0 = this.op('Transpose', ['x'], { perm: [0, 3, 1, 2] }, [-1, c, h, w]);
    const g = this.clipped(x0, this.bounded(this.residualInput(x0)));
    const logits = this.module(this.victim.root, this.normalized(g));
    // Cross-entropy with the seed of the training step's graph.
    const logProbs = this.op('LogSoftmax', [logits], { axis: 1 }, [-1, k]);
    const perImage = this.op('ReduceSum', [this.op('Mul', ['target', logProbs], {}, [-1, k]), this.i64([1])], { keepdims: 0 }, [-1]);
    let loss = this.op('Neg', [this.op('ReduceMean', [perImage], { axes: [0], keepdims: 0 }, [])], {}, []);
    this.grads.set(logits, this.op('Mul', [this.op('Sub', [this.op('Exp', [logProbs], {}, [-1, k]), 'target'], {}, [-1, k]), 'inv_batch'], {}, [-1, k]));
    // The BatchNorm term: squared distances of each input's batch statistics to the running ones (the
    // running statistics are the victim's inputs `<path>.running_mean` / `.running_var`); seeds 2 lambda (s - r).
    const lambda = this.front.lambdaBn;
    for (const st of this.inputStatTensors) {
      const cShape = [1, st.channels, 1, 1];
      for (const [t, running] of [[st.mean, `${st.path}.running_mean`], [st.variance, `${st.path}.running_var`]] as const) {
        const diff = this.op('Sub', [t, this.op('Reshape', [running, this.i64(cShape)], {}, cShape)], {}, cShape);
        loss = this.op('Add', [loss, this.op('Mul', [this.op('ReduceSumSquare', [diff], { keepdims: 0 }, []), this.scalar(lambda)], {}, [])], {}, []);
        this.grads.set(t, this.op('Mul', [diff, this.scalar(2 * lambda)], {}, cShape));
      }
    }
    this.op('Identity', [loss], {}, [], ['loss']);
    this.op('Identity', [logits], {}, [-1, k], ['logits']);
    for (let i = this.tape.length - 1; i >= 0; i--) this.tape[i]();
    const gradOutputs: Array<{ key: string; shape: number[] }> = [];
    for (const { key, shape } of this.paramInputs) {
      if (!key.startsWith(GIC_PREFIX)) continue;
      const grad = this.grads.get(key) ?? this.op('Mul', [key, this.scalar(0)], {}, shape);
      this.op('Identity', [grad], {}, shape, [`grad/${key}`]);
      gradOutputs.push({ key, shape });
    }
    const info = (name: string, shape: number[]) =>
      onnx.ValueInfoProto.create({ name, type: { tensorType: { elemType: T.FLOAT, shape: { dim: shape.map((dim) => (dim < 0 ? { dimParam: 'N' } : { dimValue: dim })) } } } });
    const graph = onnx.GraphProto.create({
      name: `gic-${this.victim.spec.arch}-step`,
      node: this.b.nodes,
      initializer: this.b.initializers,
      input: [info('x', [-1, h, w, c]), info('target', [-1, k]), info('inv_batch', [1]), ...this.paramInputs.map((p) => info(p.key, p.shape))],
      output: [info('loss', []), info('logits', [-1, k]), ...gradOutputs.map((o) => info(`grad/${o.key}`, o.shape))],
    });
    const bytes = onnx.ModelProto.encode(onnx.ModelProto.create({ irVersion: 8, opsetImport: this.opsetImport(), producerName: 'backdoor-audit', graph })).finish();
    return {
      bytes,
      paramInputs: this.paramInputs,
      gradKeys: gradOutputs.map((o) => o.key),
      bnPaths: [],
      bnSpatial: new Map(),
      bnScales: [],
      taps: [],
      inputStats: [],
      outputShape: [-1, k],
    };
  }
}

/** GIC's step graph for g in front of `victim` (throws OrtGradUnsupported where the victim has a module without a rule). */
export function buildCalibrationGraph(victim: Model, front: CalibrationFront, nchwcBlock = 0): GradGraph {
  return new CalibrationBuilder(victim, front, nchwcBlock).buildCalibration();
}
