/**
 * The defenses on a victim we did not train: `preact8-badnets` of the PyTorch victim zoo
 * (scripts/zoo/train_victims.py: BackdoorBench's PreAct-ResNet18 at width 8, trained by PyTorch on 15,000
 * Fashion-MNIST images with a 3x3 BadNets patch, pratio 0.1, target 0, BackdoorBench's SGD recipe), its 500
 * auxiliary images from a held-out split, and the first 1,000 clean test images with their triggered copies
 * (made by PyTorch's attack code, not ours). With the default (`fast`) profile each defense must at least
 * halve the ASR and keep the clean accuracy within 0.05 of the victim's: a defense that purifies by wrecking
 * the model fails here. Regenerate the fixture with scripts/zoo/make_test_fixture.py.
 */
import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import { useWasm } from '../helpers/backend';
import { getDefense } from '../../src/engine/defenses';
import { resolveParams } from '../../src/engine/defenses/defense';
import { detectTriggers } from '../../src/engine/defenses/nc';
import { loadModelFile } from '../../src/engine/model_files/model_io';
import { readNpyPair } from '../../src/engine/formats/data/npy';
import { evaluateModel, type TriggeredSet } from '../../src/engine/metrics/evaluate';
import { Rng } from '../../src/engine/util/rng';
import type { ImageSet } from '../../src/engine/data/dataset';
import type { Model } from '../../src/engine/nn/model';
import type { Metrics } from '../../src/shared/results';

const DIR = path.join(__dirname, '..', 'fixtures', 'zoo', 'preact8-badnets');
const TARGET = 0;

// The default-profile defenses that meet the zoo criterion on this victim and run in about a minute each here.
// Measured on the zoo's preact8-badnets (full 10,000-image test set, scripts/zoo/run-defenses.ts, seed 0;
// victim ACC 0.827, ASR 0.979): ft 0.814 / 0.089, nad 0.795 / 0.103, ftsam 0.785 / 0.078, ibau 0.805 / 0.071,
// npd 0.813 / 0.059 and sau 0.798 / 0.096 meet it (sau takes many minutes, so it is left to the zoo script);
// anp (0.784 / 0.759) keeps the backdoor: a known gap, not asserted here.
const PURIFIERS = ['ft', 'nad', 'ftsam', 'fst', 'ibau', 'npd'];

describe('defenses on a PyTorch-trained PreAct-ResNet18 (zoo: preact8-badnets)', function () {
  this.timeout(600_000);
  let victim: Model;
  let aux: ImageSet;
  let test: ImageSet;
  let triggered: TriggeredSet;
  let baseline: Metrics;

  before(async () => {
    await useWasm();
    const target = { shape: [28, 28, 1] as [number, number, number], numClasses: 10 };
    victim = loadModelFile({ path: path.join(DIR, 'victim.pt'), inputShape: [28, 28, 1], numClasses: 10, normalize: { mean: [0.286], std: [0.353] } }, 'zoo victim').model;
    aux = readNpyPair(path.join(DIR, 'aux_x.npy'), path.join(DIR, 'aux_y.npy'), target);
    test = readNpyPair(path.join(DIR, 'test_x.npy'), path.join(DIR, 'test_y.npy'), target);
    const bd = readNpyPair(path.join(DIR, 'bd_x.npy'), path.join(DIR, 'bd_y.npy'), target);
    triggered = { set: bd, attackLabels: new Int32Array(bd.n).fill(TARGET) };
    baseline = evaluateModel(victim, test, triggered);
  });
  after(() => victim?.dispose());

  it('the victim is backdoored (ACC >= 0.8, ASR >= 0.95) and we measure it as PyTorch does (within 0.002)', () => {
    assert.ok(baseline.acc >= 0.8, `ACC ${baseline.acc}`);
    assert.ok(baseline.asr >= 0.95, `ASR ${baseline.asr}`);
    const torch = JSON.parse(fs.readFileSync(path.join(DIR, 'subset-metrics.json'), 'utf8')) as Metrics;
    for (const k of ['acc', 'asr', 'ra'] as const) assert.ok(Math.abs(baseline[k]! - torch[k]!) <= 0.002, `${k}: ours ${baseline[k]}, PyTorch ${torch[k]}`);
  });

  it('NC (fast profile) flags the target, and only the target, from the auxiliary images alone', async () => {
    const n0 = tf.memory().numTensors;
    const d = getDefense('nc')!;
    const rng = new Rng(0).fork('nc');
    const { flagged, detection, norms } = await detectTriggers({ victim, aux, profile: 'fast', params: resolveParams(d, 'fast', {}), augment: { cropPadding: 0, flip: false }, rng, progress: () => undefined });
    assert.deepEqual(flagged, [TARGET], `mask norms ${norms.map((v) => v.toFixed(1))}, anomaly ${detection.anomalyIndex}`);
    assert.equal(tf.memory().numTensors, n0, 'tensors left behind');
  });

  for (const id of PURIFIERS) {
    it(`${id} (fast profile) halves the ASR and keeps ACC within 0.05, leaving no tensor`, async () => {
      const n0 = tf.memory().numTensors;
      const d = getDefense(id)!;
      const out = await d.run({
        victim,
        aux,
        profile: 'fast',
        params: resolveParams(d, 'fast', {}),
        augment: { cropPadding: 4, flip: false },
        rng: new Rng(0).fork(id),
        progress: () => undefined,
      });
      const after = evaluateModel(out.model, test, triggered);
      out.model.dispose();
      const msg = `${id}: ACC ${baseline.acc.toFixed(3)} -> ${after.acc.toFixed(3)}, ASR ${baseline.asr.toFixed(3)} -> ${after.asr.toFixed(3)}`;
      assert.ok(after.asr <= 0.5 * baseline.asr, msg);
      assert.ok(after.acc >= baseline.acc - 0.05, msg);
      assert.equal(tf.memory().numTensors, n0, 'tensors left behind');
    });
  }
});
