/**
 * GIC's whole step as one ONNX graph (ort_calibration_graph.ts) against the backend's autodiff of the same loss
 * (gic.ts's calibrationLoss): the loss and every gradient of g's parameters, for both bounds, with and without
 * the BatchNorm term and the input-independent term, on a victim with normalization. g's weights are random
 * and large enough that the bound saturates, the L2 scale is active and pixels are clipped at 0 and 1.
 */
import { strict as assert } from 'node:assert';
import * as tf from '@tensorflow/tfjs-core';
import { useWasm } from '../helpers/backend';
import { buildModel } from '../../src/engine/models';
import { OrtModelGraph } from '../../src/engine/nn/ort_graph';
import { buildCalibrationGraph, calibrationNet, GIC_PREFIX, GIC_TERM_KEY } from '../../src/engine/nn/ort_calibration_graph';
import { calibrationLoss, GIC_DEFAULTS, GicNet, type GicNorm } from '../../src/engine/gic/gic';
import { ortTrainWanted } from '../../src/engine/nn/ort_train';
import { Rng } from '../../src/engine/util/rng';
import { maxAbsDiff } from '../helpers/parity';

describe('GIC step graph (ONNX Runtime) against the backend', function () {
  let start: number;
  before(async function () {
    await useWasm();
    if (!ortTrainWanted()) this.skip();
    start = tf.memory().numTensors;
  });
  after(() => {
    if (start !== undefined) assert.equal(tf.memory().numTensors, start, 'tensors leaked');
  });

  const cases: Array<[GicNorm, number, boolean, number]> = [
    ['inf', 1, true, 0.1],
    ['2', 1, true, 1.5],
    ['inf', 0, false, 0.1],
    ['2', 0.5, false, 0.5],
  ];
  for (const [norm, lambdaBn, globalTerm, delta] of cases) {
    it(`L${norm === 'inf' ? '_inf' : '2'} bound, lambdaBn ${lambdaBn}, ${globalTerm ? 'with' : 'without'} the global term: loss and gradients equal the backend's`, async () => {
      const victim = buildModel({ arch: 'preact-resnet18', inputShape: [12, 12, 3], numClasses: 10, options: { width: 4 } }, { mean: [0.5, 0.4, 0.3], std: [0.2, 0.25, 0.3] }, 1);
      // Running statistics away from the init values, so the BN term's gradient is not trivial.
      const rng = new Rng(7);
      for (const bn of victim.batchNorms()) {
        tf.tidy(() => {
          bn.runningMean.assign(tf.tensor1d(Float32Array.from({ length: bn.runningMean.size }, () => rng.uniform(-0.5, 0.5))));
          bn.runningVar.assign(tf.tensor1d(Float32Array.from({ length: bn.runningVar.size }, () => rng.uniform(0.5, 2))));
        });
      }
      const net = new GicNet([12, 12, 3], { ...GIC_DEFAULTS, norm, delta, lambdaBn, globalTerm, width: 6 });
      for (const v of net.variables()) tf.tidy(() => v.assign(tf.tensor(Float32Array.from({ length: v.size }, () => rng.uniform(-0.4, 0.4)), v.shape)));
      const n = 6;
      // Pixels at and near both ends of [0, 1], so the clip is active on some of them.
      const xs = Float32Array.from({ length: n * 12 * 12 * 3 }, (_, i) => (i % 17 === 0 ? 0 : i % 19 === 0 ? 1 : rng.uniform(0, 1)));
      const labels = Int32Array.from({ length: n }, (_, i) => (i * 3) % 10);
      const front = { h: net.h, globalTerm: net.globalTerm, delta, norm, lambdaBn };
      const graph = await OrtModelGraph.create(calibrationNet(victim, front), { bnTrain: false, loss: 'ce' }, 1, () => buildCalibrationGraph(victim, front));
      assert.ok(graph, 'ONNX Runtime loads and covers the victim');
      try {
        const run = await graph.run(xs, n, { labels });
        const x = tf.tensor4d(xs, [n, 12, 12, 3]);
        const y = tf.tensor1d(labels, 'int32');
        const vars = net.variables();
        const { value, grads } = tf.variableGrads(() => calibrationLoss(victim, net, x, y, lambdaBn), vars);
        try {
          const ref = (await value.data())[0];
          assert.ok(Math.abs(run.loss! - ref) < 1e-4 * Math.max(1, Math.abs(ref)), `loss ${run.loss} vs ${ref}`);
          const keyOf = new Map<tf.Variable, string>(net.h.namedParams().map(([key, p]) => [p.variable, GIC_PREFIX + key]));
          if (net.globalTerm) keyOf.set(net.globalTerm, GIC_TERM_KEY);
          assert.equal(run.grads!.size, vars.length);
          for (const v of vars) {
            const ours = run.grads!.get(keyOf.get(v)!)!;
            const want = (await grads[v.name].data()) as Float32Array;
            const { diff, scale } = maxAbsDiff(ours, want);
            assert.ok(scale > 1e-6, `the gradient of ${keyOf.get(v)} is not all zero`);
            assert.ok(diff <= 1e-4 * Math.max(scale, 1e-3), `${keyOf.get(v)}: max difference ${diff} at scale ${scale}`);
          }
        } finally {
          value.dispose();
          tf.dispose(Object.values(grads));
          x.dispose();
          y.dispose();
        }
      } finally {
        await graph.close();
        net.dispose();
        victim.dispose();
      }
    });
  }
});
