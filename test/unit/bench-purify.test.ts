/**
 * The purification section of `bench`: its job file is a valid job on the committed zoo fixture, and the table
 * and JSON are assembled from both sides' results (both runners faked here: no defense runs and no timing is
 * asserted), including the 'PyTorch not available' case and a defense PyTorch's reference lacks.
 */
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { spawnSync } from 'node:child_process';
import { benchPurification, defaultVictimDir, foldRuns, median, pythonReference, parsePurification, purificationJob, type OursResult, type OursRunner, type ReferenceRunner } from '../../src/engine/bench_purify';
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

  it("runs PyTorch with glibc's malloc thresholds raised and its heap on huge pages, unless the caller chose them", () => {
    const env = heapEnv({ PATH: '/usr/bin' });
    assert.equal(env.MALLOC_MMAP_THRESHOLD_, '2000000000');
    assert.equal(env.MALLOC_TRIM_THRESHOLD_, '2000000000');
    assert.equal(env.GLIBC_TUNABLES, 'glibc.malloc.hugetlb=1');
    assert.equal(env.PATH, '/usr/bin');
    assert.equal(heapEnv({ MALLOC_MMAP_THRESHOLD_: '131072' }).MALLOC_MMAP_THRESHOLD_, '131072');
    assert.equal(heapEnv({ GLIBC_TUNABLES: 'glibc.malloc.arena_max=2' }).GLIBC_TUNABLES, 'glibc.malloc.arena_max=2');
  });

  it('--repeat: alternates the sides, shows the medians and lists every run', async () => {
    const order: string[] = [];
    const ourJobs = [30, 20, 40];
    const theirProcesses = [50, 70, 60];
    const ours: OursRunner = async () => {
      const i = order.filter((s) => s === 'ours').length;
      order.push('ours');
      return { seconds: ourJobs[i] - 5, jobSeconds: ourJobs[i], cpuSeconds: 2 * ourJobs[i], acc: 0.8, asr: 0.05 };
    };
    const reference: ReferenceRunner = {
      probe: () => ({ defenses: ['ft'] }),
      run: async () => {
        const i = order.filter((s) => s === 'torch').length;
        order.push('torch');
        return { seconds: theirProcesses[i] - 10, processSeconds: theirProcesses[i], acc: 0.81, asr: i === 2 ? 0.03 : 0.02 };
      },
    };
    const lines: string[] = [];
    const r = await benchPurification({ victimDir: FIXTURE, defenses: ['ft'], repeat: 3, log: (s) => lines.push(s), threads: 2, ours, reference });
    assert.deepEqual(order, ['ours', 'torch', 'ours', 'torch', 'ours', 'torch']);
    assert.equal(r.repeat, 3);
    const row = r.rows[0];
    assert.deepEqual([row.ours.seconds, row.ours.jobSeconds, row.ours.cpuSeconds], [25, 30, 60]);
    assert.deepEqual([row.torch?.seconds, row.torch?.processSeconds], [50, 60]);
    assert.equal(row.jobRatio, 2);
    assert.equal(row.ratio, 2);
    assert.equal(row.runs?.ours.length, 3);
    assert.equal(row.runs?.torch.length, 3);
    assert.equal(r.table.split('\n')[2], '| ft | 25.0 | 50.0 | 2.00x | 30.0 | 60.0 | 2.00x | 80.0 / 5.0 | 81.0 / 2.0 |');
    assert.ok(lines.includes('every run, in order:\n  ft: our job 30.0, 20.0, 40.0 s (cell 25.0, 15.0, 35.0); PyTorch\'s process 50.0, 70.0, 60.0 s (defense 40.0, 60.0, 50.0)'), lines.join('\n'));
    assert.ok(lines.some((l) => l.includes("ft: PyTorch's runs gave different ACC/ASR: 81.0 / 2.0, 81.0 / 2.0, 81.0 / 3.0")), lines.join('\n'));
    assert.ok(!lines.some((l) => l.includes('our runs gave different')));
    await assert.rejects(benchPurification({ victimDir: FIXTURE, defenses: ['ft'], repeat: 0, log: () => undefined, ours, reference }), (e: unknown) => e instanceof InputError && /whole number of runs/.test(e.message));
  });

  it('the CLI refuses a --repeat that is not a whole number of 1 or more, in one line, before measuring', () => {
    const cli = path.join(__dirname, '..', '..', 'dist', 'cli.js');
    for (const bad of ['0', '2.5', 'x']) {
      const p = spawnSync(process.execPath, [cli, 'bench', '--only-purification', '--repeat', bad], { encoding: 'utf8' });
      assert.equal(p.status, 2, p.stderr);
      assert.equal(p.stderr, `error: must be a whole number of runs, 1 or more (got "${bad}") (--repeat)\n`);
    }
  });

  it('folds runs: medians of the times, the first error standing for the side', () => {
    assert.equal(median([3, 1, 2]), 2);
    assert.equal(median([4, 1, 3, 2]), 2.5);
    assert.ok(Number.isNaN(median([])));
    assert.ok(Number.isNaN(median([1, NaN, 3])));
    const ok: OursResult = { seconds: 1, jobSeconds: 2, acc: 0.5, asr: 0.1 };
    assert.deepEqual(foldRuns([ok]), ok);
    const failed: OursResult = { seconds: NaN, jobSeconds: 9, acc: null, asr: null, error: 'boom' };
    assert.equal(foldRuns([ok, failed, ok]), failed);
    // A CPU time one run lacks folds to NaN (a dash in the table), not to the others' median.
    assert.ok(Number.isNaN(foldRuns([{ ...ok, cpuSeconds: 4 }, ok, { ...ok, cpuSeconds: 6 }]).cpuSeconds));
  });

  it('refuses a folder that is not a zoo victim in one line', async () => {
    const dir = tempDir('bench-purify-empty-');
    await assert.rejects(benchPurification({ victimDir: dir, defenses: ['ft'], log: () => undefined, ours: fakeOurs, reference: fakeReference([], []) }), (e: unknown) => e instanceof InputError && /victim\.json is missing/.test(e.message));
  });
});
