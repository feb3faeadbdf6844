/**
 * BatchNorm put back into an ONNX graph whose BatchNorm layers were folded into its convolutions: the copy
 * predicts what the victim predicts, normalizes in training mode, is saved with its new layers, and lets the
 * defenses that need BatchNorm channels run.
 */
import { strict as assert } from 'node:assert';
import * as path from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import { useWasm } from '../helpers/backend';
import { tempDir } from '../helpers/temp';
import { loadModelFile, saveModelFile } from '../../src/engine/model_files/model_io';
import { foldedBatchNormSites, renormalize } from '../../src/engine/models/renormalize';
import { readOnnx } from '../../src/engine/formats/onnx';
import { makeBatch } from '../../src/engine/nn/train';
import type { ImageSet } from '../../src/engine/data/dataset';
import type { Model } from '../../src/engine/nn/model';
import type { Conv2d } from '../../src/engine/nn/layers';
import { maxAbsDiff } from '../helpers/parity';

const FIXTURES = path.join(__dirname, '..', 'fixtures');

function randomSet(model: Model, n: number, seed: number): ImageSet {
  const [h, w, c] = model.inputShape;
  const x = Float32Array.from({ length: n * h * w * c }, (_, i) => (((i + 1) * 9301 + seed * 49297) % 233280) / 233280);
  return { n, shape: [h, w, c], x, y: Int32Array.from({ length: n }, (_, i) => i % model.numClasses), numClasses: model.numClasses };
}

function logits(model: Model, set: ImageSet, training = false): Float32Array {
  return tf.tidy(() => model.forward(makeBatch(set, Array.from({ length: set.n }, (_, i) => i), undefined, undefined), { training }).dataSync() as Float32Array);
}

describe('BatchNorm put back into a graph that had it folded into its convolutions', () => {
  let start: number;
  before(async () => {
    await useWasm();
    start = tf.memory().numTensors;
  });
  after(() => assert.equal(tf.memory().numTensors, start, 'tensors leaked'));

  it('finds the convolutions that feed a ReLU, and is the identity in eval mode with the aux statistics', async () => {
    const { model: victim } = loadModelFile(path.join(FIXTURES, 'parity_plain_bn.onnx'), 'test');
    const aux = randomSet(victim, 64, 1);
    const sites = foldedBatchNormSites(victim);
    assert.equal(sites.length, 2, `two Conv -> Relu pairs, got ${JSON.stringify(sites)}`);
    const out = (await renormalize(victim, aux))!;
    try {
      assert.equal(out.layers, 2);
      assert.equal(out.model.batchNorms().length, 2);
      assert.equal(victim.batchNorms().length, 0, 'the victim is left as it was');
      const ref = logits(victim, aux);
      const { diff, scale } = maxAbsDiff(logits(out.model, aux), ref);
      assert.ok(diff / scale < 1e-4, `eval-mode logits differ by ${diff} (scale ${scale})`);
      // In training mode the layers normalize by the batch's statistics; on the very images the running
      // statistics came from, that is the same map again.
      const train = maxAbsDiff(logits(out.model, aux, true), ref);
      assert.ok(train.diff / train.scale < 1e-3, `training-mode logits on the aux batch differ by ${train.diff}`);
      // A different batch: training mode now differs from eval mode (the layers do normalize).
      const other = randomSet(victim, 16, 7);
      const shifted = { ...other, x: other.x.map((v) => v * 0.3) };
      assert.ok(maxAbsDiff(logits(out.model, shifted, true), logits(out.model, shifted)).diff > 1e-3, 'batch statistics are used in training mode');
      // The convolutions' output channels carry the weight norm of PyTorch's default initialization, 1/sqrt(3).
      for (const { conv } of sites) {
        const w = (out.model.root.find(conv) as Conv2d).weight;
        const norms = tf.tidy(() => tf.sqrt(tf.sum(tf.square(w), [0, 1, 2])).dataSync() as Float32Array);
        norms.forEach((v) => assert.ok(Math.abs(v - 1 / Math.sqrt(3)) < 1e-5, `${conv}: channel norm ${v}`));
      }
    } finally {
      out.model.dispose();
      victim.dispose();
    }
  });

  it('is saved as BatchNormalization nodes that reload with the same predictions', async () => {
    const { model: victim } = loadModelFile(path.join(FIXTURES, 'parity_plain_bn.onnx'), 'test');
    const aux = randomSet(victim, 32, 2);
    const out = (await renormalize(victim, aux))!;
    const dir = tempDir('ba-renorm-');
    try {
      const file = await saveModelFile(out.model, path.join(dir, 'renormalized.onnx'), 'onnx');
      assert.equal(readOnnx(file).nodes.filter((n) => n.op === 'BatchNormalization').length, 2);
      const { model: back } = loadModelFile(file, 'test');
      try {
        const { diff, scale } = maxAbsDiff(logits(back, aux), logits(out.model, aux));
        assert.ok(diff / scale < 1e-5, `reloaded logits differ by ${diff}`);
      } finally {
        back.dispose();
      }
    } finally {
      out.model.dispose();
      victim.dispose();
    }
  });

  it('leaves a model that has BatchNorm layers alone', async () => {
    const { model } = loadModelFile(path.join(FIXTURES, 'parity_preact_w4_c1.onnx'), 'test');
    try {
      assert.deepEqual(foldedBatchNormSites(model), []);
      assert.equal(await renormalize(model, randomSet(model, 8, 3)), undefined);
    } finally {
      model.dispose();
    }
  });
});
