/**
 * The convolution rules of the training graphs (ort_grad_graph.ts): the convolution itself, on ONNX Runtime's
 * blocked NCHWc kernels where the channels fit the CPU's block, and the weight gradient as matrix products over
 * the whole batch. Both only emit nodes, through the builder's NodeEmitter.
 */
import type { OnnxBuilder } from '../formats/onnx_builder';

type Attrs = Parameters<OnnxBuilder['node']>[2];

/**
 * What the rules (here and in ort_batchnorm_ops.ts) need of a graph builder: a node (of ONNX Runtime's NCHWc
 * domain for nchwcOp, of its contrib domain com.microsoft for msOp), int64 and float constants, shapes.
 */
export interface NodeEmitter {
  op(opType: string, inputs: string[], attrs: Attrs, shape: number[]): string;
  nchwcOp(opType: string, inputs: string[], attrs: Attrs, shape: number[]): string;
  msOp(opType: string, inputs: string[], attrs: Attrs, shape: number[]): string;
  i64(values: number[]): string;
  /** A float32 scalar constant. */
  scalar(v: number): string;
  shape(t: string): number[];
}

export interface ConvAttrs {
  kernel_shape: number[];
  pads: number[];
  strides: number[];
  dilations: number[];
  group: number;
}

/** A Conv2d's geometry (layers.ts's Conv2d has these fields). */
export interface ConvGeometry {
  kernelSize: number;
  stride: number;
  padding: number;
  inChannels: number;
  outChannels: number;
}

/**
 * Conv of `x` with the OIHW kernel `w`, blocks of `B` channels (0: plain Conv). ONNX Runtime runs a Conv in MLAS's blocked NCHWc layout (1.2-1.8x
 * faster here on the zoo's shapes, reorders included) only when its weights are constant, and a training
 * graph feeds them at every step, so where the channels fit the block the graph asks for the blocked kernel
 * itself: the input reordered into blocks (kept as it is when it has fewer channels than a block, which the
 * kernel reads directly), the kernel rearranged into MLAS's filter layout by a reshape and a transpose (OIHW
 * to [O/B, I/B, kh, kw, Bi, Bo], or [O/B, I, kh, kw, Bo]), and the output reordered back, so that every other
 * rule keeps plain NCHW.
 */
export function convolution(g: NodeEmitter, B: number, x: string, w: string, bias: string | undefined, attrs: ConvAttrs, outShape: number[]): string {
  const [cout, cin, kh, kw] = g.shape(w);
  const { kernel_shape, pads, strides, dilations, group } = attrs;
  const plain = { kernel_shape, pads, strides, dilations, group };
  if (!(B > 1 && cout % B === 0 && (cin % B === 0 || cin < B))) return g.op('Conv', bias ? [x, w, bias] : [x, w], plain, outShape);
  let filter: string;
  let input = x;
  if (cin < B) {
    const split = g.op('Reshape', [w, g.i64([cout / B, B, cin, kh, kw])], {}, [cout / B, B, cin, kh, kw]);
    filter = g.op('Transpose', [split], { perm: [0, 2, 3, 4, 1] }, [cout / B, cin, kh, kw, B]);
  } else {
    const split = g.op('Reshape', [w, g.i64([cout / B, B, cin / B, B, kh, kw])], {}, [cout / B, B, cin / B, B, kh, kw]);
    filter = g.op('Transpose', [split], { perm: [0, 2, 4, 5, 3, 1] }, [cout / B, cin / B, kh, kw, B, B]);
    input = g.nchwcOp('ReorderInput', [x], {}, g.shape(x));
  }
  filter = g.op('Reshape', [filter, g.i64([cout, cin, kh, kw])], {}, [cout, cin, kh, kw]);
  const blocked = g.nchwcOp('Conv', bias ? [input, filter, bias] : [input, filter], plain, outShape);
  return g.nchwcOp('ReorderOutput', [blocked], { channels: cout }, outShape);
}

/**
 * dW[o, i, a, b] = sum over batch and output positions of dy[n, o, y, x] * xpad[n, i, y*s + a, x*s + b], as
 * matrix products, one per kernel offset (a, b), in one of two forms:
 *
 * - over the whole batch: the padded input with batch and channels swapped, [in, N, h+2p, w+2p], gives the
 *   shifted (strided) view of that offset as a matrix [in, N*ho*wo] (one copy of rows), times dy as
 *   [out, N*ho*wo] transposed: [in, out]. Nothing of the size of the unfolded input is built, and no per-image
 *   partial sums.
 * - per image (`perImage`, large feature maps): the shifted view of the padded input as it is, [N, in, ho*wo],
 *   times each image's dy transposed in one batched product (ONNX Runtime's FusedMatMul), [N, in, out], summed
 *   over the batch. No transposes of x and dy; on 28x28 and 14x14 maps of 16-32 channels, 15-20% faster than
 *   the first form, on 7x7 and 4x4 maps of 64-128 channels 10-35% slower (scratch benchmark, one and two threads).
 *
 * The k*k products stacked are the HWIO gradient.
 */
export function convWeightGradient(g: NodeEmitter, x: string, dy: string, m: ConvGeometry, [h, w]: number[], [ho, wo]: number[], perImage = false): string {
  const { kernelSize: k, stride: s, padding: p, inChannels: cin, outChannels: cout } = m;
  const n = g.shape(x)[0];
  // The product's rows must be at least as many as its columns. MLAS splits a GEMM over threads along the
  // longer of the two, and when it splits the columns, each thread's block of them sets how the long inner
  // dimension (N*ho*wo) is cut into partial sums: the gradient would then depend on the thread count. So
  // where out > in the product is taken transposed (dy rows times input rows) and turned back. (A batched
  // product gives each image's GEMM its own thread once the batch has at least as many images as there are
  // threads; below that MLAS splits them the same way, so the rule holds for both forms.)
  const wide = cout > cin;
  const parts: string[] = [];
  if (perImage) {
    let xp = x;
    if (p) xp = g.op('Pad', [x, g.i64([0, 0, p, p, 0, 0, p, p])], {}, [n, cin, h + 2 * p, w + 2 * p]);
    const dyImages = g.op('Reshape', [dy, g.i64([0, cout, ho * wo])], {}, [n, cout, ho * wo]);
    for (let a = 0; a < k; a++) {
      for (let b = 0; b < k; b++) {
        const whole = s === 1 && ho === h + 2 * p && wo === w + 2 * p;
        const view = whole ? xp : g.op('Slice', [xp, g.i64([a, b]), g.i64([a + s * (ho - 1) + 1, b + s * (wo - 1) + 1]), g.i64([2, 3]), g.i64([s, s])], {}, [n, cin, ho, wo]);
        const images = g.op('Reshape', [view, g.i64([0, cin, ho * wo])], {}, [n, cin, ho * wo]);
        const product = wide ? g.msOp('FusedMatMul', [dyImages, images], { transB: 1 }, [n, cout, cin]) : g.msOp('FusedMatMul', [images, dyImages], { transB: 1 }, [n, cin, cout]);
        parts.push(g.op('ReduceSum', [product, g.i64([0])], { keepdims: 0 }, wide ? [cout, cin] : [cin, cout]));
      }
    }
  } else {
    let xt = g.op('Transpose', [x], { perm: [1, 0, 2, 3] }, [cin, n, h, w]);
    if (p) xt = g.op('Pad', [xt, g.i64([0, 0, p, p, 0, 0, p, p])], {}, [cin, n, h + 2 * p, w + 2 * p]);
    const dyRows = g.op('Reshape', [g.op('Transpose', [dy], { perm: [1, 0, 2, 3] }, [cout, n, ho, wo]), g.i64([cout, -1])], {}, [cout, -1]);
    for (let a = 0; a < k; a++) {
      for (let b = 0; b < k; b++) {
        const whole = s === 1 && ho === h + 2 * p && wo === w + 2 * p;
        const view = whole ? xt : g.op('Slice', [xt, g.i64([a, b]), g.i64([a + s * (ho - 1) + 1, b + s * (wo - 1) + 1]), g.i64([2, 3]), g.i64([s, s])], {}, [cin, n, ho, wo]);
        const rows = g.op('Reshape', [view, g.i64([cin, -1])], {}, [cin, -1]);
        parts.push(wide ? g.op('Gemm', [dyRows, rows], { transB: 1 }, [cout, cin]) : g.op('Gemm', [rows, dyRows], { transB: 1 }, [cin, cout]));
      }
    }
  }
  if (wide) {
    const stacked = parts.length === 1 ? parts[0] : g.op('Concat', parts, { axis: 0 }, [k * k * cout, cin]);
    const kOI = g.op('Reshape', [stacked, g.i64([k * k, cout, cin])], {}, [k * k, cout, cin]);
    return g.op('Reshape', [g.op('Transpose', [kOI], { perm: [0, 2, 1] }, [k * k, cin, cout]), g.i64([k, k, cin, cout])], {}, [k, k, cin, cout]);
  }
  const stacked = parts.length === 1 ? parts[0] : g.op('Concat', parts, { axis: 0 }, [k * k * cin, cout]);
  return g.op('Reshape', [stacked, g.i64([k, k, cin, cout])], {}, [k, k, cin, cout]);
}
