/**
 * Sharded sweeps: a small job of two seeds run whole and as 3 shards (`run --shard i/3`) through the CLI, then
 * `merge`: seeds are cells like any other, and the merged results equal the unsharded ones in everything but
 * timings and output folders (rows, GIC entries per seed, summary means and paired GIC intervals), and every
 * merged output path opens a purified model that exists.
 */
import { strict as assert } from 'node:assert';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import type { Results } from '../../src/shared/results';
import { mergeShards, readShard } from '../../src/engine/jobs/merge';
import { InputError } from '../../src/engine/errors';

const ROOT = path.join(__dirname, '..', '..');
const CLI = path.join(ROOT, 'dist', 'cli.js');

function cli(args: string[]): { status: number | null; stdout: string; stderr: string } {
  const r = spawnSync(process.execPath, [CLI, ...args], { encoding: 'utf8', timeout: 600_000 });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

/** Results without what legitimately differs between runs: wall times, where files went, the shard marker. */
function comparable(r: Results): unknown {
  return {
    ...r,
    shard: undefined,
    rows: r.rows.map((row) => ({ ...row, seconds: 0, output: row.output ? path.basename(row.output) : row.output })),
    gic: r.gic.map((g) => ({ ...g, seconds: 0 })),
  };
}

describe('sharded sweeps: run --shard i/n and merge', function () {
  this.timeout(900_000);
  let dir: string;
  let whole: Results;
  const shardDirs: string[] = [];

  before(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ba-shards-'));
    fs.copyFileSync(path.join(ROOT, 'examples', 'mnist-badnets', 'victim.safetensors'), path.join(dir, 'victim.safetensors'));
    const job = {
      model: 'victim.safetensors',
      data: { test: { format: 'mnist-embedded' } },
      attack: { type: 'badnets', target: 0, size: 3, offset: 0 },
      aux: [
        { name: 'heldout', type: 'unseen', source: { format: 'mnist-embedded' }, perClass: 5 },
        { name: 'noisy', type: 'ood', source: { format: 'mnist-embedded' }, shift: 'noise', perClass: 5 },
      ],
      defenses: [{ name: 'ft', params: { epochs: 2 } }, 'clp'],
      gic: { mode: 'both', delta: 0.1, norm: 'inf', epochs: 2 },
      profile: 'fast',
      embedding: { method: 'tsne', points: 60 },
      seeds: [3, 4],
      device: 'cpu',
    };
    fs.writeFileSync(path.join(dir, 'audit.json'), JSON.stringify(job));
    const r = cli(['run', path.join(dir, 'audit.json'), '--out', path.join(dir, 'whole')]);
    assert.equal(r.status, 0, r.stderr);
    whole = JSON.parse(fs.readFileSync(path.join(dir, 'whole', 'results.json'), 'utf8'));
    for (let i = 1; i <= 3; i++) {
      const out = path.join(dir, `shard-${i}`);
      const s = cli(['run', path.join(dir, 'audit.json'), '--out', out, '--shard', `${i}/3`]);
      assert.equal(s.status, 0, s.stderr);
      shardDirs.push(out);
    }
  });

  after(() => fs.rmSync(dir, { recursive: true, force: true }));

  it('splits the cells into disjoint slices that cover the job', () => {
    const shards = shardDirs.map((d) => readShard(d).results);
    assert.equal(whole.rows.length, 2 * 2 * 2 * 2);
    assert.deepEqual(whole.rows.map((r) => r.seed), [...Array(8).fill(3), ...Array(8).fill(4)]);
    assert.deepEqual(shards.map((s) => s.rows.length), [6, 5, 5]);
    assert.deepEqual(shards.map((s) => s.shard), [0, 1, 2].map((index) => ({ index, count: 3, cells: 16, aux: ['heldout', 'noisy'] })));
    // One calibration per aux set and seed; every shard with a GIC cell of a seed computed that seed's.
    assert.deepEqual(whole.gic.map((g) => `${g.aux}/${g.seed}`), ['heldout/3', 'noisy/3', 'heldout/4', 'noisy/4']);
    assert.equal(whole.shard, undefined);
    // Embeddings are split too: aux set a is projected by shard a % 3.
    assert.deepEqual(shards.map((s) => s.embeddings.map((e) => e.aux)), [['heldout'], ['noisy'], []]);
  });

  it('merge gives the unsharded results, with output paths that open the shards\' models', () => {
    const out = path.join(dir, 'merged');
    const r = cli(['merge', ...shardDirs, '--out', out]);
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stdout, /ft/);
    const merged: Results = JSON.parse(fs.readFileSync(path.join(out, 'results.json'), 'utf8'));
    assert.deepEqual(comparable(merged), comparable(whole));
    // Means over the two seeds and the paired GIC intervals are part of what must agree.
    assert.equal(merged.summary!.length, 2 * 2 * 2);
    assert.ok(merged.summary!.every((e) => e.n === 2 && e.acc !== null && e.acc.std !== null));
    assert.equal(merged.gicEffect!.length, 2 * 2);
    assert.ok(merged.gicEffect!.every((e) => e.n === 2 && e.acc !== null && e.acc.lo !== null && e.acc.lo <= e.acc.mean && e.acc.mean <= e.acc.hi!));
    assert.deepEqual(merged.gicEffect, whole.gicEffect);
    for (const row of merged.rows) if (row.output) assert.ok(fs.existsSync(path.join(out, row.output)), row.output);
    assert.ok(merged.rows.some((row) => row.output?.startsWith('../shard-')));
  });

  it('takes NC\'s detection from the first cell that produced one, as the unsharded run does', () => {
    const base = readShard(shardDirs[0]).results;
    const row = (defense: string, gic: boolean, error: string | null = null) => ({ aux: 'a', auxType: 'unseen', gic, defense, seconds: 1, error });
    // Cells in order: nc+GIC (0), nc failed (1), nc (2), nc (3); shards of 2: cells 0,2 and 1,3.
    const shard = (index: number, rows: ReturnType<typeof row>[], flagged: number[]): { dir: string; results: Results } => ({
      dir,
      results: { ...base, rows, gic: [], embeddings: [], shard: { index, count: 2, cells: 4, aux: ['a'] }, detection: { nc: { anomalyIndex: [0], flagged } } },
    });
    const merged = mergeShards([shard(0, [row('nc', true), row('nc', false)], [2]), shard(1, [row('nc', false, 'boom'), row('nc', false)], [3])], dir);
    assert.deepEqual(merged.detection.nc?.flagged, [2]);
  });

  it('refuses incomplete, duplicated or foreign shard sets with one line', () => {
    const shards = shardDirs.map(readShard);
    assert.throws(() => mergeShards(shards.slice(0, 2), dir), (e: unknown) => e instanceof InputError && /missing shard 3\/3/.test(e.message));
    assert.throws(() => mergeShards([shards[0], shards[0], shards[1]], dir), (e: unknown) => e instanceof InputError && /given twice/.test(e.message));
    assert.throws(() => mergeShards([readShard(path.join(dir, 'whole'))], dir), (e: unknown) => e instanceof InputError && /unsharded/.test(e.message));
    const truncated = structuredClone(shards[1]);
    truncated.results.rows.pop();
    assert.throws(() => mergeShards([shards[0], truncated, shards[2]], dir), (e: unknown) => e instanceof InputError && /fewer rows|rows, expected/.test(e.message));
    const r = cli(['merge', path.join(dir, 'nowhere'), '--out', path.join(dir, 'x')]);
    assert.equal(r.status, 2);
    assert.match(r.stderr.trim(), /^error: no results\.json here \(.*nowhere\)$/);
  });
});
