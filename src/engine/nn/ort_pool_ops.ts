/**
 * The pooling and flattening rules of the training graphs (ort_grad_graph.ts): each emits its forward node and
 * records its backward rule on the builder's tape, through the RuleHost the builder hands them, as
 * ort_conv_ops.ts's and ort_batchnorm_ops.ts's rules emit through its NodeEmitter.
 */
import type { MaxPool2d } from './layers';
import type { NodeEmitter } from './ort_conv_ops';
import { OrtGradUnsupported } from './ort_grad_contract';

/** What a layer rule needs of the graph builder besides nodes: fresh names and its tape of backward rules. */
export interface RuleHost extends NodeEmitter {
  /** A tensor name not used yet, based on `base`. */
  fresh(base: string): string;
  /** Record the backward rule of output `y`; it runs only when `y` received a gradient. */
  back(y: string, inputs: string[], rule: (dy: string) => void): void;
  /** Add `g` to the gradient of `t` (where `t` needs one). */
  addGrad(t: string, g: string): void;
}

export function maxPool(h: RuleHost, m: MaxPool2d, x: string): string {
  const [n, c, hi, wi] = h.shape(x);
  const { kernelSize: k, stride: s, padding: p } = m;
  const ho = Math.floor((hi + 2 * p - k) / s) + 1;
  const wo = Math.floor((wi + 2 * p - k) / s) + 1;
  const indices = h.fresh('maxpool_indices');
  const y = h.op('MaxPool', [x], { kernel_shape: [k, k], pads: [p, p, p, p], strides: [s, s] }, [n, c, ho, wo], [h.fresh('maxpool_output'), indices]);
  h.back(y, [x], (dy) => {
    // MaxPool's indices address the flattened input, batch and channel included.
    const flatShape = [-1];
    const zeros = h.op('ConstantOfShape', [h.op('Reshape', [h.op('Size', [x], {}, []), h.i64([1])], {}, [1])], {}, flatShape);
    const flatIdx = h.op('Reshape', [indices, h.i64([-1])], {}, flatShape);
    const flatDy = h.op('Reshape', [dy, h.i64([-1])], {}, flatShape);
    // Overlapping windows can pick the same position twice: add, do not overwrite.
    const scattered = h.op('ScatterElements', [zeros, flatIdx, flatDy], { axis: 0, reduction: 'add' }, flatShape);
    h.addGrad(x, h.op('Reshape', [scattered, h.op('Shape', [x], {}, [4])], {}, [n, c, hi, wi]));
  });
  return y;
}

/** Average over k x k windows with stride k (AvgPool2d(k) and the even AdaptiveAvgPool2d). */
export function avgPool(h: RuleHost, x: string, k: number): string {
  const [n, c, hi, wi] = h.shape(x);
  if (hi % k || wi % k) throw new OrtGradUnsupported('average pools that do not tile the input');
  const y = h.op('AveragePool', [x], { kernel_shape: [k, k], strides: [k, k] }, [n, c, hi / k, wi / k]);
  h.back(y, [x], (dy) => {
    // Each input position receives dy/k^2 of its window: repeat every output k times along both axes.
    const spread = h.op('Reshape', [dy, h.i64([0, 0, hi / k, 1, wi / k, 1])], {}, [n, c, hi / k, 1, wi / k, 1]);
    const tiled = h.op('Expand', [spread, h.i64([1, 1, hi / k, k, wi / k, k])], {}, [n, c, hi / k, k, wi / k, k]);
    const dx = h.op('Reshape', [tiled, h.i64([0, 0, hi, wi])], {}, [n, c, hi, wi]);
    h.addGrad(x, h.op('Mul', [dx, h.scalar(1 / (k * k))], {}, [n, c, hi, wi]));
  });
  return y;
}

export function globalAvgPool(h: RuleHost, x: string): string {
  const [n, c, hi, wi] = h.shape(x);
  const y = h.op('ReduceMean', [x], { axes: [2, 3], keepdims: 0 }, [n, c]);
  h.back(y, [x], (dy) => {
    const spread = h.op('Reshape', [dy, h.i64([0, 0, 1, 1])], {}, [n, c, 1, 1]);
    const tiled = h.op('Expand', [spread, h.op('Shape', [x], {}, [4])], {}, [n, c, hi, wi]);
    h.addGrad(x, h.op('Mul', [tiled, h.scalar(1 / (hi * wi))], {}, [n, c, hi, wi]));
  });
  return y;
}

export function flatten(h: RuleHost, x: string): string {
  const shape = h.shape(x);
  if (shape.length === 2) return x;
  const y = h.op('Flatten', [x], { axis: 1 }, [shape[0], shape.slice(1).reduce((a, c) => a * c, 1)]);
  h.back(y, [x], (dy) => h.addGrad(x, h.op('Reshape', [dy, h.op('Shape', [x], {}, [shape.length])], {}, shape)));
  return y;
}
