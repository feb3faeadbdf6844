/**
 * Numerical faults (issue 8, point 3) and out of memory inside a cell (point 6): NaN/Inf in the victim's weights
 * and a model whose outputs do not match the data's classes are refused before anything runs, with one line
 * naming the tensor or the numbers; a defense whose loss diverges fails its own row and the job goes on; an
 * allocation failure inside a cell is that cell's row error.
 */
import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import { buildModel } from '../../src/engine/models';
import { saveModelFile } from '../../src/engine/model_files/model_io';
import { runJobFile } from '../../src/engine/jobs/runner';
import { runPrepared, type PreparedJob } from '../../src/engine/jobs/core';
import { InputError, oneLine } from '../../src/engine/errors';
import { initBackend } from '../../src/engine/backend';
import { loadEmbeddedMnist, splitDisjoint } from '../../src/engine/formats/data/mnist';
import { makeAttack, triggeredTestSet } from '../../src/engine/attacks';
import { sampleBalanced } from '../../src/engine/auxdata/sample';
import { Rng } from '../../src/engine/util/rng';
import type { Model } from '../../src/engine/nn/model';
import type { RunEvent } from '../../src/shared/run_events';
import { useWasm } from '../helpers/backend';

const NORM = { mean: [0.1307], std: [0.3081] };

describe('numerical faults and out of memory', function () {
  this.timeout(600_000);
  let dir: string;

  before(async () => {
    await useWasm();
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ba-num-'));
  });
  after(() => fs.rmSync(dir, { recursive: true, force: true }));

  const small = (numClasses = 10, seed = 1) => buildModel({ arch: 'small-cnn', inputShape: [28, 28, 1], numClasses }, NORM, seed);

  function job(modelFile: string, extra: Record<string, unknown> = {}): string {
    const f = path.join(dir, `audit-${path.basename(modelFile, '.safetensors')}.json`);
    fs.writeFileSync(
      f,
      JSON.stringify({
        model: path.basename(modelFile),
        data: { test: { format: 'mnist-embedded' } },
        // A known trigger: without one the job audits an unknown backdoor and also writes NC's reversed triggers.
        attack: { type: 'badnets', target: 0 },
        aux: [{ name: 'a', type: 'unseen', source: { format: 'mnist-embedded' }, size: 100 }],
        defenses: ['clp'],
        embedding: { method: 'none' },
        ...extra,
      }),
    );
    return f;
  }

  /** Runs a job that must be refused up front; returns the one-line error and checks nothing was written. */
  async function refused(jobPath: string): Promise<string> {
    const outDir = path.join(dir, `out-${path.basename(jobPath, '.json')}`);
    const err = await runJobFile(jobPath, { outDir, device: 'cpu', workers: 1 }).then(
      () => assert.fail('the job ran'),
      (e: unknown) => e,
    );
    assert.ok(err instanceof InputError, String(err));
    assert.ok(!fs.existsSync(outDir), 'nothing written');
    assert.deepEqual(fs.readdirSync(dir).filter((f) => f.startsWith('.backdoor-audit-')), [], 'no staging folder');
    const line = oneLine(err);
    assert.ok(!line.includes('\n'));
    return line;
  }

  /** A copy of `m` whose state_dict entry `key` has `values` written at flat (PyTorch-layout) indices. */
  async function poisoned(m: Model, key: string, values: Array<[number, number]>, file: string): Promise<string> {
    const sd = await m.stateDict();
    const t = sd.get(key)!;
    for (const [i, v] of values) (t.data as Float32Array)[i] = v;
    m.loadStateDict(sd);
    const out = path.join(dir, file);
    await saveModelFile(m, out, 'safetensors');
    return out;
  }

  it('NaN in a convolution weight: refused, naming the tensor, the count and the first index', async () => {
    const m = small();
    const sd = await m.stateDict();
    const key = [...sd.keys()].find((k) => k.endsWith('weight') && sd.get(k)!.shape.length === 4)!;
    const shape = sd.get(key)!.shape; // [O, I, kh, kw]
    // [1, 0, 2, 1] in PyTorch layout, and an Inf further on.
    const flat = ((1 * shape[1] + 0) * shape[2] + 2) * shape[3] + 1;
    const file = await poisoned(m, key, [[flat, NaN], [flat + 5, Infinity]], 'nan-conv.safetensors');
    m.dispose();
    const line = await refused(job(file));
    assert.equal(line, `the model's weight ${key} holds 2 non-finite values (NaN at [1, 0, 2, 1]): the checkpoint is corrupt or its training diverged (audit-nan-conv.json: model)`);
  });

  it('Inf in a BatchNorm running variance: refused, naming the buffer', async () => {
    const m = small();
    const key = [...(await m.stateDict()).keys()].find((k) => k.endsWith('running_var'))!;
    const file = await poisoned(m, key, [[3, -Infinity]], 'inf-bn.safetensors');
    m.dispose();
    const line = await refused(job(file));
    assert.equal(line, `the model's weight ${key} holds 1 non-finite value (-Infinity at [3]): the checkpoint is corrupt or its training diverged (audit-inf-bn.json: model)`);
  });

  it('a model with 12 or 5 outputs on the 10 MNIST classes: refused up front', async () => {
    for (const k of [12, 5]) {
      const m = small(k);
      const file = path.join(dir, `k${k}.safetensors`);
      await saveModelFile(m, file, 'safetensors');
      m.dispose();
      const line = await refused(job(file));
      assert.equal(line, `the model has ${k} outputs but the data has 10 classes (labels 0..9): the model and the data do not belong together (audit-k${k}.json: data.test)`);
    }
  });

  it('a defense whose loss diverges (ft, lr 1e30) fails its row with a clear error; the next defense still runs', async () => {
    const m = small();
    const file = path.join(dir, 'ok.safetensors');
    await saveModelFile(m, file, 'safetensors');
    m.dispose();
    const outDir = path.join(dir, 'out-diverge');
    const rows: string[] = [];
    const tensors = tf.memory().numTensors;
    const results = await runJobFile(job(file, { defenses: [{ name: 'ft', params: { lr: 1e30, epochs: 2 } }, 'clp'] }), {
      outDir,
      device: 'cpu',
      workers: 1,
      onEvent: (e: RunEvent) => e.type === 'row' && rows.push(e.row.defense),
    });
    assert.deepEqual(rows, ['ft', 'clp'], 'both rows emitted, in order');
    const [ft, clp] = results.rows;
    assert.equal(ft.error, 'training diverged (loss is not finite)');
    assert.equal(ft.output, null, 'no model written for the failed cell');
    assert.equal(ft.acc, undefined);
    assert.equal(clp.error, null);
    assert.ok(Number.isFinite(clp.acc) && clp.acc! >= 0 && clp.acc! <= 1, `clp ACC ${clp.acc}`);
    assert.equal(clp.output, 'clp-a.safetensors');
    assert.deepEqual(fs.readdirSync(outDir).sort(), ['clp-a.safetensors', 'results.json']);
    const onDisk = JSON.parse(fs.readFileSync(path.join(outDir, 'results.json'), 'utf8'));
    assert.equal(onDisk.rows[0].error, 'training diverged (loss is not finite)');
    assert.equal(tf.memory().numTensors, tensors, 'no tensor left behind by the failed cell');
  });

  it('an allocation failure inside a cell (RangeError) is that row\'s error; the other cells run', async () => {
    const backend = await initBackend('cpu');
    const rng = new Rng(5);
    const split = splitDisjoint(loadEmbeddedMnist(), { train: 100, pool: 400, test: 300 }, rng.fork('split'));
    const attack = makeAttack({ type: 'badnets' }, split.test.shape, rng.fork('attack'));
    const tensors = tf.memory().numTensors;
    const victim = small(10, 2);
    // The first clone (the first cell's copy of the victim) fails as V8 fails an ArrayBuffer it cannot allocate.
    const clone = victim.clone.bind(victim);
    let clones = 0;
    victim.clone = () => {
      if (clones++ === 0) throw new RangeError('Array buffer allocation failed');
      return clone();
    };
    const auxA = sampleBalanced(split.pool, { size: 100 }, rng.fork('a'));
    const auxB = sampleBalanced(split.pool, { size: 100 }, rng.fork('b'));
    const prepared: PreparedJob = {
      victim,
      model: { path: 'victim', format: 'safetensors', arch: 'small-cnn', params: victim.paramCount(), inputShape: [28, 28, 1], numClasses: 10 },
      test: split.test,
      triggered: triggeredTestSet(split.test, attack, { target: 0 }),
      aux: [
        { name: 'a', type: 'unseen', seed: 0, set: auxA },
        { name: 'b', type: 'unseen', seed: 0, set: auxB },
      ],
      defenses: [{ id: 'ft', profile: 'fast', params: { epochs: 1 } }],
      gicMode: 'off',
      augment: { cropPadding: 0, flip: false },
      seeds: [0],
    };
    const logs: string[] = [];
    try {
      const results = await runPrepared(prepared, { backend, workers: 1, emit: (e) => e.type === 'log' && logs.push(e.message) });
      assert.deepEqual(
        results.rows.map((r) => [r.aux, r.error]),
        [
          ['a', 'out of memory (Array buffer allocation failed): lower the defense\'s batchSize, the auxiliary set\'s size or the number of workers'],
          ['b', null],
        ],
      );
      assert.ok(Number.isFinite(results.rows[1].acc), 'the next cell ran and was evaluated');
      assert.equal(clones, 2);
      assert.ok(!logs.some((l) => l.includes('tensors more')), logs.join('\n'));
    } finally {
      victim.dispose();
    }
    assert.equal(tf.memory().numTensors, tensors, 'no tensor left behind');
  });
});
