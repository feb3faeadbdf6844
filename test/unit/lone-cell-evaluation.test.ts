/**
 * A lone cell process runs its cell without the test sets: it sends the purified model back as ONNX and the job
 * process evaluates it (core.evaluateLoneCell). The completed row must be the row of a cell run with the test
 * sets at hand: the same metrics, the same keys in the same order. Where the model cannot be exported the cell
 * asks for the sets once and evaluates itself; where ONNX Runtime refuses the bytes the job process evaluates
 * the imported graph on the backend.
 */
import { strict as assert } from 'node:assert';
import * as tf from '@tensorflow/tfjs-core';
import { useWasm } from '../helpers/backend';
import { buildModel } from '../../src/engine/models';
import { Linear } from '../../src/engine/nn/layers';
import { Rng } from '../../src/engine/util/rng';
import { evaluateLoneCell, runCell, type CellOutcome, type PreparedJob } from '../../src/engine/jobs/core';
import { evaluateOnnxFast, evaluateModel } from '../../src/engine/metrics/evaluate';
import type { ImageSet } from '../../src/engine/data/dataset';
import { ortWanted } from '../../src/engine/backend/onnx_runtime';
import { exportOnnx } from '../../src/engine/model_files/onnx_export';
import { predictLabels, predictLogits } from '../../src/engine/nn/train';

describe('a lone cell evaluated by the job process', function () {
  this.timeout(120_000);
  before(useWasm);

  const rng = new Rng(11);
  const set = (n: number): ImageSet => ({ n, shape: [8, 8, 1], x: Float32Array.from({ length: n * 64 }, () => rng.next()), y: Int32Array.from({ length: n }, (_, i) => i % 3), numClasses: 3 });
  const test = set(60);
  const triggered = { set: set(30), attackLabels: new Int32Array(30) };
  const aux = set(30);
  const augment = { cropPadding: 0, flip: false };
  // FT (two epochs) trains through ONNX Runtime where it loads; the victim has BatchNorm and a normalization.
  const cell = { aux: { name: 'a', type: 'unseen' as const, seed: 0, set: aux }, gic: false, defense: { id: 'ft', profile: 'fast' as const, params: { epochs: 2, batchSize: 10 } }, seed: 0, stream: 'cell:a:ft' };
  const victim = () => buildModel({ arch: 'plain-cnn', inputShape: [8, 8, 1], numClasses: 3, options: { layers: [8, 16] } }, { mean: [0.4], std: [0.3] });
  const withSets = (v: ReturnType<typeof victim>) => ({ victim: v, test, triggered, augment, seeds: [0] });
  const job = { test, triggered } as PreparedJob;
  const comparable = (o: CellOutcome) => ({ ...o.row, seconds: 0 });

  it('gives the row of a cell run with the test sets, key for key, and never asks for the sets', async () => {
    const start = tf.memory().numTensors;
    const v = victim();
    const here = await runCell(withSets(v), cell, aux, undefined, 0, undefined, () => undefined, [], 1);
    let asked = 0;
    const away = await runCell({ victim: v, augment, seeds: [0], fetchTestSets: async () => (asked++, { test, triggered }) }, cell, aux, undefined, 0, undefined, () => undefined, [], 1);
    assert.equal(here.row.error, null);
    assert.equal(away.row.error, null);
    assert.equal(asked, 0, 'the sets were not asked for');
    assert.ok(away.purified && away.purified.onnx.byteLength > 1000, 'the purified model came back as ONNX');
    assert.equal(away.row.acc, undefined, 'no metrics before the job process evaluates');
    const done = await evaluateLoneCell(job, away, undefined, 2);
    assert.equal(done.purified, undefined);
    assert.ok(done.row.seconds >= away.row.seconds);
    assert.deepEqual(Object.keys(done.row), Object.keys(here.row));
    assert.deepEqual(comparable(done), comparable(here));
    assert.ok(typeof here.row.acc === 'number' && here.row.acc > 0);
    v.dispose();
    assert.equal(tf.memory().numTensors, start, 'every tensor disposed');
  });

  it('a purified model that cannot be evaluated fails its row, not the job', async () => {
    const row = { aux: 'a', auxType: 'unseen' as const, gic: false, defense: 'ft', seed: 0, seconds: 1.5, output: null, error: null };
    const done = await evaluateLoneCell(job, { row, purified: { onnx: Uint8Array.of(1, 2, 3), inputShape: [8, 8, 1], numClasses: 3 } }, undefined, 1);
    assert.match(done.row.error ?? '', /\S/);
    assert.equal(done.row.acc, undefined);
    assert.ok(done.row.seconds >= 1.5);
    assert.equal(done.purified, undefined);
  });

  it('asks for the test sets once where the purified model cannot be exported, and evaluates it itself', async () => {
    const v = victim();
    const here = await runCell(withSets(v), cell, aux, undefined, 0, undefined, () => undefined, [], 1);
    // Every Linear module refuses the export for this test (a module the ONNX writer does not know).
    const proto = Linear.prototype as unknown as { emitOnnx?: () => string };
    proto.emitOnnx = () => {
      throw new Error('not exportable');
    };
    let asked = 0;
    let away: CellOutcome;
    try {
      away = await runCell({ victim: v, augment, seeds: [0], fetchTestSets: async () => (asked++, { test, triggered }) }, cell, aux, undefined, 0, undefined, () => undefined, [], 1);
    } finally {
      delete proto.emitOnnx;
    }
    assert.equal(asked, 1);
    assert.equal(away.purified, undefined);
    assert.equal(away.row.error, null);
    // The module could not go to ONNX Runtime either: FT trained on the backend, so only the metrics' kind of
    // agreement is checked (both rows are complete).
    for (const k of ['acc', 'asr', 'ra'] as const) assert.equal(typeof away.row[k], 'number', k);
    assert.deepEqual(Object.keys(away.row), Object.keys(here.row));
    v.dispose();
  });

  it('evaluates the exported graph on the backend where ONNX Runtime refuses it, with the same metrics', async function () {
    if (!ortWanted()) this.skip();
    const v = victim();
    // Weights away from their initial values, so that the network's features differ between images.
    tf.tidy(() => {
      for (const [key, p] of v.root.namedParams()) if (key.endsWith('.weight') && p.variable.shape.length > 1) p.variable.assign(tf.randomNormal(p.variable.shape, 0, 1, 'float32', 5));
    });
    // Images from black to bright, so that a random network's pooled features (and predictions) differ.
    const graded = (n: number): ImageSet => ({ ...set(n), x: Float32Array.from({ length: n * 64 }, (_, i) => (Math.floor(i / 64) % 6) / 5 * rng.next()) });
    const test = graded(60);
    const triggered = { set: graded(30), attackLabels: new Int32Array(30).fill(1) };
    // Logits centred per class over the test images (through the head's bias), so that the classes split them.
    const logits = await predictLogits(v, test, 64);
    const mean = [0, 1, 2].map((c) => logits.filter((_, i) => i % 3 === c).reduce((a, b) => a + b, 0) / test.n);
    const head = v.root.find('classifier') as Linear;
    tf.tidy(() => head.bias!.assign(tf.sub(head.bias!, tf.tensor1d(mean))));
    const bytes = await exportOnnx(v, { includeNormalization: true });
    const viaOrt = await evaluateOnnxFast(bytes, [8, 8, 1], 3, test, triggered, undefined, 1);
    const saved = process.env.BACKDOOR_AUDIT_ORT;
    process.env.BACKDOOR_AUDIT_ORT = '0';
    let viaBackend: Awaited<ReturnType<typeof evaluateOnnxFast>>;
    try {
      viaBackend = await evaluateOnnxFast(bytes, [8, 8, 1], 3, test, triggered, undefined, 1);
    } finally {
      if (saved === undefined) delete process.env.BACKDOOR_AUDIT_ORT;
      else process.env.BACKDOOR_AUDIT_ORT = saved;
    }
    const direct = await evaluateModel(v, test, triggered);
    assert.ok(new Set(await predictLabels(v, test, 64)).size > 1, 'the model does not give one class to everything');
    assert.equal(viaOrt.engine, 'onnxruntime');
    assert.equal(viaBackend.engine, 'backend');
    const { engine: _a, ...a } = viaOrt;
    const { engine: _b, ...b } = viaBackend;
    assert.deepEqual(a, direct);
    assert.deepEqual(b, direct);
    v.dispose();
  });
});
