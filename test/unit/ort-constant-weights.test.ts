/**
 * OrtModelGraph's `constantWeights`: the model's weights baked into the session as initializers give the
 * outputs the fed weights give (logits, the pixel gradient of a split seeded graph, ANP's scale gradients), and
 * the session keeps the weights it was made with when the model changes afterwards.
 */
import { strict as assert } from 'node:assert';
import * as tf from '@tensorflow/tfjs-core';
import { useWasm } from '../helpers/backend';
import { buildModel } from '../../src/engine/models';
import { OrtModelGraph } from '../../src/engine/nn/ort_graph';
import { ortTrainWanted } from '../../src/engine/nn/ort_train';
import { maxAbsDiff } from '../helpers/parity';
import type { Model } from '../../src/engine/nn/model';

function relError(ours: Float32Array, ref: Float32Array): number {
  const { diff, scale } = maxAbsDiff(ours, ref);
  return diff / Math.max(scale, 1e-3);
}

describe('ONNX Runtime graphs with constant weights', function () {
  this.timeout(120_000);
  let model: Model;
  const n = 6;
  const x = Float32Array.from({ length: n * 28 * 28 }, (_, i) => (Math.sin(i * 0.37) + 1) / 2);

  before(async function () {
    await useWasm();
    if (!ortTrainWanted()) this.skip();
    model = buildModel({ arch: 'preact-resnet18', inputShape: [28, 28, 1], numClasses: 10, options: { width: 8 } }, { mean: [0.3], std: [0.35] });
    // Non-trivial BatchNorm statistics, so that running statistics and affine parameters matter.
    for (const bn of model.batchNorms()) {
      tf.tidy(() => {
        bn.runningMean.assign(tf.randomUniform([bn.numFeatures], -0.2, 0.2, 'float32', 1));
        bn.runningVar.assign(tf.randomUniform([bn.numFeatures], 0.5, 1.5, 'float32', 2));
        bn.weight.assign(tf.randomUniform([bn.numFeatures], 0.5, 1.5, 'float32', 3));
      });
    }
  });
  after(() => model?.dispose());

  it('give the fed graphs outputs: logits, and the pixel gradient of a split seeded graph', async () => {
    const fed = (await OrtModelGraph.create(model, { bnTrain: false, loss: 'seed', inputGrad: true, paramGrads: false, split: true }))!;
    const baked = (await OrtModelGraph.create(model, { bnTrain: false, loss: 'seed', inputGrad: true, paramGrads: false, split: true, constantWeights: true }))!;
    try {
      const dlogits = Float32Array.from({ length: n * 10 }, (_, i) => Math.cos(i));
      const a = await fed.forward(x, n);
      const b = await baked.forward(x, n);
      assert.ok(relError(b.logits!, a.logits!) < 1e-5, `logits ${relError(b.logits!, a.logits!)}`);
      const ga = await fed.backward(a, { dlogits });
      const gb = await baked.backward(b, { dlogits });
      assert.ok(relError(gb.dx!, ga.dx!) < 1e-5, `dx ${relError(gb.dx!, ga.dx!)}`);
    } finally {
      await fed.close();
      await baked.close();
    }
  });

  it("give ANP's scale gradients as the backend's autodiff does (the fed graph's tolerance), and keep their weights when the model changes", async () => {
    const options = { bnTrain: true, loss: 'ce' as const, paramGrads: false, bnScales: true };
    const fed = (await OrtModelGraph.create(model, options))!;
    const baked = (await OrtModelGraph.create(model, { ...options, constantWeights: true }))!;
    const copy = model.clone();
    const bns = model.batchNorms();
    const scales = new Map(bns.map((bn, i) => [bn.path, { g: new Float32Array(bn.numFeatures).fill(1 - 0.01 * i), b: new Float32Array(bn.numFeatures).fill(1) }]));
    const gVars = tf.tidy(() => bns.map((bn) => tf.variable(tf.tensor1d(scales.get(bn.path)!.g))));
    const bVars = tf.tidy(() => bns.map((bn) => tf.variable(tf.tensor1d(scales.get(bn.path)!.b))));
    const index = new Map(bns.map((bn, i) => [bn as unknown, i]));
    const labels = Int32Array.from({ length: n }, (_, i) => i % 10);
    const xt = tf.tensor4d(x, [n, 28, 28, 1]);
    const y = tf.tensor1d(labels, 'int32');
    const ref = tf.variableGrads(() => {
      const logits = model.forward(xt, { training: true, bnAffineHook: (bn, gamma, beta) => [tf.mul(gamma, gVars[index.get(bn)!]), tf.mul(beta, bVars[index.get(bn)!])] });
      return tf.neg(tf.mean(tf.sum(tf.mul(tf.oneHot(y, 10), tf.logSoftmax(logits)), 1))) as tf.Scalar;
    }, [...gVars, ...bVars]);
    try {
      const a = await fed.run(x, n, { labels, scales });
      const b = await baked.run(x, n, { labels, scales });
      assert.ok(Math.abs(b.loss! - ref.value.dataSync()[0]) < 1e-4);
      bns.forEach((bn, i) => {
        const eg = relError(b.scaleGrads!.get(bn.path)!.g, ref.grads[gVars[i].name].dataSync() as Float32Array);
        const eb = relError(b.scaleGrads!.get(bn.path)!.b, ref.grads[bVars[i].name].dataSync() as Float32Array);
        assert.ok(eg < 1e-3 && eb < 1e-3, `${bn.path}: gamma scale ${eg}, beta scale ${eb}`);
      });
      // Change the model: the fed graph follows it, the baked one keeps the weights it was made with.
      const conv = model.root.namedParams().find(([k]) => k.endsWith('conv1.weight'))!;
      const saved = conv[1].variable.clone();
      tf.tidy(() => conv[1].variable.assign(tf.mul(conv[1].variable, 1.5)));
      try {
        const moved = await fed.run(x, n, { labels, scales });
        const kept = await baked.run(x, n, { labels, scales });
        assert.notEqual(moved.loss, a.loss);
        assert.equal(kept.loss, b.loss);
        await assert.rejects(baked.run(x, n, { labels, scales }, copy), /its own model only/);
      } finally {
        conv[1].variable.assign(saved);
        saved.dispose();
      }
    } finally {
      tf.dispose([xt, y, ref.value, ...Object.values(ref.grads), ...gVars, ...bVars]);
      copy.dispose();
      await fed.close();
      await baked.close();
    }
  });
});
