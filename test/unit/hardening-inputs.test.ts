/**
 * Inputs are never written (issue 8, point 2): an out dir that holds the job's own files (the model, the job
 * file) never has them replaced, even with overwrite: a purified model whose name is an input's takes another
 * name, and results.json is never moved over an input.
 */
import { strict as assert } from 'node:assert';
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { buildModel } from '../../src/engine/models';
import { saveModelFile } from '../../src/engine/model_files/model_io';
import { runJobFile } from '../../src/engine/jobs/runner';
import { writeResults } from '../../src/engine/jobs/output';
import type { Results } from '../../src/shared/results';
import { useWasm } from '../helpers/backend';

function snap(file: string): string {
  const st = fs.statSync(file);
  return `${createHash('sha256').update(fs.readFileSync(file)).digest('hex')}:${st.mtimeMs}:${st.ino}`;
}

describe('inputs are never replaced by outputs', function () {
  this.timeout(600_000);
  let dir: string;

  before(async () => {
    await useWasm();
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ba-inputs-'));
  });
  after(() => fs.rmSync(dir, { recursive: true, force: true }));

  it('writeResults refuses to move a staged file or results.json over a protected file, before moving anything', () => {
    const out = path.join(dir, 'w-out');
    const staging = path.join(dir, 'w-staging');
    fs.mkdirSync(out);
    fs.mkdirSync(staging);
    fs.writeFileSync(path.join(out, 'model.safetensors'), 'the input');
    fs.writeFileSync(path.join(staging, 'a.safetensors'), 'new a');
    fs.writeFileSync(path.join(staging, 'model.safetensors'), 'new model');
    const before = snap(path.join(out, 'model.safetensors'));
    assert.throws(() => writeResults(staging, out, { rows: [] } as unknown as Results, { protect: [path.join(out, 'model.safetensors')] }), /refusing to overwrite an input file: .*model\.safetensors/);
    assert.equal(snap(path.join(out, 'model.safetensors')), before);
    assert.deepEqual(fs.readdirSync(out), ['model.safetensors'], 'nothing moved in, no results.json');
    assert.deepEqual(fs.readdirSync(staging).sort(), ['a.safetensors', 'model.safetensors']);

    // results.json itself as an input (through a hard link: same file, another name).
    fs.rmSync(path.join(staging, 'model.safetensors'));
    fs.writeFileSync(path.join(dir, 'input.json'), '{"keep": true}');
    fs.linkSync(path.join(dir, 'input.json'), path.join(out, 'results.json'));
    assert.throws(() => writeResults(staging, out, { rows: [] } as unknown as Results, { protect: [path.join(dir, 'input.json')] }), /refusing to overwrite an input file: .*results\.json/);
    assert.equal(fs.readFileSync(path.join(dir, 'input.json'), 'utf8'), '{"keep": true}');
  });

  it('a job run with overwrite into its own folder, whose model has a purified model\'s name, keeps the model', async () => {
    const jobDir = path.join(dir, 'job');
    fs.mkdirSync(jobDir);
    const m = buildModel({ arch: 'small-cnn', inputShape: [28, 28, 1], numClasses: 10 }, { mean: [0.1307], std: [0.3081] }, 6);
    // clp on aux set "a" writes clp-a.safetensors: the victim has that very name.
    await saveModelFile(m, path.join(jobDir, 'clp-a.safetensors'), 'safetensors');
    m.dispose();
    const jobPath = path.join(jobDir, 'audit.json');
    fs.writeFileSync(
      jobPath,
      JSON.stringify({
        model: 'clp-a.safetensors',
        data: { test: { format: 'mnist-embedded' } },
        // A known trigger: without one the job audits an unknown backdoor and also writes NC's reversed triggers.
        attack: { type: 'badnets', target: 0 },
        aux: [{ name: 'a', type: 'unseen', source: { format: 'mnist-embedded' }, size: 100 }],
        defenses: ['clp'],
        embedding: { method: 'none' },
      }),
    );
    const inputs = { model: snap(path.join(jobDir, 'clp-a.safetensors')), job: snap(jobPath) };
    const results = await runJobFile(jobPath, { outDir: jobDir, device: 'cpu', workers: 1, overwrite: true });
    assert.equal(results.rows[0].error, null);
    assert.match(results.rows[0].output!, /^clp-a-\d+\.safetensors$/);
    assert.deepEqual({ model: snap(path.join(jobDir, 'clp-a.safetensors')), job: snap(jobPath) }, inputs);
    assert.deepEqual(fs.readdirSync(jobDir).sort(), ['audit.json', 'clp-a.safetensors', results.rows[0].output!, 'results.json'].sort());
  });
});
