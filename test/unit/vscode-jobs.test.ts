/**
 * Host-side job logic: the audit.json the set-up flow writes, the worker's message loop, and the JobRunner
 * (worker events -> listeners, progress, Output channel; cancellation; one job per model; untrusted refusal).
 */
import { fake, PRESS_BACK, Uri } from './vscode-fake';
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { RunEvent } from '../../src/shared/run_events';
import { parseHostToJob, parseJobToHost, type HostToJob } from '../../src/shared/job_process';
import type { Results } from '../../src/shared/results';
import { CancelledError, InputError, throwIfAborted } from '../../src/engine/errors';
import { buildJob, checkAnswers, guessFormat, isLabelsNpy, jobModelPath, pairLabels, runOutDir, auxName, type JobAnswers } from '../../src/vscode/job_spec';
import { serveWorker, type PortLike } from '../../src/vscode/worker_loop';
import { JobRunner } from '../../src/vscode/job_runner';
import { describeExit, type JobHandle } from '../../src/vscode/job_process';
import { SetupFlow } from '../../src/vscode/setup_flow';
import { logLine } from '../../src/vscode/log';
import { BackendStatus } from '../../src/vscode/status_bar';
import { loadJob } from '../../src/engine/jobs/validate';
import { sampleResults, tmpdir } from './vscode-fixtures';

describe('vscode jobSpec: the audit.json of the set-up flow', () => {
  it('guesses data formats from names and pairs .npy labels', () => {
    assert.equal(guessFormat('/d/cls', true), 'imagefolder');
    assert.equal(guessFormat('/d/x_test.npy', false), 'npy');
    assert.equal(guessFormat('/d/a.npz', false), 'npz');
    assert.equal(guessFormat('/d/t10k-images-idx3-ubyte.gz', false), 'idx');
    assert.equal(guessFormat('/d/test_batch.bin', false), 'cifar10-bin');
    assert.equal(guessFormat('/d/readme.txt', false), undefined);
    assert.ok(isLabelsNpy('/d/test_labels.npy') && isLabelsNpy('/d/y.npy') && !isLabelsNpy('/d/test_images.npy'));
    const sib = ['/d/x_test.npy', '/d/y_test.npy', '/d/test_images.npy', '/d/test_labels.npy', '/d/aux.npy', '/d/aux_y.npy'];
    assert.equal(pairLabels('/d/x_test.npy', sib), '/d/y_test.npy');
    assert.equal(pairLabels('/d/test_images.npy', sib), '/d/test_labels.npy');
    assert.equal(pairLabels('/d/aux.npy', sib), '/d/aux_y.npy');
    assert.equal(pairLabels('/d/other.npy', sib), undefined);
  });

  const answers = (dir: string): JobAnswers => ({
    model: path.join(dir, 'models', 'victim.pt'),
    test: { path: path.join(dir, 'data', 'test_x.npy'), format: 'npy', labels: path.join(dir, 'data', 'test_y.npy') },
    attack: { type: 'badnets', target: 0 },
    aux: [
      { name: 'unseen', type: 'unseen', source: { path: path.join(dir, 'data', 'aux'), format: 'imagefolder' } },
      { name: 'synthetic', type: 'synthetic' },
    ],
    defenses: ['ft'],
    gic: { mode: 'both', delta: 0.1, norm: 'inf' },
    profile: 'fast',
    device: 'auto',
  });

  it('writes paths relative to the job file and only schema fields', () => {
    const job = buildJob(answers('/w'), '/w/models/audit.json') as Record<string, any>;
    assert.equal(job.model, 'victim.pt');
    assert.deepEqual(job.data.test, { path: '../data/test_x.npy', format: 'npy', labels: '../data/test_y.npy' });
    assert.equal(job.data.train, undefined);
    assert.deepEqual(job.aux[0], { name: 'unseen', type: 'unseen', source: { path: '../data/aux', format: 'imagefolder' } });
    assert.deepEqual(job.aux[1], { name: 'synthetic', type: 'synthetic' });
    assert.deepEqual(Object.keys(job).sort(), ['attack', 'aux', 'data', 'defenses', 'device', 'gic', 'model', 'profile', 'seed'].sort());
    assert.equal(jobModelPath('/w/models/audit.json', job), path.resolve('/w/models/victim.pt'));
    const embedded = buildJob({ ...answers('/w'), test: { format: 'mnist-embedded' } }, '/w/audit.json') as Record<string, any>;
    assert.deepEqual(embedded.data.test, { format: 'mnist-embedded' });
    assert.equal(jobModelPath('/w/audit.json', { model: { path: 'm/x.onnx' } }), path.resolve('/w/m/x.onnx'));
  });

  it('catches incomplete answers before writing', () => {
    assert.deepEqual(checkAnswers(answers('/w')), []);
    const a = answers('/w');
    a.aux.push({ name: 'seen', type: 'seen' }, { name: 'unseen', type: 'ood' });
    const errs = checkAnswers(a).join('\n');
    assert.match(errs, /seen.*training data/);
    assert.match(errs, /needs a data source/);
    assert.match(errs, /needs a shift/);
    assert.match(errs, /two auxiliary sets are named "unseen"/);
  });

  it('names aux sets uniquely and gives each run its own output folder', () => {
    const used = new Set<string>();
    assert.equal(auxName('ood', used, 'brightness'), 'ood-brightness');
    assert.equal(auxName('ood', used, 'brightness'), 'ood-brightness-2');
    assert.equal(auxName('external', used, 'my web set!'), 'external-my-web-set');
    const d = new Date(2025, 0, 2, 3, 4, 5);
    assert.equal(runOutDir('/w/m/audit.json', '', d), path.join('/w/m/audit-out', 'run-20250102-030405'));
    assert.equal(runOutDir('/w/m/victim.audit.json', 'out', d), path.join('/w/m/out', 'victim-20250102-030405'));
    assert.equal(runOutDir('/w/m/audit.json', '/abs/runs', d), path.join('/abs/runs', 'run-20250102-030405'));
  });
});

/** A port whose messages the test posts and reads. */
function fakePort(): PortLike & { sent: RunEvent[]; deliver(m: unknown): void } {
  let cb: (m: unknown) => void = () => undefined;
  const sent: RunEvent[] = [];
  return { sent, postMessage: (m) => sent.push(m), on: (_e, f) => (cb = f), deliver: (m) => cb(m) };
}

describe('job process protocol', () => {
  it('takes host requests by exact keys and types', () => {
    const run = { type: 'run', jobPath: '/j/a.json', outDir: '/j/o', device: 'gpu', overwrite: true, limits: { maxModelMB: 0, maxDataMB: 10 } };
    assert.deepEqual(parseHostToJob(run), run);
    assert.deepEqual(parseHostToJob({ type: 'cancel' }), { type: 'cancel' });
    for (const bad of [
      { ...run, extra: 1 },
      { ...run, device: 'tpu' },
      { ...run, jobPath: 3 },
      { ...run, limits: { maxModelMB: -1 } },
      { ...run, limits: { maxModelMB: 1, other: 2 } },
      { type: 'run', outDir: '/j/o' },
      { type: 'cancel', now: true },
      { type: 'exec', cmd: 'rm' },
      'run',
      null,
    ]) {
      assert.equal(parseHostToJob(bad), undefined, JSON.stringify(bad));
    }
  });

  it('takes job events by exact keys and types', () => {
    const r = sampleResults();
    const good: unknown[] = [
      { type: 'started', jobPath: '/j', outDir: '/o', cells: 2, backend: 'wasm', threads: 2 },
      { type: 'progress', stage: 'ft', done: 1, total: 4 },
      { type: 'progress', stage: 'ft', done: 1, total: 4, message: 'epoch 1' },
      { type: 'log', message: 'evaluating with ONNX Runtime (CPU)' },
      { type: 'baseline', model: r.model, baseline: r.baseline },
      { type: 'baseline', model: r.model, baseline: r.baseline, evaluation: 'onnxruntime-cpu' },
      { type: 'row', row: r.rows[0] },
      { type: 'done', results: r, resultsPath: '/o/results.json' },
      { type: 'failed', error: 'x (y)', exitCode: 2 },
      { type: 'cancelled' },
    ];
    for (const m of good) assert.deepEqual(parseJobToHost(m), m);
    const bad: unknown[] = [
      { type: 'started', jobPath: '/j', outDir: '/o', cells: -1, backend: 'wasm', threads: 2 },
      { type: 'progress', stage: 'ft', done: '1', total: 4 },
      { type: 'log', message: 'x', html: '<b>' },
      { type: 'baseline', model: r.model, baseline: r.baseline, evaluation: 1 },
      { type: 'row', row: { aux: 'a', defense: 'ft' } },
      { type: 'done', results: { ...r, schema: 'other' }, resultsPath: '/o' },
      { type: 'failed', error: 'x', exitCode: 139 },
      { type: 'shell', cmd: 'x' },
      '{"type":"cancelled"}',
    ];
    for (const m of bad) assert.equal(parseJobToHost(m), undefined, JSON.stringify(m));
  });

  it('describes a process that ended without a last event', () => {
    assert.equal(describeExit(null, 'SIGKILL', []), 'the job process was killed by SIGKILL before the job ended');
    assert.equal(
      describeExit(null, 'SIGABRT', ['<--- Last few GCs --->', 'FATAL ERROR: Reached heap limit Allocation failed - JavaScript heap out of memory', ' 1: 0xb8 node::Abort()'], 512),
      'the job process ran out of memory (limit 512 MB: setting backdoorAudit.jobProcess.maxMemoryMB) before the job ended; last output: FATAL ERROR: Reached heap limit Allocation failed - JavaScript heap out of memory',
    );
    assert.equal(describeExit(3, null, ['a', 'b', 'c', 'd']), 'the job process exited with code 3 before the job ended; last output: b | c | d');
  });
});

describe('vscode worker loop', () => {
  it('runs the job, forwards events and ends with exactly one done', async () => {
    const port = fakePort();
    const r = sampleResults();
    const served = serveWorker(port, async (job, o) => {
      assert.equal(job, '/j/audit.json');
      assert.equal(o.device, 'cpu');
      o.onEvent?.({ type: 'started', jobPath: job, outDir: o.outDir, cells: 2, backend: 'wasm', threads: 1 });
      o.onEvent?.({ type: 'row', row: r.rows[0] });
      return r;
    });
    port.deliver({ type: 'bogus' });
    port.deliver({ type: 'run', jobPath: '/j/audit.json', outDir: '/j/out', device: 'cpu' } satisfies HostToJob);
    await served;
    assert.deepEqual(port.sent.map((e) => e.type), ['started', 'row', 'done']);
    const done = port.sent[2] as Extract<RunEvent, { type: 'done' }>;
    assert.equal(done.resultsPath, path.join('/j/out', 'results.json'));
  });

  it('turns cancel into an aborted signal and a cancelled event', async () => {
    const port = fakePort();
    const served = serveWorker(port, (_job, o) =>
      new Promise<Results>((_res, rej) => {
        // A training loop: checks the signal between batches.
        const t = setInterval(() => {
          try {
            throwIfAborted(o.signal);
          } catch (e) {
            clearInterval(t);
            rej(e);
          }
        }, 1);
      }),
    );
    port.deliver({ type: 'run', jobPath: '/j/a.json', outDir: '/j/o' });
    port.deliver({ type: 'cancel' });
    await served;
    assert.deepEqual(port.sent.map((e) => e.type), ['cancelled']);
  });

  it('reports input errors with exit code 2 in one line, and does not double-terminate', async () => {
    const port = fakePort();
    const served = serveWorker(port, async (_j, o) => {
      o.onEvent?.({ type: 'failed', error: 'already said', exitCode: 1 });
      throw new InputError('unknown field "foo"', 'audit.json');
    });
    port.deliver({ type: 'run', jobPath: '/j/a.json', outDir: '/j/o' });
    await served;
    assert.deepEqual(port.sent, [{ type: 'failed', error: 'already said', exitCode: 1 }]);

    const p2 = fakePort();
    const s2 = serveWorker(p2, async () => {
      throw new InputError('unknown field "foo"', 'audit.json');
    });
    p2.deliver({ type: 'run', jobPath: '/j/a.json', outDir: '/j/o' });
    await s2;
    assert.deepEqual(p2.sent, [{ type: 'failed', error: 'unknown field "foo" (audit.json)', exitCode: 2 }]);
    assert.ok(new CancelledError() instanceof Error);
  });
});

/**
 * A job process the test drives: it records requests and emits what the test tells it to; like the real one,
 * it delivers only messages that parse as job events, and describes its exit.
 */
class FakeWorker implements JobHandle {
  requests: HostToJob[] = [];
  terminated = false;
  private handlers: Record<string, ((...x: any[]) => void)[]> = { message: [], error: [], exit: [] };
  onRun?: (w: FakeWorker, req: HostToJob) => void;
  onCancel?: (w: FakeWorker) => void;
  postMessage(m: HostToJob): void {
    this.requests.push(m);
    if (m.type === 'run') setImmediate(() => this.onRun?.(this, m));
    else setImmediate(() => this.onCancel?.(this));
  }
  on(event: string, cb: (...x: any[]) => void): this {
    this.handlers[event].push(cb);
    return this;
  }
  emit(event: 'message' | 'error' | 'exit', x: unknown): void {
    if (event === 'message') {
      const m = parseJobToHost(x);
      if (m) for (const h of this.handlers.message) h(m);
    } else if (event === 'exit') {
      for (const h of this.handlers.exit) h(x, null, describeExit(x as number, null, ['fatal: something broke']));
    } else for (const h of this.handlers[event]) h(x);
  }
  terminate(): Promise<void> {
    this.terminated = true;
    return Promise.resolve();
  }
}

describe('vscode JobRunner', () => {
  let dir: string;
  let jobPath: string;
  const log = { appendLine: (s: string) => fake.log.push(s) } as never;

  beforeEach(() => {
    fake.reset();
    dir = tmpdir();
    jobPath = path.join(dir, 'audit.json');
    fs.writeFileSync(jobPath, JSON.stringify({ model: 'victim.pt' }));
  });

  it('forwards worker events to listeners, the progress notification and the log', async () => {
    const r = sampleResults();
    const w = new FakeWorker();
    w.onRun = (wk, req) => {
      assert.equal(req.type === 'run' && req.device, 'cpu');
      wk.emit('message', { type: 'started', jobPath, outDir: dir, cells: 2, backend: 'wasm', threads: 1 });
      wk.emit('message', { nonsense: true });
      wk.emit('message', { type: 'progress', stage: 'ft', done: 1, total: 4 });
      wk.emit('message', { type: 'row', row: r.rows[0] });
      wk.emit('message', { type: 'done', results: r, resultsPath: path.join(dir, 'out', 'results.json') });
      wk.emit('exit', 0);
    };
    const runner = new JobRunner(log, () => w);
    const seen: string[] = [];
    runner.listen({ started: (run) => seen.push(`start:${run.id}`), event: (_r, e) => seen.push(e.type), ended: (_r, o) => seen.push(`end:${o.status}`) });
    const o = await runner.run({ jobPath, outDir: path.join(dir, 'out'), device: 'cpu' });
    assert.equal(o.status, 'done');
    assert.deepEqual(seen, [`start:${path.join(dir, 'out')}`, 'started', 'progress', 'row', 'done', 'end:done']);
    assert.ok(fake.progress.some((p) => p.increment === 50), 'a finished cell advances the notification');
    assert.ok(fake.log.some((l) => /unseen\/ft: ACC 95\.0% ASR 8\.0%/.test(l)), fake.log.join('\n'));
    assert.ok(w.terminated);
    assert.equal(runner.isModelBusy(path.join(dir, 'victim.pt')), false);
  });

  it('logs with levels: info for progress and rows, warn for failed cells and warnings, error for a failed job', async () => {
    const lines: string[] = [];
    const leveled = { appendLine: (x: string) => lines.push(`plain ${x}`), info: (x: string) => lines.push(`info ${x}`), warn: (x: string) => lines.push(`warn ${x}`), error: (x: string) => lines.push(`error ${x}`) } as never;
    const r = sampleResults();
    const w = new FakeWorker();
    w.onRun = (wk) => {
      wk.emit('message', { type: 'started', jobPath, outDir: dir, cells: 3, backend: 'wasm', threads: 1 });
      wk.emit('message', { type: 'row', row: r.rows[0] });
      wk.emit('message', { type: 'row', row: r.rows[2] });
      wk.emit('message', { type: 'log', message: 'warning: 2 tensors more than at the start of the job' });
      wk.emit('message', { type: 'failed', error: 'out of memory', exitCode: 1 });
      wk.emit('exit', 1);
    };
    const o = await new JobRunner(leveled, () => w).run({ jobPath, outDir: path.join(dir, 'out') });
    assert.equal(o.status, 'failed');
    const level = (re: RegExp) => lines.find((l) => re.test(l))?.split(' ')[0];
    assert.equal(level(/started: 3 cells/), 'info');
    assert.equal(level(/unseen\/ft: ACC 95\.0%/), 'info');
    assert.equal(level(/ood-brightness\/ft: failed: diverged/), 'warn');
    assert.equal(level(/warning: 2 tensors/), 'warn');
    assert.equal(level(/failed: out of memory/), 'error');
    assert.ok(lines.every((l) => !l.startsWith('plain ')), 'a LogOutputChannel gets levelled lines only');
    // A plain channel gets the level as a prefix.
    const plain: string[] = [];
    logLine({ appendLine: (x: string) => plain.push(x) }, 'warn', 'w');
    logLine({ appendLine: (x: string) => plain.push(x) }, 'info', 'i');
    assert.deepEqual(plain, ['[warn] w', 'i']);
  });

  it('the status item shows only while jobs run, names the backend, and leaves progress to the notification', () => {
    const status = new BackendStatus(() => false);
    const item = fake.statusItems.at(-1)!;
    assert.equal(item.visible, false, 'hidden with no job');
    status.started({ id: 'a', title: 'a' });
    status.event({ id: 'a' }, { type: 'started', jobPath: 'audit.json', outDir: 'out', cells: 2, backend: 'wasm', threads: 2 });
    status.event({ id: 'a' }, { type: 'progress' } as never);
    assert.equal(item.visible, true);
    assert.equal(item.text, '$(server-process) Backdoor Audit: a job on CPU (WebAssembly)');
    // The baseline names what evaluated: the item says so beside the training backend.
    const r = sampleResults();
    status.event({ id: 'a' }, { type: 'baseline', model: r.model, baseline: r.baseline, evaluation: 'onnxruntime-cpu' });
    assert.equal(item.text, '$(server-process) Backdoor Audit: a job on CPU (WebAssembly + ONNX Runtime)');
    status.started({ id: 'b', title: 'b' });
    assert.match(item.text, /2 jobs on CPU \(WebAssembly \+ ONNX Runtime\)$/);
    status.ended({ id: 'a' });
    status.ended({ id: 'b' });
    assert.equal(item.visible, false, 'hidden again');
    status.dispose();
  });

  it('runs one job per model at a time', async () => {
    const w = new FakeWorker();
    let release!: () => void;
    w.onRun = (wk) => {
      release = () => wk.emit('message', { type: 'done', results: sampleResults(), resultsPath: 'x' });
    };
    const runner = new JobRunner(log, () => w);
    const first = runner.run({ jobPath, outDir: path.join(dir, 'o1') });
    await new Promise((r) => setImmediate(r));
    assert.ok(runner.isModelBusy(path.join(dir, 'victim.pt')));
    const other = path.join(dir, 'other.audit.json');
    fs.writeFileSync(other, JSON.stringify({ model: './victim.pt' }));
    const second = await runner.run({ jobPath: other, outDir: path.join(dir, 'o2') });
    assert.equal(second.status, 'refused');
    assert.match((second as { reason: string }).reason, /already running/);
    release();
    assert.equal((await first).status, 'done');
  });

  it('cancels through the progress notification: cancel reaches the worker, no output folder is left', async () => {
    const w = new FakeWorker();
    w.onRun = () => fake.cancelSource!.cancel();
    w.onCancel = (wk) => wk.emit('message', { type: 'cancelled' });
    const runner = new JobRunner(log, () => w);
    const out = path.join(dir, 'out');
    fs.mkdirSync(out);
    const o = await runner.run({ jobPath, outDir: out });
    assert.equal(o.status, 'cancelled');
    assert.deepEqual(w.requests.map((r) => r.type), ['run', 'cancel']);
    assert.equal(fs.existsSync(out), false, 'the empty run folder is removed');
  });

  it('reports a crashed worker and refuses untrusted workspaces and unreadable jobs', async () => {
    const w = new FakeWorker();
    w.onRun = (wk) => wk.emit('exit', 134);
    const runner = new JobRunner(log, () => w);
    const o = await runner.run({ jobPath, outDir: path.join(dir, 'o') });
    assert.equal(o.status, 'failed');
    assert.equal((o as { error: string }).error, 'the job process exited with code 134 before the job ended; last output: fatal: something broke');
    fake.trusted = false;
    assert.equal((await runner.run({ jobPath, outDir: path.join(dir, 'o') })).status, 'refused');
    fake.trusted = true;
    const bad = await runner.run({ jobPath: path.join(dir, 'missing.json'), outDir: path.join(dir, 'o') });
    assert.equal(bad.status, 'refused');
  });
});

describe('vscode set-up flow', () => {
  let dir: string;
  beforeEach(() => {
    fake.reset();
    dir = tmpdir();
    fs.mkdirSync(path.join(dir, 'data'));
    for (const f of ['test_x.npy', 'test_y.npy', 'aux_x.npy', 'aux_y.npy']) fs.writeFileSync(path.join(dir, 'data', f), '');
    fs.writeFileSync(path.join(dir, 'victim.pt'), '');
    fake.files = ['test_x.npy', 'test_y.npy', 'aux_x.npy', 'aux_y.npy'].map((f) => path.join(dir, 'data', f));
  });

  const memento = () => {
    const m = new Map<string, unknown>();
    return { get: <T>(k: string, d?: T) => (m.has(k) ? (m.get(k) as T) : d), update: async (k: string, v: unknown) => void m.set(k, v), keys: () => [...m.keys()] };
  };
  const byLabel = (re: RegExp) => (items: { label: string }[]) => items.find((i) => re.test(i.label));
  const picked = (items: { picked?: boolean }[]) => items.filter((i) => i.picked);

  it('purify: offers workspace data, pairs labels, writes audit.json next to the model', async () => {
    fake.config.set('backdoorAudit.gic.delta', 0.05);
    fake.answers = [
      byLabel(/test_x\.npy/), // test data (labels paired automatically)
      byLabel(/No training data/),
      byLabel(/^badnets$/),
      '0',
      picked, // aux: the preselected "unseen"
      byLabel(/aux_x\.npy/),
      '25', // images per class
      picked, // defenses: the preselected ft
      byLabel(/^both$/),
    ];
    const jobPath = await new SetupFlow(memento() as never).run('purify', path.join(dir, 'victim.pt'));
    assert.equal(jobPath, path.join(dir, 'audit.json'));
    const job = JSON.parse(fs.readFileSync(jobPath!, 'utf8'));
    assert.deepEqual(job.data.test, { path: 'data/test_x.npy', format: 'npy', labels: 'data/test_y.npy' });
    assert.deepEqual(job.aux, [{ name: 'unseen', type: 'unseen', source: { path: 'data/aux_x.npy', format: 'npy', labels: 'data/aux_y.npy' }, perClass: 25 }]);
    assert.deepEqual(job.defenses, ['ft']);
    assert.deepEqual(job.gic, { mode: 'both', delta: 0.05, norm: 'inf' });
    assert.equal(job.model, 'victim.pt');
    // Labels files are not offered as data sets.
    const testItems = fake.prompts[0].items as { label: string }[];
    assert.ok(!testItems.some((i) => /_y\.npy/.test(i.label)));
  });

  it('numbered steps with Back: the previous step comes back with the earlier answers as its defaults', async () => {
    fake.answers = [
      byLabel(/test_x\.npy/), // 1/6 test data
      byLabel(/No training data/), // 2/6
      byLabel(/^badnets$/), // 3/6 attack
      '7', // its target
      picked, // 4/6 aux: unseen
      byLabel(/aux_x\.npy/),
      '25',
      PRESS_BACK, // 5/6 defenses: Back to the auxiliary data
      picked, // 4/6 again: unseen still checked
      byLabel(/aux_x\.npy/), // its data (the earlier choice is the active item)
      (_: unknown) => '30', // the size, shown with the earlier 25
      picked, // 5/6 defenses: ft
      PRESS_BACK, // 6/6 GIC: Back to the defenses
      (items: { label: string }[]) => items.filter((i) => i.label === 'ft' || i.label === 'clp'),
      byLabel(/^off$/),
    ];
    const jobPath = await new SetupFlow(memento() as never).run('purify', path.join(dir, 'victim.pt'));
    const job = JSON.parse(fs.readFileSync(jobPath!, 'utf8'));
    assert.equal(job.attack.target, 7);
    assert.equal(job.aux[0].perClass, 30);
    assert.deepEqual(job.defenses, ['ft', 'clp']);
    assert.equal(job.gic.mode, 'off');
    const main = fake.steps.filter((q) => !/labels of|data for|images per|target class/.test(q.title ?? ''));
    assert.deepEqual(main.map((q) => `${q.step}/${q.totalSteps}${q.back ? ' back' : ''}`), ['1/6', '2/6 back', '3/6 back', '4/6 back', '5/6 back', '4/6 back', '5/6 back', '6/6 back', '5/6 back', '6/6 back']);
    assert.deepEqual(main[5].selected, ['unseen'], 'the sets chosen before are checked');
    const sizes = fake.steps.filter((q) => /images per class/.test(q.title ?? ''));
    assert.deepEqual(sizes.map((q) => q.value), ['', '25'], 'the size asked again shows the earlier answer');
    const data = fake.steps.filter((q) => /data for the "unseen"/.test(q.title ?? ''));
    assert.match(data[1].active[0], /aux_x\.npy/);
    assert.deepEqual(main[8].selected, ['ft'], 'the defenses chosen before are checked');
    // The titles keep their words (the e2e finds each question by them).
    assert.match(main[0].title!, /^Purify Model: victim\.pt — test data$/);
    assert.match(main[7].title!, /Guided Input Calibration/);
  });

  it('purify with the user\'s triggered images: a poisoned .npy with its true labels, or with none', async () => {
    for (const f of ['bd_x.npy', 'bd_y.npy']) fs.writeFileSync(path.join(dir, 'data', f), '');
    fake.files.push(path.join(dir, 'data', 'bd_x.npy'), path.join(dir, 'data', 'bd_y.npy'));
    const flow = (labels: RegExp) => [
      byLabel(/test_x\.npy/),
      byLabel(/No training data/),
      byLabel(/^I have triggered test images$/),
      byLabel(/bd_x\.npy/), // the triggered images
      byLabel(labels), // their true labels, or none
      '3', // target
      picked,
      byLabel(/aux_x\.npy/),
      '',
      picked,
      byLabel(/^off$/),
    ];
    fake.answers = flow(/No true labels/);
    const jobPath = await new SetupFlow(memento() as never).run('purify', path.join(dir, 'victim.pt'));
    const job = JSON.parse(fs.readFileSync(jobPath!, 'utf8'));
    assert.deepEqual(job.attack, { type: 'poisoned-set', target: 3, data: { path: 'data/bd_x.npy', format: 'npy' } });
    // The engine takes the job as written: a poisoned .npy without labels is allowed (and only there).
    assert.deepEqual(loadJob(jobPath!).attack, { type: 'poisoned-set', target: 3, allToAll: false, data: { path: path.join(dir, 'data', 'bd_x.npy'), format: 'npy' } });
    // The triggered-images step offers the workspace's data but not the embedded digits (no one's triggered images).
    const step = fake.prompts.find((p) => /triggered test images/.test(p.title ?? ''))!;
    const offered = (step.items as { label: string }[]).map((i) => i.label);
    assert.ok(offered.some((l) => /bd_x\.npy/.test(l)) && !offered.some((l) => /Embedded MNIST/.test(l)), offered.join(' | '));
    // The labels step lists the paired file first, then "No true labels"; clean data sources still pair silently.
    const labelsStep = fake.prompts.find((p) => /true labels of bd_x\.npy/.test(p.title ?? ''))!;
    assert.deepEqual((labelsStep.items as { label: string }[]).slice(0, 2).map((i) => i.label), ['bd_y.npy', '$(circle-slash) No true labels']);
    assert.equal(fake.prompts.filter((p) => /labels of (test|aux)_x/.test(p.title ?? '')).length, 0);

    fake.prompts = [];
    fake.answers = flow(/^bd_y\.npy$/);
    fake.answers.push('Replace audit.json');
    const again = await new SetupFlow(memento() as never).run('purify', path.join(dir, 'victim.pt'));
    assert.equal(again, jobPath);
    const withLabels = JSON.parse(fs.readFileSync(again!, 'utf8'));
    assert.deepEqual(withLabels.attack, { type: 'poisoned-set', target: 3, data: { path: 'data/bd_x.npy', format: 'npy', labels: 'data/bd_y.npy' } });
    const embedded: JobAnswers = {
      model: path.join(dir, 'victim.pt'),
      test: { format: 'mnist-embedded' },
      attack: { type: 'poisoned-set', target: 0, data: { format: 'mnist-embedded' } },
      aux: [{ name: 'synthetic', type: 'synthetic' }],
      defenses: ['ft'],
      gic: { mode: 'off', delta: 0.1, norm: 'inf' },
      profile: 'fast',
      device: 'auto',
    };
    assert.deepEqual(checkAnswers(embedded), ['the embedded MNIST digits carry no trigger: the triggered test images must be your own']);
  });

  it('poisoned set in steps: Back from its true labels returns to the triggered images, Back there to the attack', async () => {
    for (const f of ['bd_x.npy', 'bd_y.npy']) fs.writeFileSync(path.join(dir, 'data', f), '');
    fake.files.push(path.join(dir, 'data', 'bd_x.npy'), path.join(dir, 'data', 'bd_y.npy'));
    fake.answers = [
      byLabel(/test_x\.npy/), // 1/6
      byLabel(/No training data/), // 2/6
      byLabel(/^I have triggered test images$/), // 3/6
      byLabel(/bd_x\.npy/),
      PRESS_BACK, // its true labels: Back to the triggered images
      byLabel(/bd_x\.npy/),
      byLabel(/No true labels/),
      PRESS_BACK, // the target: Back to the choice of attack
      byLabel(/^I have triggered test images$/),
      PRESS_BACK, // the triggered images: Back to the choice of attack
      byLabel(/^I have triggered test images$/),
      byLabel(/bd_x\.npy/),
      byLabel(/^bd_y\.npy$/),
      '3',
      picked,
      byLabel(/aux_x\.npy/),
      '',
      picked,
      byLabel(/^off$/),
    ];
    const jobPath = await new SetupFlow(memento() as never).run('purify', path.join(dir, 'victim.pt'));
    const job = JSON.parse(fs.readFileSync(jobPath!, 'utf8'));
    assert.deepEqual(job.attack, { type: 'poisoned-set', target: 3, data: { path: 'data/bd_x.npy', format: 'npy', labels: 'data/bd_y.npy' } });
    const counter = (q: { step?: number; totalSteps?: number; back: boolean }) => `${q.step}/${q.totalSteps}${q.back ? ' back' : ''}`;
    const images = fake.steps.filter((q) => /— triggered test images$/.test(q.title ?? ''));
    assert.deepEqual(images.map(counter), ['3/6 back', '3/6 back', '3/6 back', '3/6 back']);
    assert.deepEqual(images.map((q) => q.active.some((l) => /bd_x\.npy/.test(l))), [false, true, true, true], 'the images chosen before are the active item');
    const labels = fake.steps.filter((q) => /— triggered test images: true labels of bd_x\.npy$/.test(q.title ?? ''));
    assert.deepEqual(labels.map(counter), ['3/6 back', '3/6 back', '3/6 back']);
    const attacks = fake.steps.filter((q) => /— attack to test against$/.test(q.title ?? ''));
    assert.deepEqual(attacks.map((q) => q.active[0]), [undefined, 'I have triggered test images', 'I have triggered test images']);
    // The labels question: the paired file first, "No true labels", the other .npy files, Browse last.
    const offered = (fake.prompts.find((p) => /true labels of bd_x\.npy/.test(p.title ?? ''))!.items as { label: string }[]).map((i) => i.label);
    assert.equal(offered[0], 'bd_y.npy');
    assert.equal(offered[1], '$(circle-slash) No true labels');
    assert.ok(offered.includes('test_x.npy') && !offered.includes('bd_x.npy'), offered.join(' | '));
    assert.equal(offered.at(-1), '$(folder-opened) Browse…');
  });

  it('escape at any step writes nothing; evaluate asks no aux or defenses', async () => {
    fake.answers = [byLabel(/test_x\.npy/), byLabel(/^badnets$/)]; // then escape at the target
    assert.equal(await new SetupFlow(memento() as never).run('evaluate', path.join(dir, 'victim.pt')), undefined);
    assert.equal(fs.existsSync(path.join(dir, 'audit.json')), false);
    fake.answers = [byLabel(/test_x\.npy/), byLabel(/^sig$/), '3'];
    const jobPath = await new SetupFlow(memento() as never).run('evaluate', path.join(dir, 'victim.pt'));
    const job = JSON.parse(fs.readFileSync(jobPath!, 'utf8'));
    assert.deepEqual(job.attack, { type: 'sig', target: 3 });
    assert.deepEqual(job.aux, []);
    assert.deepEqual(job.defenses, []);
    assert.equal(job.gic.mode, 'off');
    void Uri;
  });
});
