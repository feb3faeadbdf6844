/**
 * Preparation: everything between a validated job and the cells of core.ts. `prepareInputs` reads a job's
 * data for its model (sizes checked before reading, shapes and classes after) and builds the triggered test
 * set and every seed's auxiliary sets; `assemblePreparedJob` turns inputs and settings into the PreparedJob
 * that core.ts runs, with the hooks that write into the staging folder (GIC files, purified models) and plan
 * the embeddings. `run` uses both; the demo, which trains its own victim and draws its own sets, uses the
 * second, so the two cannot drift apart in how they calibrate, embed, name outputs or plan defenses.
 */
import { ortTrainWanted } from '../nn/ort_train';
import * as path from 'node:path';
import type { RunEvent } from '../../shared/run_events';
import type { AttackInfo } from '../../shared/results';
import type { Job, DataSourceSpec } from '../job_schema';
import { InputError } from '../errors';
import type { ImageSet } from '../data/dataset';
import type { Model } from '../nn/model';
import type { Augment } from '../nn/train';
import type { TriggeredSet } from '../metrics/evaluate';
import { loadEmbeddedMnist, splitDisjoint } from '../formats/data/mnist';
import { loadDataSource } from '../formats/data';
import { FORMAT_EXT, adoptInputSize, type LoadedModel, type ModelFormat } from '../model_files/model_io';
import { tfjsArtifactsOf } from '../model_files/tfjs_export';
import { jobTriggeredSet } from '../attacks';
import { sampleBalanced } from '../auxdata/sample';
import { applyShift } from '../auxdata/shifts';
import { synthesizeAuxSet } from '../auxdata/synthetic';
import { calibrate, type GicOptions } from '../gic/gic';
import { saveCalibration } from '../gic/save';
import { embedAuxSet } from '../embed';
import { Rng } from '../util/rng';
import type { PlannedDefense, PreparedAux, PreparedJob } from './core';
import type { Profile } from '../catalog';
import { checkClasses, checkDataSize, checkFiniteWeights, checkModelSize, type Limits } from './checks';

/** The embedded MNIST split used for every `mnist-embedded` source of a job (same split as the demo). */
function embeddedSplit(seed: number) {
  return splitDisjoint(loadEmbeddedMnist(), { train: 6000, pool: 2000, test: 2000 }, new Rng(seed).fork('split'));
}

function loadSource(src: DataSourceSpec, role: 'train' | 'test' | 'pool', field: string, model: { shape?: [number, number, number]; numClasses: number }, seed: number): ImageSet {
  if (src.format === 'mnist-embedded') return embeddedSplit(seed)[role];
  // Converted to the model's channels (and size, when the source asks for resizing) and checked against its classes.
  return loadDataSource(src, field, model, role);
}

function checkShape(set: ImageSet, want: [number, number, number], field: string): void {
  if (set.shape.join('x') !== want.join('x')) {
    throw new InputError(`images are ${set.shape.join('x')} but the model takes ${want.join('x')}`, field);
  }
}

/** The job's data sources with the field that names each (for size checks and the list of input files). */
export function jobSources(job: Job): Array<[DataSourceSpec | undefined, string]> {
  return [
    [job.data.test, 'data.test'],
    [job.data.train, 'data.train'],
    ...(job.aux ?? []).map((a, i): [DataSourceSpec | undefined, string] => [a.source, `aux[${i}].source`]),
    [job.attack?.type === 'poisoned-set' ? job.attack.data : undefined, 'attack.data'],
  ];
}

/** Refuses a model or data file beyond the size limits, before any of it is read. */
export function checkInputSizes(job: Job, limits: Limits, name: string): void {
  const modelPath = typeof job.model === 'string' ? job.model : job.model.path;
  checkModelSize(modelPath, limits, `${name}: model`);
  for (const [src, field] of jobSources(job)) {
    if (src?.path && src.format !== 'mnist-embedded') checkDataSize([src.path, ...(src.labels ? [src.labels] : [])], limits, `${name}: ${field}`);
  }
}

/** Every input file of the job (job file, model, trigger files, data): an output never takes their names. */
export function jobInputFiles(jobPath: string, job: Job): string[] {
  const modelPath = typeof job.model === 'string' ? job.model : job.model.path;
  const a = job.attack;
  const triggerFiles = a?.type === 'badnets' && a.patchFile ? [a.patchFile.path] : a?.type === 'blended' && a.imageFile ? [a.imageFile] : a?.type === 'wanet' && a.gridsFile ? [a.gridsFile] : [];
  return [jobPath, modelPath, ...triggerFiles, ...jobSources(job).flatMap(([src]) => (src?.path ? [src.path, ...(src.labels ? [src.labels] : [])] : []))];
}

export interface JobInputs {
  test: ImageSet;
  train?: ImageSet;
  triggered: TriggeredSet;
  attackInfo: AttackInfo;
  /** Every (seed, aux set), seed-major. */
  aux: PreparedAux[];
}

/** The job's test, training, triggered and auxiliary sets for the loaded model, checked against it. */
export async function prepareInputs(job: Job, loaded: LoadedModel, name: string, signal: AbortSignal | undefined, emit: (e: RunEvent) => void): Promise<JobInputs> {
  const victim = loaded.model;
  const seed = job.seed;
  const seeds = job.seeds;
  const rng = new Rng(seed);
  // NaN or Inf in the weights would make every number of the job meaningless.
  await checkFiniteWeights(victim, `${name}: model`);
  // A format that cannot hold this model fails now, not after the defenses ran.
  if (job.outputs?.formats?.includes('tfjs')) await tfjsArtifactsOf(victim, 'check.bin');
  const k = victim.numClasses;
  // Converted to the model's channels (resized only when the source asks) and checked against its classes.
  // Until a model that pools globally has adopted the data's size, only the classes are checked here.
  const test = loadSource(job.data.test, 'test', `${name}: data.test`, { shape: loaded.inputSizeKnown ? victim.inputShape : undefined, numClasses: k }, seed);
  // A network that pools globally takes any image size: unless the file or the job fixed one, use the data's.
  if (!loaded.inputSizeKnown) adoptInputSize(loaded, test.shape);
  const shape = victim.inputShape;
  checkShape(test, shape, `${name}: data.test`);
  checkClasses(test, k, `${name}: data.test`);
  const train = job.data.train ? loadSource(job.data.train, 'train', `${name}: data.train`, { shape, numClasses: k }, seed) : undefined;
  if (train) checkShape(train, shape, `${name}: data.train`);

  // The triggered set: built from the attack (and its trigger files), the user's poisoned set, the model's
  // BackdoorBench record, or none at all when no trigger is known.
  const { triggered, info: attackInfo } = jobTriggeredSet(job.attack, { test, shape, numClasses: k, normalize: victim.normalize, record: loaded.record, rng: rng.fork('attack'), label: `${name}: ` });

  const defaultSize = Math.max(k, Math.round(0.05 * (train?.n ?? 20 * test.n)));
  // The pools are read once; every seed draws its own sample from them (and its own shift or synthesis).
  const pools = new Map<number, ImageSet>();
  const poolOf = (i: number, a: (typeof job.aux)[number], field: string): ImageSet => {
    let pool = pools.get(i);
    if (!pool) {
      if (a.type === 'seen') pool = train;
      else if (a.source) pool = loadSource(a.source, 'pool', `${field}.source`, { shape, numClasses: k }, seed);
      if (!pool) throw new InputError(a.type === 'seen' ? 'a "seen" auxiliary set needs data.train' : `a "${a.type}" auxiliary set needs a "source"`, field);
      checkShape(pool, shape, `${field}.source`);
      pools.set(i, pool);
    }
    return pool;
  };
  const aux: PreparedAux[] = [];
  for (const s of seeds) {
    // The same forks in the same order as the data seed's stream above, so that `"seed": s` and `"seeds": [s]`
    // draw the same auxiliary sets.
    const auxRng = new Rng(s);
    auxRng.fork('attack');
    for (const [i, a] of (job.aux ?? []).entries()) {
      const field = `${name}: aux[${i}]`;
      const want = a.perClass ? { perClass: a.perClass } : { size: a.size ?? defaultSize };
      let set: ImageSet;
      if (a.type === 'synthetic') {
        set = await synthesizeAuxSet(victim, { perClass: a.perClass ?? Math.max(1, Math.round((a.size ?? defaultSize) / k)) }, auxRng.fork(`aux:${a.name}`), signal, (d, t, m) =>
          emit({ type: 'progress', stage: `synthesizing ${a.name}${seeds.length > 1 ? ` (seed ${s})` : ''}`, done: d, total: t, message: m }),
        );
      } else {
        const pool = poolOf(i, a, field);
        // Without an explicit size, take the default but no more than every class of the pool can give.
        const counts = new Array(k).fill(0);
        for (let j = 0; j < pool.n; j++) counts[pool.y[j]]++;
        const fit = a.size || a.perClass ? want : { size: Math.min(defaultSize, k * Math.min(...counts)) };
        set = sampleBalanced(pool, fit, auxRng.fork(`aux:${a.name}`), field);
        if (a.type === 'ood') {
          if (!a.shift) throw new InputError('an "ood" auxiliary set needs a "shift"', field);
          set = applyShift(set, a.shift, auxRng.fork(`shift:${a.name}`));
        }
      }
      aux.push({ name: a.name, type: a.type, seed: s, set });
    }
  }

  return { test, train, triggered, attackInfo, aux };
}

/** A job's defense list (bare ids or objects) as the cells plan them: each with its profile and overrides. */
export function planDefenses(defenses: Array<string | { name: string; profile?: Profile; params?: PlannedDefense['params'] }>, profile: Profile): PlannedDefense[] {
  return defenses.map((d) => (typeof d === 'string' ? { id: d, profile } : { id: d.name, profile: d.profile ?? profile, params: d.params }));
}

export interface AssembleOptions {
  victim: Model;
  model: PreparedJob['model'];
  test: ImageSet;
  triggered: TriggeredSet;
  aux: PreparedAux[];
  defenses: PlannedDefense[];
  seeds: number[];
  gic: { mode: PreparedJob['gicMode'] } & Partial<Pick<GicOptions, 'delta' | 'norm' | 'lambdaBn' | 'epochs' | 'lr'>>;
  /** Undefined: no embeddings. `reference` is drawn as the victim's training data; `seed` fixes the projection. */
  embedding?: { points: number; reference: ImageSet; seed: number };
  augment: Augment;
  /** Where GIC files and purified models are written before they are moved into the out dir. */
  staging: string;
  /** Formats of the purified models. */
  formats: ModelFormat[];
  /** True when a file of this name in the out dir must not be replaced: the output gets another name. */
  taken?: (name: string) => boolean;
}

/** The PreparedJob core.ts runs, with hooks that write GIC files and purified models into the staging folder. */
export function assemblePreparedJob(o: AssembleOptions): PreparedJob {
  const taken = o.taken ?? (() => false);
  const { mode, ...given } = o.gic;
  // Only the settings given: an absent one keeps calibrate's default.
  const gicOptions: Partial<GicOptions> = {};
  for (const [k, v] of Object.entries(given)) if (v !== undefined) (gicOptions as Record<string, unknown>)[k] = v;
  const embedding = o.embedding;
  return {
    victim: o.victim,
    model: o.model,
    test: o.test,
    triggered: o.triggered,
    aux: o.aux,
    defenses: o.defenses,
    gicMode: mode,
    augment: o.augment,
    seeds: o.seeds,
    calibrate: async (v, a, signal, progress, threads) => {
      // Each seed's sample is calibrated from that seed (g's initialisation and batch order).
      const out = await calibrate(v, a.set, { ...gicOptions, seed: a.seed }, signal, progress, { ortTraining: ortTrainWanted(), threads });
      try {
        // g and the calibrated images go with the outputs; an earlier run's files are kept unless asked.
        const base = o.seeds.length > 1 ? `${a.name}-s${a.seed}` : a.name;
        const files = await saveCalibration(out.net, out.set, o.staging, base, taken);
        return { set: out.set, entry: { aux: a.name, seed: a.seed, ...out.report, files } };
      } finally {
        out.net.dispose();
      }
    },
    embed: embedding ? (v, a, cal, signal) => embedAuxSet(v, { aux: a.name, reference: embedding.reference, raw: a.set, calibrated: cal, points: embedding.points, seed: embedding.seed }, signal) : undefined,
    saveTargets: (base) =>
      // Purified models are named after defense and aux set; an earlier run's file in the out dir is not
      // replaced unless asked.
      o.formats.map((fmt) => {
        const ext = FORMAT_EXT[fmt];
        const name = taken(`${base}.${ext}`) ? `${base}-${Date.now()}.${ext}` : `${base}.${ext}`;
        return { file: path.join(o.staging, name), format: fmt };
      }),
  };
}
