/**
 * BatchNorm's closed forms for the training graphs (ort_grad_graph.ts), emitted through the builder's
 * NodeEmitter as ort_conv_ops.ts's convolution rules are: the batch statistics, the input gradient of
 * batch-statistics BatchNorm, and the gradients of a frozen BatchNorm's input mean and variance (side outputs
 * that NPD's polarizer and GIC's BatchNorm distance read). Tensors are NCHW; per-channel values are
 * [1, C, 1, 1]; `invM` is the graph's 1/(N*H*W) for the input.
 */
import type { NodeEmitter } from './ort_conv_ops';

/**
 * The per-channel sum of x (or of its squares) over N, H, W, as [1, C, 1, 1]: first over each image's H x W,
 * then over the batch. ONNX Runtime's reduction over axes 0, 2 and 3 at once adds the N*H*W values of a channel
 * one after another in float32, and at 64 images of 28 x 28 that rounding was most of the training step's error:
 * the loss of the zoo's PreAct-ResNet18 off PyTorch's float64 by 1e-5 of itself (1e-7 with the two stages), the
 * BatchNorm gradients by 0.8% (0.02%), and after one epoch the weights 3.7% of the update away from PyTorch's
 * float64 epoch where PyTorch's own float32 epoch is 1.5% away (0.2% with the two stages;
 * test/unit/ft-step-parity.test.ts).
 */
export function channelSum(g: NodeEmitter, x: string, squares = false): string {
  const shape = g.shape(x);
  const perImage = [shape[0], shape[1], 1, 1];
  // At opset 17 ReduceSum takes its axes as an input, ReduceSumSquare still as an attribute.
  const inner = squares
    ? g.op('ReduceSumSquare', [x], { axes: [2, 3], keepdims: 1 }, perImage)
    : g.op('ReduceSum', [x, g.i64([2, 3])], { keepdims: 1 }, perImage);
  return g.op('ReduceSum', [inner, g.i64([0])], { keepdims: 1 }, [1, shape[1], 1, 1]);
}

/** The per-channel batch mean of x over N, H, W (tf.moments'), x - mean, and the biased variance (one pass over x - mean). */
export function moments(g: NodeEmitter, x: string, invM: string): { mean: string; centered: string; variance: string } {
  const shape = g.shape(x);
  const cShape = [1, shape[1], 1, 1];
  const mean = g.op('Mul', [channelSum(g, x), invM], {}, cShape);
  const centered = g.op('Sub', [x, mean], {}, shape);
  const variance = g.op('Mul', [channelSum(g, centered, true), invM], {}, cShape);
  return { mean, centered, variance };
}

/** 1 / sqrt(variance + eps), per channel. */
export function inverseStd(g: NodeEmitter, variance: string, eps: number): string {
  const cShape = g.shape(variance);
  return g.op('Reciprocal', [g.op('Sqrt', [g.op('Add', [variance, g.scalar(eps)], {}, cShape)], {}, cShape)], {}, cShape);
}

/**
 * d loss / d x of y = (x - mean) * k + beta with the batch's own mean and variance (k = gamma * invstd):
 *   dx = k*dy + xc * c1 + c0,  c1 = -k invstd^2 sum(dy xc)/M,  c0 = -k sum(dy)/M,
 * from the per-channel sums the parameters' gradients need as well.
 */
export function batchNormInputGradient(g: NodeEmitter, dy: string, xc: string, k: string, invstd: string, sumDy: string, sumDyXc: string, invM: string): string {
  const shape = g.shape(dy);
  const cShape = g.shape(k);
  const c1 = g.op('Neg', [g.op('Mul', [g.op('Mul', [k, g.op('Mul', [invstd, invstd], {}, cShape)], {}, cShape), g.op('Mul', [sumDyXc, invM], {}, cShape)], {}, cShape)], {}, cShape);
  const c0 = g.op('Neg', [g.op('Mul', [k, g.op('Mul', [sumDy, invM], {}, cShape)], {}, cShape)], {}, cShape);
  return g.op('Add', [g.op('Mul', [dy, k], {}, shape), g.op('Add', [g.op('Mul', [xc, c1], {}, shape), c0], {}, shape)], {}, shape);
}

/** d loss / d x from d loss / d mean (`dm`): spread as 1/M over every position. */
export function meanGradient(g: NodeEmitter, x: string, dm: string, invM: string): string {
  const cShape = g.shape(dm);
  return g.op('Expand', [g.op('Mul', [dm, invM], {}, cShape), g.op('Shape', [x], {}, [4])], {}, g.shape(x));
}

/** d loss / d x from d loss / d variance (`dv`): 2 (x - mean) / M times it. */
export function varianceGradient(g: NodeEmitter, xc: string, dv: string, invM: string): string {
  return g.op('Mul', [xc, g.op('Mul', [dv, g.op('Mul', [invM, g.scalar(2)], {}, [1])], {}, g.shape(dv))], {}, g.shape(xc));
}
