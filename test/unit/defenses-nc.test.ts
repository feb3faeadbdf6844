/**
 * Neural Cleanse on a tiny BadNets victim made here: the reversed trigger of the target label is the smallest
 * by far, the target is the one label flagged by its anomaly index, and unlearning with the reversed trigger
 * halves the attack success rate; no tensor is left behind.
 */
import { strict as assert } from 'node:assert';
import * as tf from '@tensorflow/tfjs-core';
import { useWasm } from '../helpers/backend';
import { getDefense } from '../../src/engine/defenses';
import { buildFixture, runDefense, TARGET, type Fixture } from './defenses-fixture';
import { ortTrainWanted } from '../../src/engine/nn/ort_train';
import { newTrainingRecord } from '../../src/engine/defenses/defense';

describe('Neural Cleanse on a tiny BadNets victim', function () {
  this.timeout(600_000);
  let f: Fixture;

  before(async () => {
    await useWasm();
    f = await buildFixture();
  });
  after(() => f?.victim.dispose());

  it('flags exactly the target label of the patch trigger and unlearns it', async () => {
    const n0 = tf.memory().numTensors;
    const { out, after, progress } = await runDefense(f, getDefense('nc')!, { steps: 200, ftLr: 0.05 });
    const det = out.detection!;
    assert.deepEqual(det.flagged, [TARGET], `anomaly indices ${det.anomalyIndex}`);
    assert.ok(det.anomalyIndex[TARGET] > 2, `target anomaly ${det.anomalyIndex[TARGET]}`);
    const l1 = out.details!.maskL1 as number[];
    // A 3x3 patch: the target's reversed mask is far smaller than any other label's.
    assert.ok(l1[TARGET] < 0.5 * Math.min(...l1.filter((_, i) => i !== TARGET)), `mask L1 ${l1.map((v) => v.toFixed(1))}`);
    assert.equal(out.details!.unlearned, true);
    // Every label's reversed trigger travels with the verdict (the panel shows them beside the anomaly index).
    assert.deepEqual(det.triggers!.map((t) => t.label), l1.map((_, i) => i));
    assert.deepEqual(det.triggers!.map((t) => t.maskL1), l1.map((v) => Math.round(v * 100) / 100));
    const [h, w, c] = f.aux.shape;
    assert.ok(det.triggers!.every((t) => Buffer.from(t.image, 'base64').length === h * w * c && Buffer.from(t.mask, 'base64').length === h * w));
    assert.ok(after.asr <= 0.5 * f.before.asr, `ASR ${after.asr.toFixed(3)} (victim ${f.before.asr.toFixed(3)})`);
    assert.ok(after.acc >= f.before.acc - 0.05, `ACC ${after.acc.toFixed(3)} (victim ${f.before.acc.toFixed(3)})`);
    assert.deepEqual(progress[progress.length - 1], [11, 11]);
    // One scale from the first reversal to the last unlearning epoch: the fraction done never goes back.
    const fractions = progress.map(([done, total]) => done / total);
    assert.ok(progress.some(([, total]) => total > 11), 'the unlearning epochs report progress');
    fractions.forEach((f, i) => assert.ok(i === 0 || f >= fractions[i - 1] - 1e-9, `progress went back at ${i}: ${fractions[i - 1]} -> ${f}`));
    out.model.dispose();
    assert.equal(tf.memory().numTensors, n0, 'tensors left behind');
  });

  // The reversal's forward and backward passes and the unlearning epochs through ONNX Runtime.
  it('through ONNX Runtime: flags exactly the target label and unlearns it, every step on it', async function () {
    if (!ortTrainWanted()) this.skip();
    const n0 = tf.memory().numTensors;
    const training = newTrainingRecord();
    const { out, after } = await runDefense(f, getDefense('nc')!, { steps: 200, ftLr: 0.05 }, { ortTraining: true, training });
    assert.deepEqual(out.detection!.flagged, [TARGET], `anomaly indices ${out.detection!.anomalyIndex}`);
    const l1 = out.details!.maskL1 as number[];
    assert.ok(l1[TARGET] < 0.5 * Math.min(...l1.filter((_, i) => i !== TARGET)), `mask L1 ${l1.map((v) => v.toFixed(1))}`);
    assert.ok(after.asr <= 0.5 * f.before.asr, `ASR ${after.asr.toFixed(3)} (victim ${f.before.asr.toFixed(3)})`);
    assert.ok(after.acc >= f.before.acc - 0.05, `ACC ${after.acc.toFixed(3)} (victim ${f.before.acc.toFixed(3)})`);
    assert.ok(training.onnxruntimeSteps >= 2000 && training.backendSteps === 0, JSON.stringify(training));
    out.model.dispose();
    assert.equal(tf.memory().numTensors, n0, 'tensors left behind');
  });

  it('through ONNX Runtime: a reversal whose loss is not finite fails the cell with a clear error, leaving no tensor', async function () {
    if (!ortTrainWanted()) this.skip();
    const broken = f.victim.clone();
    try {
      // A head weight of NaN: every logit, and so the reversal's loss, is NaN at the first step.
      const head = broken.root.namedParams().find(([key]) => key.endsWith('.weight') && key.startsWith(broken.layout.head))![1].variable;
      const w = Float32Array.from(await head.data());
      w[0] = NaN;
      head.assign(tf.tensor(w, head.shape));
      const n0 = tf.memory().numTensors;
      const d = getDefense('nc')!;
      await assert.rejects(runDefense({ ...f, victim: broken }, d, { steps: 5 }, { ortTraining: true }), /trigger reversal diverged \(loss is not finite\)/);
      assert.equal(tf.memory().numTensors, n0, 'tensors left behind');
    } finally {
      broken.dispose();
    }
  });
});
