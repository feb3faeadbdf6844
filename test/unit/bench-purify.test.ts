/**
 * The purification section of `bench`: its job file is a valid job on the committed zoo fixture, and the table
 * and JSON are assembled from both sides' results (both runners faked here: no defense runs and no timing is
 * asserted), including the 'PyTorch not available' case and a defense PyTorch's reference lacks.
 */
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { benchPurification, defaultVictimDir, pythonReference, parsePurification, purificationJob, type OursRunner, type ReferenceRunner } from '../../src/engine/bench_purify';
import { loadJob } from '../../src/engine/jobs/validate';
import { DEFENSE_IDS } from '../../src/engine/catalog';
import { InputError } from '../../src/engine/errors';
import { tempDir } from '../helpers/temp';
import { heapEnv } from '../../src/engine/util/heap_env';

const FIXTURE = path.join(__dirname, '..', 'fixtures', 'zoo', 'preact8-badnets');

const fakeOurs: OursRunner = async (defense) => ({ seconds: defense === 'ft' ? 10 : 20, jobSeconds: 25, acc: 0.8, asr: 0.05 });

function fakeReference(defenses: string[], calls: string[]): ReferenceRunner {
  return {
    probe: () => ({ defenses }),
    run: async (defense, dir, threads) => {
      calls.push(`${defense} ${path.basename(dir)} ${threads}`);
      return { seconds: 30, acc: 0.81, asr: 0.02, processSeconds: 50 };
    },
  };
}

describe('bench purification section', () => {
  it('defaults to the committed fixture and validates as a job there', () => {
    assert.equal(path.resolve(defaultVictimDir()), path.resolve(FIXTURE));
    const dir = tempDir('bench-purify-job-');
    const file = path.join(dir, 'job.json');
    fs.writeFileSync(file, JSON.stringify(purificationJob(FIXTURE, ['ft', 'nad'])));
    const job = loadJob(file);
    assert.deepEqual(job.defenses?.map((d) => (typeof d === 'string' ? d : d.name)), ['ft', 'nad']);
    assert.equal(job.profile, 'fast');
    assert.equal(job.attack?.type, 'poisoned-set');
    // The whole 500-image sample, so that ours trains on PyTorch's images.
    assert.equal(job.aux?.[0].size, 500);
  });

  it('parses --purification', () => {
    assert.deepEqual(parsePurification(undefined), ['ft', 'nad', 'fp']);
    assert.deepEqual(parsePurification(true), ['ft', 'nad', 'fp']);
    assert.deepEqual(parsePurification(false), []);
    assert.deepEqual(parsePurification(['all']), [...DEFENSE_IDS]);
    assert.deepEqual(parsePurification(['sau', 'ft']), ['sau', 'ft']);
    assert.throws(() => parsePurification(['ft', 'bogus']), (e: unknown) => e instanceof InputError && /unknown defense bogus/.test(e.message) && !e.message.includes('\n'));
  });

  it('assembles the table and JSON from both sides, with a dash where PyTorch lacks the defense', async () => {
    const calls: string[] = [];
    const lines: string[] = [];
    const r = await benchPurification({ victimDir: FIXTURE, defenses: ['ft', 'anp'], log: (s) => lines.push(s), threads: 2, ours: fakeOurs, reference: fakeReference(['fp', 'ft', 'ibau', 'nad', 'sau'], calls) });
    assert.deepEqual(calls, ['ft preact8-badnets 2']);
    assert.deepEqual(r.torch, { available: true, defenses: ['fp', 'ft', 'ibau', 'nad', 'sau'] });
    assert.equal(r.victim.auxImages, 500);
    assert.equal(r.victim.testImages, 1000);
    assert.equal(r.victim.triggeredImages, 893);
    assert.equal(r.rows[0].ratio, 3);
    assert.equal(r.rows[0].jobRatio, 2);
    assert.equal(r.rows[1].jobRatio, null);
    assert.equal(r.rows[1].torch, null);
    assert.equal(r.rows[1].ratio, null);
    const table = r.table.split('\n');
    assert.equal(table[0], '| defense | ours s | PyTorch s | ratio PyTorch/ours (>1 = we are faster) | our job s | PyTorch process s | whole-job ratio | our ACC/ASR % | PyTorch ACC/ASR % |');
    assert.equal(table[2], '| ft | 10.0 | 30.0 | 3.00x | 25.0 | 50.0 | 2.00x | 80.0 / 5.0 | 81.0 / 2.0 |');
    assert.equal(table[3], '| anp | 20.0 | – | – | 25.0 | – | – | 80.0 / 5.0 | – |');
    assert.ok(lines.includes(r.table));
    // What --json writes round-trips.
    assert.deepEqual(JSON.parse(JSON.stringify(r)).rows[0].torch, { seconds: 30, acc: 0.81, asr: 0.02, processSeconds: 50 });
  });

  it("says 'PyTorch not available' and shows our side only when torch is missing", async () => {
    const lines: string[] = [];
    const reference: ReferenceRunner = {
      probe: () => ({ unavailable: "/usr/bin/python3 has no torch (install Debian's python3-torch)" }),
      run: () => assert.fail('PyTorch must not run'),
    };
    const r = await benchPurification({ victimDir: FIXTURE, defenses: ['ft'], log: (s) => lines.push(s), ours: fakeOurs, reference });
    assert.deepEqual(r.torch, { available: false, reason: "/usr/bin/python3 has no torch (install Debian's python3-torch)" });
    assert.ok(lines.some((l) => l.includes('PyTorch not available: /usr/bin/python3 has no torch')));
    assert.equal(r.table, '| defense | ours s | our job s | our ACC/ASR % |\n| --- | --- | --- | --- |\n| ft | 10.0 | 25.0 | 80.0 / 5.0 |');
    assert.equal(r.rows[0].torch, null);
  });

  it("reads a Python without torch as 'PyTorch not available'", () => {
    // A stand-in interpreter that fails the way reference_defenses.py's `import torch` does.
    const dir = tempDir('bench-purify-python-');
    const python = path.join(dir, 'python3');
    fs.writeFileSync(python, `#!/bin/sh\necho "ModuleNotFoundError: No module named 'torch'" >&2\nexit 1\n`, { mode: 0o755 });
    assert.deepEqual(pythonReference(python).probe(), { unavailable: `${python} has no torch (install Debian's python3-torch)` });
    assert.deepEqual(pythonReference(path.join(dir, 'none')).probe(), { unavailable: `${path.join(dir, 'none')} is missing` });
  });

  it("runs PyTorch with glibc's malloc thresholds raised, unless the caller chose them", () => {
    const env = heapEnv({ PATH: '/usr/bin' });
    assert.equal(env.MALLOC_MMAP_THRESHOLD_, '2000000000');
    assert.equal(env.MALLOC_TRIM_THRESHOLD_, '2000000000');
    assert.equal(env.PATH, '/usr/bin');
    assert.equal(heapEnv({ MALLOC_MMAP_THRESHOLD_: '131072' }).MALLOC_MMAP_THRESHOLD_, '131072');
  });

  it('refuses a folder that is not a zoo victim in one line', async () => {
    const dir = tempDir('bench-purify-empty-');
    await assert.rejects(benchPurification({ victimDir: dir, defenses: ['ft'], log: () => undefined, ours: fakeOurs, reference: fakeReference([], []) }), (e: unknown) => e instanceof InputError && /victim\.json is missing/.test(e.message));
  });
});
