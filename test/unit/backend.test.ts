import { strict as assert } from 'node:assert';
import * as tf from '@tensorflow/tfjs-core';
import { initBackend } from '../../src/engine/backend';

describe('backend', () => {
  it('starts the wasm backend on a CPU machine', async () => {
    const info = await initBackend('cpu');
    assert.equal(info.name, 'wasm');
    assert.equal(tf.getBackend(), 'wasm');
    const s = tf.tidy(() => tf.add(tf.tensor1d([1, 2]), tf.tensor1d([3, 4])).dataSync());
    assert.deepEqual(Array.from(s), [4, 6]);
  });
});
