/**
 * Resource limits (issue 8, point 6): a job refuses a model or a data source beyond the size limits before
 * reading it (sparse multi-GB files are refused in well under a second), with one line giving the size, the
 * limit and how to raise it; the limits come from the CLI (--max-model-mb, --max-data-mb), the runner's options
 * and the VS Code settings (backdoorAudit.limits.*), and 0 lifts them.
 *
 * The CLI cases use dist/cli.js: run `node esbuild.js` first.
 */
import { strict as assert } from 'node:assert';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { buildModel } from '../../src/engine/models';
import { saveModelFile } from '../../src/engine/model_files/model_io';
import { runJobFile, type RunOptions } from '../../src/engine/jobs/runner';
import { DEFAULT_LIMITS, type Limits } from '../../src/engine/jobs/checks';
import { InputError, oneLine } from '../../src/engine/errors';
import { serveWorker } from '../../src/vscode/worker_loop';
import type { Results } from '../../src/shared/results';
import type { RunEvent } from '../../src/shared/run_events';
import { useWasm } from '../helpers/backend';

const MB = 1024 * 1024;
const CLI = path.join(__dirname, '..', '..', 'dist', 'cli.js');

function sparse(file: string, bytes: number): void {
  const fd = fs.openSync(file, 'w');
  fs.ftruncateSync(fd, bytes);
  fs.closeSync(fd);
}

describe('size limits of models and data', function () {
  this.timeout(600_000);
  let dir: string;
  let modelBytes: number;

  before(async () => {
    await useWasm();
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ba-limits-'));
    const m = buildModel({ arch: 'small-cnn', inputShape: [28, 28, 1], numClasses: 10 }, { mean: [0.1307], std: [0.3081] }, 1);
    await saveModelFile(m, path.join(dir, 'small.safetensors'), 'safetensors');
    m.dispose();
    modelBytes = fs.statSync(path.join(dir, 'small.safetensors')).size;
  });
  after(() => fs.rmSync(dir, { recursive: true, force: true }));

  function writeJob(name: string, model: string, test: Record<string, unknown> = { format: 'mnist-embedded' }): string {
    const f = path.join(dir, `${name}.json`);
    fs.writeFileSync(f, JSON.stringify({ model, data: { test }, embedding: { method: 'none' } }));
    return f;
  }

  async function refusal(jobPath: string, limits?: Limits): Promise<{ line: string; ms: number }> {
    const outDir = path.join(dir, `out-${path.basename(jobPath, '.json')}`);
    const t0 = Date.now();
    const err = await runJobFile(jobPath, { outDir, device: 'cpu', workers: 1, limits }).then(
      () => assert.fail('the job ran'),
      (e: unknown) => e,
    );
    const ms = Date.now() - t0;
    assert.ok(err instanceof InputError, String(err));
    assert.ok(!fs.existsSync(outDir), 'nothing written');
    return { line: oneLine(err), ms };
  }

  it('a 3 GB model file (sparse) is refused by the default 2048 MB limit without being read', async () => {
    sparse(path.join(dir, 'huge.safetensors'), 3 * 1024 * MB);
    const { line, ms } = await refusal(writeJob('huge-model', 'huge.safetensors'));
    assert.equal(line, 'the model is 3072 MB, over the limit of 2048 MB (raise it with --max-model-mb or the setting backdoorAudit.limits.maxModelMB, 0 = no limit) (huge-model.json: model)');
    assert.ok(ms < 1000, `${ms} ms`);
  });

  it('a 5 GB npy data file (sparse) is refused by the default 4096 MB limit without being read', async () => {
    sparse(path.join(dir, 'huge.npy'), 5 * 1024 * MB);
    fs.writeFileSync(path.join(dir, 'labels.npy'), 'x');
    const { line, ms } = await refusal(writeJob('huge-data', 'small.safetensors', { path: 'huge.npy', labels: 'labels.npy' }));
    assert.equal(line, 'the data set is 5120 MB, over the limit of 4096 MB (raise it with --max-data-mb or the setting backdoorAudit.limits.maxDataMB, 0 = no limit) (huge-data.json: data.test)');
    assert.ok(ms < 1000, `${ms} ms`);
  });

  it('a configured model limit below the file size refuses it, giving the size in MB', async () => {
    const { line } = await refusal(writeJob('small-model', 'small.safetensors'), { maxModelMB: 0.01 });
    const m = /^the model is ([\d.]+) MB, over the limit of 0\.01 MB /.exec(line);
    assert.ok(m, line);
    assert.ok(Math.abs(Number(m[1]) - modelBytes / MB) <= 0.005, `${m[1]} MB vs ${modelBytes} bytes`);
  });

  it('an image folder counts every file of every class folder; a TensorFlow.js model counts its weight files', async () => {
    const folder = path.join(dir, 'images');
    for (const c of ['0', '1']) {
      fs.mkdirSync(path.join(folder, c), { recursive: true });
      for (let i = 0; i < 3; i++) sparse(path.join(folder, c, `${i}.png`), 40_000);
    }
    const data = await refusal(writeJob('folder', 'small.safetensors', { path: 'images', format: 'imagefolder' }), { maxDataMB: 0.2 });
    assert.match(data.line, /^the data set is 0\.23 MB, over the limit of 0\.2 MB .*\(folder\.json: data\.test\)$/); // 240000 bytes

    const tfjsDir = path.join(dir, 'tfjs');
    fs.mkdirSync(tfjsDir);
    fs.writeFileSync(path.join(tfjsDir, 'model.json'), JSON.stringify({ format: 'layers-model', weightsManifest: [{ paths: ['group1-shard1of2.bin', 'group1-shard2of2.bin'], weights: [] }] }));
    sparse(path.join(tfjsDir, 'group1-shard1of2.bin'), 100_000);
    sparse(path.join(tfjsDir, 'group1-shard2of2.bin'), 100_000);
    const model = await refusal(writeJob('tfjs', 'tfjs/model.json'), { maxModelMB: 0.15 });
    assert.match(model.line, /^the model is 0\.19 MB, over the limit of 0\.15 MB /); // 200000 bytes + model.json
  });

  it('0 lifts a limit: the same model runs with maxModelMB 0', async () => {
    const results = await runJobFile(writeJob('unlimited', 'small.safetensors'), { outDir: path.join(dir, 'out-unlimited'), device: 'cpu', workers: 1, limits: { maxModelMB: 0, maxDataMB: 0 } });
    assert.equal(results.model.params > 0, true);
    assert.ok(Number.isFinite(results.baseline.acc));
  });

  it('the CLI takes --max-model-mb and --max-data-mb, and refuses a negative or non-numeric value (exit 2, one line)', () => {
    const job = writeJob('cli', 'small.safetensors');
    const run = (...args: string[]) => spawnSync(process.execPath, [CLI, 'run', job, '--out', path.join(dir, 'out-cli'), '--device', 'cpu', '--workers', '1', ...args], { encoding: 'utf8', timeout: 600_000 });
    const r = run('--max-model-mb', '0.01');
    assert.equal(r.status, 2, r.stderr);
    assert.match(r.stderr, /^error: the model is [\d.]+ MB, over the limit of 0\.01 MB \(raise it with --max-model-mb .*\(cli\.json: model\)\n$/);
    for (const bad of ['-1', 'lots']) {
      const b = run('--max-data-mb', bad);
      assert.equal(b.status, 2, b.stderr);
      assert.equal(b.stderr, `error: --max-data-mb must be a number of megabytes >= 0 (0 = no limit), got "${bad}" (--max-data-mb)\n`);
    }
    assert.ok(!fs.existsSync(path.join(dir, 'out-cli')));
  });

  it('VS Code: the settings are declared with the engine\'s defaults, and the job process passes valid limits on', async () => {
    const pkg = JSON.parse(fs.readFileSync(path.join(__dirname, '..', '..', 'package.json'), 'utf8'));
    const props = pkg.contributes.configuration.properties;
    assert.equal(props['backdoorAudit.limits.maxModelMB'].default, DEFAULT_LIMITS.maxModelMB);
    assert.equal(props['backdoorAudit.limits.maxDataMB'].default, DEFAULT_LIMITS.maxDataMB);
    assert.equal(props['backdoorAudit.limits.maxModelMB'].minimum, 0);

    const seen: Array<RunOptions['limits']> = [];
    const ends: string[] = [];
    for (const limits of [{ maxModelMB: 10, maxDataMB: 0 }, { maxModelMB: -5, maxDataMB: 'x' }, undefined]) {
      const sent: RunEvent[] = [];
      let onMessage: (m: unknown) => void = () => undefined;
      const served = serveWorker({ postMessage: (e) => sent.push(e), on: (_e, cb) => (onMessage = cb) }, async (_job, o) => {
        seen.push(o.limits);
        return { rows: [] } as unknown as Results;
      });
      onMessage({ type: 'run', jobPath: '/j/a.json', outDir: '/j/o', limits });
      await served;
      ends.push(sent.map((e) => e.type).join());
    }
    // Limits that are not megabytes >= 0 make the request malformed: the job fails instead of running unlimited.
    assert.deepEqual(seen, [{ maxModelMB: 10, maxDataMB: 0 }, undefined]);
    assert.deepEqual(ends, ['done', 'failed', 'done']);
  });
});
