/**
 * The engine reads tensors asynchronously on every path a job takes: the webgpu backend cannot read
 * synchronously under Node (tfjs-backend-webgpu's dataSync needs an OffscreenCanvas), so one dataSync left on a
 * job path would fail a GPU job in its middle. Here the job's paths run on the pure-JS cpu backend twice, once
 * as they are and once with every synchronous read made to throw (Tensor.dataSync, arraySync, bufferSync and
 * the engine's readSync under them); both runs must finish with the same numbers, bit for bit, and free every
 * tensor they made. The paths: trainEpochs and fit, evaluation, every defense (backend path, tiny schedules),
 * NC's detection, GIC's calibration and its saved files, the synthetic auxiliary set, the embeddings, and
 * saving a model (with a BatchNorm mask) in every format.
 */
import { strict as assert } from 'node:assert';
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import { useWasm } from '../helpers/backend';
import { buildModel } from '../../src/engine/models';
import type { Model } from '../../src/engine/nn/model';
import { SGD } from '../../src/engine/nn/optim';
import { fit } from '../../src/engine/nn/train';
import { DEFENSES } from '../../src/engine/defenses';
import { resolveParams, type DefenseParams } from '../../src/engine/defenses/defense';
import { trainEpochs } from '../../src/engine/defenses/common';
import { evaluateModel, type TriggeredSet } from '../../src/engine/metrics/evaluate';
import { calibrate } from '../../src/engine/gic/gic';
import { saveCalibration } from '../../src/engine/gic/save';
import { synthesizeAuxSet } from '../../src/engine/auxdata/synthetic';
import { embedAuxSet } from '../../src/engine/embed';
import { saveModelFile, type ModelFormat } from '../../src/engine/model_files/model_io';
import type { ImageSet } from '../../src/engine/data/dataset';
import { Rng } from '../../src/engine/util/rng';

const SHAPE: [number, number, number] = [8, 8, 1];
const K = 3;

/** Seeded images whose class shows in their brightness, so that training has something to learn. */
function dataset(n: number, seed: number): ImageSet {
  const rng = new Rng(seed);
  const size = SHAPE[0] * SHAPE[1] * SHAPE[2];
  const x = new Float32Array(n * size);
  const y = new Int32Array(n);
  for (let i = 0; i < n; i++) {
    y[i] = i % K;
    for (let j = 0; j < size; j++) x[i * size + j] = Math.min(1, Math.max(0, 0.25 * y[i] + 0.3 * rng.next()));
  }
  return { n, shape: [...SHAPE], x, y, numClasses: K };
}

/** A corner patch, labelled with the true classes (the attack's label is 0). */
function triggered(set: ImageSet): TriggeredSet {
  const keep = Array.from(set.y.keys()).filter((i) => set.y[i] !== 0);
  const size = SHAPE[0] * SHAPE[1];
  const x = new Float32Array(keep.length * size);
  keep.forEach((src, i) => {
    x.set(set.x.subarray(src * size, (src + 1) * size), i * size);
    for (let r = 5; r < 8; r++) for (let c = 5; c < 8; c++) x[i * size + r * 8 + c] = 1;
  });
  return { set: { n: keep.length, shape: [...SHAPE], x, y: Int32Array.from(keep, (i) => set.y[i]), numClasses: K }, attackLabels: new Int32Array(keep.length) };
}

// Each defense on a schedule of a step or two: what matters here is that every read on its path is awaited.
const TINY: Record<string, DefenseParams> = {
  ft: { epochs: 1, batchSize: 16 },
  fp: { epochs: 1, batchSize: 16 },
  nad: { teacherEpochs: 1, epochs: 1, batchSize: 16 },
  ftsam: { epochs: 1, batchSize: 16 },
  fst: { epochs: 1, batchSize: 16 },
  clp: {},
  anp: { iterations: 3, batchSize: 16 },
  rnp: { unlearnMaxEpochs: 1, maskEpochs: 1, batchSize: 16 },
  sau: { epochs: 1, batchSize: 16 },
  ibau: { rounds: 1, K: 2, batchSize: 16 },
  nc: { steps: 3, epochs: 1, batchSize: 8 },
  npd: { warmupEpochs: 1, epochs: 1, batchSize: 16, steps: 1 },
};

const sha = (b: Uint8Array) => createHash('sha256').update(b).digest('hex');

/** Every number the job's paths produce, computed from scratch (same seeds each call). */
async function runPaths(dir: string): Promise<Record<string, unknown>> {
  const out: Record<string, unknown> = {};
  const train = dataset(48, 1);
  const aux = dataset(30, 2);
  const test = dataset(30, 3);
  const bad = triggered(test);
  const victim: Model = buildModel({ arch: 'plain-cnn', inputShape: SHAPE, numClasses: K, options: { layers: [4, 'M', 8] } }, { mean: [0.5], std: [0.25] }, 5);
  try {
    // fit(): the victim's training (the demo's), with its per-batch losses.
    const opt = new SGD(0.05, 0.9, 5e-4);
    const fitLosses: number[] = [];
    out.fitLoss = await fit(victim, train, { epochs: 2, batchSize: 16, optimizer: opt, lr: 0.05, rng: new Rng(6), augment: { cropPadding: 1, flip: false }, onBatch: (_e, _b, _n, l) => fitLosses.push(l) });
    opt.dispose();
    out.fitLosses = fitLosses;
    out.baseline = await evaluateModel(victim, test, bad);

    // trainEpochs on a copy, the defenses' loop (backend steps), with its losses.
    const copy = victim.clone();
    const opt2 = new SGD(0.01, 0.9, 5e-4);
    const epochLosses: number[] = [];
    await trainEpochs(
      { victim, aux, profile: 'fast', params: {}, augment: { cropPadding: 1, flip: false }, rng: new Rng(7), progress: () => undefined },
      copy,
      opt2,
      { epochs: 2, lr: 0.01, batchSize: 16, onBatch: (_e, _b, _n, l) => epochLosses.push(l) },
    );
    opt2.dispose();
    out.trainEpochs = { losses: epochLosses, metrics: await evaluateModel(copy, test, bad) };

    // Saving: every format, with a pruning mask on one BatchNorm (folded into gamma and beta on export).
    copy.batchNorms()[0].setMask(Float32Array.from({ length: 4 }, (_, i) => (i === 2 ? 0 : 1)));
    const masked = copy.clone();
    copy.dispose();
    const saved: Record<string, string> = {};
    for (const format of ['pt', 'safetensors', 'onnx', 'tfjs'] as ModelFormat[]) {
      const file = await saveModelFile(masked, path.join(dir, `masked.${format === 'tfjs' ? 'json' : format}`), format);
      saved[format] = sha(fs.readFileSync(file));
      if (format === 'tfjs') saved.tfjsWeights = sha(fs.readFileSync(path.join(dir, 'masked.weights.bin')));
    }
    masked.dispose();
    out.saved = saved;

    // Every defense on the backend path (no ONNX Runtime), its purified weights and figures.
    const defenses: Record<string, unknown> = {};
    for (const d of Object.values(DEFENSES)) {
      const r = await d.run({ victim, aux, profile: 'fast', params: resolveParams(d, 'fast', TINY[d.id]), augment: { cropPadding: 1, flip: false }, rng: new Rng(8).fork(d.id), progress: () => undefined });
      try {
        const sd = await r.model.stateDict();
        defenses[d.id] = { weights: sha(Buffer.concat([...sd.values()].map((t) => Buffer.from(t.data.buffer, t.data.byteOffset, t.data.byteLength)))), metrics: await evaluateModel(r.model, test, bad), details: r.details, detection: r.detection };
      } finally {
        r.model.dispose();
      }
    }
    out.defenses = defenses;

    // GIC: calibration on the backend, its report (all but the time) and its saved files.
    const cal = await calibrate(victim, aux, { epochs: 2, batchSize: 16, seed: 9 }, undefined, undefined, {});
    try {
      const { seconds: _s, ...report } = cal.report;
      const files = await saveCalibration(cal.net, cal.set, dir, 'aux');
      out.gic = { report, set: sha(new Uint8Array(cal.set.x.buffer)), net: sha(fs.readFileSync(path.join(dir, files.net))) };
      out.embedding = await embedAuxSet(victim, { aux: 'aux', reference: train, raw: aux, calibrated: cal.set, points: 18, seed: 3 });
    } finally {
      cal.net.dispose();
    }

    // The synthetic auxiliary set (model inversion).
    const syn = await synthesizeAuxSet(victim, { perClass: 2, steps: 3, batchSize: 6 }, new Rng(10));
    out.synthetic = sha(new Uint8Array(syn.x.buffer));
  } finally {
    victim.dispose();
  }
  return out;
}

/** Make every synchronous read throw until the returned function is called. */
function forbidSyncReads(): () => void {
  const proto = tf.Tensor.prototype as unknown as Record<string, unknown>;
  const names = ['dataSync', 'arraySync', 'bufferSync'];
  const saved = names.map((n) => proto[n]);
  const engine = tf.engine() as unknown as { readSync: unknown };
  const savedRead = engine.readSync;
  for (const n of names) {
    proto[n] = function () {
      throw new Error(`synchronous read: Tensor.${n}`);
    };
  }
  engine.readSync = () => {
    throw new Error('synchronous read: engine.readSync');
  };
  return () => {
    names.forEach((n, i) => (proto[n] = saved[i]));
    engine.readSync = savedRead;
  };
}

describe('asynchronous reads on the job paths', function () {
  this.timeout(600_000);
  let previous: string;
  let dir: string;

  before(async () => {
    await useWasm();
    previous = tf.getBackend();
    await tf.setBackend('cpu');
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ba-async-'));
  });
  after(async () => {
    await tf.setBackend(previous);
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it('the patch makes a synchronous read throw, and restores it', () => {
    const t = tf.scalar(1);
    const restore = forbidSyncReads();
    try {
      assert.throws(() => t.dataSync(), /synchronous read: Tensor\.dataSync/);
      assert.throws(() => t.arraySync(), /synchronous read: Tensor\.arraySync/);
    } finally {
      restore();
    }
    assert.equal(t.dataSync()[0], 1);
    t.dispose();
  });

  it('training, evaluation, every defense, GIC, synthesis, embeddings and saving finish without a synchronous read, with the same numbers', async () => {
    const free = await runPaths(fs.mkdtempSync(path.join(dir, 'free-')));
    const n0 = tf.memory().numTensors;
    const restore = forbidSyncReads();
    let guarded: Record<string, unknown>;
    try {
      guarded = await runPaths(fs.mkdtempSync(path.join(dir, 'guarded-')));
    } finally {
      restore();
    }
    assert.equal(tf.memory().numTensors, n0, 'tensors left behind');
    // The runs did real work: every defense returned a model, and the figures are numbers.
    assert.deepEqual(Object.keys(guarded.defenses as object).sort(), Object.keys(DEFENSES).sort());
    assert.ok((guarded.fitLosses as number[]).length > 0 && (guarded.fitLosses as number[]).every(Number.isFinite));
    assert.deepEqual(guarded, free);
  });
});
