/**
 * Cells on several cores: a job run with two cell processes gives the rows, GIC entries and embeddings of the
 * sequential run (each cell has its own random stream and the processes run the same code, ONNX Runtime
 * included), reports them as threads, a cancelled pooled job stops without writing anything, and a cell
 * process killed mid-cell fails that cell only. A job of one cell runs it in a process too, beside the victim's
 * evaluation, with the same row. The cell processes start with glibc's malloc thresholds raised and its heap
 * on huge pages.
 */
import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import { runJobFile } from '../../src/engine/jobs/runner';
import { cellWorkerScript, SpareCellProcess } from '../../src/engine/jobs/cell_spawn';
import { CancelledError } from '../../src/engine/errors';
import { ortWanted } from '../../src/engine/backend/onnx_runtime';
import type { Results } from '../../src/shared/results';
import { useWasm } from '../helpers/backend';
import { expectedHeapVars, procEnvironReadable, procHeapVars } from '../helpers/proc_env';

const ROOT = path.join(__dirname, '..', '..');

/** This process's children running the cell-process bundle, from /proc (Linux). */
function cellProcesses(): number[] {
  return fs
    .readdirSync('/proc')
    .filter((d) => /^\d+$/.test(d))
    .filter((d) => {
      try {
        // The parent pid is the 4th field of /proc/<pid>/stat, after the parenthesized command name.
        const stat = fs.readFileSync(`/proc/${d}/stat`, 'utf8');
        const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
        return ppid === process.pid && fs.readFileSync(`/proc/${d}/cmdline`, 'utf8').includes('cell-worker.js');
      } catch {
        return false; // gone meanwhile
      }
    })
    .map(Number);
}

function comparable(r: Results): unknown {
  return { ...r, backend: undefined, rows: r.rows.map((row) => ({ ...row, seconds: 0 })), gic: r.gic.map((g) => ({ ...g, seconds: 0 })) };
}

describe('cell processes: cells side by side on several cores', function () {
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

  it('two cell processes give the sequential results, row for row, and say they used two threads', async () => {
    const tensors = tf.memory().numTensors;
    const one = await runJobFile(jobPath, { outDir: path.join(dir, 'one'), workers: 1 });
    const events: string[] = [];
    const logs: string[] = [];
    // The cell processes' environment, read from /proc (Linux) when the first row arrives: glibc's malloc
    // thresholds raised and its heap on huge pages (heap_env.ts), or the values this process was given.
    const thresholds: string[] = [];
    const readThresholds = () => {
      if (thresholds.length || !procEnvironReadable()) return;
      for (const pid of cellProcesses()) thresholds.push(procHeapVars(pid));
    };
    const two = await runJobFile(jobPath, { outDir: path.join(dir, 'two'), workers: 2, onEvent: (e) => (events.push(e.type), e.type === 'log' && logs.push(e.message), e.type === 'row' && readThresholds()) });
    if (procEnvironReadable()) {
      assert.equal(thresholds.length, 2, 'both cell processes were found');
      for (const t of thresholds) assert.equal(t, expectedHeapVars());
    }
    assert.equal(one.backend.threads, 1);
    assert.equal(two.backend.threads, 2);
    assert.equal(two.rows.length, 8);
    assert.ok(two.rows.every((r) => r.error === null), JSON.stringify(two.rows.map((r) => r.error)));
    assert.deepEqual(comparable(two), comparable(one));
    // Rows arrive live from the workers and every purified model was written by them.
    assert.equal(events.filter((t) => t === 'row').length, 8);
    // Where ONNX Runtime loads, the cell processes trained ft's steps and evaluated through it, as this thread
    // did in the sequential run (same rows above); CLP trains nothing and says so.
    if (ortWanted()) {
      assert.ok(logs.some((m) => /2 cell processes, each training and evaluating with ONNX Runtime/.test(m)), logs.join('\n'));
      for (const r of two.rows.filter((r) => r.defense === 'ft')) assert.deepEqual([r.training?.engine, r.training?.backendSteps], ['onnxruntime', 0], JSON.stringify(r.training));
    }
    for (const r of two.rows.filter((r) => r.defense === 'clp')) assert.match(r.training?.why?.join(' ') ?? '', /trains nothing/);
    for (const r of two.rows) assert.ok(fs.existsSync(path.join(dir, 'two', r.output!)), r.output!);
    assert.equal(tf.memory().numTensors, tensors, 'no tensor left in this thread');
  });

  it('a lone cell trains in a process of its own while this one evaluates the victim: the sequential row, DER included, after the baseline', async function () {
    if (!ortWanted()) this.skip(); // only a cell that trains through ONNX Runtime gets the process
    const job = JSON.parse(fs.readFileSync(jobPath, 'utf8'));
    const loneJob = path.join(dir, 'lone.json');
    fs.writeFileSync(loneJob, JSON.stringify({ ...job, aux: [job.aux[0]], defenses: [{ name: 'ft', params: { epochs: 3 } }], gic: { ...job.gic, mode: 'off' } }));
    const one = await runJobFile(loneJob, { outDir: path.join(dir, 'lone-one'), workers: 1 });
    const events: string[] = [];
    const logs: string[] = [];
    let children = 0;
    // The spare as the CLI starts it: the job sends it the victim ahead, and the pool's `init` leaves it out.
    const spare = SpareCellProcess.start({ workers: 2 });
    const lone = await runJobFile(loneJob, {
      outDir: path.join(dir, 'lone-two'),
      workers: 2,
      spare,
      onEvent: (e) => {
        events.push(e.type);
        if (e.type === 'log') logs.push(e.message);
        if (e.type === 'progress' && /^ft on /.test(e.stage) && process.platform === 'linux') children = Math.max(children, cellProcesses().length);
      },
    });
    assert.ok(logs.some((m) => /^the cell in a process of its own, training with ONNX Runtime on 1 thread while this one evaluates the victim, then on 2 threads \(and the purified model evaluated on 2 threads\)$/.test(m)), logs.join('\n'));
    // One: the process started with the job (cell_spawn.ts) is the one the pool took, not a second one beside it.
    if (process.platform === 'linux') assert.equal(children, 1, 'one cell process');
    assert.ok(spare?.victimSentAhead, 'the victim went to the spare process ahead of the data');
    assert.equal(lone.rows.length, 1);
    assert.equal(lone.rows[0].error, null);
    assert.equal(typeof lone.rows[0].der, 'number', 'the DER, which the cell process cannot know, was set');
    assert.deepEqual(comparable(lone), comparable(one));
    assert.ok(events.indexOf('baseline') < events.indexOf('row'), events.join(' '));
    assert.ok(fs.existsSync(path.join(dir, 'lone-two', lone.rows[0].output!)));
    if (process.platform === 'linux') assert.deepEqual(cellProcesses(), [], 'no cell process outlives the job');
  });

  // ANP and SAU run on graphs of their own (not a trainer's): they too move to the job process's threads once
  // it has evaluated the victim (ort_threads.ts), and their rows stay the sequential ones.
  for (const defense of [
    { name: 'anp', params: { iterations: 120 } },
    { name: 'sau', params: { epochs: 3 } },
  ]) {
    it(`a lone ${defense.name} cell, on graphs of its own, gives the sequential row`, async function () {
      if (!ortWanted()) this.skip();
      const job = JSON.parse(fs.readFileSync(jobPath, 'utf8'));
      const loneJob = path.join(dir, `lone-${defense.name}.json`);
      fs.writeFileSync(loneJob, JSON.stringify({ ...job, aux: [job.aux[0]], defenses: [defense], gic: { ...job.gic, mode: 'off' } }));
      const one = await runJobFile(loneJob, { outDir: path.join(dir, `lone-${defense.name}-one`), workers: 1 });
      const logs: string[] = [];
      const lone = await runJobFile(loneJob, { outDir: path.join(dir, `lone-${defense.name}-two`), workers: 2, onEvent: (e) => e.type === 'log' && logs.push(e.message) });
      assert.ok(logs.some((m) => m.startsWith('the cell in a process of its own')), logs.join('\n'));
      assert.equal(lone.rows[0].error, null);
      assert.equal(lone.rows[0].training?.engine, 'onnxruntime');
      assert.deepEqual(comparable(lone), comparable(one));
    });
  }

  it('once no cell is left to start, a process that ran out of cells lends its cores to the one still running: the sequential rows', async function () {
    if (!ortWanted()) this.skip();
    const job = JSON.parse(fs.readFileSync(jobPath, 'utf8'));
    // ANP (the longer cell, handed out first) and CLP (done in a moment) on two processes: CLP's process runs out.
    const tailJob = path.join(dir, 'tail.json');
    fs.writeFileSync(tailJob, JSON.stringify({ ...job, aux: [job.aux[0]], defenses: [{ name: 'anp', params: { iterations: 300 } }, 'clp'], gic: { ...job.gic, mode: 'off' } }));
    const one = await runJobFile(tailJob, { outDir: path.join(dir, 'tail-one'), workers: 1 });
    const logs: string[] = [];
    const two = await runJobFile(tailJob, { outDir: path.join(dir, 'tail-two'), workers: 2, onEvent: (e) => e.type === 'log' && logs.push(e.message) });
    assert.ok(logs.includes('no cell left to start: the cell process still running takes the idle cores (2 threads)'), logs.join('\n'));
    assert.ok(two.rows.every((r) => r.error === null), JSON.stringify(two.rows.map((r) => r.error)));
    assert.deepEqual(comparable(two), comparable(one));
  });

  it('a job that runs no cell process ends the one it started with it', async function () {
    if (process.platform !== 'linux') this.skip(); // finds the cell processes in /proc
    const job = JSON.parse(fs.readFileSync(jobPath, 'utf8'));
    // One cell with GIC: calibrated and run in this process, no pool.
    const gicJob = path.join(dir, 'gic-one.json');
    fs.writeFileSync(gicJob, JSON.stringify({ ...job, aux: [job.aux[0]], defenses: ['clp'], gic: { ...job.gic, mode: 'on' }, embedding: { method: 'none' } }));
    let during = -1;
    const logs: string[] = [];
    const results = await runJobFile(gicJob, {
      outDir: path.join(dir, 'gic-one'),
      workers: 2,
      onEvent: (e) => {
        if (e.type === 'log') logs.push(e.message);
        if (e.type === 'baseline') during = cellProcesses().length;
      },
    });
    assert.equal(results.rows.length, 1);
    assert.equal(results.rows[0].error, null);
    assert.ok(!logs.some((m) => /cell process/.test(m)), logs.join('\n'));
    assert.equal(during, 1, 'the spare process was running while the job prepared');
    assert.deepEqual(cellProcesses(), [], 'and is gone once the job is done');
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

  it('a cell process killed mid-cell fails that cell with the signal; the other cells and the job go on', async function () {
    if (process.platform !== 'linux') this.skip(); // finds the cell processes in /proc
    const killed: number[] = [];
    const results = await runJobFile(jobPath, {
      outDir: path.join(dir, 'killed'),
      workers: 2,
      onEvent: (e) => {
        if (killed.length || e.type !== 'progress' || !/^ft on heldout/.test(e.stage)) return;
        const pids = cellProcesses();
        assert.equal(pids.length, 2, 'two cell processes, children of this one');
        process.kill(pids[0], 'SIGKILL');
        killed.push(pids[0]);
      },
    });
    assert.equal(killed.length, 1);
    const failed = results.rows.filter((r) => r.error !== null);
    assert.ok(failed.length >= 1 && failed.length <= 2, JSON.stringify(results.rows.map((r) => r.error)));
    for (const r of failed) assert.match(r.error!, /^cell process was killed \(SIGKILL\)/);
    assert.equal(results.rows.length, 8);
    assert.ok(results.rows.filter((r) => r.error === null).length >= 6, 'the cells queued behind the dead process ran in the other');
  });
});
