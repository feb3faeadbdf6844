/**
 * SAU's unlearning loss for the training graphs (ort_grad_graph.ts), emitted through the builder's NodeEmitter as
 * the convolution, BatchNorm and attention rules are: the step's loss and its gradient with respect to the logits
 * of a paired batch, so that the unlearning step is one ONNX Runtime run.
 */
import type { NodeEmitter } from './ort_conv_ops';

/**
 * Over a paired batch of 2n rows (x, then x'): CE = -sum(target * logp) / n (target is zero on the x' rows) and
 * SAR = sum over rows of w * -log(1 + 1e-6 - clip(pos, 0.001, 1)) / n, with pos = sum(ref * p) and w = sum(ref)
 * (ref: one-hot on the poisoned x' rows, zero elsewhere); loss = CE + lambda * SAR, defenses/sau.ts's
 * unlearningLoss. Gradient with respect to the logits: (p * sum(target) - target) / n for CE; for SAR,
 * lambda / n * w * mask / (1 + 1e-6 - clip(pos)) * p * (ref - pos), mask = 1 where 0.001 <= pos <= 1 (the clip
 * passes its gradient there, as tf.clipByValue does). `perImage` is sum(target * logp) per row.
 */
export function unlearningLoss(g: NodeEmitter, logProbs: string, perImage: string, target: string, ref: string, invBatch: string, lambda: number): { loss: string; dLogits: string } {
  const rows = g.shape(logProbs);
  const col = [-1, 1];
  const p = g.op('Exp', [logProbs], {}, rows);
  const ce = g.op('Neg', [g.op('Mul', [g.op('ReduceSum', [perImage, g.i64([0])], { keepdims: 0 }, []), invBatch], {}, [1])], {}, [1]);
  const pos = g.op('ReduceSum', [g.op('Mul', [ref, p], {}, rows), g.i64([1])], { keepdims: 1 }, col);
  const weight = g.op('ReduceSum', [ref, g.i64([1])], { keepdims: 1 }, col);
  const clipped = g.op('Clip', [pos, g.scalar(0.001), g.scalar(1)], {}, col);
  const room = g.op('Sub', [g.scalar(1 + 1e-6), clipped], {}, col);
  const sar = g.op('ReduceSum', [g.op('Mul', [g.op('Neg', [g.op('Log', [room], {}, col)], {}, col), weight], {}, col), g.i64([0, 1])], { keepdims: 0 }, []);
  const loss = g.op('Reshape', [g.op('Add', [ce, g.op('Mul', [g.op('Mul', [sar, invBatch], {}, [1]), g.scalar(lambda)], {}, [1])], {}, [1]), g.i64([])], {}, []);
  const dCe = g.op('Mul', [g.op('Sub', [g.op('Mul', [p, g.op('ReduceSum', [target, g.i64([1])], { keepdims: 1 }, col)], {}, rows), target], {}, rows), invBatch], {}, rows);
  const inside = g.op('Cast', [g.op('And', [g.op('GreaterOrEqual', [pos, g.scalar(0.001)], {}, col), g.op('LessOrEqual', [pos, g.scalar(1)], {}, col)], {}, col)], { to: 1 }, col);
  const scale = g.op('Mul', [g.op('Div', [g.op('Mul', [weight, inside], {}, col), room], {}, col), g.op('Mul', [invBatch, g.scalar(lambda)], {}, [1])], {}, col);
  const dSar = g.op('Mul', [g.op('Mul', [p, g.op('Sub', [ref, pos], {}, rows)], {}, rows), scale], {}, rows);
  return { loss, dLogits: g.op('Add', [dCe, dSar], {}, rows) };
}
