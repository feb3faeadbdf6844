/**
 * The defenses on a victim we did not train, given as ONNX with its BatchNorm folded into the convolutions:
 * `cnn-badnets` of the PyTorch victim zoo (scripts/zoo/train_victims.py: a plain Conv-BN-ReLU stack of width 16
 * trained by PyTorch on Fashion-MNIST with a 3x3 BadNets patch, pratio 0.1, target 0, BackdoorBench's SGD
 * recipe, exported in eval mode), its 500 auxiliary images and the first 1,000 clean test images with their
 * triggered copies. Without BatchNorm, NAD and FT-SAM took the model to ACC 0.277 and 0.152 and CLP refused it
 * (zoo, full test set, seed 0); with BatchNorm put back for each defense (models/renormalize.ts) they purify it
 * about as PyTorch's run of the same recipes does on the network before the export. Regenerate the fixture
 * with `scripts/zoo/make_test_fixture.py cnn-badnets`.
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

  it('ft, nad, ftsam and clp run with BatchNorm put back after the five convolutions, and say so', async () => {
    results = await runPrepared(zooJob(zoo, ['ft', 'nad', 'ftsam', 'clp']), { backend: backendInfo(), workers: 2, emit: () => undefined });
    for (const r of results.rows) {
      assert.ok(!r.error, `${r.defense}: ${r.error}`);
      assert.equal((r.details as { batchNormRestored?: number }).batchNormRestored, 5, r.defense);
      assert.match(r.departures ?? '', /BatchNorm put back after 5 convolutions/);
    }
  });

  const describeRow = (id: string) => {
    const row = results.rows.find((r) => r.defense === id)!;
    return { row, msg: `${id}: ACC ${baseline.acc.toFixed(3)} -> ${row.acc!.toFixed(3)}, ASR ${baseline.asr!.toFixed(3)} -> ${row.asr!.toFixed(3)}` };
  };

  it('ft (fast profile) halves the ASR and keeps ACC within 0.05', () => {
    const { row, msg } = describeRow('ft');
    assert.ok(row.asr! <= 0.5 * baseline.asr!, msg);
    assert.ok(row.acc! >= baseline.acc - 0.05, msg);
  });

  // Folded, NAD and FT-SAM took this network to ACC 0.277 and 0.152. With BatchNorm restored they lose about
  // what PyTorch's run of the same recipes loses on the network before the export (full test set: 0.019 and
  // 0.057; ours 0.044 and 0.057), so the bar here is 0.08, not the zoo's 0.05.
  for (const id of ['nad', 'ftsam']) {
    it(`${id} (fast profile) halves the ASR and keeps ACC within 0.08`, () => {
      const { row, msg } = describeRow(id);
      assert.ok(row.asr! <= 0.5 * baseline.asr!, msg);
      assert.ok(row.acc! >= baseline.acc - 0.08, msg);
    });
  }

  it('clp lowers the ASR', () => {
    const row = results.rows.find((r) => r.defense === 'clp')!;
    assert.ok(row.asr! < baseline.asr!, `ASR ${baseline.asr!.toFixed(3)} -> ${row.asr!.toFixed(3)}`);
  });
});
