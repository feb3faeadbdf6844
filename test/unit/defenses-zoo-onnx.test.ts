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
import * as fs from 'node:fs';
import * as path from 'node:path';
import { useWasm } from '../helpers/backend';
import { backendInfo } from '../../src/engine/backend';
import { runPrepared, type PreparedJob } from '../../src/engine/jobs/core';
import { loadModelFile } from '../../src/engine/model_files/model_io';
import { readNpyPair } from '../../src/engine/formats/data/npy';
import { evaluateModel, type TriggeredSet } from '../../src/engine/metrics/evaluate';
import type { ImageSet } from '../../src/engine/data/dataset';
import type { Metrics, Results } from '../../src/shared/results';

const DIR = path.join(__dirname, '..', 'fixtures', 'zoo', 'cnn-badnets');
const TARGET = 0;

describe('defenses on a PyTorch-trained plain CNN exported to ONNX with BatchNorm folded (zoo: cnn-badnets)', function () {
  this.timeout(900_000);
  let loaded: ReturnType<typeof loadModelFile>;
  let aux: ImageSet;
  let test: ImageSet;
  let triggered: TriggeredSet;
  let baseline: Metrics;
  let results: Results;

  before(async () => {
    await useWasm();
    const target = { shape: [28, 28, 1] as [number, number, number], numClasses: 10 };
    loaded = loadModelFile({ path: path.join(DIR, 'victim.onnx'), normalize: { mean: [0.286], std: [0.353] } }, 'zoo victim');
    aux = readNpyPair(path.join(DIR, 'aux_x.npy'), path.join(DIR, 'aux_y.npy'), target);
    test = readNpyPair(path.join(DIR, 'test_x.npy'), path.join(DIR, 'test_y.npy'), target);
    const bd = readNpyPair(path.join(DIR, 'bd_x.npy'), path.join(DIR, 'bd_y.npy'), target);
    triggered = { set: bd, attackLabels: new Int32Array(bd.n).fill(TARGET) };
    baseline = await evaluateModel(loaded.model, test, triggered);
  });
  after(() => loaded?.model.dispose());

  it('the victim has no BatchNorm layer, is backdoored, and we measure it as PyTorch measures its state_dict (within 0.002)', () => {
    assert.equal(loaded.model.batchNorms().length, 0);
    assert.ok(baseline.acc >= 0.78 && baseline.asr! >= 0.8, `ACC ${baseline.acc}, ASR ${baseline.asr}`);
    const torch = JSON.parse(fs.readFileSync(path.join(DIR, 'subset-metrics.json'), 'utf8')) as Metrics;
    for (const k of ['acc', 'asr', 'ra'] as const) assert.ok(Math.abs(baseline[k]! - torch[k]!) <= 0.002, `${k}: ours ${baseline[k]}, PyTorch ${torch[k]}`);
  });

  it('ftsam and clp run with BatchNorm put back after the five convolutions, and say so', async () => {
    const job: PreparedJob = {
      victim: loaded.model,
      model: loaded.info,
      test,
      triggered,
      aux: [{ name: 'unseen', type: 'unseen', seed: 0, set: aux }],
      defenses: ['ftsam', 'clp'].map((id) => ({ id, profile: 'fast' as const })),
      gicMode: 'off',
      augment: { cropPadding: 4, flip: false },
      seeds: [0],
    };
    results = await runPrepared(job, { backend: backendInfo(), workers: 2, emit: () => undefined });
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
