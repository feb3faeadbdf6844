/**
 * The training graphs kept by model structure (grad_graph_cache.ts): a clone of a model takes the graph built for
 * it, the same bytes the builder gives; another structure (width, a BatchNorm setting, a frozen parameter, a
 * BatchNorm mask) or another form gets a graph of its own; a module holding state the key cannot describe is
 * never served from the cache.
 */
import { strict as assert } from 'node:assert';
import * as tf from '@tensorflow/tfjs-core';
import { useWasm } from '../helpers/backend';
import { buildModel } from '../../src/engine/models';
import { buildGradGraph } from '../../src/engine/nn/ort_grad_graph';
import { gradGraphFor, structureKey } from '../../src/engine/nn/grad_graph_cache';
import type { ArchSpec } from '../../src/engine/nn/model';

describe('training graphs kept by model structure', () => {
  const spec: ArchSpec = { arch: 'preact-resnet18', inputShape: [16, 16, 3], numClasses: 10, options: { width: 8 } };
  const norm = { mean: [0.5, 0.4, 0.3], std: [0.2, 0.25, 0.3] };
  let start: number;
  before(async () => {
    await useWasm();
    start = tf.memory().numTensors;
  });
  after(() => assert.equal(tf.memory().numTensors, start, 'tensors leaked'));

  it('a clone takes the graph built for its model, the bytes the builder gives it', () => {
    const a = buildModel(spec, norm, 1);
    const b = a.clone();
    try {
      const ga = gradGraphFor(a, { bnTrain: true });
      const gb = gradGraphFor(b, { bnTrain: true });
      assert.equal(gb, ga, 'the kept graph');
      assert.deepEqual(buildGradGraph(b, { bnTrain: true }).bytes, gb.bytes);
      assert.notEqual(gradGraphFor(b, { bnTrain: false }), ga, 'another form, another graph');
    } finally {
      a.dispose();
      b.dispose();
    }
  });

  it('another structure gets a graph of its own', () => {
    const a = buildModel(spec, norm, 1);
    const wider = buildModel({ ...spec, options: { width: 16 } }, norm, 1);
    const otherNorm = buildModel(spec, { mean: [0.5, 0.5, 0.5], std: [0.2, 0.25, 0.3] }, 1);
    const eps = a.clone();
    (eps.batchNorms()[0] as { eps: number }).eps = 1e-3;
    const frozen = a.clone();
    frozen.root.namedParams().find(([k]) => k === 'linear.weight')![1].trainable = false;
    const masked = a.clone();
    masked.batchNorms()[0].setMask(new Float32Array(masked.batchNorms()[0].numFeatures).fill(1));
    try {
      const keys = [a, wider, otherNorm, eps, frozen, masked].map((m) => structureKey(m));
      assert.equal(new Set(keys).size, keys.length, 'six structures, six keys');
      assert.notEqual(gradGraphFor(eps, { bnTrain: true }), gradGraphFor(a, { bnTrain: true }));
      assert.deepEqual(gradGraphFor(frozen, { bnTrain: true }).gradKeys.includes('linear.weight'), false);
    } finally {
      for (const m of [a, wider, otherNorm, eps, frozen, masked]) m.dispose();
    }
  });

  it('a module holding an object the key cannot describe is never cached', () => {
    const a = buildModel(spec, norm, 1);
    (a.root as unknown as { hook: object }).hook = { scale: 2 };
    try {
      assert.equal(structureKey(a), undefined);
      assert.notEqual(gradGraphFor(a, { bnTrain: true }), gradGraphFor(a, { bnTrain: true }), 'built anew each time');
    } finally {
      a.dispose();
    }
  });
});
