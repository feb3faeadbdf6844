/**
 * The heart of the runner: given a prepared job (victim model, test and triggered sets, auxiliary sets,
 * defenses), run every cell (seed x aux set x GIC off/on x defense), evaluate, save purified models and emit
 * events. File parsing and validation happen before (runner.ts); this part only computes.
 *
 * Cells are paired: the GIC-off and GIC-on cells of one (seed, aux set, defense) get the same random stream
 * (`Cell.stream`) and the same auxiliary sample, so they draw the same validation split, batch order,
 * augmentation and adversarial starts, and only the data differs (common random numbers). Their difference
 * then measures GIC, not the luck of the draw; summary.ts folds the seeds into means and intervals.
 */
import * as tf from '@tensorflow/tfjs-core';
import * as path from 'node:path';
import { cpuCores } from '../util/cores';
import type { ImageSet } from '../data/dataset';
import type { Model } from '../nn/model';
import type { Augment } from '../nn/train';
import { renormalize } from '../models/renormalize';
import { Rng } from '../util/rng';
import { CancelledError, JobError, oneLine } from '../errors';
import { cellError, describeNonFinite, findNonFinite } from './checks';
import type { RunEvent } from '../../shared/run_events';
import { getDefense } from '../defenses';
import { gallerySamples } from '../gic/gallery';
import { saveModelFile, type ModelFormat } from '../model_files/model_io';
import { exportOnnx } from '../model_files/onnx_export';
import { diffStateDicts } from '../model_files/diff';
import type { PtStateDict } from '../nn/module';
import { startCellPool } from './cell_pool';
import type { SpareCellProcess } from './cell_spawn';
import { newTrainingRecord, resolveParams, type Defense, type DefenseParams, type Profile, type TrainingRecord } from '../defenses/defense';
import { ortTrainWanted } from '../nn/ort_train';
import { grantedOrtThreads } from '../nn/ort_threads';
import { evaluateModelFast, evaluateOnnxFast, der, reported, type TriggeredSet } from '../metrics/evaluate';
import { RESULTS_SCHEMA, type RowTraining, type ReversedTriggerImage, type GicEntry, type ReportedMetrics, type ResultRow, type Results, type EmbeddingEntry } from '../../shared/results';
import type { BackendInfo } from '../backend';
import { gicEffectOfRows, summarizeRows } from '../../shared/summary';

/** One auxiliary set as drawn for one repetition seed (each seed samples, shifts or synthesizes its own). */
export interface PreparedAux {
  name: string;
  type: string;
  seed: number;
  set: ImageSet;
}

export interface PlannedDefense {
  id: string;
  profile: Profile;
  params?: DefenseParams;
}

/**
 * Calibrates an auxiliary set (GIC); provided by the gic module. `threads`: ONNX Runtime threads for the
 * calibration's graphs (its figures do not depend on them).
 */
export type Calibrator = (victim: Model, aux: PreparedAux, signal: AbortSignal | undefined, progress: (d: number, t: number, m?: string) => void, threads: number) => Promise<{ set: ImageSet; entry: GicEntry }>;

/** Projects features of reference, raw and calibrated data to 2-D; provided by the embed module. */
export type Embedder = (victim: Model, aux: PreparedAux, calibrated: ImageSet | undefined, signal?: AbortSignal) => Promise<EmbeddingEntry | undefined>;

export interface PreparedJob {
  victim: Model;
  model: Results['model'];
  test: ImageSet;
  triggered: TriggeredSet;
  /** Every (seed, aux set), seed-major: the aux sets of `seeds[0]` first, in the job's order. */
  aux: PreparedAux[];
  defenses: PlannedDefense[];
  gicMode: 'off' | 'on' | 'both';
  augment: Augment;
  /** The repetition seeds (one or more); the rows carry theirs. */
  seeds: number[];
  calibrate?: Calibrator;
  embed?: Embedder;
  /** Where to write a purified model named `baseName` (files in the staging folder), one per output format;
   * the row's `output` is the first. */
  saveTargets?: (baseName: string) => SaveTarget[];
}

export interface SaveTarget {
  file: string;
  format: ModelFormat;
}

export interface CoreOptions {
  backend: BackendInfo;
  signal?: AbortSignal;
  emit: (e: RunEvent) => void;
  /**
   * Cell processes (each with its own single-threaded backend and ONNX Runtime) to run cells side by side; 0 or
   * 1 runs them in this thread. Default: one per core, for the wasm and cpu backends only. Also the bound on
   * ONNX Runtime threads: the processes share it out, and work in this thread alone (a lone cell, a calibration
   * with no cell processes beside it, the evaluation) takes all of it.
   */
  workers?: number;
  /** Run only one of `count` disjoint slices of the cells (sharded sweeps); default all. */
  shard?: ShardSpec;
  /** A cell process started with the job (cell_spawn.ts), for the pool to take as its first. */
  spare?: SpareCellProcess;
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
  /** The repetition seed (the aux set's). */
  seed: number;
  /**
   * Label of the cell's random stream, forked from `seed`: the same for the GIC-off and GIC-on cells of one
   * (seed, aux set, defense), so the pair differs only in its data.
   */
  stream: string;
}

export function planCells(job: Pick<PreparedJob, 'aux' | 'defenses' | 'gicMode'>): Cell[] {
  const gics = job.gicMode === 'both' ? [false, true] : job.gicMode === 'on' ? [true] : [false];
  const cells: Cell[] = [];
  for (const aux of job.aux) {
    for (const gic of gics) for (const defense of job.defenses) cells.push({ aux, gic, defense, seed: aux.seed, stream: `cell:${aux.name}:${defense.id}` });
  }
  return cells;
}

/** The aux sets of the first seed: those the embeddings project (one plot per aux set, not per seed). */
export function firstSeedAux(job: Pick<PreparedJob, 'aux' | 'seeds'>): PreparedAux[] {
  return job.aux.filter((a) => a.seed === job.seeds[0]);
}

/** Key of one (aux set, seed): calibrations are per drawn sample. */
const auxKey = (a: PreparedAux) => `${a.name}\u0000${a.seed}`;

export async function runPrepared(job: PreparedJob, o: CoreOptions): Promise<Results> {
  const startTensors = tf.memory().numTensors;
  const progress = (stage: string) => (done: number, total: number, message?: string) => o.emit({ type: 'progress', stage, done, total, message });

  // Evaluation through ONNX Runtime on the CPU backends (a GPU backend evaluates where it trains).
  const cpu = o.backend.name === 'wasm' || o.backend.name === 'cpu';
  // The job's threads: `workers` (one per core by default) bounds what runs at once, cell processes or the
  // ONNX Runtime threads of work done in this process.
  const cores = Math.max(1, o.workers ?? cpuCores());
  const cells = planCells(job);
  const shard = o.shard;
  const mine = cells.flatMap((_, i) => (!shard || i % shard.count === shard.index ? [i] : []));
  // A job of one cell on raw data runs it in a process of its own, started before the victim's evaluation, which
  // this thread does meanwhile (cell_pool.ts); several cells start after it, on all the cores.
  const lone = mine.length === 1 && !cells[mine[0]].gic;
  const lonePool = lone ? await startCellPool(job, o, 1, true) : undefined;
  let loneCell: Promise<CellOutcome> | undefined;
  if (lonePool) {
    const i = mine[0];
    loneCell = lonePool.run(i, cells[i], cells[i].aux.set, targetsFor(job, cells[i]), progress(stageOf(job, cells[i])));
    // Awaited below; a cancellation during the evaluation must not count as unhandled.
    loneCell.catch(() => undefined);
    await lonePool.delivered();
  }

  let evaluated: Awaited<ReturnType<typeof evaluateModelFast>>;
  try {
    evaluated = await evaluateModelFast(job.victim, job.test, job.triggered, o.signal, cpu ? (lonePool ? lonePool.freeCores : cores) : 0);
  } catch (e) {
    await lonePool?.close();
    throw e;
  }
  const { engine, ...measured } = evaluated;
  const baseline = reported(measured, job.triggered);
  const onGpu = o.backend.ort === 'webgpu';
  const evaluation = engine === 'onnxruntime' ? (onGpu ? ('onnxruntime-webgpu' as const) : ('onnxruntime-cpu' as const)) : o.backend.name;
  if (engine === 'onnxruntime') o.emit({ type: 'log', message: `evaluating with ONNX Runtime (${onGpu ? 'WebGPU' : 'CPU'})` });
  o.emit({ type: 'baseline', model: job.model, baseline, evaluation });
  const hint = chanceLevelHint(baseline.acc, job.victim.numClasses, job.victim.normalize !== undefined);
  if (hint) o.emit({ type: 'log', message: hint });

  const pool = lonePool ?? (lone ? undefined : await startCellPool(job, o, mine.length));
  const results: Results = {
    schema: RESULTS_SCHEMA,
    // With a pool, that many single-threaded processes compute cells side by side (and this thread calibrates).
    backend: { name: o.backend.name, threads: pool ? pool.size : o.backend.threads, evaluation, ...(o.backend.adapter ? { adapter: o.backend.adapter } : {}) },
    model: job.model,
    baseline,
    rows: [],
    gic: [],
    embeddings: [],
    detection: {},
  };
  const embedded = firstSeedAux(job);
  if (shard) results.shard = { index: shard.index, count: shard.count, cells: cells.length, aux: embedded.map((a) => a.name) };

  try {
    const calibrated = new Map<string, ImageSet>();
    // Calibration is deterministic (seeded), so shards that need the same calibrated set compute the same one.
    const calibratedSet = async (aux: PreparedAux): Promise<ImageSet> => {
      let cal = calibrated.get(auxKey(aux));
      if (!cal) {
        if (!job.calibrate) throw new Error('GIC is not available in this build');
        const t0 = Date.now();
        // Beside a pool of cell processes this thread takes one core; alone, all of them.
        const out = await job.calibrate(job.victim, aux, o.signal, progress(`gic ${aux.name}${job.seeds.length > 1 ? ` (seed ${aux.seed})` : ''}`), pool || !cpu ? 1 : cores);
        out.entry.seconds = out.entry.seconds || (Date.now() - t0) / 1000;
        out.entry.samples ??= gallerySamples(aux.set, out.set, out.entry.delta);
        cal = out.set;
        calibrated.set(auxKey(aux), cal);
        results.gic.push(out.entry);
        o.emit({ type: 'gic', entry: out.entry });
      }
      return cal;
    };

    // A calibration that fails (other than by cancellation) fails the GIC cells of its aux set, not the job.
    const failedCalibration = new Map<string, string>();
    const auxFor = async (cell: Cell): Promise<ImageSet | { error: string }> => {
      if (!cell.gic) return cell.aux.set;
      const failed = failedCalibration.get(auxKey(cell.aux));
      if (failed) return { error: failed };
      try {
        return await calibratedSet(cell.aux);
      } catch (e) {
        if (e instanceof CancelledError) throw e;
        failedCalibration.set(auxKey(cell.aux), `GIC failed: ${oneLine(e)}`);
        return { error: failedCalibration.get(auxKey(cell.aux))! };
      }
    };
    const isError = (x: ImageSet | { error: string }): x is { error: string } => 'error' in x;

    const embedAll = async () => {
      if (!job.embed) return;
      for (const [a, aux] of embedded.entries()) {
        if (shard && a % shard.count !== shard.index) continue;
        if (o.signal?.aborted) throw new CancelledError();
        // The calibrated set is projected too whenever the job calibrates (in a shard, this may be the first use).
        const usesGic = job.gicMode !== 'off';
        const cal = usesGic && !isError(await auxFor({ aux, gic: true, defense: job.defenses[0], seed: aux.seed, stream: '' })) ? calibrated.get(auxKey(aux)) : undefined;
        const entry = await job.embed(job.victim, aux, cal, o.signal);
        if (entry) {
          results.embeddings.push(entry);
          o.emit({ type: 'embedding', entry });
        }
      }
    };

    const outcomes = new Map<number, CellOutcome>();
    const finish = (i: number, out: CellOutcome) => {
      // Cell processes do not know the baseline: the row's DER is set here.
      if (out.row.der === null && !out.row.error && out.row.acc !== undefined) out.row.der = der(baseline, out.row as ReportedMetrics);
      outcomes.set(i, out);
      o.emit({ type: 'row', row: out.row });
    };
    if (pool) {
      // Cells on raw data start at once in the workers; this thread calibrates meanwhile and queues each
      // aux set's GIC cells as soon as its calibrated set exists. Rows are kept in cell order below.
      const pending: Promise<void>[] = [];
      const submit = (i: number, auxSet: ImageSet) => {
        const cell = cells[i];
        const outcome = loneCell ? loneCell.then((out) => evaluateLoneCell(job, out, o.signal, cores)) : pool.run(i, cell, auxSet, targetsFor(job, cell), progress(stageOf(job, cell)));
        const done = outcome.then((out) => finish(i, out));
        // Awaited below, after the calibrations; a cancellation meanwhile must not count as unhandled.
        done.catch(() => undefined);
        pending.push(done);
      };
      // Longest cells first (by the defenses' measured costs), so that the pool does not end on one long cell;
      // the GIC cells of each aux set the same way once its calibration is done. Rows stay in cell order.
      const cost = (i: number) => getDefense(cells[i].defense.id)?.cost ?? 1;
      const byCost = (a: number, b: number) => cost(b) - cost(a);
      for (const i of mine.filter((i) => !cells[i].gic).sort(byCost)) submit(i, cells[i].aux.set);
      const gicCells = mine.filter((i) => cells[i].gic);
      const auxOrder = [...new Set(gicCells.map((i) => auxKey(cells[i].aux)))];
      gicCells.sort((a, b) => auxOrder.indexOf(auxKey(cells[a].aux)) - auxOrder.indexOf(auxKey(cells[b].aux)) || byCost(a, b));
      for (const i of gicCells) {
        const auxSet = await auxFor(cells[i]);
        if (isError(auxSet)) finish(i, { row: { ...emptyRow(cells[i]), ...auxSet } });
        else submit(i, auxSet);
      }
      // The projections too are this thread's work, done while the workers are still busy.
      await embedAll();
      // Nothing more for this thread to compute: a lone cell takes its cores, and in a pool the processes that
      // run out of cells lend theirs.
      pool.allSubmitted();
      await Promise.all(pending);
    } else {
      for (const i of mine) {
        const cell = cells[i];
        if (o.signal?.aborted) throw new CancelledError();
        const auxSet = await auxFor(cell);
        if (isError(auxSet)) finish(i, { row: { ...emptyRow(cell), ...auxSet } });
        else finish(i, await runCell(job, cell, auxSet, baseline, i, o.signal, progress(stageOf(job, cell)), targetsFor(job, cell), cpu ? cores : 0));
      }
    }
    for (const i of mine) {
      const out = outcomes.get(i)!;
      results.rows.push(out.row);
      // NC's detection of the first cell (in cell order) without GIC that produced one.
      if (out.detection && cells[i].defense.id === 'nc' && !cells[i].gic && !results.detection.nc) results.detection.nc = out.detection;
    }

    // A job with GIC and no defense calibrates its aux sets all the same: the calibrations are its result
    // (VS Code's Calibrate Auxiliary Data writes such a job).
    if (job.gicMode !== 'off' && !job.defenses.length) {
      for (const [a, aux] of job.aux.entries()) if (!shard || a % shard.count === shard.index) await calibratedSet(aux);
    }
    if (!pool) await embedAll();
    results.summary = summarizeRows(results.rows);
    results.gicEffect = gicEffectOfRows(results.rows);
  } finally {
    await pool?.close();
  }
  const leaked = tf.memory().numTensors - startTensors;
  if (leaked !== 0) o.emit({ type: 'log', message: `warning: ${leaked} tensors more than at the start of the job` });
  return results;
}

/**
 * A lone cell's row completed here: its process sent the purified model as ONNX instead of receiving the test
 * sets (cell_protocol.ts), and this process, done with the victim by now, evaluates it on every core. The row
 * gets its metrics where the cell would have put them, and the evaluation's time in its seconds.
 */
export async function evaluateLoneCell(job: PreparedJob, out: CellOutcome, signal: AbortSignal | undefined, threads: number): Promise<CellOutcome> {
  const { purified, ...rest } = out;
  if (!purified) return out;
  const t0 = Date.now();
  let row: ResultRow;
  try {
    const { engine: _engine, ...measured } = await evaluateOnnxFast(purified.onnx, purified.inputShape, purified.numClasses, job.test, job.triggered, signal, threads);
    const { details, diff, ...head } = out.row;
    row = { ...head, ...reported(measured, job.triggered), der: null };
    if (details) row.details = details;
    if (diff) row.diff = diff;
  } catch (e) {
    // As runCell: a failed evaluation fails the row, not the job.
    if (e instanceof CancelledError) throw e;
    row = { ...out.row, error: out.row.error ?? cellError(e) };
  }
  row.seconds += (Date.now() - t0) / 1000;
  return { ...rest, row };
}

/**
 * A warning where the victim's clean accuracy is near chance (below twice it): the numbers that follow are then
 * about a model that does not work on these images, and the usual cause is the input's preparation rather than
 * the model (a PyTorch model trained on normalized images, given without `normalize`, read 17% on the zoo's
 * CNN instead of 81%, and NPD then diverged on it).
 */
export function chanceLevelHint(acc: number, numClasses: number, normalized: boolean): string | undefined {
  if (numClasses < 2 || acc >= 2 / numClasses) return undefined;
  const pct = (x: number) => `${(100 * x).toFixed(1)}%`;
  return `warning: the victim's clean accuracy is ${pct(acc)} (chance: ${pct(1 / numClasses)}): check ${normalized ? 'the' : 'the model\'s "normalize" (mean and std of its training inputs: none was given or found in the file),'} input shape and channel order and the test labels`;
}

/** The progress stage of a cell: `ft on unseen + GIC (seed 1)`. */
function stageOf(job: Pick<PreparedJob, 'seeds'>, cell: Cell): string {
  const seedTag = job.seeds.length > 1 ? ` (seed ${cell.seed})` : '';
  return `${cell.defense.id} on ${cell.aux.name}${cell.gic ? ' + GIC' : ''}${seedTag}`;
}

export function emptyRow(cell: Pick<Cell, 'aux' | 'gic' | 'defense' | 'seed'>): ResultRow {
  return { aux: cell.aux.name, auxType: cell.aux.type, gic: cell.gic, defense: cell.defense.id, seed: cell.seed, seconds: 0, output: null, error: null };
}

/** Where a cell's purified model goes (decided here, so that a worker can write it); `-s<seed>` with several seeds. */
function targetsFor(job: Pick<PreparedJob, 'saveTargets' | 'seeds'>, cell: Cell): SaveTarget[] {
  const seed = job.seeds.length > 1 ? `-s${cell.seed}` : '';
  return job.saveTargets?.(`${cell.defense.id}-${cell.aux.name}${cell.gic ? '-gic' : ''}${seed}`) ?? [];
}

/** The row's account of where the defense trained, with why any of it stayed on the backend. */
function rowTraining(t: TrainingRecord, defense: Defense): RowTraining {
  const why = [...t.backendWhy, ...(defense.ownLoop ? [defense.ownLoop] : [])];
  const engine = t.backendSteps === 0 && t.onnxruntimeSteps > 0 && !defense.ownLoop ? 'onnxruntime' : t.onnxruntimeSteps === 0 ? 'backend' : 'mixed';
  if (t.onnxruntimeSteps === 0 && t.backendSteps === 0 && !why.length) why.push('the defense took no training step');
  return { engine, onnxruntimeSteps: t.onnxruntimeSteps, backendSteps: t.backendSteps, ...(why.length ? { why } : {}) };
}

export interface CellOutcome {
  row: ResultRow;
  detection?: { anomalyIndex: number[]; flagged: number[]; triggers?: ReversedTriggerImage[] };
  /**
   * The purified model as ONNX (exportOnnx, with its normalization) where the cell was run without the test
   * sets (a lone cell process): the row has no metrics yet, and the job process evaluates this.
   */
  purified?: { onnx: Uint8Array; inputShape: [number, number, number]; numClasses: number };
}

/**
 * A cell's test sets: at hand, or (a lone cell process, cell_protocol.ts) left to the job process, which
 * evaluates the purified model from its ONNX export; `fetchTestSets` gets them where the model cannot be
 * exported.
 */
export type CellTestSets = Pick<PreparedJob, 'test' | 'triggered'> | { test?: undefined; triggered?: undefined; fetchTestSets: () => Promise<Pick<PreparedJob, 'test' | 'triggered'>> };

/**
 * Runs one cell: the defense on the (raw or calibrated) aux set, evaluation, and the purified model written to
 * `targets`. Used in this thread and by the cell processes alike, so both give the same row. Without the test
 * sets (a lone cell process) the outcome carries the purified model as ONNX instead of the metrics, for
 * evaluateLoneCell.
 */
export async function runCell(
  job: Pick<PreparedJob, 'victim' | 'augment' | 'seeds' | 'saveTargets'> & CellTestSets,
  cell: Cell,
  auxSet: ImageSet,
  /** The victim's metrics, for the row's DER; undefined in a cell process (its pool sets the DER). */
  baseline: ReportedMetrics | undefined,
  index: number,
  signal: AbortSignal | undefined,
  progress: (d: number, t: number, m?: string) => void,
  targets: SaveTarget[] = targetsFor(job, cell),
  /**
   * ONNX Runtime threads for the evaluation; above 0 the defense's network passes run through ONNX Runtime too,
   * on as many threads (the rows do not depend on it); 0 keeps everything on the tensor backend (native and GPU
   * backends, or no ONNX Runtime here).
   */
  ortThreads = 0,
  /** ONNX Runtime threads for the evaluation of the purified model, where not `ortThreads`. */
  evalThreads = ortThreads,
): Promise<CellOutcome> {
  const row = emptyRow(cell);
  const t0 = Date.now();
  const defense = getDefense(cell.defense.id);
  if (!defense) {
    row.error = `defense "${cell.defense.id}" is not implemented`;
    return { row };
  }
  let model: Model | undefined;
  let renormalized: { model: Model; layers: number } | undefined;
  let detection: CellOutcome['detection'];
  let purified: CellOutcome['purified'];
  try {
    const params = resolveParams(defense, cell.defense.profile, cell.defense.params);
    row.params = params;
    // The profile's own departures from BackdoorBench, then whatever the job overrode.
    const overrides = Object.entries(cell.defense.params ?? {}).map(([k, v]) => `${k} ${v}`);
    // A graph whose BatchNorm was folded into its convolutions gets it back for the defense (renormalize.ts).
    renormalized = await renormalize(job.victim, auxSet);
    const renormNote = renormalized
      ? `BatchNorm put back after ${renormalized.layers} convolutions (folded into them in this graph): the identity in eval mode, statistics of the aux set, the convolutions' channels at PyTorch's initial weight norm`
      : undefined;
    const departures = [defense.departures?.(cell.defense.profile), renormNote, overrides.length ? `set by the job: ${overrides.join(', ')}` : undefined].filter(Boolean).join('; ');
    if (departures) row.departures = departures;
    // Each pair of cells has its own stream (so a sharded or pooled run reproduces the sequential one), shared
    // by its GIC-off and GIC-on cell (so the two differ only in their data).
    const rng = new Rng(cell.seed).fork(cell.stream);
    const training = newTrainingRecord();
    const out = await defense.run({ victim: renormalized?.model ?? job.victim, aux: auxSet, profile: cell.defense.profile, params, augment: job.augment, rng, signal, progress, ortTraining: ortThreads > 0 && ortTrainWanted(), ortThreads: Math.max(1, ortThreads), training });
    row.training = rowTraining(training, defense);
    model = out.model;
    // A defense that diverged without a non-finite loss (or that does not train) must not pass as a result.
    const bad = await findNonFinite(model);
    if (bad) throw new JobError(`the purified model's weight ${describeNonFinite(bad)}: the defense diverged`);
    let sets: Pick<PreparedJob, 'test' | 'triggered'> | undefined = job.test ? { test: job.test, triggered: job.triggered } : undefined;
    if (!sets && 'fetchTestSets' in job) {
      try {
        purified = { onnx: await exportOnnx(model, { includeNormalization: true }), inputShape: model.inputShape, numClasses: model.numClasses };
      } catch {
        sets = await job.fetchTestSets();
      }
    }
    if (sets) {
      // In a cell process, on the cores of processes that ran out of cells too (ort_threads.ts).
      const { engine: _engine, ...measured } = await evaluateModelFast(model, sets.test, sets.triggered, signal, evalThreads && Math.max(evalThreads, grantedOrtThreads()));
      const m = reported(measured, sets.triggered);
      Object.assign(row, m, { der: baseline ? der(baseline, m) : null });
    }
    if (out.details || renormalized) row.details = { profile: cell.defense.profile, ...(renormalized ? { batchNormRestored: renormalized.layers } : {}), ...out.details };
    // What the defense changed, as the saved model holds it (masks are folded into the weights by then).
    // A diff that cannot be made (a model whose tensors no longer match the victim's) only leaves it out.
    try {
      row.diff = diffStateDicts(await victimStateDict(job.victim), await model.stateDict());
    } catch {
      /* no diff for this row */
    }
    detection = out.detection;
    const written: string[] = [];
    for (const t of targets) written.push(path.basename(await saveModelFile(model, t.file, t.format)));
    if (written.length) row.output = written[0];
  } catch (e) {
    if (e instanceof CancelledError) throw e;
    row.error = cellError(e);
  } finally {
    model?.dispose();
    if (renormalized && renormalized.model !== model) renormalized.model.dispose();
    row.seconds = (Date.now() - t0) / 1000;
  }
  return { row, detection, ...(purified ? { purified } : {}) };
}

/** The victim's state_dict, read once per victim: every cell compares its purified model with it. */
const victimDicts = new WeakMap<Model, Promise<PtStateDict>>();
function victimStateDict(victim: Model): Promise<PtStateDict> {
  let sd = victimDicts.get(victim);
  if (!sd) {
    sd = victim.stateDict();
    victimDicts.set(victim, sd);
  }
  return sd;
}

export function relativeTo(outDir: string, file: string): string {
  return path.relative(outDir, file).split(path.sep).join('/');
}
