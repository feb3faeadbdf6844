/**
 * The forward and vector-Jacobian-product graphs of ort_graph.ts against the backend's autodiff: for a loss
 * that is any function of the logits, the seeded graph's input gradient and parameter gradients equal
 * tf.grad / tf.variableGrads of the same loss (frozen and batch-statistics BatchNorm, with normalization).
 */
import { strict as assert } from 'node:assert';
import * as tf from '@tensorflow/tfjs-core';
import { useWasm } from '../helpers/backend';
import { buildModel } from '../../src/engine/models';
import { OrtModelGraph } from '../../src/engine/nn/ort_graph';
import { buildGradGraph } from '../../src/engine/nn/ort_grad_graph';
import { loadOrt, NCHWC_DOMAIN, nchwcBlockSize } from '../../src/engine/backend/onnx_runtime';
import { onnx } from 'onnx-proto';
import type { ArchSpec, Model } from '../../src/engine/nn/model';
import { maxAbsDiff } from '../helpers/parity';
import { attentionMap } from '../../src/engine/defenses/nad';
import { crossEntropy } from '../../src/engine/nn/train';
import { sharedObjective, unlearningLoss as sauUnlearningLoss } from '../../src/engine/defenses/sau';
import { SauAttackGraph } from '../../src/engine/nn/ort_sau_attack_graph';
import * as path from 'node:path';
import { loadModelFile } from '../../src/engine/model_files/model_io';
import { renormalize } from '../../src/engine/models/renormalize';
import type { ImageSet } from '../../src/engine/data/dataset';

const FIXTURES = path.join(__dirname, '..', 'fixtures');

const norm3 = { mean: [0.5, 0.4, 0.3], std: [0.2, 0.25, 0.3] };

/** A loss of the logits that is not cross-entropy: weighted log-softmax terms and a square. */
function lossOfLogits(logits: tf.Tensor2D): tf.Scalar {
  const k = logits.shape[1];
  const w = tf.reshape(tf.linspace(-1, 1, k), [1, k]);
  return tf.add(tf.mean(tf.sum(tf.mul(tf.logSoftmax(logits), w), 1)), tf.mul(tf.mean(tf.square(logits)), 0.1)) as tf.Scalar;
}

function relError(ours: Float32Array, ref: Float32Array): number {
  const { diff, scale } = maxAbsDiff(ours, ref);
  return diff / Math.max(scale, 1e-3);
}

describe('ONNX Runtime forward and vector-Jacobian-product graphs', function () {
  let start: number;
  before(async () => {
    await useWasm();
    start = tf.memory().numTensors;
  });
  after(() => assert.equal(tf.memory().numTensors, start, 'tensors leaked'));

  const cases: Array<[string, ArchSpec]> = [
    ['small-cnn-32', { arch: 'small-cnn-32', inputShape: [32, 32, 3], numClasses: 10 }],
    ['preact-resnet18 (width 8)', { arch: 'preact-resnet18', inputShape: [16, 16, 3], numClasses: 10, options: { width: 8 } }],
  ];
  for (const [name, spec] of cases) {
    for (const bnTrain of [false, true]) {
      it(`${name}: logits, input gradient and parameter gradients equal the backend's (BatchNorm ${bnTrain ? 'batch statistics' : 'frozen'})`, async () => {
        const model: Model = buildModel(spec, norm3, 1);
        const [h, w, c] = spec.inputShape;
        const n = 5;
        const x = tf.randomUniform([n, h, w, c], 0, 1, 'float32', 3) as tf.Tensor4D;
        const xs = x.dataSync() as Float32Array;
        const forward = await OrtModelGraph.create(model, { bnTrain, loss: 'none' });
        const inputOnly = await OrtModelGraph.create(model, { bnTrain, loss: 'seed', inputGrad: true, paramGrads: false });
        const both = await OrtModelGraph.create(model, { bnTrain, loss: 'seed', inputGrad: true, paramGrads: true });
        assert.ok(forward && inputOnly && both, 'ONNX Runtime loads and covers the model');
        try {
          const logits = await forward.logits(xs, n);
          const refLogits = tf.tidy(() => model.forward(x, { training: bnTrain }).dataSync() as Float32Array);
          assert.ok(relError(logits, refLogits) < 1e-4, 'logits');
          // The seed: d loss / d logits, on the backend, from ONNX Runtime's logits.
          const dl = tf.tidy(() => tf.grad((l: tf.Tensor) => lossOfLogits(l as tf.Tensor2D))(tf.tensor2d(logits, [n, spec.numClasses])).dataSync() as Float32Array);
          const refDx = tf.tidy(() => tf.grad((xi: tf.Tensor) => lossOfLogits(model.forward(xi as tf.Tensor4D, { training: bnTrain })))(x).dataSync() as Float32Array);
          const a = await inputOnly.run(xs, n, { dlogits: dl });
          assert.equal(a.grads, undefined, 'no parameter gradients asked for');
          assert.ok(relError(a.dx!, refDx) < 1e-3, `input gradient differs by ${relError(a.dx!, refDx)}`);
          const b = await both.run(xs, n, { dlogits: dl });
          assert.ok(relError(b.dx!, refDx) < 1e-3, 'input gradient (with parameter gradients)');
          const params = model.root.namedParams().filter(([, p]) => p.trainable);
          const ref = tf.variableGrads(() => lossOfLogits(model.forward(x, { training: bnTrain })), params.map(([, p]) => p.variable));
          try {
            assert.deepEqual([...both.gradKeys].sort(), params.map(([k]) => k).sort());
            for (const [key, p] of params) {
              const e = relError(b.grads!.get(key)!, ref.grads[p.variable.name].dataSync() as Float32Array);
              assert.ok(e < 1e-3, `${key}: gradient differs by ${e} of its scale`);
            }
          } finally {
            tf.dispose([ref.value, ...Object.values(ref.grads)]);
          }
        } finally {
          await Promise.all([forward?.close(), inputOnly?.close(), both?.close()]);
          x.dispose();
          model.dispose();
        }
      });
    }
  }

  it('BatchNorm scales (ANP masks and noise): cross-entropy and the gradients of the scales equal the backend ones', async () => {
    const spec: ArchSpec = { arch: 'preact-resnet18', inputShape: [16, 16, 3], numClasses: 10, options: { width: 8 } };
    const model = buildModel(spec, norm3, 2);
    const n = 6;
    const x = tf.randomUniform([n, 16, 16, 3], 0, 1, 'float32', 4) as tf.Tensor4D;
    const labels = Int32Array.from({ length: n }, (_, i) => (i * 7) % 10);
    const bns = model.batchNorms();
    const rnd = (len: number, seed: number) => Float32Array.from({ length: len }, (_, i) => 0.6 + 0.8 * (((i + 1) * 9301 + seed * 49297) % 233280) / 233280);
    const scales = new Map(bns.map((bn, i) => [bn.path, { g: rnd(bn.numFeatures, i), b: rnd(bn.numFeatures, i + 100) }]));
    const graph = await OrtModelGraph.create(model, { bnTrain: true, loss: 'ce', paramGrads: false, bnScales: true });
    assert.ok(graph, 'ONNX Runtime loads and covers the model');
    const gVars = tf.tidy(() => bns.map((bn) => tf.variable(tf.tensor1d(scales.get(bn.path)!.g))));
    const bVars = tf.tidy(() => bns.map((bn) => tf.variable(tf.tensor1d(scales.get(bn.path)!.b))));
    const index = new Map(bns.map((bn, i) => [bn as unknown, i]));
    try {
      const ours = await graph.run(x.dataSync() as Float32Array, n, { labels, scales });
      assert.equal(ours.grads, undefined, 'no parameter gradients asked for');
      const y = tf.tensor1d(labels, 'int32');
      const ref = tf.variableGrads(() => {
        const logits = model.forward(x, {
          training: true,
          bnAffineHook: (bn, gamma, beta) => [tf.mul(gamma, gVars[index.get(bn)!]), tf.mul(beta, bVars[index.get(bn)!])],
        });
        return tf.neg(tf.mean(tf.sum(tf.mul(tf.oneHot(y, 10), tf.logSoftmax(logits)), 1))) as tf.Scalar;
      }, [...gVars, ...bVars]);
      try {
        assert.ok(Math.abs(ours.loss! - ref.value.dataSync()[0]) < 1e-4, `loss ${ours.loss} vs ${ref.value.dataSync()[0]}`);
        bns.forEach((bn, i) => {
          const got = ours.scaleGrads!.get(bn.path)!;
          const eg = relError(got.g, ref.grads[gVars[i].name].dataSync() as Float32Array);
          const eb = relError(got.b, ref.grads[bVars[i].name].dataSync() as Float32Array);
          assert.ok(eg < 1e-3 && eb < 1e-3, `${bn.path}: gamma scale ${eg}, beta scale ${eb}`);
        });
      } finally {
        tf.dispose([y, ref.value, ...Object.values(ref.grads)]);
      }
    } finally {
      await graph.close();
      tf.dispose([x, ...gVars, ...bVars]);
      model.dispose();
    }
  });

  it('taps: tapped features come out (NCHW), and gradients seeded at them and at the logits equal the backend ones', async () => {
    const spec: ArchSpec = { arch: 'preact-resnet18', inputShape: [16, 16, 3], numClasses: 10, options: { width: 8 } };
    const model = buildModel(spec, norm3, 3);
    const taps = model.layout.stages.slice(-3);
    const n = 4;
    const x = tf.randomUniform([n, 16, 16, 3], 0, 1, 'float32', 5) as tf.Tensor4D;
    const xs = x.dataSync() as Float32Array;
    // A loss of the logits and of every tap, through NAD's attention maps.
    const loss = (logits: tf.Tensor, feats: tf.Tensor[], layout: 'nhwc' | 'nchw') =>
      tf.add(lossOfLogits(logits as tf.Tensor2D), tf.addN(feats.map((f, i) => tf.mul(tf.sum(tf.square(attentionMap(f, layout))), 0.3 * (i + 1))))) as tf.Scalar;
    const forward = await OrtModelGraph.create(model, { bnTrain: true, loss: 'none', taps });
    const seeded = await OrtModelGraph.create(model, { bnTrain: true, loss: 'seed', paramGrads: true, taps });
    assert.ok(forward && seeded, 'ONNX Runtime loads and covers the model');
    try {
      const fwd = await forward.run(xs, n);
      const tapSet = new Set(taps);
      const features = new Map<string, tf.Tensor>();
      const ref = tf.tidy(() => {
        const logits = model.forward(x, { training: true, taps: tapSet, features });
        // NHWC feature maps as NCHW, to compare with the graph's.
        return taps.map((t) => {
          const f = features.get(t)!;
          return (f.rank === 4 ? tf.transpose(f, [0, 3, 1, 2]) : f).dataSync() as Float32Array;
        }).concat([logits.dataSync() as Float32Array]);
      });
      taps.forEach((t, i) => assert.ok(relError(fwd.taps!.get(t)!.data, ref[i]) < 1e-4, `tap ${t}`));
      const seeds = tf.tidy(() => {
        const inputs = [tf.tensor2d(fwd.logits!, [n, 10]), ...taps.map((t) => tf.tensor(fwd.taps!.get(t)!.data, fwd.taps!.get(t)!.shape))];
        return tf.grads((l: tf.Tensor, ...f: tf.Tensor[]) => loss(l, f, 'nchw'))(inputs).map((g) => g.dataSync() as Float32Array);
      });
      const ours = await seeded.run(xs, n, { dlogits: seeds[0], dtaps: new Map(taps.map((t, i) => [t, seeds[i + 1]])) });
      const params = model.root.namedParams().filter(([, p]) => p.trainable);
      const expected = tf.variableGrads(() => {
        const feats = new Map<string, tf.Tensor>();
        const logits = model.forward(x, { training: true, taps: tapSet, features: feats });
        return loss(logits, taps.map((t) => feats.get(t)!), 'nhwc');
      }, params.map(([, p]) => p.variable));
      try {
        for (const [key, p] of params) {
          const e = relError(ours.grads!.get(key)!, expected.grads[p.variable.name].dataSync() as Float32Array);
          assert.ok(e < 1e-3, `${key}: gradient differs by ${e} of its scale`);
        }
        assert.ok(ours.stats && ours.stats.size === model.batchNorms().length, 'batch statistics of every BatchNorm');
      } finally {
        tf.dispose([expected.value, ...Object.values(expected.grads)]);
      }
    } finally {
      await Promise.all([forward?.close(), seeded?.close()]);
      x.dispose();
      model.dispose();
    }
  });

  it("NAD's attention terms in a cross-entropy graph: loss and every gradient equal the backend's autodiff of the student loss", async () => {
    const spec: ArchSpec = { arch: 'preact-resnet18', inputShape: [16, 16, 3], numClasses: 10, options: { width: 8 } };
    const student = buildModel(spec, norm3, 3);
    const teacher = buildModel(spec, norm3, 4);
    const taps = student.layout.stages.slice(-3);
    // NAD's betas: the attention terms outweigh the cross-entropy, so an error in their rule cannot hide.
    const betas = [500, 1000, 1000];
    const n = 5;
    const x = tf.randomUniform([n, 16, 16, 3], 0, 1, 'float32', 7) as tf.Tensor4D;
    const xs = x.dataSync() as Float32Array;
    const labels = Int32Array.from({ length: n }, (_, i) => (i * 7) % 10);
    const teacherGraph = await OrtModelGraph.create(teacher, { bnTrain: false, loss: 'none', taps, constantWeights: true });
    const studentGraph = await OrtModelGraph.create(student, { bnTrain: true, loss: 'ce', paramGrads: true, taps, attention: betas });
    assert.ok(teacherGraph && studentGraph, 'ONNX Runtime loads and covers the model');
    try {
      const teacherTaps = (await teacherGraph.run(xs, n)).taps!;
      const maps = taps.map((t) => tf.tidy(() => attentionMap(tf.tensor(teacherTaps.get(t)!.data, teacherTaps.get(t)!.shape), 'nchw').dataSync() as Float32Array));
      const ours = await studentGraph.run(xs, n, { labels, teacherAttention: new Map(taps.map((t, i) => [t, maps[i]])) });
      const tapSet = new Set(taps);
      const y = tf.tensor1d(labels, 'int32');
      const params = student.root.namedParams().filter(([, p]) => p.trainable);
      const expected = tf.variableGrads(() => {
        const tFeats = new Map<string, tf.Tensor>();
        teacher.forward(x, { training: false, taps: tapSet, features: tFeats });
        const sFeats = new Map<string, tf.Tensor>();
        const logits = student.forward(x, { training: true, taps: tapSet, features: sFeats }) as tf.Tensor2D;
        let loss: tf.Tensor = crossEntropy(logits, y);
        taps.forEach((t, i) => {
          loss = tf.add(loss, tf.mul(tf.mean(tf.squaredDifference(attentionMap(sFeats.get(t)!, 'nhwc'), attentionMap(tFeats.get(t)!, 'nhwc'))), betas[i]));
        });
        return loss as tf.Scalar;
      }, params.map(([, p]) => p.variable));
      try {
        const value = expected.value.dataSync()[0];
        assert.ok(Math.abs(ours.loss! - value) < 1e-4 * Math.max(1, Math.abs(value)), `loss ${ours.loss} vs ${value}`);
        // The attention terms alone move the loss: a graph without them would be off by far more.
        const ce = tf.tidy(() => crossEntropy(tf.tensor2d(ours.logits!, [n, 10]), y).dataSync()[0]);
        assert.ok(value - ce > 1e-3, `attention terms ${value - ce}`);
        for (const [key, p] of params) {
          const e = relError(ours.grads!.get(key)!, expected.grads[p.variable.name].dataSync() as Float32Array);
          assert.ok(e < 1e-3, `${key}: gradient differs by ${e} of its scale`);
        }
        assert.ok(ours.stats && ours.stats.size === student.batchNorms().length, 'batch statistics of every BatchNorm');
      } finally {
        tf.dispose([expected.value, ...Object.values(expected.grads), y]);
      }
    } finally {
      await Promise.all([teacherGraph?.close(), studentGraph?.close()]);
      x.dispose();
      student.dispose();
      teacher.dispose();
    }
  });

  it("SAU's unlearning loss in a cross-entropy graph over x then x': loss and every gradient equal the backend's autodiff", async () => {
    const spec: ArchSpec = { arch: 'preact-resnet18', inputShape: [16, 16, 3], numClasses: 10, options: { width: 8 } };
    const model = buildModel(spec, norm3, 5);
    const n = 6;
    const k = 10;
    const x = tf.randomUniform([n, 16, 16, 3], 0, 1, 'float32', 8) as tf.Tensor4D;
    const xAdv = tf.randomUniform([n, 16, 16, 3], 0, 1, 'float32', 9) as tf.Tensor4D;
    const labels = Int32Array.from({ length: n }, (_, i) => (i * 3) % k);
    const ref = Int32Array.from({ length: n }, (_, i) => (i * 5 + 1) % k);
    const poison = Float32Array.from({ length: n }, (_, i) => (i % 3 === 0 ? 0 : 1));
    // lambda 3: the SAR term carries as much of the gradient as the cross-entropy.
    const lambda = 3;
    const graph = await OrtModelGraph.create(model, { bnTrain: false, loss: 'ce', paramGrads: true, unlearning: { lambda } });
    assert.ok(graph, 'ONNX Runtime loads and covers the model');
    try {
      const both = new Float32Array(2 * x.size);
      both.set(x.dataSync() as Float32Array, 0);
      both.set(xAdv.dataSync() as Float32Array, x.size);
      const ours = await graph.run(both, 2 * n, { unlearning: { labels, ref, poison } });
      const y = tf.tensor1d(labels, 'int32');
      const r = tf.tensor1d(ref, 'int32');
      const w = tf.tensor1d(poison);
      const params = model.root.namedParams().filter(([, p]) => p.trainable);
      const expected = tf.variableGrads(() => sauUnlearningLoss(model.forward(x, { training: false }) as tf.Tensor2D, y, model.forward(xAdv, { training: false }) as tf.Tensor2D, r, w, k, lambda), params.map(([, p]) => p.variable));
      try {
        const value = expected.value.dataSync()[0];
        assert.ok(Math.abs(ours.loss! - value) < 1e-4 * Math.max(1, Math.abs(value)), `loss ${ours.loss} vs ${value}`);
        const ce = tf.tidy(() => crossEntropy(tf.tensor2d(ours.logits!.subarray(0, n * k), [n, k]), y).dataSync()[0]);
        assert.ok(value - ce > 1e-2, `SAR term ${value - ce}`);
        for (const [key, p] of params) {
          const e = relError(ours.grads!.get(key)!, expected.grads[p.variable.name].dataSync() as Float32Array);
          assert.ok(e < 1e-3, `${key}: gradient differs by ${e} of its scale`);
        }
      } finally {
        tf.dispose([expected.value, ...Object.values(expected.grads), y, r, w]);
      }
    } finally {
      await graph?.close();
      tf.dispose([x, xAdv]);
      model.dispose();
    }
  });

  it("SAU's PGD step as one graph of both models: the pixel gradient of the shared objective and the rows not yet shared equal the backend's", async () => {
    const spec: ArchSpec = { arch: 'preact-resnet18', inputShape: [16, 16, 3], numClasses: 10, options: { width: 8 } };
    const f0 = buildModel(spec, norm3, 5);
    // f: the victim with its weights moved a little, so that the two mostly agree on labels but not on probabilities.
    const f = f0.clone();
    let seed = 11;
    for (const [, p] of f.root.namedParams()) {
      if (!p.trainable) continue;
      const moved = tf.tidy(() => tf.add(p.variable, tf.mul(tf.randomNormal(p.variable.shape, 0, 1, 'float32', seed++), tf.mul(tf.sqrt(tf.mean(tf.square(p.variable))), 0.1))));
      p.variable.assign(moved);
      moved.dispose();
    }
    const m = 9;
    const n = 12; // the batch the objective averages over: x' holds only m of its rows
    const k = 10;
    // beta2 large: f and f0 are close, so the divergence term is small beside the cross-entropies at beta2 1.
    const p = { beta1: 0.5, beta2: 200 };
    const x = tf.randomUniform([m, 16, 16, 3], 0, 1, 'float32', 8) as tf.Tensor4D;
    const labels = Int32Array.from({ length: m }, (_, i) => (i * 3) % k);
    const predF = tf.tidy(() => tf.argMax(f.forward(x, { training: false }), 1).dataSync() as Int32Array);
    const pred0 = tf.tidy(() => tf.argMax(f0.forward(x, { training: false }), 1).dataSync() as Int32Array);
    // Each model's clean label, chosen so that every kind of row is there: both left it for the same label (shared,
    // every other row where the two agree); both keep their clean label; only f left it; only f0 left it.
    const other = (v: number) => (v + 1) % k;
    const kinds = Array.from(predF, (v, i) => (v === pred0[i] && i % 2 === 0 ? 'shared' : ['both keep', 'f left', 'f0 left'][i % 3]));
    const cleanF = Int32Array.from(predF, (v, i) => (kinds[i] === 'shared' || kinds[i] === 'f left' ? other(v) : v));
    const clean0 = Int32Array.from(pred0, (v, i) => (kinds[i] === 'shared' || kinds[i] === 'f0 left' ? other(v) : v));
    const expectedNotShared = Float32Array.from(kinds, (kind) => (kind === 'shared' ? 0 : 1));
    const graph = await SauAttackGraph.create(f, f0, p.beta1, p.beta2, 1);
    try {
      assert.ok(graph, 'ONNX Runtime loads and covers the models');
      for (const kind of ['shared', 'both keep', 'f left', 'f0 left']) assert.ok(kinds.includes(kind), `a row of each kind: ${kinds}`);
      const ours = await graph.step(x.dataSync() as Float32Array, m, labels, cleanF, clean0, n, await graph.readWeights());
      assert.deepEqual(Array.from(ours.notShared), Array.from(expectedNotShared));
      const y = tf.tensor1d(labels, 'int32');
      const masks = { notF: tf.tensor1d(Float32Array.from(predF, (v, i) => (v !== cleanF[i] ? 0 : 1))), not0: tf.tensor1d(Float32Array.from(pred0, (v, i) => (v !== clean0[i] ? 0 : 1))), notShared: tf.tensor1d(expectedNotShared) };
      const expected = tf.grad((xx: tf.Tensor) => sharedObjective(f.forward(xx as tf.Tensor4D, { training: false }) as tf.Tensor2D, f0.forward(xx as tf.Tensor4D, { training: false }) as tf.Tensor2D, y, masks, p, n))(x);
      // Each term alone, so that neither hides an error in the other.
      const advOnly = tf.grad((xx: tf.Tensor) => sharedObjective(f.forward(xx as tf.Tensor4D, { training: false }) as tf.Tensor2D, f0.forward(xx as tf.Tensor4D, { training: false }) as tf.Tensor2D, y, masks, { beta1: p.beta1, beta2: 0 }, n))(x);
      try {
        const e = relError(ours.dx, expected.dataSync() as Float32Array);
        assert.ok(e < 1e-3, `pixel gradient differs by ${e} of its scale`);
        const share = relError(expected.dataSync() as Float32Array, advOnly.dataSync() as Float32Array);
        assert.ok(share > 0.1, `the shared term moves the gradient by ${share} of its scale`);
      } finally {
        tf.dispose([expected, advOnly, y, ...Object.values(masks)]);
      }
    } finally {
      await graph?.close();
      x.dispose();
      f.dispose();
      f0.dispose();
    }
  });

  it('BatchNorm input statistics (frozen BatchNorm): they come out, and a loss of them and the logits has the backend pixel gradient', async () => {
    const spec: ArchSpec = { arch: 'preact-resnet18', inputShape: [16, 16, 3], numClasses: 10, options: { width: 8 } };
    const model = buildModel(spec, norm3, 4);
    const n = 5;
    const x = tf.randomUniform([n, 16, 16, 3], 0, 1, 'float32', 6) as tf.Tensor4D;
    const xs = x.dataSync() as Float32Array;
    const bns = model.batchNorms();
    // GIC's objective: CE-like logit terms plus squared distances of the input statistics to fixed targets.
    const loss = (logits: tf.Tensor, stats: Map<string, { mean: tf.Tensor; variance: tf.Tensor }>) =>
      tf.add(
        lossOfLogits(logits as tf.Tensor2D),
        tf.addN(bns.map((bn, i) => tf.add(tf.sum(tf.square(tf.sub(stats.get(bn.path)!.mean, 0.01 * i))), tf.sum(tf.square(tf.sub(stats.get(bn.path)!.variance, 1)))))),
      ) as tf.Scalar;
    const forward = await OrtModelGraph.create(model, { bnTrain: false, loss: 'none', inputStats: true });
    const seeded = await OrtModelGraph.create(model, { bnTrain: false, loss: 'seed', inputGrad: true, paramGrads: false, inputStats: true });
    assert.ok(forward && seeded, 'ONNX Runtime loads and covers the model');
    try {
      const fwd = await forward.run(xs, n);
      assert.equal(fwd.inputStats!.size, bns.length);
      const refStats = new Map<string, { mean: tf.Tensor1D; variance: tf.Tensor1D }>();
      tf.tidy(() => {
        model.forward(x, { training: false, bnInputStats: refStats });
        for (const bn of bns) {
          const ours = fwd.inputStats!.get(bn.path)!;
          assert.ok(relError(ours.mean, refStats.get(bn.path)!.mean.dataSync() as Float32Array) < 1e-4, `${bn.path} mean`);
          assert.ok(relError(ours.variance, refStats.get(bn.path)!.variance.dataSync() as Float32Array) < 1e-4, `${bn.path} variance`);
        }
      });
      const seeds = tf.tidy(() => {
        const inputs = [tf.tensor2d(fwd.logits!, [n, 10]), ...bns.flatMap((bn) => [tf.tensor1d(fwd.inputStats!.get(bn.path)!.mean), tf.tensor1d(fwd.inputStats!.get(bn.path)!.variance)])];
        return tf.grads((l: tf.Tensor, ...s: tf.Tensor[]) => loss(l, new Map(bns.map((bn, i) => [bn.path, { mean: s[2 * i], variance: s[2 * i + 1] }]))))(inputs).map((g) => g.dataSync() as Float32Array);
      });
      const ours = await seeded.run(xs, n, { dlogits: seeds[0], dInputStats: new Map(bns.map((bn, i) => [bn.path, { mean: seeds[1 + 2 * i], variance: seeds[2 + 2 * i] }])) });
      const expected = tf.tidy(() =>
        tf.grad((xi: tf.Tensor) => {
          const stats = new Map<string, { mean: tf.Tensor1D; variance: tf.Tensor1D }>();
          const logits = model.forward(xi as tf.Tensor4D, { training: false, bnInputStats: stats });
          return loss(logits, stats);
        })(x).dataSync() as Float32Array,
      );
      const e = relError(ours.dx!, expected);
      assert.ok(e < 1e-3, `pixel gradient differs by ${e} of its scale`);
    } finally {
      await Promise.all([forward?.close(), seeded?.close()]);
      x.dispose();
      model.dispose();
    }
  });

  it('split graphs: the forward part then the backward part give what the whole seeded graph gives', async () => {
    const preact: ArchSpec = { arch: 'preact-resnet18', inputShape: [16, 16, 3], numClasses: 10, options: { width: 8 } };
    const cnn: ArchSpec = { arch: 'small-cnn-32', inputShape: [32, 32, 3], numClasses: 10 };
    const forms: Array<[string, ArchSpec, Parameters<typeof OrtModelGraph.create>[1]]> = [
      ['pixels and weights, frozen BatchNorm (SAU)', preact, { bnTrain: false, loss: 'seed', inputGrad: true, paramGrads: true }],
      ['max pools (their indices cross over)', cnn, { bnTrain: false, loss: 'seed', inputGrad: true, paramGrads: false }],
      ['taps, batch statistics (NAD)', preact, { bnTrain: true, loss: 'seed', paramGrads: true, taps: ['layer3', 'layer4'] }],
      ['input statistics (GIC)', preact, { bnTrain: false, loss: 'seed', inputGrad: true, paramGrads: false, inputStats: true }],
    ];
    for (const [name, spec, options] of forms) {
      const model = buildModel(spec, norm3, 5);
      const [h, w, c] = spec.inputShape;
      const n = 4;
      const xs = Float32Array.from({ length: n * h * w * c }, (_, i) => ((i * 7919) % 1000) / 1000);
      const whole = await OrtModelGraph.create(model, options);
      const split = await OrtModelGraph.create(model, { ...options, split: true });
      assert.ok(whole && split, `${name}: ONNX Runtime loads and covers the model`);
      try {
        const pending = await split.forward(xs, n);
        const dlogits = Float32Array.from(pending.logits!, (v, i) => Math.sin(v + i));
        const dtaps = new Map([...(pending.taps ?? new Map<string, { data: Float32Array }>())].map(([t, f]) => [t, f.data.map((v) => 0.1 * v)]));
        const dInputStats = new Map([...(pending.inputStats ?? new Map<string, { mean: Float32Array; variance: Float32Array }>())].map(([p, s]) => [p, { mean: s.mean.map(() => 0.3), variance: s.variance.map(() => -0.2) }]));
        const seeds = { dlogits, dtaps, dInputStats };
        const ref = await whole.run(xs, n, seeds);
        const got = await split.backward(pending, seeds);
        assert.ok(relError(pending.logits!, ref.logits!) < 1e-5, `${name}: logits`);
        if (options.inputGrad) assert.ok(relError(got.dx!, ref.dx!) < 1e-4, `${name}: pixel gradient differs by ${relError(got.dx!, ref.dx!)}`);
        else assert.equal(got.dx, undefined);
        if (options.paramGrads) {
          assert.deepEqual([...got.grads!.keys()], [...ref.grads!.keys()]);
          for (const [key, g] of ref.grads!) assert.ok(relError(got.grads!.get(key)!, g) < 1e-4, `${name}: ${key}`);
        }
        for (const [t, f] of ref.taps ?? []) assert.ok(relError(pending.taps!.get(t)!.data, f.data) < 1e-5, `${name}: tap ${t}`);
        for (const [p, s] of ref.stats ?? []) assert.ok(relError(pending.stats!.get(p)!.variance, s.variance) < 1e-5, `${name}: batch statistics of ${p}`);
        for (const [p, s] of ref.inputStats ?? []) assert.ok(relError(pending.inputStats!.get(p)!.mean, s.mean) < 1e-5, `${name}: input mean of ${p}`);
        await assert.rejects(() => split.run(xs, n, seeds), /forward\(\) then backward\(\)/, 'a split graph is not run whole');
      } finally {
        await Promise.all([whole?.close(), split?.close()]);
        model.dispose();
      }
    }
  });

  it('imported ONNX graphs (a folded plain CNN, with BatchNorm put back, and a ResNet-18): logits and gradients equal the backend ones', async () => {
    const cnn = loadModelFile({ path: path.join(FIXTURES, 'zoo', 'cnn-badnets', 'victim.onnx'), normalize: { mean: [0.286], std: [0.353] } }, 'test').model;
    const resnet = loadModelFile(path.join(FIXTURES, 'parity_resnet18_w4.onnx'), 'test').model;
    const [h, w, c] = cnn.inputShape;
    const aux: ImageSet = { n: 16, shape: [h, w, c], x: Float32Array.from({ length: 16 * h * w * c }, (_, i) => ((i * 7919) % 1000) / 1000), y: new Int32Array(16), numClasses: 10 };
    const renormalized = (await renormalize(cnn, aux))!;
    try {
      for (const [name, model] of [['plain CNN', cnn], ['plain CNN with BatchNorm put back', renormalized.model], ['ResNet-18', resnet]] as const) {
        for (const bnTrain of name === 'plain CNN' ? [false] : [false, true]) {
          const [mh, mw, mc] = model.inputShape;
          const n = 3;
          const x = tf.randomUniform([n, mh, mw, mc], 0, 1, 'float32', 8) as tf.Tensor4D;
          const graph = await OrtModelGraph.create(model, { bnTrain, loss: 'seed', inputGrad: true, paramGrads: true });
          assert.ok(graph, `${name}: the graph covers the imported model`);
          try {
            const refLogits = tf.tidy(() => model.forward(x, { training: bnTrain }).dataSync() as Float32Array);
            const dl = tf.tidy(() => tf.grad((l: tf.Tensor) => lossOfLogits(l as tf.Tensor2D))(tf.tensor2d(refLogits, [n, model.numClasses])).dataSync() as Float32Array);
            const ours = await graph.run(x.dataSync() as Float32Array, n, { dlogits: dl });
            assert.ok(relError(ours.logits!, refLogits) < 1e-4, `${name}: logits`);
            const refDx = tf.tidy(() => tf.grad((xi: tf.Tensor) => lossOfLogits(model.forward(xi as tf.Tensor4D, { training: bnTrain })))(x).dataSync() as Float32Array);
            assert.ok(relError(ours.dx!, refDx) < 1e-3, `${name}: pixel gradient differs by ${relError(ours.dx!, refDx)}`);
            const params = model.root.namedParams().filter(([, p]) => p.trainable);
            const ref = tf.variableGrads(() => lossOfLogits(model.forward(x, { training: bnTrain })), params.map(([, p]) => p.variable));
            try {
              assert.deepEqual([...ours.grads!.keys()].sort(), params.map(([k]) => k).sort());
              for (const [key, p] of params) {
                const e = relError(ours.grads!.get(key)!, ref.grads[p.variable.name].dataSync() as Float32Array);
                assert.ok(e < 1e-3, `${name}: ${key} gradient differs by ${e} of its scale`);
              }
            } finally {
              tf.dispose([ref.value, ...Object.values(ref.grads)]);
            }
          } finally {
            await graph?.close();
            x.dispose();
          }
        }
      }
    } finally {
      renormalized.model.dispose();
      cnn.dispose();
      resnet.dispose();
    }
  });

  it('convolutions in NCHWc blocks (where this CPU has them): the loss and gradients of plain Conv, and the blocked kernels are used', async function () {
    const ort = loadOrt();
    const block = ort ? await nchwcBlockSize(ort) : 0;
    if (!block) this.skip();
    // Width = the block: every convolution but the first (1 input channel, read in NCHW) reorders its input.
    const spec: ArchSpec = { arch: 'preact-resnet18', inputShape: [28, 28, 1], numClasses: 10, options: { width: block } };
    const model = buildModel(spec, { mean: [0.3], std: [0.3] }, 5);
    const domains = onnx.ModelProto.decode(buildGradGraph(model, { bnTrain: true, nchwcBlock: block }).bytes).graph!.node!.filter((d) => d.domain === NCHWC_DOMAIN);
    const blockedConvs = domains.filter((d) => d.opType === 'Conv').length;
    // 17 convolutions forward (20 with the shortcuts' 1x1) and the stride-1 input gradients backward.
    assert.ok(blockedConvs >= 30, `${blockedConvs} blocked convolutions`);
    const n = 7;
    const x = Float32Array.from({ length: n * 28 * 28 }, (_, i) => ((i * 7919) % 97) / 97);
    const labels = Int32Array.from({ length: n }, (_, i) => (i * 3) % 10);
    const plain = await OrtModelGraph.create(model, { bnTrain: true, loss: 'ce', nchwcBlock: 0 });
    const blocked = await OrtModelGraph.create(model, { bnTrain: true, loss: 'ce', inputGrad: true });
    const plainDx = await OrtModelGraph.create(model, { bnTrain: true, loss: 'ce', inputGrad: true, nchwcBlock: 0 });
    assert.ok(plain && blocked && plainDx);
    try {
      const [a, b, c] = await Promise.all([plain.run(x, n, { labels }), blocked.run(x, n, { labels }), plainDx.run(x, n, { labels })]);
      assert.ok(Math.abs(a.loss! - b.loss!) < 1e-5 * Math.abs(a.loss!), `loss ${a.loss} vs ${b.loss}`);
      assert.ok(relError(b.dx!, c.dx!) < 1e-4, `pixel gradient differs by ${relError(b.dx!, c.dx!)}`);
      for (const [key, g] of a.grads!) assert.ok(relError(b.grads!.get(key)!, g) < 1e-4, `${key} gradient differs by ${relError(b.grads!.get(key)!, g)}`);
    } finally {
      await Promise.all([plain.close(), blocked.close(), plainDx.close()]);
      model.dispose();
    }
  });
});
