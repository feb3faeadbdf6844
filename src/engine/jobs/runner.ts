/**
 * The job runner: validated audit.json -> prepared inputs (model, data, attack, auxiliary sets) -> the cells of
 * core.ts -> results.json. Everything is checked before anything is computed, and outputs are staged next to
 * the out dir and moved in at the end, so a bad input or a cancelled job writes nothing.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { RunEvent } from '../../shared/run_events';
import type { Results } from '../../shared/results';
import { initBackend } from '../backend';
import { loadJob } from './validate';
import type { Job, DataSourceSpec } from './schema';
import { InputError } from '../errors';
import type { ImageSet } from '../data/dataset';
import { loadEmbeddedMnist, splitDisjoint } from '../io/data/mnist';
import { loadDataSource } from '../io/data';
import { FORMAT_EXT, adoptInputSize, loadModelFile, type ModelFormat } from '../io/model_io';
import { tfjsArtifactsOf } from '../io/tfjs_export';
import { jobTriggeredSet } from '../attacks';
import { detectUnknownTrigger } from './detect';
import { sampleBalanced } from '../auxdata/sample';
import { applyShift } from '../auxdata/shifts';
import { synthesizeAuxSet } from '../auxdata/synthetic';
import { calibrate } from '../gic/gic';
import { saveCalibration } from '../gic/save';
import { embedAuxSet } from '../embed';
import { Rng } from '../util/rng';
import { runPrepared, planCells, type PreparedAux, type PreparedJob, type ShardSpec } from './core';
import { makeStaging, writeResults } from './output';
import { sameFile } from '../util/atomic';
import { checkClasses, checkDataSize, checkFiniteWeights, checkModelSize, type Limits } from './checks';

export interface RunOptions {
  /** Directory for results.json and purified models (created if missing). */
  outDir: string;
  /** Overrides the job's `device`. */
  device?: 'auto' | 'gpu' | 'cpu';
  /** Cancels between batches; the job then leaves no partial outputs. */
  signal?: AbortSignal;
  onEvent?: (e: RunEvent) => void;
  /** Allow replacing purified models an earlier run wrote to the same outDir. */
  overwrite?: boolean;
  /** Cell workers (threads) to run cells side by side; default one per core on the CPU backends, 1 = none. */
  workers?: number;
  /** `i/n`: run only the i-th (1-based) of n disjoint slices of the cells. */
  shard?: string;
  /** Size limits on the model and data files, checked before they are read (defaults: DEFAULT_LIMITS). */
  limits?: Limits;
}

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

/** `i/n` (1-based, as Slurm array and Kubernetes indexed jobs count from 1 or 0 + 1) -> a 0-based shard. */
export function parseShard(shard: string | undefined): ShardSpec | undefined {
  if (!shard) return undefined;
  const m = /^(\d+)\/(\d+)$/.exec(shard);
  if (!m || +m[1] < 1 || +m[1] > +m[2]) throw new InputError(`shard must be i/n with 1 <= i <= n, got "${shard}"`, '--shard');
  return { index: +m[1] - 1, count: +m[2] };
}

export async function runJobFile(jobPath: string, opts: RunOptions): Promise<Results> {
  const emit = opts.onEvent ?? (() => undefined);
  const job: Job = loadJob(jobPath);
  const shard = parseShard(opts.shard);
  const backend = await initBackend(opts.device ?? job.device);
  // `seed` fixes what every repetition shares (the embedded data split, the trigger, the embeddings); each of
  // `seeds` (the first is `seed`) draws its own auxiliary samples, calibration and defense streams.
  const seed = job.seed;
  const seeds = job.seeds;
  const rng = new Rng(seed);
  const name = path.basename(jobPath);

  // Sizes first: a file beyond the limits is refused before any of it is read.
  const limits = opts.limits ?? {};
  const modelPath = typeof job.model === 'string' ? job.model : job.model.path;
  checkModelSize(modelPath, limits, `${name}: model`);
  const sources: Array<[DataSourceSpec | undefined, string]> = [
    [job.data.test, 'data.test'],
    [job.data.train, 'data.train'],
    ...(job.aux ?? []).map((a, i): [DataSourceSpec | undefined, string] => [a.source, `aux[${i}].source`]),
    [job.attack?.type === 'poisoned-set' ? job.attack.data : undefined, 'attack.data'],
  ];
  for (const [src, field] of sources) {
    if (src?.path && src.format !== 'mnist-embedded') checkDataSize([src.path, ...(src.labels ? [src.labels] : [])], limits, `${name}: ${field}`);
  }

  const loaded = loadModelFile(job.model, `${name}: model`);
  const victim = loaded.model;
  try {
    // NaN or Inf in the weights would make every number of the job meaningless.
    checkFiniteWeights(victim, `${name}: model`);
    // A format that cannot hold this model fails now, not after the defenses ran.
    if (job.outputs?.formats?.includes('tfjs')) tfjsArtifactsOf(victim, 'check.bin');
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
          set = await synthesizeAuxSet(victim, { perClass: a.perClass ?? Math.max(1, Math.round((a.size ?? defaultSize) / k)) }, auxRng.fork(`aux:${a.name}`), opts.signal, (d, t, m) =>
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

    const gic = job.gic ?? { mode: 'off' as const, delta: 0.1, norm: 'inf' as const, lambdaBn: 1, epochs: 20, lr: 1e-3 };
    const outDir = path.resolve(opts.outDir);
    // The job's input files: an output never takes their name, even with overwrite (an out dir may hold them).
    const a = job.attack;
    const triggerFiles = a?.type === 'badnets' && a.patchFile ? [a.patchFile.path] : a?.type === 'blended' && a.imageFile ? [a.imageFile] : a?.type === 'wanet' && a.gridsFile ? [a.gridsFile] : [];
    const inputs = [jobPath, modelPath, ...triggerFiles, ...sources.flatMap(([src]) => (src?.path ? [src.path, ...(src.labels ? [src.labels] : [])] : []))];
    const taken = (f: string) => (!opts.overwrite && fs.existsSync(f)) || inputs.some((p) => path.resolve(p) === f || sameFile(p, f));
    const { dir: staging, removed } = makeStaging(outDir);
    if (removed.length) emit({ type: 'log', message: `removed ${removed.length} staging folder${removed.length === 1 ? '' : 's'} left by killed jobs: ${removed.join(', ')}` });
    try {
      const prepared: PreparedJob = {
        victim,
        model: loaded.info,
        test,
        triggered,
        aux,
        defenses: (job.defenses ?? []).map((d) => (typeof d === 'string' ? { id: d, profile: job.profile } : { id: d.name, profile: d.profile ?? job.profile, params: d.params })),
        gicMode: gic.mode,
        augment: { cropPadding: 4, flip: shape[2] === 3 },
        seeds,
        calibrate: async (v, a, signal, progress) => {
          // Each seed's sample is calibrated from that seed (g's initialisation and batch order).
          const out = await calibrate(v, a.set, { delta: gic.delta, norm: gic.norm, lambdaBn: gic.lambdaBn, epochs: gic.epochs, lr: gic.lr, seed: a.seed }, signal, progress);
          try {
            // g and the calibrated images go with the outputs; an earlier run's files are kept unless asked.
            const base = seeds.length > 1 ? `${a.name}-s${a.seed}` : a.name;
            const files = saveCalibration(out.net, out.set, staging, base, (f) => taken(path.join(outDir, f)));
            return { set: out.set, entry: { aux: a.name, seed: a.seed, ...out.report, files } };
          } finally {
            out.net.dispose();
          }
        },
        embed:
          job.embedding?.method === 'none'
            ? undefined
            : (v, a, cal) => embedAuxSet(v, { aux: a.name, reference: train ?? test, raw: a.set, calibrated: cal, points: job.embedding?.points ?? 600, seed }),
        saveTargets: (base) => {
          // Purified models keep the input's format, named after defense and aux set; an earlier run's file in
          // the out dir is not replaced unless asked.
          const formats = job.outputs?.formats ?? [loaded.info.format as ModelFormat];
          return formats.map((fmt) => {
            const ext = FORMAT_EXT[fmt];
            const name = taken(path.join(outDir, `${base}.${ext}`)) ? `${base}-${Date.now()}.${ext}` : `${base}.${ext}`;
            return { file: path.join(staging, name), format: fmt };
          });
        },
      };
      emit({ type: 'started', jobPath, outDir, cells: planCells(prepared).filter((_, i) => !shard || i % shard.count === shard.index).length, backend: backend.name, threads: backend.threads });
      // No trigger known: Neural Cleanse's detection first, on the first auxiliary set (else the training data,
      // else the clean test set), with the reversed trigger of each flagged class saved as a PNG.
      const unknownDetection =
        triggered.unknown && (!shard || shard.index === 0)
          ? await detectUnknownTrigger(victim, aux[0]?.set ?? train ?? test, {
              profile: job.profile,
              seed,
              signal: opts.signal,
              progress: (d, t, m) => emit({ type: 'progress', stage: 'detecting a trigger (Neural Cleanse)', done: d, total: t, message: m }),
              dir: staging,
              taken: (f) => taken(path.join(outDir, f)),
            })
          : undefined;
      const results = await runPrepared(prepared, { backend, signal: opts.signal, emit, shard, workers: opts.workers });
      results.attack = attackInfo;
      if (unknownDetection) results.detection.nc = { ...unknownDetection, source: aux[0] ? `aux ${aux[0].name}` : train ? 'data.train' : 'data.test' };
      const resultsPath = writeResults(staging, outDir, results, { protect: inputs });
      emit({ type: 'done', results, resultsPath });
      return results;
    } finally {
      fs.rmSync(staging, { recursive: true, force: true });
    }
  } finally {
    victim.dispose();
  }
}
