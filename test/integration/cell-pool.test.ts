/**
 * Cells on several cores: a job run with two cell workers gives the rows, GIC entries and embeddings of the
 * sequential run (each cell has its own random stream and the workers run the same code), reports the
 * workers as threads, and a cancelled pooled job stops without writing anything.
 */
import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import { runJobFile } from '../../src/engine/jobs/runner';
import { cellWorkerScript } from '../../src/engine/jobs/cell_pool';
import { CancelledError } from '../../src/engine/errors';
import { ortWanted } from '../../src/engine/backend/onnx_runtime';
import type { Results } from '../../src/shared/results';
import { useWasm } from '../helpers/backend';

const ROOT = path.join(__dirname, '..', '..');

function comparable(r: Results): unknown {
  return { ...r, backend: undefined, rows: r.rows.map((row) => ({ ...row, seconds: 0 })), gic: r.gic.map((g) => ({ ...g, seconds: 0 })) };
}

describe('cell workers: cells side by side on several cores', function () {
  this.timeout(900_000);
  let dir: string;
  let jobPath: string;

  before(async () => {
    assert.ok(cellWorkerScript(), 'dist/cell-worker.js is built (npm test builds before mocha)');
    await useWasm();
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ba-pool-'));
    fs.copyFileSync(path.join(ROOT, 'examples', 'mnist-badnets', 'victim.safetensors'), path.join(dir, 'victim.safetensors'));
    jobPath = path.join(dir, 'audit.json');
    fs.writeFileSync(
      jobPath,
      JSON.stringify({
        model: 'victim.safetensors',
        data: { test: { format: 'mnist-embedded' } },
        attack: { type: 'badnets', target: 0, size: 3, offset: 0 },
        aux: [
          { name: 'heldout', type: 'unseen', source: { format: 'mnist-embedded' }, perClass: 8 },
          { name: 'dark', type: 'ood', source: { format: 'mnist-embedded' }, shift: 'brightness', perClass: 8 },
        ],
        defenses: [{ name: 'ft', params: { epochs: 3 } }, 'clp'],
        gic: { mode: 'both', delta: 0.1, norm: 'inf', epochs: 2 },
        embedding: { method: 'tsne', points: 60 },
        seed: 5,
        device: 'cpu',
      }),
    );
  });

  after(() => fs.rmSync(dir, { recursive: true, force: true }));

  it('two workers give the sequential results, row for row, and say they used two threads', async () => {
    const tensors = tf.memory().numTensors;
    const one = await runJobFile(jobPath, { outDir: path.join(dir, 'one'), workers: 1 });
    const events: string[] = [];
    const logs: string[] = [];
    const two = await runJobFile(jobPath, { outDir: path.join(dir, 'two'), workers: 2, onEvent: (e) => (events.push(e.type), e.type === 'log' && logs.push(e.message)) });
    assert.equal(one.backend.threads, 1);
    assert.equal(two.backend.threads, 2);
    assert.equal(two.rows.length, 8);
    assert.ok(two.rows.every((r) => r.error === null), JSON.stringify(two.rows.map((r) => r.error)));
    assert.deepEqual(comparable(two), comparable(one));
    // Rows arrive live from the workers and every purified model was written by them.
    assert.equal(events.filter((t) => t === 'row').length, 8);
    // Where ONNX Runtime loads, the workers' models were evaluated by it in this thread, with the same rows.
    if (ortWanted()) assert.ok(logs.some((m) => /evaluated with ONNX Runtime in this thread/.test(m)), logs.join('\n'));
    for (const r of two.rows) assert.ok(fs.existsSync(path.join(dir, 'two', r.output!)), r.output!);
    assert.equal(tf.memory().numTensors, tensors, 'no tensor left in this thread');
  });

  it('cancelling a pooled job stops the workers and writes nothing', async () => {
    const ac = new AbortController();
    const out = path.join(dir, 'cancelled');
    let rows = 0;
    const run = runJobFile(jobPath, {
      outDir: out,
      workers: 2,
      signal: ac.signal,
      onEvent: (e) => {
        if (e.type === 'progress' && /^ft on /.test(e.stage)) ac.abort();
        if (e.type === 'row') rows++;
      },
    });
    await assert.rejects(run, (e: unknown) => e instanceof CancelledError);
    assert.ok(rows < 8, 'stopped before the end');
    assert.equal(fs.existsSync(out), false, 'no output folder');
    assert.deepEqual(fs.readdirSync(dir).filter((f) => f.startsWith('.backdoor-audit-')), [], 'no staging folder left');
  });
});
