/**
 * Evaluation through ONNX Runtime gives the predictions of the training backend, image for image: on the
 * demo's victim over the embedded digits (clean and triggered), on a 3-channel CNN over random images, and on a
 * model with a module a defense inserted; without ONNX Runtime (BACKDOOR_AUDIT_ORT=0) it falls back.
 */
import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import { useWasm } from '../helpers/backend';
import { loadModelFile } from '../../src/engine/model_files/model_io';
import { loadEmbeddedMnist } from '../../src/engine/formats/data/mnist';
import { makeAttack, triggeredTestSet } from '../../src/engine/attacks';
import { predictLabels, predictLogits } from '../../src/engine/nn/train';
import { buildModel } from '../../src/engine/models';
import { evaluateModel, evaluateModelFast } from '../../src/engine/metrics/evaluate';
import { OrtPredictor } from '../../src/engine/metrics/ort_eval';
import { loadOrt } from '../../src/engine/backend/onnx_runtime';
import { Rng } from '../../src/engine/util/rng';
import { runJobFile } from '../../src/engine/jobs/runner';
import type { RunEvent } from '../../src/shared/run_events';
import type { ImageSet } from '../../src/engine/data/dataset';
import { subset } from '../../src/engine/data/dataset';

const VICTIM = path.join(__dirname, '..', '..', 'examples', 'mnist-badnets', 'victim.safetensors');

function randomSet(n: number, shape: [number, number, number], seed: number): ImageSet {
  const rng = new Rng(seed);
  const x = new Float32Array(n * shape[0] * shape[1] * shape[2]);
  for (let i = 0; i < x.length; i++) x[i] = rng.next();
  return { n, shape, x, y: new Int32Array(n), numClasses: 10 };
}

describe('evaluation through ONNX Runtime', function () {
  this.timeout(300_000);
  before(async function () {
    await useWasm();
    if (!loadOrt()) this.skip(); // optional dependency: the fallback is tested below either way
  });

  it('predicts exactly what the training backend predicts (demo victim, clean and triggered digits)', async () => {
    const victim = loadModelFile(VICTIM, 'victim').model;
    const digits = subset(loadEmbeddedMnist(), Array.from({ length: 3000 }, (_, i) => i));
    const triggered = triggeredTestSet(digits, makeAttack({ type: 'badnets' }, digits.shape, new Rng(0)), { target: 0 });
    const tensors = tf.memory().numTensors;
    const ort = (await OrtPredictor.create(victim, 2))!;
    assert.ok(ort, 'a session for the victim');
    for (const set of [digits, triggered.set]) assert.deepEqual(await ort.labels(set, 256), await predictLabels(victim, set, 256));
    await ort.dispose();
    const fast = await evaluateModelFast(victim, digits, triggered, undefined, 1);
    assert.equal(fast.engine, 'onnxruntime');
    assert.deepEqual({ ...fast, engine: undefined }, { ...(await evaluateModel(victim, digits, triggered)), engine: undefined });
    assert.ok(fast.acc > 0.95 && fast.asr > 0.95, `the victim is what it is: ${JSON.stringify(fast)}`);
    assert.equal(tf.memory().numTensors, tensors);
    victim.dispose();
  });

  it('keeps channel order and normalization on 3-channel inputs, and handles a batch remainder', async () => {
    const model = buildModel({ arch: 'small-cnn-32', inputShape: [32, 32, 3], numClasses: 10 }, { mean: [0.49, 0.48, 0.45], std: [0.25, 0.24, 0.26] }, 7);
    const set = randomSet(300, [32, 32, 3], 3);
    const ort = (await OrtPredictor.create(model, 1))!;
    const logits = await ort.logits(set, 128);
    const labels = await ort.labels(set, 128);
    await ort.dispose();
    const ref = await predictLogits(model, set, 128);
    let worst = 0;
    let scale = 0;
    for (let i = 0; i < ref.length; i++) {
      worst = Math.max(worst, Math.abs(logits[i] - ref[i]));
      scale = Math.max(scale, Math.abs(ref[i]));
    }
    assert.ok(scale > 0.01, `logits are not all zero (${scale})`);
    assert.ok(worst <= 1e-4 * Math.max(1, scale), `max |ort - backend| = ${worst} (logit scale ${scale})`);
    assert.deepEqual(labels, await predictLabels(model, set, 128));
    model.dispose();
  });

  it('falls back to the training backend when ONNX Runtime is turned off', async () => {
    const victim = loadModelFile(VICTIM, 'victim').model;
    const digits = subset(loadEmbeddedMnist(), Array.from({ length: 500 }, (_, i) => i));
    const triggered = triggeredTestSet(digits, makeAttack({ type: 'badnets' }, digits.shape, new Rng(0)), { target: 0 });
    process.env.BACKDOOR_AUDIT_ORT = '0';
    try {
      const r = await evaluateModelFast(victim, digits, triggered, undefined, 1);
      assert.equal(r.engine, 'backend');
      assert.deepEqual({ ...r, engine: undefined }, { ...(await evaluateModel(victim, digits, triggered)), engine: undefined });
    } finally {
      delete process.env.BACKDOOR_AUDIT_ORT;
      victim.dispose();
    }
  });

  it("a job names what evaluated in its baseline event, as results.json's backend.evaluation does (the status bar shows it)", async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ba-ort-events-'));
    try {
      const job = path.join(dir, 'audit.json');
      fs.writeFileSync(job, JSON.stringify({ model: VICTIM, data: { test: { format: 'mnist-embedded' } }, attack: { type: 'badnets', target: 0 }, device: 'cpu', embedding: { method: 'none' } }));
      for (const [ort, want] of [['1', 'onnxruntime-cpu'], ['0', 'wasm']] as const) {
        process.env.BACKDOOR_AUDIT_ORT = ort;
        const events: RunEvent[] = [];
        const results = await runJobFile(job, { outDir: path.join(dir, `out-${ort}`), workers: 1, onEvent: (e) => events.push(e) });
        const baseline = events.find((e): e is Extract<RunEvent, { type: 'baseline' }> => e.type === 'baseline')!;
        assert.equal(baseline.evaluation, want);
        assert.deepEqual([results.backend.name, results.backend.evaluation], ['wasm', want]);
        assert.equal(events.find((e) => e.type === 'started' && e.backend === 'wasm')?.type, 'started');
      }
    } finally {
      delete process.env.BACKDOOR_AUDIT_ORT;
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});
