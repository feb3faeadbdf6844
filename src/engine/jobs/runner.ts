/**
 * The job runner: validated audit.json -> prepared inputs (prepare.ts: model, data, attack, auxiliary sets) ->
 * the cells of core.ts -> results.json. Everything is checked before anything is computed, and outputs are staged
 * next to the out dir and moved in at the end, so a bad input or a cancelled job writes nothing.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { RunEvent } from '../../shared/run_events';
import type { Results } from '../../shared/results';
import { initBackend } from '../backend';
import { loadJob } from './validate';
import type { Job } from '../job_schema';
import { InputError } from '../errors';
import { loadModelFile, type ModelFormat } from '../model_files/model_io';
import { detectUnknownTrigger } from './detect';
import { runPrepared, planCells, type ShardSpec } from './core';
import { assemblePreparedJob, checkInputSizes, jobInputFiles, planDefenses, prepareInputs } from './prepare';
import { makeStaging, writeResults } from './output';
import { sameFile } from '../util/atomic';
import type { Limits } from './checks';
import { SpareCellProcess } from './cell_spawn';

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
  /**
   * A cell process the caller started ahead of the job (the CLI does, before it loads the engine); the run owns
   * it from then on and ends it if no pool takes it. Without one the run starts its own.
   */
  spare?: SpareCellProcess;
}

/** `i/n` (1-based, as Slurm array and Kubernetes indexed jobs count from 1 or 0 + 1) -> a 0-based shard. */
export function parseShard(shard: string | undefined): ShardSpec | undefined {
  if (!shard) return undefined;
  const m = /^(\d+)\/(\d+)$/.exec(shard);
  if (!m || +m[1] < 1 || +m[1] > +m[2]) throw new InputError(`shard must be i/n with 1 <= i <= n, got "${shard}"`, '--shard');
  return { index: +m[1] - 1, count: +m[2] };
}

export async function runJobFile(jobPath: string, opts: RunOptions): Promise<Results> {
  // Started first, so that it loads its bundle while this process reads the job and prepares the inputs.
  const spare = opts.spare ?? SpareCellProcess.start({ workers: opts.workers, device: opts.device });
  try {
    return await runJob(jobPath, opts, spare);
  } finally {
    await spare?.dispose();
  }
}

async function runJob(jobPath: string, opts: RunOptions, spare: SpareCellProcess | undefined): Promise<Results> {
  const emit = opts.onEvent ?? (() => undefined);
  const job: Job = loadJob(jobPath);
  const shard = parseShard(opts.shard);
  const device = opts.device ?? job.device ?? 'auto';
  const backend = await initBackend(device);
  // `seed` fixes what every repetition shares (the embedded data split, the trigger, the embeddings); each of
  // `seeds` (the first is `seed`) draws its own auxiliary samples, calibration and defense streams.
  const seed = job.seed;
  const seeds = job.seeds;
  const name = path.basename(jobPath);

  // Sizes first: a file beyond the limits is refused before any of it is read.
  checkInputSizes(job, opts.limits ?? {}, name);

  const loaded = loadModelFile(job.model, `${name}: model`);
  const victim = loaded.model;
  try {
    // The spare cell process builds the victim (and its training graph) while this one reads the data. Not where
    // the model's input size comes from the data: the victim is rebuilt for it then.
    if (spare && loaded.inputSizeKnown) await spare.sendAhead({ type: 'ahead', backend: backend.name, victim: { spec: victim.spec, normalize: victim.normalize, state: await victim.stateDict() } }, victim);
    const { test, train, triggered, attackInfo, aux } = await prepareInputs(job, loaded, name, opts.signal, emit);
    const shape = victim.inputShape;

    const gic = job.gic ?? { mode: 'off' as const, delta: 0.1, norm: 'inf' as const, lambdaBn: 1, epochs: 20, lr: 1e-3 };
    const outDir = path.resolve(opts.outDir);
    // The job's input files: an output never takes their name, even with overwrite (an out dir may hold them).
    const inputs = jobInputFiles(jobPath, job);
    const taken = (f: string) => (!opts.overwrite && fs.existsSync(f)) || inputs.some((p) => path.resolve(p) === f || sameFile(p, f));
    const { dir: staging, removed } = makeStaging(outDir);
    if (removed.length) emit({ type: 'log', message: `removed ${removed.length} staging folder${removed.length === 1 ? '' : 's'} left by killed jobs: ${removed.join(', ')}` });
    try {
      const prepared = assemblePreparedJob({
        victim,
        model: loaded.info,
        test,
        triggered,
        aux,
        defenses: planDefenses(job.defenses ?? [], job.profile),
        seeds,
        gic: { mode: gic.mode, delta: gic.delta, norm: gic.norm, lambdaBn: gic.lambdaBn, epochs: gic.epochs, lr: gic.lr },
        embedding: job.embedding?.method === 'none' ? undefined : { points: job.embedding?.points ?? 600, reference: train ?? test, seed },
        augment: { cropPadding: 4, flip: shape[2] === 3 },
        staging,
        // Purified models keep the input's format unless the job names others.
        formats: job.outputs?.formats ?? [loaded.info.format as ModelFormat],
        taken: (f) => taken(path.join(outDir, f)),
      });
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
      const results = await runPrepared(prepared, { backend, signal: opts.signal, emit, shard, workers: opts.workers, spare });
      // What was asked beside what ran: `auto` that fell back to the CPU reads as such.
      results.backend.device = device;
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
