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
  /** A node; `outputs` names its outputs where the rule needs more than the first (default: one, fresh). */
  op(opType: string, inputs: string[], attrs: Attrs, shape: number[], outputs?: string[]): string;
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
 * A convolution's kernel as the module holds it, HWIO [k, k, in, out]. `flipped` reads it as the kernel of the
 * stride-1 input gradient: turned by 180 degrees, with its in and out axes swapped.
 */
export interface HwioKernel {
  hwio: string;
  flipped: boolean;
}

/**
 * Conv of `x` with `kernel`, blocks of `B` channels (0: plain Conv). ONNX Runtime runs a Conv in MLAS's blocked NCHWc layout (1.2-1.8x
 * faster here on the zoo's shapes, reorders included) only when its weights are constant, and a training
 * graph feeds them at every step, so where the channels fit the block the graph asks for the blocked kernel
 * itself: the input reordered into blocks (kept as it is when it has fewer channels than a block, which the
 * kernel reads directly), the kernel rearranged into MLAS's filter layout ([O/B, I/B, kh, kw, Bi, Bo], or
 * [O/B, I, kh, kw, Bo]) by a reshape and one transpose straight from HWIO, and the output reordered back, so
 * that every other rule keeps plain NCHW. From HWIO the forward kernel's innermost axis (Bo) is contiguous, so
 * ONNX Runtime's Transpose copies runs of B floats; through OIHW it took two transposes, the second moving one
 * float at a time (a 128x128x3x3 kernel: 0.63 ms).
 */
export function convolution(g: NodeEmitter, B: number, x: string, kernel: HwioKernel, bias: string | undefined, attrs: ConvAttrs, outShape: number[]): string {
  const [kh, kw, hin, hout] = g.shape(kernel.hwio);
  // The input gradient's kernel as HWIO of its own: in and out swapped (a transpose of the two inner axes),
  // rows and columns reversed (HWIO's leading axes, so runs of in*out floats).
  const hwio = kernel.flipped
    ? g.op('Slice', [g.op('Transpose', [kernel.hwio], { perm: [0, 1, 3, 2] }, [kh, kw, hout, hin]), g.i64([-1, -1]), g.i64([-(kh + 1), -(kw + 1)]), g.i64([0, 1]), g.i64([-1, -1])], {}, [kh, kw, hout, hin])
    : kernel.hwio;
  const [cin, cout] = kernel.flipped ? [hout, hin] : [hin, hout];
  const { kernel_shape, pads, strides, dilations, group } = attrs;
  const plain = { kernel_shape, pads, strides, dilations, group };
  if (!(B > 1 && cout % B === 0 && (cin % B === 0 || cin < B))) {
    const oihw = g.op('Transpose', [hwio], { perm: [3, 2, 0, 1] }, [cout, cin, kh, kw]);
    return g.op('Conv', bias ? [x, oihw, bias] : [x, oihw], plain, outShape);
  }
  let filter: string;
  let input = x;
  if (cin < B) {
    const split = g.op('Reshape', [hwio, g.i64([kh, kw, cin, cout / B, B])], {}, [kh, kw, cin, cout / B, B]);
    filter = g.op('Transpose', [split], { perm: [3, 2, 0, 1, 4] }, [cout / B, cin, kh, kw, B]);
  } else {
    const split = g.op('Reshape', [hwio, g.i64([kh, kw, cin / B, B, cout / B, B])], {}, [kh, kw, cin / B, B, cout / B, B]);
    filter = g.op('Transpose', [split], { perm: [4, 2, 0, 1, 3, 5] }, [cout / B, cin / B, kh, kw, B, B]);
    input = g.nchwcOp('ReorderInput', [x], {}, g.shape(x));
  }
  filter = g.op('Reshape', [filter, g.i64([cout, cin, kh, kw])], {}, [cout, cin, kh, kw]);
  const blocked = g.nchwcOp('Conv', bias ? [input, filter, bias] : [input, filter], plain, outShape);
  return g.nchwcOp('ReorderOutput', [blocked], { channels: cout }, outShape);
}

/**
 * dW[o, i, a, b] = sum over batch and output positions of dy[n, o, y, x] * xpad[n, i, y*s + a, x*s + b], as
 * one matrix product over the whole batch.
 *
 * The input and dy are turned once into [channels, rows, columns, batch] (the input padded), so that every
 * input position is a contiguous run of N floats. One Gather along the merged rows-and-columns axis then lays
 * out all k*k offsets at once, [in, k*k, ho*wo, N] (im2col with the batch innermost), and that, as a matrix [in*k*k,
 * ho*wo*N], times dy as [out, ho*wo*N] transposed is the gradient as [in, k, k, out]. ONNX Runtime's Gather
 * copies its runs of N floats on every thread of the session, where Slice (one per offset, the former form)
 * copies on one; and one product reads dy once where k*k products each packed it again, and has in*k*k rows
 * to divide among threads where a product per offset had in. On the zoo's width-16 PreAct-ResNet18 (1x28x28,
 * batch 128, 2 threads; `scripts/profile-ort-step.ts preact16-28 128 30 2 train plain`, alternated with the
 * Slice form) a step's median fell from 177-194 ms to 162-163 ms; `small-cnn-32` 149 to 136 ms,
 * `preact-resnet18-32` 1847 to 1642 ms.
 */
export function convWeightGradient(g: NodeEmitter, x: string, dy: string, m: ConvGeometry, [h, w]: number[], [ho, wo]: number[]): string {
  const { kernelSize: k, stride: s, padding: p, inChannels: cin, outChannels: cout } = m;
  const n = g.shape(x)[0];
  const [hp, wp] = [h + 2 * p, w + 2 * p];
  // The product's rows must be at least as many as its columns. MLAS splits a GEMM over threads along the
  // longer of the two, and when it splits the columns, each thread's block of them sets how the long inner
  // dimension (N*ho*wo) is cut into partial sums: the gradient would then depend on the thread count. So
  // where out > in*k*k the product is taken transposed (dy rows times input rows) and turned back.
  const wide = cout > cin * k * k;
  let xt = g.op('Transpose', [x], { perm: [1, 2, 3, 0] }, [cin, h, w, n]);
  if (p) xt = g.op('Pad', [xt, g.i64([0, p, p, 0, 0, p, p, 0])], {}, [cin, hp, wp, n]);
  const dyT = g.op('Transpose', [dy], { perm: [1, 2, 3, 0] }, [cout, ho, wo, n]);
  const dyRows = g.op('Reshape', [dyT, g.i64([cout, -1])], {}, [cout, ho * wo * n]);
  // A 1x1 convolution at stride 1 reads every position once, in order: the input is its own matrix.
  const identity = k === 1 && s === 1 && ho === hp && wo === wp;
  let cols = xt;
  if (!identity) {
    const positions: number[] = [];
    for (let a = 0; a < k; a++) for (let b = 0; b < k; b++) for (let y = 0; y < ho; y++) for (let c = 0; c < wo; c++) positions.push((a + s * y) * wp + b + s * c);
    cols = g.op('Gather', [g.op('Reshape', [xt, g.i64([cin, hp * wp, n])], {}, [cin, hp * wp, n]), g.i64(positions)], { axis: 1 }, [cin, positions.length, n]);
  }
  const rows = g.op('Reshape', [cols, g.i64([cin * k * k, -1])], {}, [cin * k * k, ho * wo * n]);
  if (wide) {
    const product = g.op('Gemm', [dyRows, rows], { transB: 1 }, [cout, cin * k * k]);
    const oikk = g.op('Reshape', [product, g.i64([cout, cin, k, k])], {}, [cout, cin, k, k]);
    return g.op('Transpose', [oikk], { perm: [2, 3, 1, 0] }, [k, k, cin, cout]);
  }
  const product = g.op('Gemm', [rows, dyRows], { transB: 1 }, [cin * k * k, cout]);
  const ikko = g.op('Reshape', [product, g.i64([cin, k, k, cout])], {}, [cin, k, k, cout]);
  return g.op('Transpose', [ikko], { perm: [1, 2, 0, 3] }, [k, k, cin, cout]);
}
