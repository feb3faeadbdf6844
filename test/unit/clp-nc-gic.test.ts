import { strict as assert } from 'node:assert';
import * as tf from '@tensorflow/tfjs-core';
import { useWasm } from '../helpers/backend';
import { buildModel } from '../../src/engine/models';
import { clp, largestSingularValue, channelLipschitz } from '../../src/engine/defenses/clp';
import { anomalyIndices, flagSmallNorms } from '../../src/engine/defenses/nc';
import { Conv2d, BatchNorm2d } from '../../src/engine/nn/layers';
import { GicNet, GIC_DEFAULTS, enforceBound, perturbationStats } from '../../src/engine/gic/gic';
import { Rng } from '../../src/engine/util/rng';
import type { ImageSet } from '../../src/engine/data/dataset';

describe('CLP', () => {
  before(useWasm);

  it('largest singular value by power iteration', () => {
    // [[3,0],[0,4],[0,0]] has singular values 4 and 3.
    assert.ok(Math.abs(largestSingularValue([3, 0, 0, 4, 0, 0], 3, 2) - 4) < 1e-6);
    // Rank one: u v^T with |u| = sqrt(2), |v| = sqrt(5).
    assert.ok(Math.abs(largestSingularValue([1, 2, 1, 2], 2, 2) - Math.sqrt(10)) < 1e-6);
  });

  it('prunes exactly the channel with an outlying Lipschitz bound (hand-built layer)', async () => {
    const model = buildModel({ arch: 'plain-cnn', inputShape: [6, 6, 1], numClasses: 2, options: { layers: [16] } });
    const conv = model.root.find('features.0') as Conv2d;
    const bn = model.root.find('features.1') as BatchNorm2d;
    // Every channel the same small kernel, except channel 5: 50x larger.
    const w = new Float32Array(9 * 16);
    for (let k = 0; k < 16; k++) for (let i = 0; i < 9; i++) w[i * 16 + k] = (k === 5 ? 50 : 1) * (i === 4 ? 1 : 0.1);
    conv.weight.assign(tf.tensor4d(w, [3, 3, 1, 16]));
    bn.bias.assign(tf.fill([16], 0.3));
    const lips = await channelLipschitz(conv, bn);
    assert.ok(Math.abs(lips[5] / lips[0] - 50) < 1e-3);
    const out = await clp.run({ victim: model, aux: undefined as never, profile: 'fast', params: { u: 3 }, augment: { cropPadding: 0, flip: false }, rng: new Rng(0), progress: () => undefined });
    const bn2 = out.model.root.find('features.1') as BatchNorm2d;
    const gamma = Array.from(bn2.weight.dataSync());
    const beta = Array.from(bn2.bias.dataSync());
    gamma.forEach((g, k) => assert.equal(g, k === 5 ? 0 : 1, `gamma[${k}]`));
    beta.forEach((b, k) => assert.ok(Math.abs(b - (k === 5 ? 0 : 0.3)) < 1e-7, `beta[${k}]`));
    assert.deepEqual(out.details!.pruned, { 'features.1': [5] });
    // The victim is untouched.
    assert.deepEqual(Array.from(bn.weight.dataSync()), new Array(16).fill(1));
    out.model.dispose();
    model.dispose();
  });
});

describe('Neural Cleanse anomaly index', () => {
  it('flags the small outlier by MAD', () => {
    const a = anomalyIndices([100, 102, 98, 101, 99, 100, 103, 97, 100, 10]);
    assert.ok(a[9] > 2);
    assert.ok(a.slice(0, 9).every((v) => v < 2));
  });

  // Mask norms NC reversed on the zoo's preact8-badnets (PyTorch-trained, 3x3 patch, target 0): the clean labels
  // spread from 44 to 129 pixels, the target's mask is the patch's 8.
  const zooNorms = [8.1, 129.2, 47.4, 123.1, 88.3, 99.7, 58.1, 116.1, 44.5, 91.6];

  it('on the linear scale a widely spread set of clean norms hides the patch (index 1.7)', () => {
    const { anomaly, flagged } = flagSmallNorms(zooNorms, 'linear', 2);
    assert.deepEqual(flagged, []);
    assert.ok(Math.abs(anomaly[0] - 1.7) < 0.05, `anomaly ${anomaly[0]}`);
  });

  it('on the log scale the patch stands out (index 4.8) and no clean label comes near the threshold', () => {
    const { anomaly, flagged } = flagSmallNorms(zooNorms, 'log', 2);
    assert.deepEqual(flagged, [0]);
    assert.ok(anomaly[0] > 4.5, `anomaly ${anomaly[0]}`);
    assert.ok(anomaly.slice(1).every((v) => v < 1.5), `anomaly ${anomaly}`);
  });

  it('flags only the small side: an unusually large mask is not a trigger', () => {
    assert.deepEqual(flagSmallNorms([100, 102, 98, 101, 99, 100, 103, 97, 100, 1000], 'log', 2).flagged, []);
  });
});

describe('GIC network', () => {
  before(useWasm);

  it('is the identity at initialization (zero-init last layer)', () => {
    for (const norm of ['inf', '2'] as const) {
      const net = new GicNet([8, 8, 3], { ...GIC_DEFAULTS, norm });
      const x = tf.randomUniform([4, 8, 8, 3], 0, 1, 'float32', 5) as tf.Tensor4D;
      const g = net.apply(x);
      assert.equal(tf.max(tf.abs(tf.sub(g, x))).dataSync()[0], 0);
      tf.dispose([x, g]);
      net.dispose();
    }
  });

  it('bounds the perturbation by construction for any weights (L_inf and L2)', () => {
    for (const norm of ['inf', '2'] as const) {
      const delta = 0.05;
      const net = new GicNet([8, 8, 3], { ...GIC_DEFAULTS, norm, delta });
      // Large random weights everywhere, so that h(x) is far outside the ball.
      const rng = new Rng(1);
      for (const v of net.variables()) v.assign(tf.tensor(Float32Array.from({ length: v.size }, () => rng.uniform(-3, 3)), v.shape));
      const x = tf.randomUniform([4, 8, 8, 3], 0, 1, 'float32', 6) as tf.Tensor4D;
      const g = net.apply(x);
      const set = (t: tf.Tensor): ImageSet => ({ n: 4, shape: [8, 8, 3], x: t.dataSync() as Float32Array, y: new Int32Array(4), numClasses: 2 });
      const a = set(x);
      const b = set(g);
      // By construction the network output is within the ball up to float32 rounding...
      const raw = perturbationStats(a, b, norm);
      assert.ok(raw.max <= delta + 1e-6, `${norm}: network output ${raw.max} outside the ball`);
      // ...and the saved images are within it exactly.
      enforceBound(a.x, b.x, 192, delta, norm);
      const stats = perturbationStats(a, b, norm);
      assert.ok(stats.max <= delta, `${norm}: max ${stats.max} > ${delta}`);
      assert.ok(stats.max > delta * 0.5, `${norm}: the test should push against the bound`);
      tf.dispose([x, g]);
      net.dispose();
    }
  });

  it('enforceBound repairs float32 rounding at the edge of the L_inf ball', () => {
    const x = Float32Array.from([0.3, 0.7, 0.1]);
    const g = Float32Array.from([0.3 + 0.1000001, 0.7 - 0.2, 0.1]);
    enforceBound(x, g, 3, 0.1, 'inf');
    for (let i = 0; i < 3; i++) assert.ok(Math.abs(g[i] - x[i]) <= 0.1);
  });
});
