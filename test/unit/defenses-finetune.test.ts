/**
 * The fine-tuning defenses (ft, fp, nad, ftsam, fst) on a tiny BadNets victim made here: each brings the
 * attack success rate below half of the victim's while keeping clean accuracy above a floor; no tensor is
 * left behind; progress is reported within epochs and a cancelled run stops at its next batch with
 * CancelledError and frees its copy of the model.
 */
import { strict as assert } from 'node:assert';
import * as tf from '@tensorflow/tfjs-core';
import { useWasm } from '../helpers/backend';
import { getDefense } from '../../src/engine/defenses';
import { CancelledError } from '../../src/engine/errors';
import { newTrainingRecord, type DefenseParams } from '../../src/engine/defenses/defense';
import { ortTrainWanted } from '../../src/engine/nn/ort_train';
import { buildFixture, cancelAtFirstReport, runDefense, type Fixture } from './defenses-fixture';

// [defense, overrides of the fast profile, highest ASR, lowest ACC]. This tiny victim checks the algorithms
// cheaply, on a short schedule at a larger rate (lr 0.1, batches of 32) under which it is purified in a few
// dozen steps; the default profile itself is checked on a PyTorch-trained victim in defenses-zoo.test.ts.
const SHORT = { lr: 0.1, batchSize: 32 };
const CASES: Array<[string, DefenseParams, number, number]> = [
  ['ft', { ...SHORT, epochs: 8 }, 0.5, 0.85],
  ['fp', { ...SHORT, epochs: 8 }, 0.5, 0.85],
  ['nad', { ...SHORT, teacherEpochs: 6, epochs: 6 }, 0.5, 0.75],
  ['ftsam', { ...SHORT, epochs: 8 }, 0.5, 0.65],
  ['fst', { ...SHORT, epochs: 6 }, 0.5, 0.55],
];

describe('fine-tuning defenses on a tiny BadNets victim', function () {
  this.timeout(300_000);
  let f: Fixture;

  before(async () => {
    await useWasm();
    f = await buildFixture();
  });
  after(() => f?.victim.dispose());

  it('the victim is backdoored (ACC >= 0.9, ASR >= 0.9)', () => {
    assert.ok(f.before.acc >= 0.9, `ACC ${f.before.acc}`);
    assert.ok(f.before.asr >= 0.9, `ASR ${f.before.asr}`);
  });

  for (const [id, overrides, maxAsrFraction, minAcc] of CASES) {
    it(`${id} halves the ASR and keeps ACC >= ${minAcc}, leaving no tensor`, async () => {
      const n0 = tf.memory().numTensors;
      const victimWeights = f.victim.head().weight.dataSync().slice();
      const { out, after, progress } = await runDefense(f, getDefense(id)!, overrides);
      assert.ok(after.asr <= maxAsrFraction * f.before.asr, `${id}: ASR ${after.asr.toFixed(3)} (victim ${f.before.asr.toFixed(3)})`);
      assert.ok(after.acc >= minAcc, `${id}: ACC ${after.acc.toFixed(3)}`);
      assert.ok(progress.length > 0, 'reports progress');
      const [done, total] = progress[progress.length - 1];
      assert.equal(done, total, 'progress reaches its total');
      // The victim itself is never modified.
      assert.deepEqual(f.victim.head().weight.dataSync(), victimWeights);
      out.model.dispose();
      assert.equal(tf.memory().numTensors, n0, 'tensors left behind');
    });
  }

  // The same bars with every step through ONNX Runtime: ft's, fp's fine-tuning, FST's (its penalty's gradient
  // added), both of FT-SAM's gradients, NAD's teacher and its student (seeded at the attention taps).
  const ORT_STEPS: Record<string, 'all' | 'some'> = { ft: 'all', fp: 'all', ftsam: 'all', fst: 'all', nad: 'all' };
  for (const [id, overrides, maxAsrFraction, minAcc] of CASES.filter(([id]) => ORT_STEPS[id])) {
    it(`${id} through ONNX Runtime halves the ASR and keeps ACC >= ${minAcc}, leaving no tensor`, async function () {
      if (!ortTrainWanted()) this.skip();
      const n0 = tf.memory().numTensors;
      const training = newTrainingRecord();
      const { out, after } = await runDefense(f, getDefense(id)!, overrides, { ortTraining: true, training });
      assert.ok(after.asr <= maxAsrFraction * f.before.asr, `${id}: ASR ${after.asr.toFixed(3)} (victim ${f.before.asr.toFixed(3)})`);
      assert.ok(after.acc >= minAcc, `${id}: ACC ${after.acc.toFixed(3)}`);
      assert.ok(training.onnxruntimeSteps > 0, JSON.stringify(training));
      if (ORT_STEPS[id] === 'all') assert.equal(training.backendSteps, 0, [...training.backendWhy].join('; '));
      else assert.ok(training.backendSteps > 0 && training.backendWhy.size > 0);
      out.model.dispose();
      assert.equal(tf.memory().numTensors, n0, 'tensors left behind');
    });
  }

  it('fp reports how many channels it pruned, chosen on the aux validation split', async () => {
    const { out } = await runDefense(f, getDefense('fp')!, { epochs: 1 });
    out.model.dispose();
    assert.equal(out.details!.selectedOn, 'aux validation split');
    assert.ok(Number(out.details!.prunedChannels) >= 1 && Number(out.details!.prunedChannels) < Number(out.details!.channels));
  });

  for (const id of ['ft', 'nad']) {
    it(`${id} reports progress within its first epoch, stops at the next batch when cancelled and frees its tensors`, async () => {
      const reports = await cancelAtFirstReport(f, getDefense(id)!);
      // The first report comes from inside epoch 1 (done = 0), and nothing runs after the cancellation.
      assert.deepEqual(reports, [0], 'one report, from within the first epoch');
    });
  }
});
