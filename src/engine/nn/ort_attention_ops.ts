/**
 * NAD's attention distance for the training graphs (ort_grad_graph.ts), emitted through the builder's
 * NodeEmitter as ort_conv_ops.ts's and ort_batchnorm_ops.ts's rules are.
 */
import type { NodeEmitter } from './ort_conv_ops';

/**
 * beta * mean over N*H*W of (A - At)^2 for a tap `t` (NCHW [N, C, H, W], or [N, C] pooled) and the teacher's
 * map `teacher` [N, H*W]: A = a / (||a|| + 1e-6) per image, a = the sum over channels of t^2 at each position
 * (defenses/nad.ts's attentionMap). `gradient` emits the term's gradient with respect to t: with
 * g = dL/dA = 2 beta (A - At) / (N*H*W) and r = ||a|| + 1e-6, dL/da = g / r - a (g . a) / (r^2 ||a||), and
 * dL/dt = 2 t dL/da (the map's value at each channel). `invBatch` is the graph's 1/N.
 */
export function attentionDistance(g: NodeEmitter, t: string, teacher: string, beta: number, invBatch: string): { term: string; gradient: () => string } {
  const shape = g.shape(t);
  const maps = shape.length === 4;
  const hw = maps ? shape[2] * shape[3] : 1;
  const rows = [-1, hw];
  const col = [-1, 1];
  const energy = g.op('ReduceSum', [g.op('Mul', [t, t], {}, shape), g.i64([1])], { keepdims: 0 }, maps ? [shape[0], shape[2], shape[3]] : [shape[0]]);
  const a = g.op('Reshape', [energy, g.i64(rows)], {}, rows);
  const norm = g.op('Sqrt', [g.op('ReduceSumSquare', [a], { axes: [1], keepdims: 1 }, col)], {}, col);
  const r = g.op('Add', [norm, g.scalar(1e-6)], {}, col);
  const diff = g.op('Sub', [g.op('Div', [a, r], {}, rows), teacher], {}, rows);
  const mse = g.op('ReduceMean', [g.op('Mul', [diff, diff], {}, rows)], { axes: [0, 1], keepdims: 0 }, []);
  const term = g.op('Mul', [mse, g.scalar(beta)], {}, []);
  const gradient = () => {
    const dA = g.op('Mul', [diff, g.op('Mul', [invBatch, g.scalar((2 * beta) / hw)], {}, [1])], {}, rows);
    const dot = g.op('ReduceSum', [g.op('Mul', [dA, a], {}, rows), g.i64([1])], { keepdims: 1 }, col);
    const coef = g.op('Div', [dot, g.op('Mul', [g.op('Mul', [r, r], {}, col), norm], {}, col)], {}, col);
    const da = g.op('Sub', [g.op('Div', [dA, r], {}, rows), g.op('Mul', [a, coef], {}, rows)], {}, rows);
    const spread = g.op('Reshape', [da, g.i64(maps ? [-1, 1, shape[2], shape[3]] : [-1, 1])], {}, maps ? [-1, 1, shape[2], shape[3]] : [-1, 1]);
    return g.op('Mul', [g.op('Mul', [t, spread], {}, shape), g.scalar(2)], {}, shape);
  };
  return { term, gradient };
}
