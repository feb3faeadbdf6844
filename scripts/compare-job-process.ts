/**
 * Wall time of one job run by the CLI (`node dist/cli.js run`) and by the extension's job process
 * (dist/job-process.js forked by src/vscode/job_process.ts, as VS Code does), in alternating pairs, with a check
 * that both gave the same rows. A measurement, not a test: `npx tsx scripts/compare-job-process.ts [model]
 * [pairs]` (default: the BackdoorBench PreAct-ResNet18 .pt fixture, ft, 2 pairs). Run `node esbuild.js` first.
 */
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { forkJobProcess } from '../src/vscode/job_process';
import type { Results } from '../src/shared/results';

const root = path.join(__dirname, '..');
const model = path.resolve(process.argv[2] ?? path.join(root, 'test', 'fixtures', 'parity_preact_w4_c1.pt'));
const pairs = Number(process.argv[3] ?? 2);

function viaProcess(jobPath: string, outDir: string): Promise<Results> {
  return new Promise((resolve, reject) => {
    const p = forkJobProcess({ script: path.join(root, 'dist', 'job-process.js'), cwd: path.dirname(jobPath) });
    p.on('message', (m) => {
      if (m.type === 'done') resolve(m.results);
      if (m.type === 'failed') reject(new Error(m.error));
    });
    p.on('exit', (_c, _s, describe) => reject(new Error(describe)));
    p.postMessage({ type: 'run', jobPath, outDir, device: 'cpu' });
  });
}

async function main(): Promise<void> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ba-compare-'));
  fs.copyFileSync(model, path.join(dir, path.basename(model)));
  const jobPath = path.join(dir, 'audit.json');
  fs.writeFileSync(
    jobPath,
    JSON.stringify({
      model: path.basename(model),
      data: { test: { format: 'mnist-embedded' } },
      aux: [
        { name: 'a', type: 'unseen', source: { format: 'mnist-embedded' }, size: 200 },
        { name: 'b', type: 'ood', source: { format: 'mnist-embedded' }, shift: 'noise', size: 200 },
      ],
      defenses: [{ name: 'ft', params: { epochs: 2 } }],
      embedding: { method: 'none' },
    }),
  );
  const strip = (r: Results) => JSON.stringify(r.rows.map(({ seconds: _s, ...rest }) => rest));
  try {
    for (let i = 0; i < pairs; i++) {
      let t = Date.now();
      execFileSync(process.execPath, [path.join(root, 'dist', 'cli.js'), 'run', jobPath, '--out', path.join(dir, `cli-${i}`), '--device', 'cpu'], { stdio: 'ignore' });
      const cli = (Date.now() - t) / 1000;
      const cliRows = strip(JSON.parse(fs.readFileSync(path.join(dir, `cli-${i}`, 'results.json'), 'utf8')));
      t = Date.now();
      const r = await viaProcess(jobPath, path.join(dir, `proc-${i}`));
      const proc = (Date.now() - t) / 1000;
      process.stdout.write(`pair ${i + 1}: CLI ${cli.toFixed(1)} s, job process ${proc.toFixed(1)} s (${((proc / cli - 1) * 100).toFixed(1)}%), same rows: ${strip(r) === cliRows}, evaluation: ${r.backend.evaluation}\n`);
    }
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

void main();
