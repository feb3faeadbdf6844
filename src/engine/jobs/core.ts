/**
 * The heart of the runner: given a prepared job (victim model, test and triggered sets, auxiliary sets,
 * defenses), run every cell (aux set x GIC off/on x defense), evaluate, save purified models and emit events.
 * File parsing and validation happen before (prepare.ts); this part only computes.
 */
import * as tf from '@tensorflow/tfjs-core';
import * as path from 'node:path';
import type { ImageSet } from '../data/dataset';
import type { Model } from '../nn/model';
import type { Augment } from '../nn/train';
import { Rng } from '../util/rng';
import { CancelledError, oneLine } from '../errors';
import type { RunEvent } from '../../protocol';
import { getDefense } from '../defenses';
import { gallerySamples } from '../gic/gallery';
import { resolveParams, type DefenseParams, type Profile } from '../defenses/defense';
import { evaluateModel, der, type TriggeredSet } from '../metrics/evaluate';
import { RESULTS_SCHEMA, type GicEntry, type Metrics, type ResultRow, type Results, type EmbeddingEntry } from './results';
import type { BackendInfo } from '../backend';

export interface PreparedAux {
  name: string;
  type: string;
  set: ImageSet;
}

export interface PlannedDefense {
  id: string;
  profile: Profile;
  params?: DefenseParams;
}

/** Calibrates an auxiliary set (GIC); provided by the gic module. */
export type Calibrator = (victim: Model, aux: PreparedAux, signal: AbortSignal | undefined, progress: (d: number, t: number, m?: string) => void) => Promise<{ set: ImageSet; entry: GicEntry }>;

/** Projects features of reference, raw and calibrated data to 2-D; provided by the embed module. */
export type Embedder = (victim: Model, aux: PreparedAux, calibrated: ImageSet | undefined) => EmbeddingEntry | undefined;

export interface PreparedJob {
  victim: Model;
  model: Results['model'];
  test: ImageSet;
  triggered: TriggeredSet;
  aux: PreparedAux[];
  defenses: PlannedDefense[];
  gicMode: 'off' | 'on' | 'both';
  augment: Augment;
  seed: number;
  calibrate?: Calibrator;
  embed?: Embedder;
  /** Saves a purified model into outDir; returns its path relative to outDir. */
  saveModel?: (model: Model, baseName: string) => string;
}

export interface CoreOptions {
  backend: BackendInfo;
  signal?: AbortSignal;
  emit: (e: RunEvent) => void;
  /** Run only one of `count` disjoint slices of the cells (sharded sweeps); default all. */
  shard?: ShardSpec;
}

/** Slice `index` (0-based) of `count`: cells c with c % count === index, and aux sets a with a % count === index
 * for the embeddings, so that every piece of work runs in exactly one shard. */
export interface ShardSpec {
  index: number;
  count: number;
}

export interface Cell {
  aux: PreparedAux;
  gic: boolean;
  defense: PlannedDefense;
}

export function planCells(job: Pick<PreparedJob, 'aux' | 'defenses' | 'gicMode'>): Cell[] {
  const gics = job.gicMode === 'both' ? [false, true] : job.gicMode === 'on' ? [true] : [false];
  const cells: Cell[] = [];
  for (const aux of job.aux) for (const gic of gics) for (const defense of job.defenses) cells.push({ aux, gic, defense });
  return cells;
}

export async function runPrepared(job: PreparedJob, o: CoreOptions): Promise<Results> {
  const startTensors = tf.memory().numTensors;
  const progress = (stage: string) => (done: number, total: number, message?: string) => o.emit({ type: 'progress', stage, done, total, message });

  const baseline: Metrics = evaluateModel(job.victim, job.test, job.triggered, o.signal);
  o.emit({ type: 'baseline', model: job.model, baseline });

  const results: Results = {
    schema: RESULTS_SCHEMA,
    backend: { name: o.backend.name, threads: o.backend.threads },
    model: job.model,
    baseline,
    rows: [],
    gic: [],
    embeddings: [],
    detection: {},
  };

  const cells = planCells(job);
  const shard = o.shard;
  const mine = (i: number) => !shard || i % shard.count === shard.index;
  if (shard) results.shard = { index: shard.index, count: shard.count, cells: cells.length, aux: job.aux.map((a) => a.name) };
  const calibrated = new Map<string, ImageSet>();
  // Calibration is deterministic (seeded), so shards that need the same calibrated set compute the same one.
  const calibratedSet = async (aux: PreparedAux): Promise<ImageSet> => {
    let cal = calibrated.get(aux.name);
    if (!cal) {
      if (!job.calibrate) throw new Error('GIC is not available in this build');
      const t0 = Date.now();
      const out = await job.calibrate(job.victim, aux, o.signal, progress(`gic ${aux.name}`));
      out.entry.seconds = out.entry.seconds || (Date.now() - t0) / 1000;
      out.entry.samples ??= gallerySamples(aux.set, out.set, out.entry.delta);
      cal = out.set;
      calibrated.set(aux.name, cal);
      results.gic.push(out.entry);
      o.emit({ type: 'gic', entry: out.entry });
    }
    return cal;
  };
  for (let i = 0; i < cells.length; i++) {
    if (!mine(i)) continue;
    const cell = cells[i];
    if (o.signal?.aborted) throw new CancelledError();
    const auxSet = cell.gic ? await calibratedSet(cell.aux) : cell.aux.set;
    const row = await runCell(job, cell, auxSet, baseline, i, o, progress(`${cell.defense.id} on ${cell.aux.name}${cell.gic ? ' + GIC' : ''}`), results);
    results.rows.push(row);
    o.emit({ type: 'row', row });
  }

  if (job.embed) {
    for (const [a, aux] of job.aux.entries()) {
      if (shard && a % shard.count !== shard.index) continue;
      if (o.signal?.aborted) throw new CancelledError();
      const usesGic = job.gicMode !== 'off' && job.defenses.length > 0;
      const cal = usesGic ? await calibratedSet(aux) : calibrated.get(aux.name);
      const entry = job.embed(job.victim, aux, cal);
      if (entry) {
        results.embeddings.push(entry);
        o.emit({ type: 'embedding', entry });
      }
    }
  }
  const leaked = tf.memory().numTensors - startTensors;
  if (leaked !== 0) o.emit({ type: 'log', message: `warning: ${leaked} tensors more than at the start of the job` });
  return results;
}

async function runCell(
  job: PreparedJob,
  cell: Cell,
  auxSet: ImageSet,
  baseline: Metrics,
  index: number,
  o: CoreOptions,
  progress: (d: number, t: number, m?: string) => void,
  results: Results,
): Promise<ResultRow> {
  const row: ResultRow = { aux: cell.aux.name, auxType: cell.aux.type, gic: cell.gic, defense: cell.defense.id, seconds: 0, output: null, error: null };
  const t0 = Date.now();
  const defense = getDefense(cell.defense.id);
  if (!defense) {
    row.error = `defense "${cell.defense.id}" is not implemented`;
    return row;
  }
  let model: Model | undefined;
  try {
    const params = resolveParams(defense, cell.defense.profile, cell.defense.params);
    // Each cell has its own stream so that a sharded run reproduces the unsharded one.
    const rng = new Rng(job.seed).fork(`cell:${index}:${cell.aux.name}:${cell.gic}:${cell.defense.id}`);
    const out = await defense.run({ victim: job.victim, aux: auxSet, profile: cell.defense.profile, params, augment: job.augment, rng, signal: o.signal, progress });
    model = out.model;
    const m = evaluateModel(model, job.test, job.triggered, o.signal);
    Object.assign(row, m, { der: der(baseline, m) });
    if (out.details) row.details = { profile: cell.defense.profile, ...out.details };
    if (out.detection && cell.defense.id === 'nc' && !cell.gic && !results.detection.nc) results.detection.nc = out.detection;
    if (job.saveModel) row.output = job.saveModel(model, `${cell.defense.id}-${cell.aux.name}${cell.gic ? '-gic' : ''}`);
  } catch (e) {
    if (e instanceof CancelledError) throw e;
    row.error = oneLine(e);
  } finally {
    model?.dispose();
    row.seconds = (Date.now() - t0) / 1000;
  }
  return row;
}

export function relativeTo(outDir: string, file: string): string {
  return path.relative(outDir, file).split(path.sep).join('/');
}
