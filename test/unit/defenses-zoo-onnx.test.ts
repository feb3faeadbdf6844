/**
 * The defenses on a victim we did not train, given as ONNX with its BatchNorm folded into the convolutions:
 * `cnn-badnets` of the PyTorch victim zoo (scripts/zoo/train_victims.py: a plain Conv-BN-ReLU stack of width 16
 * trained by PyTorch on Fashion-MNIST with a 3x3 BadNets patch, pratio 0.1, target 0, BackdoorBench's SGD
 * recipe, exported in eval mode), its 500 auxiliary images and the first 1,000 clean test images with their
 * triggered copies. Without BatchNorm, FT-SAM took the model to ACC 0.152 and CLP refused it (zoo, full test
 * set, seed 0); with BatchNorm put back for each defense (models/renormalize.ts) FT-SAM halves the ASR within
 * 0.05 of the victim's accuracy and CLP runs. Regenerate the fixture with
 * `scripts/zoo/make_test_fixture.py cnn-badnets`.
 */
import { strict as assert } from 'node:assert';
import { useWasm } from '../helpers/backend';
import { loadZooFixture, zooJob, type ZooFixture } from '../helpers/zoo';
import { backendInfo } from '../../src/engine/backend';
import { runPrepared } from '../../src/engine/jobs/core';
import type { Metrics, Results } from '../../src/shared/results';

describe('defenses on a PyTorch-trained plain CNN exported to ONNX with BatchNorm folded (zoo: cnn-badnets)', function () {
  this.timeout(900_000);
  let zoo: ZooFixture;
  let baseline: Metrics;
  let results: Results;

  before(async () => {
    await useWasm();
    zoo = await loadZooFixture('cnn-badnets');
    baseline = zoo.baseline;
  });
  after(() => zoo?.loaded.model.dispose());

  it('the victim has no BatchNorm layer, is backdoored, and we measure it as PyTorch measures its state_dict (within 0.002)', () => {
    assert.equal(zoo.loaded.model.batchNorms().length, 0);
    assert.ok(baseline.acc >= 0.78 && baseline.asr! >= 0.8, `ACC ${baseline.acc}, ASR ${baseline.asr}`);
    const torch = zoo.torch;
    for (const k of ['acc', 'asr', 'ra'] as const) assert.ok(Math.abs(baseline[k]! - torch[k]!) <= 0.002, `${k}: ours ${baseline[k]}, PyTorch ${torch[k]}`);
  });

  it('ftsam and clp run with BatchNorm put back after the five convolutions, and say so', async () => {
    results = await runPrepared(zooJob(zoo, ['ftsam', 'clp']), { backend: backendInfo(), workers: 2, emit: () => undefined });
    for (const r of results.rows) {
      assert.ok(!r.error, `${r.defense}: ${r.error}`);
      assert.equal((r.details as { batchNormRestored?: number }).batchNormRestored, 5, r.defense);
      assert.match(r.departures ?? '', /BatchNorm put back after 5 convolutions/);
    }
  });

  it('ftsam (fast profile) halves the ASR and keeps ACC within 0.05', () => {
    const row = results.rows.find((r) => r.defense === 'ftsam')!;
    const msg = `ACC ${baseline.acc.toFixed(3)} -> ${row.acc!.toFixed(3)}, ASR ${baseline.asr!.toFixed(3)} -> ${row.asr!.toFixed(3)}`;
    assert.ok(row.asr! <= 0.5 * baseline.asr!, msg);
    assert.ok(row.acc! >= baseline.acc - 0.05, msg);
  });

  it('clp lowers the ASR', () => {
    const row = results.rows.find((r) => r.defense === 'clp')!;
    assert.ok(row.asr! < baseline.asr!, `ASR ${baseline.asr!.toFixed(3)} -> ${row.asr!.toFixed(3)}`);
  });
});
