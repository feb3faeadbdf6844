/**
 * The common interface of purification defenses. A defense receives the victim (never modified: it works on
 * a clone), an auxiliary set (raw or GIC-calibrated: the defense cannot tell) and a profile, and returns the
 * purified model plus facts worth reporting. Adding a defense is adding a file and a line in ./index.ts.
 */
import type { ImageSet } from '../data/dataset';
import type { Model } from '../nn/model';
import type { Augment } from '../nn/train';
import type { Rng } from '../util/rng';
import type { ReversedTriggerImage } from '../../shared/results';

/**
 * `paper`: BackdoorBench's config values. `fast`: the same algorithm and hyperparameters on a shorter schedule;
 * where a defense departs from that (most use batches of 64 rather than 256, so that a 500-image auxiliary set
 * still gives several update steps an epoch), `departures('fast')` names it and the row carries it.
 */
export type Profile = 'fast' | 'paper';

export type DefenseParams = Record<string, number | string | boolean | number[]>;

export interface DefenseContext {
  victim: Model;
  aux: ImageSet;
  profile: Profile;
  /** Effective parameters: the profile's defaults overridden by the job's `params`. */
  params: DefenseParams;
  /** Augmentation for training on the auxiliary set (flip only for natural images). */
  augment: Augment;
  rng: Rng;
  signal?: AbortSignal;
  /** Progress within this defense, 0..total. */
  progress: (done: number, total: number, message?: string) => void;
  /**
   * The network passes of training through ONNX Runtime where it loads in this process (absent or false: all on
   * the tensor backend): trainEpochs' cross-entropy steps, and each defense's own graphs (ort_graph.ts) for
   * the rest; a defense falls back to the backend where a graph cannot be made, and says why in `training`.
   */
  ortTraining?: boolean;
  /**
   * ONNX Runtime threads for those passes (default 1). The graphs give the same bits on any thread count
   * (test/unit/ort-threads.test.ts), so a row does not depend on it: a lone cell may use every core.
   */
  ortThreads?: number;
  /** Where this defense's training steps ran, counted by trainEpochs and the defenses' own loops; read into the row. */
  training?: TrainingRecord;
}

/** Where a defense's training steps ran: how many on ONNX Runtime, how many on the backend, and why those. */
export interface TrainingRecord {
  onnxruntimeSteps: number;
  backendSteps: number;
  /** Why steps ran on the backend (one line per distinct reason). */
  backendWhy: Set<string>;
}

export function newTrainingRecord(): TrainingRecord {
  return { onnxruntimeSteps: 0, backendSteps: 0, backendWhy: new Set() };
}

export interface DefenseOutcome {
  model: Model;
  /** Thresholds chosen on the auxiliary validation split, pruned channels, approximations used, etc. */
  details?: Record<string, unknown>;
  /** Backdoor detection (NC): per-class anomaly index, flagged labels and the reversed triggers. */
  detection?: { anomalyIndex: number[]; flagged: number[]; triggers?: ReversedTriggerImage[] };
}

export interface Defense {
  id: string;
  title: string;
  defaults(profile: Profile): DefenseParams;
  /** Where this profile departs from BackdoorBench's config values, and why in a few words (named in the row). */
  departures?(profile: Profile): string | undefined;
  run(ctx: DefenseContext): Promise<DefenseOutcome>;
  /**
   * A cell's wall time relative to ft's (1), measured on the zoo's width-16 PreAct-ResNet18 with the fast profile
   * and its 500 auxiliary images. Only orders the cells of a pooled job, longest first, so that a long cell
   * does not start last; it changes no result (each cell has its own random stream).
   */
  cost?: number;
  /**
   * What of the defense always computes on the tensor backend, whatever ONNX Runtime can do (CLP: it trains
   * nothing): one line, named in each row's `training.why`.
   */
  ownLoop?: string;
  /**
   * The words a parameter may take where its value is a string (e.g. NAD's `studentSchedule`); any other
   * string is refused before the job runs, rather than silently meaning the defense's fallback.
   */
  choices?: Record<string, readonly string[]>;
}

const PARAM_PROFILES: readonly Profile[] = ['fast', 'paper'];

function kindOf(v: unknown): 'number' | 'string' | 'boolean' | 'number[]' | 'other' {
  if (typeof v === 'number' || typeof v === 'string' || typeof v === 'boolean') return typeof v as 'number' | 'string' | 'boolean';
  if (Array.isArray(v) && v.every((x) => typeof x === 'number')) return 'number[]';
  return 'other';
}

/**
 * Why `value` cannot be parameter `key` of `defense`, or undefined when it can. A value must be of a kind one
 * of the profiles' defaults has (CLP's `u` is a number in `paper` and "auto" in `fast`, so both are accepted),
 * numbers finite, strings one of the defense's `choices`.
 */
export function paramValueProblem(defense: Defense, key: string, value: unknown): string | undefined {
  const kinds = new Set(PARAM_PROFILES.map((p) => kindOf(defense.defaults(p)[key])));
  const words = defense.choices?.[key] ?? [];
  const expected = [...[...kinds].filter((k) => k !== 'string' && k !== 'other').map((k) => (k === 'number[]' ? 'a list of numbers' : `a ${k}`)), ...(words.length ? [`one of ${words.map((w) => JSON.stringify(w)).join(', ')}`] : [])].join(' or ');
  const kind = kindOf(value);
  const ok =
    kind === 'string' ? words.includes(value as string)
    : kind === 'number' ? kinds.has('number') && Number.isFinite(value as number)
    : kind === 'number[]' ? kinds.has('number[]') && (value as number[]).every(Number.isFinite)
    : kind === 'boolean' && kinds.has('boolean');
  return ok ? undefined : `parameter "${key}" of defense ${defense.id} takes ${expected || 'no value of this kind'} (got ${JSON.stringify(value)})`;
}

/** Merge profile defaults with user overrides, refusing unknown parameter names. */
export function resolveParams(defense: Defense, profile: Profile, overrides: DefenseParams | undefined): DefenseParams {
  const base = defense.defaults(profile);
  for (const k of Object.keys(overrides ?? {})) {
    if (!(k in base)) throw new Error(`unknown parameter "${k}" for defense ${defense.id} (known: ${Object.keys(base).join(', ')})`);
    const problem = paramValueProblem(defense, k, overrides![k]);
    if (problem) throw new Error(problem);
  }
  return { ...base, ...(overrides ?? {}) };
}

/** Yield to the event loop so that cancellation and progress messages get through between batches. */
export function yieldToLoop(): Promise<void> {
  return new Promise((r) => setImmediate(r));
}
