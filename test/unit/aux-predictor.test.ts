/**
 * AuxPredictor (defenses/aux_predictor.ts): the accuracies and features that FP, CLP, ANP and RNP decide on,
 * through ONNX Runtime's forward graph, against the backend's forward pass of the same model; on the zoo's
 * PyTorch-trained preact8-badnets, for the graph's own model, a pruned copy fed to the same graph, and the
 * model after its weights changed in place.
 */
import { strict as assert } from 'node:assert';
import * as tf from '@tensorflow/tfjs-core';
import { useWasm } from '../helpers/backend';
import { loadZooFixture, type ZooFixture } from '../helpers/zoo';
import { AuxPredictor } from '../../src/engine/defenses/aux_predictor';
import { predictFeatures, predictLabels } from '../../src/engine/nn/train';
import { ortTrainWanted } from '../../src/engine/nn/ort_train';
import { buildModel } from '../../src/engine/models';
import type { Model } from '../../src/engine/nn/model';

/** Zero gamma and beta of the first `k` channels of every BatchNorm (a pruning as CLP's and ANP's). */
function prune(m: Model, k: number): void {
  for (const bn of m.batchNorms()) {
    const keep = new Float32Array(bn.numFeatures).fill(1).fill(0, 0, k);
    tf.tidy(() => {
      bn.weight.assign(tf.mul(bn.weight, tf.tensor1d(keep)));
      bn.bias.assign(tf.mul(bn.bias, tf.tensor1d(keep)));
    });
  }
}

function agreement(a: Int32Array, b: Int32Array): number {
  let same = 0;
  for (let i = 0; i < a.length; i++) if (a[i] === b[i]) same++;
  return same / a.length;
}

describe('AuxPredictor: aux-split predictions for the defenses', function () {
  this.timeout(120_000);
  let zoo: ZooFixture;

  before(async function () {
    await useWasm();
    if (!ortTrainWanted()) this.skip();
    zoo = await loadZooFixture('preact8-badnets');
  });
  after(() => zoo?.loaded.model.dispose());

  it('runs through ONNX Runtime and gives the backend labels, accuracy and features', async () => {
    const victim = zoo.loaded.model;
    const p = await AuxPredictor.open({ ortTraining: true, ortThreads: 1 }, victim, { features: true });
    try {
      assert.equal(p.engine, 'onnxruntime');
      const ours = await p.labels(zoo.aux);
      const backend = await predictLabels(victim, zoo.aux);
      // Argmax of logits that agree to float rounding: at most one image of 500 on a near tie.
      assert.ok(agreement(ours, backend) >= 0.998, `agreement ${agreement(ours, backend)}`);
      let ok = 0;
      for (let i = 0; i < zoo.aux.n; i++) if (backend[i] === zoo.aux.y[i]) ok++;
      assert.ok(Math.abs((await p.accuracy(zoo.aux)) - ok / zoo.aux.n) <= 0.002);
      const f = await p.features(zoo.aux);
      const g = await predictFeatures(victim, zoo.aux);
      assert.equal(f.dim, g.dim);
      assert.equal(f.dim, victim.head().weight.shape[0]);
      let worst = 0;
      for (let i = 0; i < g.data.length; i++) worst = Math.max(worst, Math.abs(f.data[i] - g.data[i]) / (1 + Math.abs(g.data[i])));
      assert.ok(worst < 1e-4, `features differ by ${worst}`);
    } finally {
      await p.close();
    }
  });

  it('feeds a pruned copy, and the model as changed in place, to the same graph', async () => {
    const victim = zoo.loaded.model;
    const p = await AuxPredictor.open({ ortTraining: true, ortThreads: 1 }, victim);
    const copy = victim.clone();
    try {
      prune(copy, 3);
      const before = await p.accuracy(zoo.aux);
      const pruned = await p.labels(zoo.aux, copy);
      assert.ok(agreement(pruned, await predictLabels(copy, zoo.aux)) >= 0.998);
      // The pruning changes the predictions, so the copy's weights, not the graph's model's, were used.
      assert.ok(agreement(pruned, await p.labels(zoo.aux)) < 0.99);
      assert.equal(await p.accuracy(zoo.aux), before, 'the copy left the victim as it was');
      const inPlace = victim.clone();
      const own = await AuxPredictor.open({ ortTraining: true, ortThreads: 1 }, inPlace);
      try {
        prune(inPlace, 3);
        assert.deepEqual(await own.labels(zoo.aux), pruned);
      } finally {
        await own.close();
        inPlace.dispose();
      }
    } finally {
      copy.dispose();
      await p.close();
    }
  });

  it('refuses a model of another structure, and computes on the backend without ONNX Runtime', async () => {
    const victim = zoo.loaded.model;
    const p = await AuxPredictor.open({ ortTraining: true, ortThreads: 1 }, victim);
    const other = buildModel({ arch: 'preact-resnet18', inputShape: [28, 28, 1], numClasses: 10, options: { width: 16 } });
    try {
      await assert.rejects(p.accuracy(zoo.aux, other), /has no parameter .* of shape/);
    } finally {
      other.dispose();
      await p.close();
    }
    const backend = await AuxPredictor.open({ ortTraining: false }, victim);
    assert.equal(backend.engine, 'backend');
    assert.deepEqual(await backend.labels(zoo.aux), await predictLabels(victim, zoo.aux));
    await backend.close();
  });
});
