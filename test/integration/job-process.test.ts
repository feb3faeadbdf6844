/**
 * The extension's job process (dist/job-process.js forked by src/vscode/job_process.ts, driven by the JobRunner
 * against the fake `vscode` module): the same job gives the same rows and the same purified models as the CLI,
 * with ONNX Runtime in the job process as in the CLI; a job process killed with SIGKILL mid-job is a failed job
 * whose out dir keeps the previous run's files byte for byte, with its staging folder removed, and the next job
 * runs; one that runs out of its heap limit is a failed job that says so; cancel stops it.
 *
 * Uses dist/: run `node esbuild.js` first.
 */
import { fake } from '../unit/vscode-fake';
import { strict as assert } from 'node:assert';
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { buildModel } from '../../src/engine/models';
import { saveModelFile } from '../../src/engine/model_files/model_io';
import { JobRunner, type Outcome } from '../../src/vscode/job_runner';
import { forkJobProcess, type JobProcess } from '../../src/vscode/job_process';
import { BackendStatus } from '../../src/vscode/status_bar';
import { useWasm } from '../helpers/backend';
import type { Results } from '../../src/shared/results';
import { expectedHeapVars, procEnvironReadable, procHeapVars } from '../helpers/proc_env';

const DIST = path.join(__dirname, '..', '..', 'dist');
const SCRIPT = path.join(DIST, 'job-process.js');

function snapDir(dir: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const f of fs.readdirSync(dir).sort()) out[f] = `${createHash('sha256').update(fs.readFileSync(path.join(dir, f))).digest('hex')}:${fs.statSync(path.join(dir, f)).ino}`;
  return out;
}

const sha = (f: string) => createHash('sha256').update(fs.readFileSync(f)).digest('hex');
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Rows without their timings. */
function rowsOf(r: Results) {
  return r.rows.map(({ seconds, ...rest }) => {
    assert.ok(seconds >= 0);
    return rest;
  });
}

describe('the VS Code job process', function () {
  this.timeout(900_000);
  let root: string;
  const procs: JobProcess[] = [];
  const log = { appendLine: (s: string) => fake.log.push(s) } as never;
  const runner = new JobRunner(log, (req) => {
    const p = forkJobProcess({ script: SCRIPT, cwd: path.dirname(req.jobPath), onOutput: (l, s) => fake.log.push(`[job process ${s}] ${l}`) });
    procs.push(p);
    return p;
  });

  function writeJob(name: string, aux: Array<[string, number]>, epochs: number): string {
    const jobPath = path.join(root, name);
    fs.writeFileSync(
      jobPath,
      JSON.stringify({
        model: 'victim.safetensors',
        data: { test: { format: 'mnist-embedded' } },
        // A known trigger: without one the job audits an unknown backdoor and also writes NC's reversed triggers.
        attack: { type: 'badnets', target: 0 },
        aux: aux.map(([n, size]) => ({ name: n, type: 'unseen', source: { format: 'mnist-embedded' }, size })),
        defenses: [{ name: 'ft', params: { epochs } }],
        embedding: { method: 'none' },
      }),
    );
    return jobPath;
  }

  before(async () => {
    assert.ok(fs.existsSync(SCRIPT), 'dist/job-process.js is built (node esbuild.js)');
    await useWasm();
    fake.reset();
    root = fs.mkdtempSync(path.join(os.tmpdir(), 'ba-jobproc-'));
    const victim = buildModel({ arch: 'small-cnn', inputShape: [28, 28, 1], numClasses: 10 }, { mean: [0.1307], std: [0.3081] }, 4);
    await saveModelFile(victim, path.join(root, 'victim.safetensors'), 'safetensors');
    victim.dispose();
  });
  after(() => {
    runner.dispose();
    fs.rmSync(root, { recursive: true, force: true });
  });

  it('gives the CLI\'s rows and purified models, with ONNX Runtime loaded in the job process', async () => {
    const jobPath = writeJob('same.audit.json', [['small', 100], ['mid', 300]], 1);
    const cliOut = path.join(root, 'cli-out');
    await new Promise<void>((resolve, reject) =>
      execFile(process.execPath, [path.join(DIST, 'cli.js'), 'run', jobPath, '--out', cliOut, '--device', 'cpu'], (err, _o, stderr) => (err ? reject(new Error(stderr)) : resolve())),
    );
    const cli = JSON.parse(fs.readFileSync(path.join(cliOut, 'results.json'), 'utf8')) as Results;

    fake.log.length = 0;
    const outDir = path.join(root, 'ext-out');
    // The status bar item follows what the job process reports (the host here resolves nothing: its guess would be
    // plain WebAssembly).
    const status = new BackendStatus(() => false);
    const listening = runner.listen(status);
    const forked = procs.length;
    const running = runner.run({ jobPath, outDir, device: 'cpu' });
    // The job process's environment, from /proc (Linux): glibc's malloc thresholds raised and its heap on huge
    // pages (heap_env.ts), or the values this process was given.
    let threshold: string | undefined;
    if (procEnvironReadable()) {
      for (let i = 0; i < 250 && procs.length === forked; i++) await new Promise((r) => setTimeout(r, 20));
      threshold = procHeapVars(procs[forked].pid!);
    }
    const o = await running;
    listening.dispose();
    if (threshold !== undefined) assert.equal(threshold, expectedHeapVars());
    const statusText = (status as unknown as { item: { text: string } }).item.text;
    status.dispose();
    // The item is hidden once no job runs; its text keeps what the last job process reported.
    assert.equal(statusText, '$(server-process) Backdoor Audit: a job on CPU (WebAssembly + ONNX Runtime)');
    assert.equal(o.status, 'done', JSON.stringify(o));
    const ext = (o as Extract<Outcome, { status: 'done' }>).results;
    assert.deepEqual(ext.baseline, cli.baseline);
    assert.deepEqual(rowsOf(ext), rowsOf(cli));
    assert.deepEqual(ext.backend, cli.backend);
    assert.equal(ext.backend.evaluation, 'onnxruntime-cpu', 'ACC/ASR computed by ONNX Runtime, recorded in results.json');
    assert.equal(ext.rows.length, 2);
    for (const r of ext.rows) {
      assert.equal(r.error, null);
      assert.equal(sha(path.join(outDir, r.output!)), sha(path.join(cliOut, r.output!)), `${r.output} is the CLI's, byte for byte`);
    }
    assert.deepEqual(JSON.parse(fs.readFileSync(path.join(outDir, 'results.json'), 'utf8')).rows.map((r: { acc: number }) => r.acc), cli.rows.map((r) => r.acc));
    assert.ok(fake.log.some((l) => l.endsWith('evaluating with ONNX Runtime (CPU)')), fake.log.join('\n'));
    assert.ok(fake.log.some((l) => /2 cell processes, each training and evaluating with ONNX Runtime/.test(l)), fake.log.join('\n'));
  });

  it('survives a SIGKILL mid-job: failed job, out dir as before, staging removed, the next job runs', async () => {
    const jobPath = writeJob('kill.audit.json', [['small', 100], ['large', 800]], 2);
    const runsDir = path.join(root, 'kill-out');
    const outDir = path.join(runsDir, 'run-1');
    const first = await runner.run({ jobPath, outDir, device: 'cpu' });
    assert.equal(first.status, 'done', JSON.stringify(first));
    const before = snapDir(outDir);
    assert.deepEqual(Object.keys(before), ['ft-large.safetensors', 'ft-small.safetensors', 'results.json']);

    // The same job into the same folder; killed once its first model is staged and the other cell runs.
    const n = procs.length;
    let settled = false;
    const second = runner.run({ jobPath, outDir, device: 'cpu' }).finally(() => (settled = true));
    const deadline = Date.now() + 600_000;
    let staged: string | undefined;
    while (!staged && !settled && Date.now() < deadline) {
      await sleep(20);
      const pid = procs[n]?.pid;
      const dir = pid ? fs.readdirSync(runsDir).find((f) => f.startsWith(`.backdoor-audit-${pid}-`)) : undefined;
      // Without overwrite the re-run names its models ft-small-<time>.safetensors.
      if (dir && fs.readdirSync(path.join(runsDir, dir)).some((f) => /^ft-small-\d+\.safetensors$/.test(f))) staged = dir;
    }
    assert.ok(staged, `the second run staged its first model; ${fs.readdirSync(runsDir).join(', ')}\n${fake.log.slice(-8).join('\n')}`);
    procs[n].child.kill('SIGKILL');
    const outcome = await second;
    assert.equal(outcome.status, 'failed');
    assert.match((outcome as { error: string }).error, /^the job process was killed by SIGKILL before the job ended/);
    await sleep(100); // the host's cleanup runs once the process has exited
    assert.deepEqual(snapDir(outDir), before, 'previous results and models intact, nothing added');
    assert.deepEqual(fs.readdirSync(runsDir), ['run-1'], 'the killed process\'s staging folder is removed');
    assert.ok(fake.log.some((l) => l.includes(`removed the stopped job process's staging folder ${staged}`)), fake.log.join('\n'));

    // The host goes on: the next job runs in a fresh process.
    const third = await runner.run({ jobPath: writeJob('next.audit.json', [['small', 100]], 1), outDir: path.join(root, 'next-out'), device: 'cpu' });
    assert.equal(third.status, 'done', JSON.stringify(third));
    assert.equal((third as Extract<Outcome, { status: 'done' }>).results.rows.length, 1);
  });

  it('fails a job that exceeds its heap limit with an out-of-memory line, and cancels on request', async () => {
    const jobPath = writeJob('oom.audit.json', [['small', 100]], 1);
    const small = new JobRunner(log, (req) => forkJobProcess({ script: SCRIPT, cwd: path.dirname(req.jobPath), maxMemoryMB: 24 }));
    const oom = await small.run({ jobPath, outDir: path.join(root, 'oom-out'), device: 'cpu' });
    assert.equal(oom.status, 'failed');
    assert.match((oom as { error: string }).error, /^the job process ran out of memory \(limit 24 MB: setting backdoorAudit\.jobProcess\.maxMemoryMB\) before the job ended; last output: .*heap/);
    assert.equal(fs.existsSync(path.join(root, 'oom-out')), false);

    // Cancel as the notification does: the message reaches the runner, which stops between batches.
    const slow = writeJob('cancel.audit.json', [['large', 800]], 3);
    let cancelled = false;
    const sub = runner.listen({ event: (run, e) => e.type === 'progress' && !cancelled && (cancelled = runner.cancel(run.id)) });
    const c = await runner.run({ jobPath: slow, outDir: path.join(root, 'cancel-out', 'run'), device: 'cpu' });
    sub.dispose();
    assert.equal(c.status, 'cancelled');
    await sleep(100);
    assert.deepEqual(fs.readdirSync(path.join(root, 'cancel-out')), [], 'no output folder, no staging folder');
  });
});
