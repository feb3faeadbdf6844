/**
 * The extension's job worker (a worker_threads Worker running dist/worker.js) stopped mid-job, as the host does
 * when a cancelled job overstays its grace or as a crash does: the out dir keeps the previous run's files byte
 * for byte, and the host removes the staging folder the stopped thread could not remove itself.
 *
 * Uses dist/worker.js: run `node esbuild.js` first.
 */
import { fake } from '../unit/vscode-fake';
import { strict as assert } from 'node:assert';
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { Worker } from 'node:worker_threads';
import { buildModel } from '../../src/engine/models';
import { saveModelFile } from '../../src/engine/io/model_io';
import { JobRunner } from '../../src/vscode/jobRunner';
import { useWasm } from '../helpers/backend';

const WORKER = path.join(__dirname, '..', '..', 'dist', 'worker.js');

function snapDir(dir: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const f of fs.readdirSync(dir).sort()) out[f] = `${createHash('sha256').update(fs.readFileSync(path.join(dir, f))).digest('hex')}:${fs.statSync(path.join(dir, f)).ino}`;
  return out;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe('the VS Code job worker stopped mid-job', function () {
  this.timeout(900_000);
  let root: string;

  before(async () => {
    await useWasm();
    fake.reset();
    root = fs.mkdtempSync(path.join(os.tmpdir(), 'ba-worker-'));
  });
  after(() => fs.rmSync(root, { recursive: true, force: true }));

  it('keeps the out dir as it was and leaves no staging folder', async () => {
    const victim = buildModel({ arch: 'small-cnn', inputShape: [28, 28, 1], numClasses: 10 }, { mean: [0.1307], std: [0.3081] }, 4);
    saveModelFile(victim, path.join(root, 'victim.safetensors'), 'safetensors');
    victim.dispose();
    const jobPath = path.join(root, 'audit.json');
    fs.writeFileSync(
      jobPath,
      JSON.stringify({
        model: 'victim.safetensors',
        data: { test: { format: 'mnist-embedded' } },
        aux: [
          { name: 'small', type: 'unseen', source: { format: 'mnist-embedded' }, size: 100 },
          { name: 'large', type: 'unseen', source: { format: 'mnist-embedded' }, size: 800 },
        ],
        defenses: [{ name: 'ft', params: { epochs: 2 } }],
        embedding: { method: 'none' },
      }),
    );
    const runsDir = path.join(root, 'audit-out');
    const outDir = path.join(runsDir, 'run-1');
    const workers: Worker[] = [];
    const log = { appendLine: (s: string) => fake.log.push(s) } as never;
    const runner = new JobRunner(log, () => {
      const w = new Worker(WORKER);
      workers.push(w);
      return w;
    });

    const first = await runner.run({ jobPath, outDir, device: 'cpu' });
    assert.equal(first.status, 'done', JSON.stringify(first));
    const before = snapDir(outDir);
    assert.deepEqual(Object.keys(before), ['ft-large.safetensors', 'ft-small.safetensors', 'results.json']);

    // The same job into the same folder; stopped once its first model is staged and the second cell runs.
    let settled = false;
    const second = runner.run({ jobPath, outDir, device: 'cpu' }).finally(() => (settled = true));
    const deadline = Date.now() + 600_000;
    let staged: string | undefined;
    while (!staged && !settled && Date.now() < deadline) {
      await sleep(20);
      const tid = workers[1]?.threadId;
      const dir = tid ? fs.readdirSync(runsDir).find((f) => f.startsWith(`.backdoor-audit-${process.pid}-t${tid}-`)) : undefined;
      // Without overwrite the re-run names its models ft-small-<time>.safetensors.
      if (dir && fs.readdirSync(path.join(runsDir, dir)).some((f) => /^ft-small-\d+\.safetensors$/.test(f))) staged = dir;
    }
    assert.ok(staged, `the second run staged its first model; thread ${workers[1]?.threadId}, ${fs.readdirSync(runsDir).join(', ')}\n${fake.log.slice(-8).join('\n')}`);
    await workers[1].terminate();
    const outcome = await second;
    assert.equal(outcome.status, 'failed');
    assert.match((outcome as { error: string }).error, /the job worker exited \(code 1\) before the job ended/);
    await sleep(50); // the host's cleanup runs once the worker has stopped
    assert.deepEqual(snapDir(outDir), before, 'previous results and models intact, nothing added');
    assert.deepEqual(fs.readdirSync(runsDir), ['run-1'], 'the stopped worker\'s staging folder is removed');
    assert.ok(fake.log.some((l) => l.includes(`removed the stopped worker's staging folder ${staged}`)), fake.log.join('\n'));
  });
});
