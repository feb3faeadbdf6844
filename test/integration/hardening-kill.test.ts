/**
 * Never losing data (issue 8, point 2): a CLI job SIGKILLed mid-job leaves the previous run's results.json and
 * purified models byte for byte, and no file in the out dir; the next run removes the staging folder the killed
 * job left (and only folders of dead processes of this host); a re-run keeps earlier purified models unless
 * `--overwrite`; the inputs are never written (content and mtime unchanged through every run).
 *
 * Uses dist/cli.js for the killed process: run `node esbuild.js` first.
 */
import { strict as assert } from 'node:assert';
import { spawn, spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { buildModel } from '../../src/engine/models';
import { saveModelFile } from '../../src/engine/model_files/model_io';
import { runJobFile } from '../../src/engine/jobs/runner';
import { hostTag } from '../../src/engine/jobs/staging';
import type { Results } from '../../src/shared/results';
import { useWasm } from '../helpers/backend';

const CLI = path.join(__dirname, '..', '..', 'dist', 'cli.js');

interface Snap {
  sha: string;
  mtimeMs: number;
  ino: number;
}

function snap(file: string): Snap {
  const st = fs.statSync(file);
  return { sha: createHash('sha256').update(fs.readFileSync(file)).digest('hex'), mtimeMs: st.mtimeMs, ino: st.ino };
}

function snapDir(dir: string): Record<string, Snap> {
  const out: Record<string, Snap> = {};
  for (const f of fs.readdirSync(dir).sort()) out[f] = snap(path.join(dir, f));
  return out;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe('kill safety: a SIGKILLed job, stale staging folders, re-runs and inputs', function () {
  this.timeout(900_000);
  let root: string;
  let jobDir: string;
  let jobPath: string;
  let outDir: string;
  let inputs: Record<string, Snap>;
  let first: Record<string, Snap>;
  let firstResults: Results;

  const checkInputs = () => {
    for (const [f, s] of Object.entries(inputs)) assert.deepEqual(snap(path.join(jobDir, f)), s, `input ${f} unchanged`);
  };

  before(async () => {
    await useWasm();
    root = fs.mkdtempSync(path.join(os.tmpdir(), 'ba-kill-'));
    jobDir = path.join(root, 'job');
    fs.mkdirSync(jobDir);
    // An untrained small CNN is enough: this test is about files, not about purification.
    const victim = buildModel({ arch: 'small-cnn', inputShape: [28, 28, 1], numClasses: 10 }, { mean: [0.1307], std: [0.3081] }, 3);
    await saveModelFile(victim, path.join(jobDir, 'victim.safetensors'), 'safetensors');
    victim.dispose();
    jobPath = path.join(jobDir, 'audit.json');
    // Two cells: a short one (100 images) whose model reaches the staging folder early, then a long one
    // (1500 images) during which the process is killed.
    fs.writeFileSync(
      jobPath,
      JSON.stringify({
        model: 'victim.safetensors',
        data: { test: { format: 'mnist-embedded' } },
        attack: { type: 'badnets', target: 0 },
        aux: [
          { name: 'small', type: 'unseen', source: { format: 'mnist-embedded' }, size: 100 },
          { name: 'large', type: 'unseen', source: { format: 'mnist-embedded' }, size: 1500 },
        ],
        defenses: [{ name: 'ft', params: { epochs: 3 } }],
        embedding: { method: 'none' },
      }),
    );
    inputs = snapDir(jobDir);
    outDir = path.join(root, 'out');
    const t0 = Date.now();
    firstResults = await runJobFile(jobPath, { outDir, device: 'cpu', workers: 1 });
    console.log(`      first run: ${((Date.now() - t0) / 1000).toFixed(1)} s`);
    first = snapDir(outDir);
  });

  after(() => fs.rmSync(root, { recursive: true, force: true }));

  it('the first run writes results.json and one purified model per cell, and nothing else', () => {
    assert.deepEqual(Object.keys(first), ['ft-large.safetensors', 'ft-small.safetensors', 'results.json']);
    assert.deepEqual(
      firstResults.rows.map((r) => [r.aux, r.output, r.error]),
      [
        ['small', 'ft-small.safetensors', null],
        ['large', 'ft-large.safetensors', null],
      ],
    );
    // No staging folder is left behind by a job that ends.
    assert.deepEqual(fs.readdirSync(root).sort(), ['job', 'out']);
    checkInputs();
  });

  let killedStaging: string;

  it('SIGKILL mid-job (a purified model staged, the next cell running) leaves the out dir exactly as it was', async () => {
    const child = spawn(process.execPath, [CLI, 'run', jobPath, '--out', outDir, '--device', 'cpu', '--workers', '1', '--overwrite'], { stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    child.stderr!.on('data', (d) => (stderr += d));
    const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((r) => child.on('exit', (code, signal) => r({ code, signal })));
    const prefix = `.backdoor-audit-${child.pid}-`;
    const deadline = Date.now() + 600_000;
    let staged: string | undefined;
    // Wait until the first cell's model is in the staging folder: the job is past its first output, mid-way.
    while (Date.now() < deadline) {
      const dir = fs.readdirSync(root).find((f) => f.startsWith(prefix));
      if (dir && fs.readdirSync(path.join(root, dir)).includes('ft-small.safetensors')) {
        staged = dir;
        break;
      }
      if (child.exitCode !== null) break;
      await sleep(20);
    }
    assert.ok(staged, `the job staged its first model before ending; stderr:\n${stderr}`);
    assert.equal(child.exitCode, null, 'still running when killed');
    child.kill('SIGKILL');
    const end = await exited;
    assert.equal(end.signal, 'SIGKILL');
    killedStaging = staged;

    // The previous run's files, byte for byte and the very same inodes (nothing renamed over them), and no
    // other file (no partial model, no temp file) in the out dir.
    assert.deepEqual(snapDir(outDir), first);
    // The killed job's staging folder is still there, next to the out dir, holding the staged model.
    assert.ok(fs.readdirSync(path.join(root, staged)).includes('ft-small.safetensors'));
    checkInputs();
  });

  it('the next run removes the staging folders of dead processes of this host, and only those', async () => {
    const host = hostTag();
    // A live process (a child that sleeps), another host, the old naming without a pid, and a (worker thread's)
    // folder of this very process: all kept.
    const sleeper = spawn(process.execPath, ['-e', 'setTimeout(() => {}, 600000)'], { stdio: 'ignore' });
    const dead = spawnSync(process.execPath, ['-e', 'process.stdout.write(String(process.pid))'], { encoding: 'utf8' });
    const deadPid = Number(dead.stdout);
    assert.ok(deadPid > 0);
    const keep = [`.backdoor-audit-${sleeper.pid}-t0-${host}-aaaaaa`, `.backdoor-audit-${deadPid}-t0-${host}x-bbbbbb`, '.backdoor-audit-cccccc', `.backdoor-audit-${process.pid}-t3-${host}-ffffff`];
    const gone = [`.backdoor-audit-${deadPid}-t0-${host}-dddddd`];
    for (const d of [...keep, ...gone]) {
      fs.mkdirSync(path.join(root, d));
      fs.writeFileSync(path.join(root, d, 'x.safetensors'), 'partial');
    }
    // A file (not a folder) under a stale name is not touched either.
    const fileNamedLikeStaging = `.backdoor-audit-${deadPid}-t0-${host}-eeeeee`;
    fs.writeFileSync(path.join(root, fileNamedLikeStaging), 'not a folder');
    const logs: string[] = [];
    try {
      const results = await runJobFile(jobPath, { outDir, device: 'cpu', workers: 1, onEvent: (e) => e.type === 'log' && logs.push(e.message) });
      const left = fs.readdirSync(root).sort();
      assert.deepEqual(left, ['job', 'out', ...keep, fileNamedLikeStaging].sort());
      assert.ok(!left.includes(killedStaging), 'the killed job\'s folder is gone');
      assert.ok(logs.some((m) => m.includes('removed 2 staging folders') && m.includes(killedStaging) && m.includes(gone[0])), logs.join('\n'));

      // Re-run without --overwrite: the earlier purified models stay byte for byte (same inodes); the new ones
      // get new names, which results.json names.
      const now = snapDir(outDir);
      for (const f of ['ft-small.safetensors', 'ft-large.safetensors']) assert.deepEqual(now[f], first[f], f);
      const outputs = results.rows.map((r) => r.output!);
      assert.equal(outputs.length, 2);
      for (const [i, o] of outputs.entries()) {
        assert.match(o, new RegExp(`^ft-${i === 0 ? 'small' : 'large'}-\\d+\\.safetensors$`));
        assert.ok(now[o], `${o} written`);
      }
      assert.equal(Object.keys(now).length, 5);
      assert.deepEqual(JSON.parse(fs.readFileSync(path.join(outDir, 'results.json'), 'utf8')).rows.map((r: { output: string }) => r.output), outputs);
      checkInputs();
    } finally {
      sleeper.kill('SIGKILL');
    }
  });

  it('with overwrite, a re-run replaces the purified models of the same names (new files renamed over them)', async () => {
    const before = snapDir(outDir);
    const results = await runJobFile(jobPath, { outDir, device: 'cpu', workers: 1, overwrite: true });
    assert.deepEqual(
      results.rows.map((r) => r.output),
      ['ft-small.safetensors', 'ft-large.safetensors'],
    );
    const now = snapDir(outDir);
    assert.deepEqual(Object.keys(now).sort(), Object.keys(before).sort(), 'no new names');
    for (const f of ['ft-small.safetensors', 'ft-large.safetensors']) {
      assert.notEqual(now[f].ino, before[f].ino, `${f} replaced`);
      // The job is seeded: the replacement has the same content.
      assert.equal(now[f].sha, first[f].sha, f);
    }
    checkInputs();
  });
});
