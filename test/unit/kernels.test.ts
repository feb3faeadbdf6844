import { strict as assert } from 'node:assert';
import * as tf from '@tensorflow/tfjs-core';
import { initBackend } from '../../src/engine/backend';
import { originalConv2DBackpropInput, registerWasmTrainingKernels } from '../../src/engine/backend/kernels';
import { conv2dBackpropFilter, chooseFilterGradMethod, type FilterGradMethod } from '../../src/engine/backend/kernels/conv2d_backprop_filter';

type Pad = 'same' | 'valid' | number | [[0, 0], [number, number], [number, number], [0, 0]];

/** Run f on a backend and return plain copies of its outputs (the tensors are disposed). */
async function on(backend: string, f: () => tf.Tensor[]): Promise<Float32Array[]> {
  await tf.setBackend(backend);
  const out = tf.tidy(f);
  const data = out.map((t) => Float32Array.from(t.dataSync() as Float32Array));
  tf.dispose(out);
  return data;
}

/** Largest absolute difference relative to the largest reference magnitude. */
function relErr(a: Float32Array, b: Float32Array): number {
  let num = 0;
  let den = 0;
  for (let i = 0; i < a.length; i++) {
    num = Math.max(num, Math.abs(a[i] - b[i]));
    den = Math.max(den, Math.abs(b[i]));
  }
  return num / Math.max(den, 1e-12);
}

function seeded(shape: number[], seed: number): Float32Array {
  let s = seed;
  return Float32Array.from({ length: shape.reduce((a, b) => a * b, 1) }, () => {
    s = (s * 1103515245 + 12345) % 2147483648;
    return s / 2147483648 - 0.5;
  });
}

function assertClose(wasm: Float32Array[], cpu: Float32Array[], names: string[]): void {
  names.forEach((name, i) => {
    assert.equal(wasm[i].length, cpu[i].length, `${name}: size`);
    assert.ok(cpu[i].some((v) => v !== 0), `${name}: the reference is not all zeros`);
    const e = relErr(wasm[i], cpu[i]);
    assert.ok(e <= 1e-4, `${name}: relative error ${e}`);
  });
}

const dataIds = () => (tf.backend() as unknown as { numDataIds(): number }).numDataIds();

interface Case {
  n: number;
  h: number;
  w: number;
  cin: number;
  cout: number;
  k: number;
  stride: number;
  pad: Pad;
}
const label = (c: Case) => `${c.k}x${c.k}, stride ${c.stride}, pad ${JSON.stringify(c.pad)}, ${c.n}x${c.h}x${c.w}, ${c.cin}->${c.cout}`;

const cases: Case[] = [];
// cin 3 takes the im2col filter gradient, cin 6 the swapped convolution (chooseFilterGradMethod).
for (const cin of [3, 6])
  for (const k of [1, 3, 5])
    for (const stride of [1, 2]) for (const pad of ['same', 'valid'] as const) cases.push({ n: 2, h: 7, w: 9, cin, cout: cin === 3 ? 5 : 4, k, stride, pad });
cases.push({ n: 3, h: 8, w: 8, cin: 4, cout: 6, k: 3, stride: 1, pad: 1 });
cases.push({ n: 1, h: 11, w: 6, cin: 2, cout: 3, k: 3, stride: 2, pad: 1 });
cases.push({ n: 2, h: 6, w: 6, cin: 3, cout: 2, k: 1, stride: 2, pad: 0 });
// Pads beyond kernel - 1: the input gradient crops the dilated gradient instead of padding it.
cases.push({ n: 2, h: 5, w: 7, cin: 6, cout: 3, k: 1, stride: 1, pad: 1 });
cases.push({ n: 2, h: 9, w: 7, cin: 5, cout: 7, k: 3, stride: 2, pad: 3 });
// Asymmetric explicit pads, as tfjs passes them through.
cases.push({ n: 2, h: 8, w: 7, cin: 3, cout: 4, k: 3, stride: 2, pad: [[0, 0], [1, 2], [0, 1], [0, 0]] });
cases.push({ n: 2, h: 10, w: 9, cin: 8, cout: 5, k: 5, stride: 2, pad: [[0, 0], [2, 0], [3, 1], [0, 0]] });

describe('wasm training kernels agree with the cpu backend', () => {
  before(async () => {
    const info = await initBackend('cpu');
    assert.equal(info.name, 'wasm', 'initBackend("cpu") selects wasm');
  });
  after(async () => {
    await tf.setBackend('wasm');
  });

  for (const c of cases) {
    it(`tf.grads of conv2d (input and filter): ${label(c)}`, async () => {
      const xData = seeded([c.n, c.h, c.w, c.cin], 1);
      const wData = seeded([c.k, c.k, c.cin, c.cout], 2);
      const run = () => {
        const x = tf.tensor4d(xData, [c.n, c.h, c.w, c.cin]);
        const w = tf.tensor4d(wData, [c.k, c.k, c.cin, c.cout]);
        // A non-uniform upstream gradient: weight the outputs before summing.
        const f = (xi: tf.Tensor, wi: tf.Tensor) => {
          const y = tf.conv2d(xi as tf.Tensor4D, wi as tf.Tensor4D, c.stride, c.pad as never);
          return tf.sum(tf.mul(y, tf.tensor(seeded(y.shape, 3), y.shape)));
        };
        const [dx, dw] = tf.grads(f)([x, w]);
        return [tf.conv2d(x, w, c.stride, c.pad as never), dx, dw];
      };
      await tf.setBackend('wasm');
      const tensors = tf.memory().numTensors;
      const ids = dataIds();
      const wasm = await on('wasm', run);
      assert.equal(tf.memory().numTensors, tensors, 'no tensors leaked');
      assert.equal(dataIds(), ids, 'no wasm buffers leaked by the kernels');
      const cpu = await on('cpu', run);
      await tf.setBackend('wasm');
      assertClose(wasm, cpu, ['forward', 'input gradient', 'filter gradient']);
    });
  }

  for (const c of cases) {
    it(`kernels called directly, both filter-gradient methods: ${label(c)}`, async () => {
      const x = seeded([c.n, c.h, c.w, c.cin], 4);
      const w = seeded([c.k, c.k, c.cin, c.cout], 5);
      const outShape = (await on('cpu', () => [tf.conv2d(tf.tensor4d(x, [c.n, c.h, c.w, c.cin]), tf.tensor4d(w, [c.k, c.k, c.cin, c.cout]), c.stride, c.pad as never)]))[0];
      const yShape = tf.tidy(() => tf.conv2d(tf.zeros([c.n, c.h, c.w, c.cin]) as tf.Tensor4D, tf.zeros([c.k, c.k, c.cin, c.cout]) as tf.Tensor4D, c.stride, c.pad as never).shape);
      assert.equal(outShape.length, yShape.reduce((a, b) => a * b, 1));
      const dy = seeded(yShape, 6);
      const attrs = { strides: c.stride, pad: c.pad, dataFormat: 'NHWC', dimRoundingMode: undefined };
      const direct = () => [
        tf.engine().runKernel('Conv2DBackpropInput', { dy: tf.tensor(dy, yShape), filter: tf.tensor(w, [c.k, c.k, c.cin, c.cout]) }, { ...attrs, inputShape: [c.n, c.h, c.w, c.cin] } as never) as tf.Tensor,
        tf.engine().runKernel('Conv2DBackpropFilter', { x: tf.tensor(x, [c.n, c.h, c.w, c.cin]), dy: tf.tensor(dy, yShape) }, { ...attrs, filterShape: [c.k, c.k, c.cin, c.cout] } as never) as tf.Tensor,
      ];
      const cpu = await on('cpu', direct);
      const wasm = await on('wasm', direct);
      assertClose(wasm, cpu, ['Conv2DBackpropInput', 'Conv2DBackpropFilter']);
      // Both formulations of the filter gradient, whichever the kernel picks for this shape.
      for (const method of ['im2col', 'swapped-conv'] as FilterGradMethod[]) {
        const ids = dataIds();
        const got = await on('wasm', () => {
          const xt = tf.tensor(x, [c.n, c.h, c.w, c.cin]);
          const dyt = tf.tensor(dy, yShape);
          const info = conv2dBackpropFilter(xt, dyt, { ...attrs, filterShape: [c.k, c.k, c.cin, c.cout] } as never, tf.backend(), method);
          return [tf.engine().makeTensorFromTensorInfo(info)];
        });
        assert.equal(dataIds(), ids, `${method}: no wasm buffers leaked`);
        assertClose(got, [cpu[1]], [`filter gradient by ${method}`]);
      }
    });
  }

  const pools: Array<{ n: number; h: number; w: number; c: number; k: number; stride: number; pad: 'same' | 'valid' | number; negative?: boolean }> = [
    { n: 2, h: 8, w: 8, c: 3, k: 2, stride: 2, pad: 'valid' },
    { n: 2, h: 7, w: 9, c: 5, k: 2, stride: 2, pad: 'valid' },
    { n: 1, h: 9, w: 7, c: 4, k: 3, stride: 2, pad: 'same' },
    { n: 2, h: 6, w: 6, c: 2, k: 3, stride: 1, pad: 'same' },
    { n: 1, h: 8, w: 8, c: 3, k: 3, stride: 2, pad: 1 },
    // All-negative windows (the package kernel routed these to the window's first position).
    { n: 2, h: 6, w: 6, c: 3, k: 2, stride: 2, pad: 'valid', negative: true },
  ];
  for (const p of pools) {
    it(`tf.grad of maxPool routes each gradient to its window's maximum: ${p.k}x${p.k}, stride ${p.stride}, pad ${p.pad}, ${p.n}x${p.h}x${p.w}x${p.c}${p.negative ? ', all negative' : ''}`, async () => {
      const shape = [p.n, p.h, p.w, p.c];
      const xData = p.negative ? seeded(shape, 7).map((v) => v - 1) : seeded(shape, 7);
      const run = () => {
        const x = tf.tensor4d(xData, shape as [number, number, number, number]);
        const f = (xi: tf.Tensor) => {
          const y = tf.maxPool(xi as tf.Tensor4D, p.k, p.stride, p.pad as never);
          return tf.sum(tf.mul(y, tf.tensor(seeded(y.shape, 8).map((v) => v + 1), y.shape)));
        };
        return [tf.grad(f)(x)];
      };
      await tf.setBackend('wasm');
      const tensors = tf.memory().numTensors;
      const ids = dataIds();
      const wasm = await on('wasm', run);
      assert.equal(tf.memory().numTensors, tensors, 'no tensors leaked');
      assert.equal(dataIds(), ids, 'no wasm buffers leaked');
      const cpu = await on('cpu', run);
      await tf.setBackend('wasm');
      assertClose(wasm, cpu, ['maxPool input gradient']);
    });
  }

  it('maxPool gradient ties go to the last maximum in window order (as the package kernel did)', async () => {
    await tf.setBackend('wasm');
    const x = tf.tensor4d([1, 2, 2, 0, 5, 5, 5, 5], [1, 2, 4, 1]);
    const dx = tf.grad((xi: tf.Tensor) => tf.sum(tf.mul(tf.maxPool(xi as tf.Tensor4D, 2, 2, 'valid'), tf.tensor4d([3, 7], [1, 1, 2, 1]))))(x);
    // Windows in order (row-major): [1, 2 | 5, 5] and [2, 0 | 5, 5]; each maximum 5 appears twice.
    assert.deepEqual(Array.from(dx.dataSync()), [0, 0, 0, 0, 0, 3, 0, 7]);
    tf.dispose([x, dx]);
  });

  it('Sum over all but the channel axis (bias gradients) agrees with the cpu backend; other reductions still work', async () => {
    const data = seeded([3, 5, 7, 6], 9);
    const run = () => {
      const x = tf.tensor4d(data, [3, 5, 7, 6]);
      const w = tf.tensor1d(seeded([6], 10));
      // The gradient of a broadcast bias add is this reduction; the others take the package's kernel.
      const db = tf.grad((b: tf.Tensor) => tf.sum(tf.mul(tf.add(x, b), x)))(w);
      return [tf.sum(x, [0, 1, 2]), tf.sum(x, [2, 0, 1], true), tf.sum(tf.reshape(x, [105, 6]), 0), db, tf.sum(x, [1, 2]), tf.sum(x, 3), tf.sum(x)];
    };
    await tf.setBackend('wasm');
    const ids = dataIds();
    const wasm = await on('wasm', run);
    assert.equal(dataIds(), ids, 'no wasm buffers leaked');
    const cpu = await on('cpu', run);
    await tf.setBackend('wasm');
    assertClose(wasm, cpu, ['sum [0,1,2]', 'sum keepDims', 'sum rank 2', 'bias gradient', 'sum [1,2]', 'sum 3', 'sum all']);
    const keep = tf.tidy(() => tf.sum(tf.ones([2, 3, 4]), [0, 1], true).shape);
    assert.deepEqual(keep, [1, 1, 4]);
  });

  it('the NCHW input gradient falls back to the package kernel, whose wasm function is still bound', async () => {
    const [n, c, h, w, cout, k] = [2, 3, 6, 5, 4, 3];
    const run = () => [
      tf.engine().runKernel(
        'Conv2DBackpropInput',
        { dy: tf.tensor(seeded([n, cout, h, w], 7), [n, cout, h, w]), filter: tf.tensor(seeded([k, k, c, cout], 8), [k, k, c, cout]) },
        { strides: 1, pad: 'same', dataFormat: 'NCHW', dimRoundingMode: undefined, inputShape: [n, c, h, w] } as never,
      ) as tf.Tensor,
    ];
    assertClose(await on('wasm', run), await on('cpu', run), ['NCHW input gradient']);
  });

  it('replaces the package input gradient, adds the filter gradient, and registers only once', () => {
    const input = tf.getKernel('Conv2DBackpropInput', 'wasm');
    const filter = tf.getKernel('Conv2DBackpropFilter', 'wasm');
    assert.ok(filter, 'Conv2DBackpropFilter is registered');
    assert.ok(input && originalConv2DBackpropInput(), 'both input-gradient kernels are known');
    assert.notEqual(input!.kernelFunc, originalConv2DBackpropInput()!.kernelFunc, 'the naive loop is no longer the registered kernel');
    registerWasmTrainingKernels();
    assert.equal(tf.getKernel('Conv2DBackpropInput', 'wasm'), input, 'a second call changes nothing');
    assert.equal(tf.getKernel('Conv2DBackpropFilter', 'wasm'), filter);
  });

  it('picks im2col for the image stem and the swapped convolution elsewhere', () => {
    assert.equal(chooseFilterGradMethod({ cin: 3, kh: 3, kw: 3 }), 'im2col');
    assert.equal(chooseFilterGradMethod({ cin: 32, kh: 3, kw: 3 }), 'swapped-conv');
  });
});
