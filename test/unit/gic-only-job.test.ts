/**
 * A job with GIC and no defense (what VS Code's Calibrate Auxiliary Data writes) calibrates every auxiliary set:
 * its GIC entries, saved files and the calibrated cloud in the embedding are the result. It used to calibrate
 * nothing, because calibration happened only on the way to a defense's cell.
 */
import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { runJobFile } from '../../src/engine/jobs/runner';
import { tempDir } from '../helpers/temp';

const VICTIM = path.join(__dirname, '..', '..', 'examples', 'mnist-badnets', 'victim.safetensors');

describe('a job with GIC and no defense', function () {
  this.timeout(300_000);

  it('calibrates each aux set, saves g and the calibrated set, and projects the calibrated data', async () => {
    const dir = tempDir('ba-gic-only-');
    const job = path.join(dir, 'audit.json');
    fs.writeFileSync(
      job,
      JSON.stringify({
        model: VICTIM,
        data: { test: { format: 'mnist-embedded' } },
        attack: { type: 'badnets', target: 0, size: 3, offset: 0 },
        aux: [
          { name: 'heldout', type: 'unseen', source: { format: 'mnist-embedded' }, perClass: 8 },
          { name: 'dark', type: 'ood', source: { format: 'mnist-embedded' }, shift: 'brightness', perClass: 8 },
        ],
        defenses: [],
        gic: { mode: 'on', epochs: 2 },
        embedding: { method: 'tsne', points: 60 },
        device: 'cpu',
        seed: 0,
      }),
    );
    const out = path.join(dir, 'out');
    const results = await runJobFile(job, { outDir: out });
    assert.equal(results.rows.length, 0);
    assert.deepEqual(results.gic.map((g) => g.aux), ['heldout', 'dark']);
    for (const g of results.gic) {
      assert.ok(g.maxPerturbation > 0 && g.maxPerturbation <= 0.1, `${g.aux}: max perturbation ${g.maxPerturbation}`);
      assert.ok(g.files, `${g.aux}: g and the calibrated set are saved`);
      for (const f of [g.files.net, g.files.images]) assert.ok(fs.existsSync(path.join(out, f)), `${f} written`);
    }
    assert.equal(results.embeddings.length, 2);
    for (const e of results.embeddings) assert.ok(e.points.some((p) => p.set === 'calibrated'), `${e.aux}: the calibrated cloud is projected`);
  });
});
