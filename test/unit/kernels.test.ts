import { strict as assert } from 'node:assert';
import * as tf from '@tensorflow/tfjs-core';
import { useWasm } from '../helpers/backend';

/** Run f on a backend and return plain arrays of its outputs. */
async function on(backend: string, f: () => tf.Tensor[]): Promise<Float32Array[]> {
  await tf.setBackend(backend);
  const out = tf.tidy(f);
  const data = out.map((t) => Float32Array.from(t.dataSync() as Float32Array));
  tf.dispose(out);
  return data;
}

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

describe('wasm training kernels agree with the cpu backend', () => {
  before(useWasm);
  after(async () => {
    await tf.setBackend('wasm');
  });

  const cases: Array<{ n: number; h: number; w: number; cin: number; cout: number; k: number; stride: number; pad: 'same' | 'valid' | number }> = [];
  for (const k of [1, 3, 5]) for (const stride of [1, 2]) for (const pad of ['same', 'valid'] as const) cases.push({ n: 2, h: 7, w: 9, cin: 3, cout: 5, k, stride, pad });
  cases.push({ n: 3, h: 8, w: 8, cin: 4, cout: 6, k: 3, stride: 1, pad: 1 });
  cases.push({ n: 1, h: 11, w: 6, cin: 2, cout: 3, k: 3, stride: 2, pad: 1 });
  cases.push({ n: 2, h: 6, w: 6, cin: 3, cout: 2, k: 1, stride: 2, pad: 0 });

  for (const c of cases) {
    it(`conv2d gradients: ${c.k}x${c.k}, stride ${c.stride}, pad ${c.pad}, ${c.h}x${c.w}, ${c.cin}->${c.cout}`, async () => {
      const xData = seeded([c.n, c.h, c.w, c.cin], 1);
      const wData = seeded([c.k, c.k, c.cin, c.cout], 2);
      const run = () => {
        const x = tf.tensor4d(xData, [c.n, c.h, c.w, c.cin]);
        const w = tf.tensor4d(wData, [c.k, c.k, c.cin, c.cout]);
        // A non-uniform upstream gradient: weight the outputs before summing.
        const f = (xi: tf.Tensor, wi: tf.Tensor) => {
          const y = tf.conv2d(xi as tf.Tensor4D, wi as tf.Tensor4D, c.stride, c.pad);
          return tf.sum(tf.mul(y, tf.tensor(seeded(y.shape, 3), y.shape)));
        };
        const [dx, dw] = tf.grads(f)([x, w]);
        return [tf.conv2d(x, w, c.stride, c.pad), dx, dw];
      };
      const before = tf.memory().numTensors;
      const wasm = await on('wasm', run);
      assert.equal(tf.memory().numTensors, before, 'no tensors leaked');
      const cpu = await on('cpu', run);
      await tf.setBackend('wasm');
      ['forward', 'input gradient', 'filter gradient'].forEach((name, i) => {
        assert.equal(wasm[i].length, cpu[i].length, name);
        const e = relErr(wasm[i], cpu[i]);
        assert.ok(e <= 1e-4, `${name}: relative error ${e}`);
      });
    });
  }

  it('the registered kernels are the ones in use on wasm', () => {
    assert.ok(tf.getKernel('Conv2DBackpropFilter', 'wasm'), 'Conv2DBackpropFilter is registered');
  });
});
