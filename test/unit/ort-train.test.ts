import { strict as assert } from 'node:assert';
import * as tf from '@tensorflow/tfjs-core';
import { useWasm } from '../helpers/backend';
import { buildModel } from '../../src/engine/models';
import { SGD, sgdStepInPlace } from '../../src/engine/nn/optim';
import { crossEntropy, fitStepped, predictLabels, trainStep } from '../../src/engine/nn/train';
import { OrtTrainer } from '../../src/engine/nn/ort_train';
import { loadEmbeddedMnist, splitDisjoint } from '../../src/engine/formats/data/mnist';
import { Rng } from '../../src/engine/util/rng';
import { Identity } from '../../src/engine/nn/layers';
import type { ArchSpec, Model } from '../../src/engine/nn/model';
import { maxAbsDiff } from '../helpers/parity';

const norm3 = { mean: [0.5, 0.4, 0.3], std: [0.2, 0.25, 0.3] };

/** The backend's gradients of the batch's mean cross-entropy, by parameter key. */
function backendGradients(model: Model, x: tf.Tensor4D, labels: Int32Array, bnTrain: boolean): { loss: number; grads: Map<string, Float32Array> } {
  const params = model.root.namedParams().filter(([, p]) => p.trainable);
  const vars = params.map(([, p]) => p.variable);
  const y = tf.tensor1d(labels, 'int32');
  const { value, grads } = tf.variableGrads(() => crossEntropy(model.forward(x, { training: bnTrain }), y), vars);
  const out = new Map(params.map(([key, p]) => [key, grads[p.variable.name].dataSync() as Float32Array]));
  const loss = value.dataSync()[0];
  tf.dispose([value, y, ...Object.values(grads)]);
  return { loss, grads: out };
}

/** Largest difference between two gradients relative to the reference's scale (absolute near zero). */
function gradError(ours: Float32Array, ref: Float32Array): number {
  const { diff, scale } = maxAbsDiff(ours, ref);
  return diff / Math.max(scale, 1e-3);
}

describe('training steps in ONNX Runtime (forward and backward as one ONNX graph)', function () {
  let start: number;
  before(async function () {
    await useWasm();
    start = tf.memory().numTensors;
  });
  after(() => assert.equal(tf.memory().numTensors, start, 'tensors leaked'));

  const cases: Array<[string, ArchSpec]> = [
    // Conv with bias, BN, ReLU, non-overlapping max pools, global pool, linear.
    ['small-cnn-32', { arch: 'small-cnn-32', inputShape: [32, 32, 3], numClasses: 10 }],
    // Pre-activation blocks: residual additions, strided 3x3 and 1x1 shortcut convolutions.
    ['preact-resnet18 (width 8)', { arch: 'preact-resnet18', inputShape: [16, 16, 3], numClasses: 10, options: { width: 8 } }],
    // Basic blocks behind the ImageNet stem: 7x7 stride-2 conv and an overlapping 3x3 stride-2 max pool.
    ['resnet18 (width 8)', { arch: 'resnet18', inputShape: [32, 32, 3], numClasses: 10, options: { width: 8 } }],
    // VGG with BatchNorm, an even adaptive average pool (4x4 -> 2x2), flatten and hidden linear layers.
    ['vgg11-bn (narrow, no dropout)', { arch: 'vgg11-bn', inputShape: [16, 16, 3], numClasses: 10, options: { cfg: [8, 'M', 8, 'M'], avgpool: 2, hidden: [16], dropout: false } }],
  ];
  for (const [name, spec] of cases) {
    for (const bnTrain of [true, false]) {
      it(`${name}: loss and every gradient equal the backend's (BatchNorm ${bnTrain ? 'batch statistics' : 'frozen'})`, async () => {
        const model = buildModel(spec, norm3, 1);
        const [h, w, c] = spec.inputShape;
        const n = 6;
        const x = tf.randomUniform([n, h, w, c], 0, 1, 'float32', 2) as tf.Tensor4D;
        const labels = Int32Array.from({ length: n }, (_, i) => (i * 3) % 10);
        const trainer = await OrtTrainer.create(model, { bnTrain, threads: 2 });
        assert.ok(trainer, 'ONNX Runtime loads and covers the model');
        try {
          const ours = await trainer.gradients(x.dataSync() as Float32Array, [h, w, c], labels);
          const ref = backendGradients(model, x, labels, bnTrain);
          assert.ok(Math.abs(ours.loss - ref.loss) < 1e-4, `loss ${ours.loss} vs ${ref.loss}`);
          assert.equal(ours.grads.size, ref.grads.size);
          let worst = 0;
          for (const [key, g] of ref.grads) {
            const e = gradError(ours.grads.get(key)!, g);
            assert.ok(e < 1e-3, `${key}: gradient differs by ${e} of its scale`);
            worst = Math.max(worst, e);
          }
          // Measured: worst relative error 2.6e-5 (resnet18), about 1e-6 elsewhere.
          assert.ok(worst < 1e-3);
        } finally {
          await trainer.close();
          x.dispose();
          model.dispose();
        }
      });
    }
  }

  it('sgdStepInPlace gives the bits of SGD.step on the backend (decay, momentum, Nesterov, first step and later ones)', () => {
    const rng = new Rng(5);
    for (const o of [
      { lr: 0.01, momentum: 0.9, weightDecay: 5e-4, nesterov: false },
      { lr: 0.1, momentum: 0.9, weightDecay: 0, nesterov: true },
      { lr: 0.037, momentum: 0, weightDecay: 1e-3, nesterov: false },
    ]) {
      const shape = [3, 5, 7];
      const size = 105;
      const w0 = Float32Array.from({ length: size }, () => rng.uniform(-2, 2));
      const v = tf.tidy(() => tf.variable(tf.tensor(w0, shape)));
      const opt = new SGD(o.lr, o.momentum, o.weightDecay, o.nesterov);
      const w = w0.slice();
      const buf = new Float32Array(size);
      for (let step = 0; step < 4; step++) {
        // Gradients over many magnitudes, so that sums with far smaller terms occur.
        const g = Float32Array.from({ length: size }, () => rng.uniform(-1, 1) * 10 ** Math.floor(rng.uniform(-8, 3)));
        tf.tidy(() => opt.step([v], [tf.tensor(g, shape)]));
        sgdStepInPlace(w, g, buf, step > 0, o);
        assert.deepEqual(w, v.dataSync(), `step ${step} of ${JSON.stringify(o)}`);
        if (o.momentum) assert.deepEqual(buf, opt.momentumOf(v));
      }
      opt.dispose();
      v.dispose();
    }
  });

  it('resident steps (weights held by the trainer, SGD in place) end with the weights, statistics and momentum of usual steps', async () => {
    const spec: ArchSpec = { arch: 'preact-resnet18', inputShape: [16, 16, 3], numClasses: 10, options: { width: 8 } };
    const a = buildModel(spec, norm3, 3);
    const b = a.clone();
    const n = 8;
    const batches = [0, 1, 2].map((i) => Float32Array.from({ length: n * 16 * 16 * 3 }, (_, j) => ((j * 7 + i * 13) % 17) / 17));
    const labels = Int32Array.from({ length: n }, (_, i) => (i * 3) % 10);
    const optA = new SGD(0.05, 0.9, 5e-4);
    const optB = new SGD(0.05, 0.9, 5e-4);
    const ta = (await OrtTrainer.create(a, { bnTrain: true, threads: 1 }))!;
    const tb = (await OrtTrainer.create(b, { bnTrain: true, threads: 1 }))!;
    try {
      for (const x of batches) {
        await ta.step(optA, x, [16, 16, 3], labels, true);
        await tb.step(optB, x, [16, 16, 3], labels, true, { resident: true });
      }
      // Held until flushed: the model's variables are those before the resident steps.
      const [key, p] = b.root.namedParams().find(([, q]) => q.trainable)!;
      assert.notDeepEqual(p.variable.dataSync(), new Map(a.root.namedParams()).get(key)!.variable.dataSync());
      tb.flush();
      const sa = await a.stateDict();
      const sb = await b.stateDict();
      for (const [k, t] of sa) assert.deepEqual(sb.get(k)!.data, t.data, k);
      const va = new Map(a.root.namedParams());
      for (const [k, q] of b.root.namedParams()) if (q.trainable) assert.deepEqual(optB.momentumOf(q.variable), optA.momentumOf(va.get(k)!.variable), k);
    } finally {
      await ta.close();
      await tb.close();
      optA.dispose();
      optB.dispose();
      a.dispose();
      b.dispose();
    }
  });

  it('a step moves the weights and the BatchNorm running statistics as the backend step does', async () => {
    const spec: ArchSpec = { arch: 'small-cnn', inputShape: [28, 28, 1], numClasses: 10 };
    const a = buildModel(spec, { mean: [0.1307], std: [0.3081] }, 3);
    const b = a.clone();
    const rng = new Rng(1);
    const batch = 24;
    const x = Float32Array.from({ length: batch * 28 * 28 }, () => rng.next());
    const labels = Int32Array.from({ length: batch }, (_, i) => i % 10);
    const optA = new SGD(0.1, 0.9, 5e-4);
    const optB = new SGD(0.1, 0.9, 5e-4);
    const trainer = await OrtTrainer.create(b, { threads: 2 });
    assert.ok(trainer);
    try {
      for (let step = 0; step < 3; step++) {
        const xs = tf.tensor4d(x, [batch, 28, 28, 1]);
        const ys = tf.tensor1d(labels, 'int32');
        const lossA = await trainStep(a.trainableVariables(), optA, (ctx) => crossEntropy(a.forward(xs, ctx), ys), true).finally(() => tf.dispose([xs, ys]));
        const lossB = await trainer.step(optB, x, [28, 28, 1], labels, true);
        assert.ok(Math.abs(lossA - lossB) < 1e-4, `step ${step}: loss ${lossA} vs ${lossB}`);
      }
      const pa = new Map(a.root.namedParams());
      let worst = 0;
      for (const [key, p] of b.root.namedParams()) {
        const d = tf.tidy(() => tf.max(tf.abs(tf.sub(p.variable, pa.get(key)!.variable))).dataSync()[0]);
        worst = Math.max(worst, d);
      }
      assert.ok(worst < 1e-4, `weights and running statistics differ by ${worst}`);
      assert.deepEqual(
        b.batchNorms().map((bn) => bn.numBatchesTracked),
        a.batchNorms().map((bn) => bn.numBatchesTracked),
      );
      const fresh = buildModel(spec, { mean: [0.1307], std: [0.3081] }, 3);
      const moved = tf.tidy(() => tf.max(tf.abs(tf.sub(fresh.batchNorms()[0].runningMean, b.batchNorms()[0].runningMean))).dataSync()[0]);
      assert.ok(moved > 1e-3, 'the running mean moved');
      fresh.dispose();
    } finally {
      await trainer.close();
      optA.dispose();
      optB.dispose();
      a.dispose();
      b.dispose();
    }
  });

  it('fitStepped() on ONNX Runtime trains a digit classifier', async () => {
    const data = splitDisjoint(loadEmbeddedMnist(), { train: 2000, pool: 0, test: 500 }, new Rng(5));
    const model = buildModel({ arch: 'small-cnn', inputShape: [28, 28, 1], numClasses: 10 }, { mean: [0.1307], std: [0.3081] }, 4);
    const trainer = await OrtTrainer.create(model, { threads: 2 });
    assert.ok(trainer);
    const opt = new SGD(0.05, 0.9, 5e-4);
    const tensors = tf.memory().numTensors;
    try {
      await fitStepped(model, data.train, { epochs: 3, batchSize: 32, optimizer: opt, lr: 0.05, schedule: 'constant', rng: new Rng(6), dropLast: true }, trainer);
      // The optimizer's momentum buffers are the only tensors a fit adds.
      assert.equal(tf.memory().numTensors, tensors + model.trainableVariables().length, 'no tensor growth across steps');
      const pred = await predictLabels(model, data.test);
      const acc = pred.reduce((s, p, i) => s + (p === data.test.y[i] ? 1 : 0), 0) / data.test.n;
      // An untrained model is at 0.1; the same fit on the backend reaches about 0.88.
      assert.ok(acc > 0.8, `held-out accuracy ${acc}`);
      assert.ok(model.batchNorms().every((b) => b.numBatchesTracked === 3 * Math.floor(2000 / 32)));
    } finally {
      await trainer.close();
      opt.dispose();
      model.dispose();
    }
  });

  it('declines models it has no backward rule for (the caller trains on the backend)', async () => {
    const spec: ArchSpec = { arch: 'small-cnn', inputShape: [28, 28, 1], numClasses: 10 };
    const masked = buildModel(spec, undefined, 2);
    masked.batchNorms()[0].setMask(new Float32Array(masked.batchNorms()[0].numFeatures).fill(1));
    assert.equal(await OrtTrainer.create(masked), undefined, 'BatchNorm masks');
    masked.dispose();
    // A module inserted in front of a layer is emitted before it (BatchNorm restored into a folded graph; the
    // gradients through one are checked in ort-graph.test.ts), so it no longer sends a model to the backend.
    const inserted = buildModel(spec, undefined, 2);
    inserted.insertBefore(inserted.layout.lastBlockConv, () => new Identity());
    const covered = await OrtTrainer.create(inserted);
    assert.ok(covered, 'a model with an inserted module is covered');
    await covered.close();
    inserted.dispose();
    const vgg = buildModel({ arch: 'vgg11-bn', inputShape: [32, 32, 3], numClasses: 10, options: { cfg: [8, 'M', 8, 'M'], hidden: [16], dropout: true } }, undefined, 2);
    assert.ok([...vgg.root.modules()].some((m) => m.kind === 'Dropout'));
    assert.equal(await OrtTrainer.create(vgg), undefined, 'dropout');
    vgg.dispose();
  });
});
