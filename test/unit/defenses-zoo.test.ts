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
import { useWasm } from '../helpers/backend';
import { loadZooFixture, zooJob, ZOO_TARGET, type ZooFixture } from '../helpers/zoo';
import { backendInfo } from '../../src/engine/backend';
import { runPrepared } from '../../src/engine/jobs/core';
import type { Metrics, Results } from '../../src/shared/results';

// The default-profile defenses that meet the zoo criterion on this victim. Measured on the zoo's preact8-badnets
// (full 10,000-image test set, scripts/zoo/run-defenses.ts, seed 0; victim ACC 0.827, ASR 0.979): ft 0.814 /
// 0.089, nad 0.808 / 0.050, ftsam 0.790 / 0.077, fst 0.804 / 0.060, nc 0.807 / 0.034 (target flagged), ibau
// 0.806 / 0.048, npd 0.811 / 0.058 (3 seeds) and sau 0.798 / 0.096 meet it; sau takes minutes and is left to the
// zoo script (README's zoo table), anp (0.784 / 0.759) keeps the backdoor: a known gap, not asserted here. The defenses run as one job on two cell processes, as `backdoor-audit run` runs them; NC, the
// longest (ten trigger reversals), goes first so the other process takes the rest meanwhile (each cell's random
// stream is named by its defense, so the order changes no result).
const PURIFIERS = ['nc', 'ft', 'nad', 'ibau', 'ftsam', 'fst', 'npd'];

describe('defenses on a PyTorch-trained PreAct-ResNet18 (zoo: preact8-badnets)', function () {
  this.timeout(900_000);
  let zoo: ZooFixture;
  let baseline: Metrics;
  let results: Results;

  before(async () => {
    await useWasm();
    zoo = await loadZooFixture('preact8-badnets');
    baseline = zoo.baseline;
  });
  after(() => zoo?.loaded.model.dispose());

  it('the victim is backdoored (ACC >= 0.8, ASR >= 0.95) and we measure it as PyTorch does (within 0.002)', () => {
    assert.ok(baseline.acc >= 0.8, `ACC ${baseline.acc}`);
    assert.ok(baseline.asr >= 0.95, `ASR ${baseline.asr}`);
    const torch = zoo.torch;
    for (const k of ['acc', 'asr', 'ra'] as const) assert.ok(Math.abs(baseline[k]! - torch[k]!) <= 0.002, `${k}: ours ${baseline[k]}, PyTorch ${torch[k]}`);
  });

  it('runs the default-profile defenses as one job on two cell processes', async () => {
    results = await runPrepared(zooJob(zoo, PURIFIERS), { backend: backendInfo(), workers: 2, emit: () => undefined });
    assert.deepEqual(results.rows.map((r) => r.defense).sort(), [...PURIFIERS].sort());
    for (const r of results.rows) assert.ok(!r.error, `${r.defense}: ${r.error}`);
  });

  it('NC (fast profile) flags the target, and only the target, from the auxiliary images alone', () => {
    const row = results.rows.find((r) => r.defense === 'nc')!;
    const details = row.details as { flagged: number[]; maskL1: number[] };
    assert.deepEqual(details.flagged, [ZOO_TARGET], `mask norms ${details.maskL1.map((v) => v.toFixed(1))}`);
  });

  for (const id of PURIFIERS) {
    it(`${id} (fast profile) halves the ASR and keeps ACC within 0.05`, () => {
      const row = results.rows.find((r) => r.defense === id)!;
      const msg = `${id}: ACC ${baseline.acc.toFixed(3)} -> ${row.acc!.toFixed(3)}, ASR ${baseline.asr!.toFixed(3)} -> ${row.asr!.toFixed(3)}`;
      assert.ok(row.asr! <= 0.5 * baseline.asr!, msg);
      assert.ok(row.acc! >= baseline.acc - 0.05, msg);
    });
  }
});
