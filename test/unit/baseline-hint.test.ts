/**
 * A victim whose clean accuracy is near chance gets a one-line warning that names the usual causes (the
 * normalization first, where none was given): the example victim with a normalization far from its training
 * inputs' reads near chance and is warned about; with its own, not.
 */
import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { runJobFile } from '../../src/engine/jobs/runner';
import { chanceLevelHint } from '../../src/engine/jobs/core';
import { tempDir } from '../helpers/temp';

const VICTIM = path.join(__dirname, '..', '..', 'examples', 'mnist-badnets', 'victim.safetensors');

describe('a victim at chance level', function () {
  this.timeout(300_000);

  it('is warned about below twice the chance level, naming the normalization where none was given', () => {
    assert.equal(chanceLevelHint(0.2, 10, false), undefined);
    assert.equal(chanceLevelHint(0.9, 10, false), undefined);
    assert.match(chanceLevelHint(0.172, 10, false)!, /^warning: the victim's clean accuracy is 17\.2% \(chance: 10\.0%\): check the model's "normalize"/);
    const given = chanceLevelHint(0.05, 10, true)!;
    assert.match(given, /^warning: the victim's clean accuracy is 5\.0% \(chance: 10\.0%\): check the input shape/);
    assert.doesNotMatch(given, /normalize/);
    assert.match(chanceLevelHint(0.6, 2, true) ?? '', /chance: 50\.0%/);
  });

  it('a job says so once its baseline is measured, and only where the accuracy is that low', async () => {
    const dir = tempDir('ba-chance-');
    const run = async (normalize: { mean: number[]; std: number[] } | undefined, name: string) => {
      const job = path.join(dir, `${name}.json`);
      fs.writeFileSync(
        job,
        JSON.stringify({
          model: { path: VICTIM, ...(normalize ? { normalize } : {}) },
          data: { test: { format: 'mnist-embedded' } },
          attack: { type: 'badnets', target: 0, size: 3, offset: 0 },
          aux: [{ name: 'heldout', type: 'unseen', source: { format: 'mnist-embedded' }, perClass: 4 }],
          defenses: ['clp'],
          embedding: { method: 'none' },
          device: 'cpu',
          seed: 0,
        }),
      );
      const logs: string[] = [];
      const results = await runJobFile(job, { outDir: path.join(dir, name), workers: 1, onEvent: (e) => void (e.type === 'log' && logs.push(e.message)) });
      return { acc: results.baseline.acc, warnings: logs.filter((m) => m.startsWith('warning: the victim')) };
    };
    const own = await run(undefined, 'own');
    assert.ok(own.acc > 0.9, `the example victim's own accuracy ${own.acc}`);
    assert.deepEqual(own.warnings, []);
    // Inputs pushed far from what the network was trained on: every pixel becomes huge and negative.
    const wrong = await run({ mean: [50], std: [0.5] }, 'wrong');
    assert.ok(wrong.acc < 0.2, `a wrong normalization reads near chance (${wrong.acc})`);
    assert.equal(wrong.warnings.length, 1, JSON.stringify(wrong.warnings));
    assert.match(wrong.warnings[0], /check the input shape/);
  });
});
