import { strict as assert } from 'node:assert';
import * as tf from '@tensorflow/tfjs-core';
import { useWasm } from '../helpers/backend';
import { Conv2d, Linear, BatchNorm2d, Flatten } from '../../src/engine/nn/layers';
import { SGD, Adam, cosineLr } from '../../src/engine/nn/optim';
import { buildModel } from '../../src/engine/models';
import { Rng } from '../../src/engine/util/rng';
import { fit } from '../../src/engine/nn/train';
import { batchNormTrain } from '../../src/engine/nn/batchnorm_train';
import { BN_TRAIN, BN_TRAIN_GRAD } from '../../src/engine/backend/kernels/batch_norm_train';

describe('module graph', () => {
  before(useWasm);

  it('Conv2d computes a PyTorch-layout kernel exactly (OIHW in, symmetric padding)', () => {
    const conv = new Conv2d(1, 1, 3, { padding: 1 }, new Rng(0)).finalize();
    // A kernel that picks the pixel to the right (PyTorch cross-correlation: out[i,j] = x[i, j+1]).
    conv.params.get('weight')!.variable.assign(tf.tensor4d([0, 0, 0, 0, 0, 1, 0, 0, 0], [3, 3, 1, 1]));
    conv.params.get('bias')!.variable.assign(tf.tensor1d([0.5]));
    const x = tf.tensor4d([1, 2, 3, 4, 5, 6, 7, 8, 9], [1, 3, 3, 1]);
    const y = conv.forward(x, { training: false });
    assert.deepEqual(Array.from(y.dataSync()), [2.5, 3.5, 0.5, 5.5, 6.5, 0.5, 8.5, 9.5, 0.5]);
    tf.dispose([x, y]);
    conv.dispose();
  });

  it('state_dict uses PyTorch names and layouts and round-trips', async () => {
    const m = buildModel({ arch: 'preact-resnet18', inputShape: [8, 8, 3], numClasses: 5, options: { width: 4 } });
    const sd = await m.stateDict();
    assert.deepEqual(sd.get('conv1.weight')!.shape, [4, 3, 3, 3]);
    assert.deepEqual(sd.get('layer2.0.shortcut.0.weight')!.shape, [8, 4, 1, 1]);
    assert.deepEqual(sd.get('linear.weight')!.shape, [5, 32]);
    assert.equal(sd.get('layer1.0.bn1.num_batches_tracked')!.dtype, 'int64');
    assert.ok(!sd.has('layer1.0.shortcut.0.weight'), 'no shortcut conv when the shape is unchanged');
    const m2 = buildModel({ arch: 'preact-resnet18', inputShape: [8, 8, 3], numClasses: 5, options: { width: 4 } }, undefined, 7);
    m2.loadStateDict(sd);
    const x = tf.randomUniform([2, 8, 8, 3], 0, 1, 'float32', 1) as tf.Tensor4D;
    const a = m.forward(x);
    const b = m2.forward(x);
    assert.ok(tf.max(tf.abs(tf.sub(a, b))).dataSync()[0] < 1e-6);
    tf.dispose([x, a, b]);
    m.dispose();
    m2.dispose();
  });

  it('loadStateDict names the offending key and shape', async () => {
    const m = buildModel({ arch: 'small-cnn', inputShape: [28, 28, 1], numClasses: 10 });
    const sd = await m.stateDict();
    sd.set('classifier.weight', { shape: [3, 64], dtype: 'float32', data: new Float32Array(192) });
    assert.throws(() => m.loadStateDict(sd, 'x.pt'), /classifier\.weight.*\[3,64\].*\[10,32\]/);
    m.dispose();
  });

  it('Linear matches x W^T + b with PyTorch [out, in] weights', () => {
    const lin = new Linear(2, 2, new Rng(0)).finalize();
    lin.params.get('weight')!.variable.assign(tf.tensor2d([1, 3, 2, 4], [2, 2])); // internal [in,out] of W=[[1,2],[3,4]]
    lin.params.get('bias')!.variable.assign(tf.tensor1d([1, -1]));
    const y = lin.forward(tf.tensor2d([1, 1], [1, 2]), { training: false });
    assert.deepEqual(Array.from(y.dataSync()), [4, 6]);
    y.dispose();
    lin.dispose();
  });

  it('Flatten follows NCHW order', () => {
    const x = tf.tensor4d([1, 2, 3, 4, 5, 6, 7, 8], [1, 2, 2, 2]); // NHWC: pixel (0,0) has channels 1,2
    const y = new Flatten().forward(x, { training: false });
    assert.deepEqual(Array.from(y.dataSync()), [1, 3, 5, 7, 2, 4, 6, 8]);
    tf.dispose([x, y]);
  });

  it('BatchNorm normalizes with batch statistics in training and updates running stats (unbiased, momentum 0.1)', () => {
    const bn = new BatchNorm2d(1).finalize();
    const x = tf.tensor4d([1, 2, 3, 4], [4, 1, 1, 1]);
    const ctx = { training: true, bnUpdates: [] as Array<() => void> };
    const y = bn.forward(x, ctx);
    const v = 1.25; // biased variance of 1..4
    const expect = [1, 2, 3, 4].map((a) => (a - 2.5) / Math.sqrt(v + 1e-5));
    Array.from(y.dataSync()).forEach((a, i) => assert.ok(Math.abs(a - expect[i]) < 1e-5));
    ctx.bnUpdates.forEach((f) => f());
    assert.ok(Math.abs(bn.runningMean.dataSync()[0] - 0.25) < 1e-6);
    assert.ok(Math.abs(bn.runningVar.dataSync()[0] - (0.9 + 0.1 * (5 / 3))) < 1e-6);
    assert.equal(bn.numBatchesTracked, 1);
    bn.setMask(new Float32Array([0]));
    const z = bn.forward(x, { training: false });
    assert.deepEqual(Array.from(z.dataSync()), [0, 0, 0, 0]);
    tf.dispose([x, y, z]);
    bn.dispose();
  });

  it('eval-mode BatchNorm under a gradient tape gives tf.batchNorm\'s output and gradients (input, gamma, beta)', () => {
    const rng = new Rng(3);
    const bn = new BatchNorm2d(3).finalize();
    bn.runningMean.assign(tf.tensor1d([0.5, -1, 2]));
    bn.runningVar.assign(tf.tensor1d([0.25, 4, 1.5]));
    bn.weight.assign(tf.tensor1d([1.5, -0.5, 2]));
    bn.bias.assign(tf.tensor1d([0.1, 0.2, -0.3]));
    const x = tf.tensor4d(Array.from({ length: 2 * 4 * 4 * 3 }, () => rng.next() * 4 - 2), [2, 4, 4, 3]);
    const w = tf.tensor4d(Array.from({ length: 2 * 4 * 4 * 3 }, () => rng.next()), [2, 4, 4, 3]);
    // A weighted sum, so that every output element has its own upstream gradient.
    const ours = (xi: tf.Tensor) => tf.sum(tf.mul(bn.forward(xi as tf.Tensor4D, { training: false }), w));
    const ref = (xi: tf.Tensor, g: tf.Tensor, b: tf.Tensor) =>
      tf.sum(tf.mul(tf.batchNorm(xi as tf.Tensor4D, bn.runningMean as tf.Tensor1D, bn.runningVar as tf.Tensor1D, b as tf.Tensor1D, g as tf.Tensor1D, 1e-5), w));
    const dxOurs = tf.grad(ours)(x);
    const [dxRef, dgRef, dbRef] = tf.grads(ref)([x, bn.weight, bn.bias]);
    const maxDiff = (a: tf.Tensor, b: tf.Tensor) => tf.tidy(() => tf.max(tf.abs(tf.sub(a, b))).dataSync()[0]);
    assert.ok(maxDiff(dxOurs, dxRef) < 1e-5, `input gradient differs by ${maxDiff(dxOurs, dxRef)}`);
    // Gradients to the layer's own gamma and beta (what masks and fine-tuning in eval mode train).
    const { value, grads } = tf.variableGrads(() => ours(x) as tf.Scalar, [bn.weight as tf.Variable, bn.bias as tf.Variable]);
    assert.ok(maxDiff(grads[bn.weight.name], dgRef) < 1e-4, 'gamma gradient');
    assert.ok(maxDiff(grads[bn.bias.name], dbRef) < 1e-4, 'beta gradient');
    // The taped form and the fused kernel used outside a tape give the same output.
    const plainSum = tf.sum(tf.mul(bn.forward(x, { training: false }), w));
    assert.ok(Math.abs(plainSum.dataSync()[0] - value.dataSync()[0]) < 1e-4);
    tf.dispose([x, w, dxOurs, dxRef, dgRef, dbRef, plainSum, value, ...Object.values(grads)]);
    bn.dispose();
  });

  it('SGD with momentum and weight decay follows torch.optim.SGD', () => {
    const v = tf.variable(tf.tensor1d([1]));
    const opt = new SGD(0.1, 0.9, 0.01);
    const g = tf.tensor1d([2]);
    opt.step([v], [g]); // d = 2 + 0.01*1 = 2.01; buf = 2.01; p = 1 - 0.201
    assert.ok(Math.abs(v.dataSync()[0] - 0.799) < 1e-6);
    opt.step([v], [g]); // d = 2 + 0.00799; buf = 0.9*2.01 + 2.00799 = 3.81699; p = 0.799 - 0.381699
    assert.ok(Math.abs(v.dataSync()[0] - (0.799 - 0.381699)) < 1e-6);
    opt.dispose();
    tf.dispose([v, g]);
  });

  it('Adam follows torch.optim.Adam (first step moves by lr)', () => {
    const v = tf.variable(tf.tensor1d([1, -1]));
    const opt = new Adam(0.01);
    const g = tf.tensor1d([0.5, -3]);
    opt.step([v], [g]);
    const d = v.dataSync();
    assert.ok(Math.abs(d[0] - 0.99) < 1e-5 && Math.abs(d[1] + 0.99) < 1e-5);
    opt.dispose();
    tf.dispose([v, g]);
  });

  it('cosine schedule', () => {
    assert.equal(cosineLr(0.1, 0, 10), 0.1);
    assert.ok(Math.abs(cosineLr(0.1, 5, 10) - 0.05) < 1e-12);
  });

  it('clone copies weights and repeats insertions; forward taps features', () => {
    const m = buildModel({ arch: 'small-cnn', inputShape: [28, 28, 1], numClasses: 10 });
    const c = m.clone();
    const x = tf.randomUniform([2, 28, 28, 1], 0, 1, 'float32', 3) as tf.Tensor4D;
    const { logits, features } = c.forwardWithFeatures(x);
    assert.deepEqual(features.shape, [2, 32]);
    const l0 = m.forward(x);
    assert.ok(tf.max(tf.abs(tf.sub(l0, logits))).dataSync()[0] < 1e-6);
    tf.dispose([x, logits, features, l0]);
    m.dispose();
    c.dispose();
  });
});

describe('BatchNorm training op', () => {
  before(useWasm);

  it('its closed-form gradient equals autodiff through tf.moments', () => {
    // On wasm this is the fused heap kernel pair (backend/kernels/batch_norm_train.ts).
    assert.ok(tf.getBackend() === 'wasm' && tf.getKernel(BN_TRAIN, 'wasm') && tf.getKernel(BN_TRAIN_GRAD, 'wasm'));

    const x = tf.randomNormal([3, 4, 5, 6], 0.5, 2, 'float32', 11) as tf.Tensor4D;
    const gamma = tf.randomNormal([6], 1, 0.3, 'float32', 12) as tf.Tensor1D;
    const beta = tf.randomNormal([6], 0, 0.3, 'float32', 13) as tf.Tensor1D;
    const weights = tf.randomNormal([3, 4, 5, 6], 0, 1, 'float32', 14);
    const before = tf.memory().numTensors;
    const ours = tf.grads((a: tf.Tensor, g: tf.Tensor, b: tf.Tensor) => {
      const out = batchNormTrain(a as tf.Tensor4D, g as tf.Tensor1D, b as tf.Tensor1D, 1e-5);
      // The batch statistics it hands out for the running averages are tf.moments' (biased variance).
      tf.tidy(() => {
        const m = tf.moments(a, [0, 1, 2]);
        assert.ok(tf.max(tf.abs(tf.sub(m.mean, out.mean))).dataSync()[0] < 1e-5, 'batch mean');
        assert.ok(tf.max(tf.abs(tf.sub(m.variance, out.variance))).dataSync()[0] < 1e-4, 'batch variance');
      });
      out.mean.dispose();
      out.variance.dispose();
      return tf.sum(tf.mul(out.y, weights));
    })([x, gamma, beta]);
    assert.equal(tf.memory().numTensors, before + 3, 'only the three gradients remain');
    const ref = tf.grads((a: tf.Tensor, g: tf.Tensor, b: tf.Tensor) => {
      const { mean, variance } = tf.moments(a, [0, 1, 2]);
      return tf.sum(tf.mul(tf.batchNorm(a as tf.Tensor4D, mean as tf.Tensor1D, variance as tf.Tensor1D, b as tf.Tensor1D, g as tf.Tensor1D, 1e-5), weights));
    })([x, gamma, beta]);
    ['x', 'gamma', 'beta'].forEach((name, i) => {
      const err = tf.max(tf.abs(tf.sub(ours[i], ref[i]))).dataSync()[0];
      const scale = tf.max(tf.abs(ref[i])).dataSync()[0];
      assert.ok(err / scale < 1e-4, `${name}: relative error ${err / scale}`);
    });
    tf.dispose([...ours, ...ref]);
    tf.dispose([x, gamma, beta, weights]);
  });
});

describe('training loop memory', () => {
  before(useWasm);

  for (const name of ['SGD with momentum', 'Adam'] as const) {
    it(`holds the same number of tensors at the end of every epoch (${name}, BatchNorm in train mode)`, async () => {
      const rng = new Rng(3);
      const n = 40;
      const x = new Float32Array(n * 8 * 8 * 1);
      for (let i = 0; i < x.length; i++) x[i] = rng.next();
      const y = Int32Array.from({ length: n }, (_, i) => i % 4);
      const data = { n, shape: [8, 8, 1] as [number, number, number], x, y, numClasses: 4 };
      const model = buildModel({ arch: 'small-cnn', inputShape: [8, 8, 1], numClasses: 4 }, undefined, 5);
      const optimizer = name === 'Adam' ? new Adam(0.01) : new SGD(0.05, 0.9, 5e-4);
      const start = tf.memory().numTensors;
      const atEpochEnd: number[] = [];
      await fit(model, data, {
        epochs: 5, batchSize: 16, optimizer, lr: 0.05, rng,
        onBatch: (_e, b, batches) => { if (b === batches - 1) atEpochEnd.push(tf.memory().numTensors); },
      });
      assert.equal(atEpochEnd.length, 5);
      // The optimizer's slots appear during the first epoch; after that nothing may accumulate.
      assert.ok(atEpochEnd[0] > start, 'the optimizer holds its state as tensors');
      assert.deepEqual(atEpochEnd.slice(1), atEpochEnd.slice(1).map(() => atEpochEnd[0]), `tensor counts per epoch ${atEpochEnd.join(', ')}`);
      optimizer.dispose();
      model.dispose();
    });
  }
});
