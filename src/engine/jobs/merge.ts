/**
 * `backdoor-audit merge DIR...`: the shards of a sharded sweep (`run --shard i/n`, one per Slurm array task or
 * Kubernetes indexed-job pod) back into the results of the unsharded run. Rows go back into cell order, GIC
 * entries and embeddings into aux order (a calibration two shards both needed is kept once: it is seeded, so
 * both computed the same), NC's detection comes from the first cell that produced one, and purified models'
 * paths are rewritten relative to the merged results' folder. Seeds are cells like any other, so a sweep over
 * several seeds merges the same way; `summary` and `gicEffect` are computed again from the merged rows, as the
 * unsharded run computes them from its rows. Only timings can differ from the unsharded run.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { InputError } from '../errors';
import { writeJsonAtomic } from '../util/atomic';
import { RESULTS_SCHEMA, type GicEntry, type Results, type ResultRow } from '../../shared/results';
import { gicEffectOfRows, summarizeRows } from '../../shared/summary';

export interface ShardResults {
  /** Folder the shard's results.json is in (its rows' `output` paths are relative to it). */
  dir: string;
  results: Results;
}

export function readShard(dir: string): ShardResults {
  const file = fs.existsSync(dir) && fs.statSync(dir).isDirectory() ? path.join(dir, 'results.json') : dir;
  if (!fs.existsSync(file)) throw new InputError('no results.json here', dir);
  let results: Results;
  try {
    results = JSON.parse(fs.readFileSync(file, 'utf8')) as Results;
  } catch (e) {
    throw new InputError(`results.json is not valid JSON: ${(e as Error).message}`, file);
  }
  if (results?.schema !== RESULTS_SCHEMA) throw new InputError(`not a ${RESULTS_SCHEMA} file`, file);
  return { dir: path.dirname(path.resolve(file)), results };
}

/** Merge every shard of one sweep; `outDir` is where the merged results.json will live. */
export function mergeShards(shards: ShardResults[], outDir: string): Results {
  if (shards.length === 0) throw new InputError('nothing to merge', 'merge');
  const first = shards[0].results;
  const count = first.shard?.count;
  if (!count) throw new InputError('results of an unsharded run cannot be merged (no "shard" field)', shards[0].dir);
  const byIndex: (ShardResults | undefined)[] = Array.from({ length: count }, () => undefined);
  for (const s of shards) {
    const info = s.results.shard;
    if (!info) throw new InputError('results of an unsharded run cannot be merged (no "shard" field)', s.dir);
    if (info.count !== count || info.cells !== first.shard!.cells || info.aux.join('\0') !== first.shard!.aux.join('\0')) {
      throw new InputError(`shard ${info.index + 1}/${info.count} belongs to another sweep than shard ${first.shard!.index + 1}/${count}`, s.dir);
    }
    if (JSON.stringify(s.results.model) !== JSON.stringify(first.model) || JSON.stringify(s.results.baseline) !== JSON.stringify(first.baseline)) {
      throw new InputError('shards evaluated different models (model or baseline differ)', s.dir);
    }
    if (byIndex[info.index]) throw new InputError(`shard ${info.index + 1}/${count} is given twice`, s.dir);
    byIndex[info.index] = s;
  }
  const missing = byIndex.flatMap((s, i) => (s ? [] : [`${i + 1}/${count}`]));
  if (missing.length) throw new InputError(`missing shard${missing.length > 1 ? 's' : ''} ${missing.join(', ')}`, 'merge');

  const cells = first.shard!.cells;
  const auxOrder = first.shard!.aux;
  const rows: ResultRow[] = [];
  const rowShard: ShardResults[] = [];
  for (let c = 0; c < cells; c++) {
    const s = byIndex[c % count]!;
    const row = s.results.rows[Math.floor(c / count)];
    if (!row) throw new InputError(`shard ${(c % count) + 1}/${count} has fewer rows than its cells (did it finish?)`, s.dir);
    rows.push(row.output ? { ...row, output: relocate(row.output, s.dir, outDir) } : { ...row });
    rowShard.push(s);
  }
  for (const s of shards) {
    const expected = Math.ceil((cells - s.results.shard!.index) / count);
    if (s.results.rows.length !== expected) throw new InputError(`shard ${s.results.shard!.index + 1}/${count} has ${s.results.rows.length} rows, expected ${expected}`, s.dir);
  }

  // GIC entries (one per aux set and seed) in the order the unsharded run calibrates: first use by a cell, then
  // by an embedding (which projects the first seed's sets: that seed is the first row's).
  const key = (aux: string, seed: number | undefined) => `${aux}\u0000${seed ?? ''}`;
  const gicByAux = new Map(shards.flatMap((s) => s.results.gic.map((g: GicEntry) => [key(g.aux, g.seed), g] as const)));
  const firstSeed = rows[0]?.seed;
  const gicOrder = [...new Set([...rows.filter((r) => r.gic).map((r) => key(r.aux, r.seed)), ...auxOrder.map((a) => key(a, firstSeed))])].filter((k) => gicByAux.has(k));
  const embByAux = new Map(shards.flatMap((s) => s.results.embeddings.map((e) => [e.aux, e] as const)));

  const merged: Results = {
    schema: RESULTS_SCHEMA,
    backend: first.backend,
    model: first.model,
    baseline: first.baseline,
    rows,
    gic: gicOrder.map((a) => gicByAux.get(a)!),
    embeddings: auxOrder.filter((a) => embByAux.has(a)).map((a) => embByAux.get(a)!),
    detection: {},
    summary: summarizeRows(rows),
    gicEffect: gicEffectOfRows(rows),
  };
  // The unsharded run keeps the detection of the first NC cell without GIC that succeeded.
  const ncCell = rows.findIndex((r) => r.defense === 'nc' && !r.gic && r.error === null);
  // With no trigger known, shard 1 ran the detection on its own (its PNGs stay in that shard's folder).
  const own = byIndex[0]?.results.detection.nc?.source ? byIndex[0] : undefined;
  const nc = own ? relocateTriggers(own.results.detection.nc!, own.dir, outDir) : ncCell >= 0 ? rowShard[ncCell].results.detection.nc : undefined;
  if (nc) merged.detection.nc = nc;
  if (first.attack) merged.attack = first.attack;
  return merged;
}

function relocateTriggers(nc: NonNullable<Results['detection']['nc']>, fromDir: string, toDir: string): NonNullable<Results['detection']['nc']> {
  return { ...nc, triggers: nc.triggers?.map((t) => (t.file ? { ...t, file: relocate(t.file, fromDir, toDir) } : t)) };
}

function relocate(output: string, fromDir: string, toDir: string): string {
  return path.relative(toDir, path.resolve(fromDir, output)).split(path.sep).join('/');
}

/** Reads the shard folders, merges them and writes `outDir/results.json` atomically; returns its path. */
export function mergeShardDirs(dirs: string[], outDir: string): { file: string; results: Results } {
  const out = path.resolve(outDir);
  const results = mergeShards(dirs.map(readShard), out);
  fs.mkdirSync(out, { recursive: true });
  const file = path.join(out, 'results.json');
  writeJsonAtomic(file, results);
  return { file, results };
}
